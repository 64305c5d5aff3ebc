"""Ahead-of-time compiles of the update's Triton kernels for sm_90 (H100, H200) on any machine, no GPU:
their shared memory (Triton's metadata) and registers per thread (cuobjdump --dump-resource-usage on the
cubin), at the H100 defaults the kernels launch with (hidden 512, R = 1024: divisibility-16 hints).
Needs Triton's NVIDIA backend and a process without TRITON_INTERPRET (the interpreter replaces the
@triton.jit functions): tests/test_kernels_forward.py and profiling/kernel_model.py run it as

    python -m fastbdm.kernels.sm90_compile          # JSON: {kernel config: {registers, shared, num_warps}}
"""
import json
import os
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from .actor_terms import _actor_terms_kernel
from .denoiser_backward import FOLD_MAX_WIDTH, _column_sum_kernel, _ln_relu_bwd_kernel
from .denoiser_mlp import _mlp_forward_kernel
from .gather_fields import _gather_fields_kernel
from .record_metrics import _record_metrics_kernel
from .noising import _bdm_td_rows_kernel, _noised_rows_kernel, _smoothed_action_kernel
from .reverse_chain import _reverse_chain_kernel
from .state_bc import _sbc_loss_kernel, _sbc_rows_kernel, _sbc_states_kernel
from .td_loss import _critic_td_loss_kernel, _denoising_loss_kernel, _td_loss_kernel
from .weight_stationary_chain import _ws_chain_kernel

FLOATS = {"eps", "c_scale", "gamma", "inv_count", "w_bc", "policy_noise", "noise_clip", "max_action", "scale",
          "alpha", "bc_scale"}
DIVISIBLE = {"R", "rows", "H1", "H2", "H", "K", "stride_dy", "stride_w"}
SHARED_LIMIT = 200 * 1024  # of the 228 KB per SM, what one program may take and still fit with the L1 carve-out
BLOCK_SHARED_LIMIT = 227 * 1024  # what one sm_90 block may hold (the weight-stationary chain, one program per SM)

MLP = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, BLOCK_O=32, PRECISION="tf32")
BWD = dict(PRECISION="tf32", BLOCK_R=32, BLOCK_K=32, BLOCK_H=64)
BF16 = {"w1_ptr", "w2_ptr", "wo_ptr", "pre1_ptr", "pre2_ptr"}


def mlp_group_options(networks, bf16=False):
    """compile_sm90's options for _mlp_forward_kernel on a group of `networks`: its tuple arguments' element
    types (bf16: W1, W2, W_out and pre1, pre2 bf16) and every pointer and row count divisible by 16."""
    matrix = "*bf16" if bf16 else "*fp32"
    weights = (matrix, "*fp32", "*fp32", "*fp32", matrix, "*fp32", "*fp32", "*fp32", matrix, "*fp32")
    acts = (matrix, "*fp32", "*fp32", matrix, "*fp32", "*fp32")
    tuples = {"rows_ptrs": ("*fp32",) * networks, "weight_ptrs": weights * networks, "act_ptrs": acts * networks,
              "out_ptrs": ("*fp32",) * networks, "row_counts": ("i32",) * networks, "in_widths": ("i32",) * networks}
    return dict(tuples=tuples, divisible=DIVISIBLE | {"rows_ptrs", "weight_ptrs", "act_ptrs", "out_ptrs", "row_counts"})


BWD_TUPLES = ("dy_ptrs", "w_ptrs", "pre_ptrs", "mean_ptrs", "rstd_ptrs", "g_ptrs", "beta_ptrs", "dz_ptrs", "h_ptrs",
              "part_ptrs", "w1_ptrs", "dx_ptrs", "rows", "widths")


def _backward(blocks, weight_grads, dy_sums=None, fold=None, **options):
    """A config of _ln_relu_bwd_kernel for len(weight_grads) networks; fold: each network's BLOCK_D, 0 where its
    input gradient is not folded (default: none is)."""
    nets = len(weight_grads)
    fold = fold or (0,) * nets
    constexprs = dict(blocks, WEIGHT_GRADS=weight_grads, DY_SUMS=dy_sums or (False,) * nets,
                      INPUT_GRAD=tuple(d > 0 for d in fold), BLOCK_D=tuple(d or 16 for d in fold))
    return _ln_relu_bwd_kernel, constexprs, dict(options, tuples=dict.fromkeys(BWD_TUPLES, nets))
# name: (kernel, constexprs, {divisible, bf16, num_warps}): the launch configurations of the update
CONFIGS = {
    # one network saving its activations (mlp_forward); a critic side's group: D' (no grad), D and E (train)
    "mlp_forward": (_mlp_forward_kernel, dict(NETWORKS=1, SAVE=(True,), **MLP), mlp_group_options(1)),
    "mlp_forward_group": (_mlp_forward_kernel, dict(NETWORKS=3, SAVE=(False, True, True), **MLP),
                          mlp_group_options(3)),
    "reverse_chain": (_reverse_chain_kernel, dict(PREDICTION="v", SAMPLER="ddpm", **dict(MLP, BLOCK_M=32)), {}),
    "noised_rows": (_noised_rows_kernel, dict(HAS_COND=True, BLOCK_M=16, BLOCK_C=64), {}),
    "td_loss": (_td_loss_kernel, dict(HAS_DATA=True, PREDICTION=2, BLOCK_M=64, DATA_BLOCK_M=32, BLOCK_N=32), {}),
    "bdm_td_rows": (_bdm_td_rows_kernel, dict(MASK_DONE=True, PREDICTION=2, HAS_DATA=True, BLOCK_M=16, BLOCK_C=64),
                    {}),
    "critic_td_loss": (_critic_td_loss_kernel, dict(MEMBERS=2, BLOCK_B=128, BLOCK_A=8), {}),
    "denoising_loss": (_denoising_loss_kernel, dict(PREDICTION=2, BLOCK_M=32, BLOCK_N=32), {}),
    "smoothed_action": (_smoothed_action_kernel, dict(BLOCK=1024), {}),
    # a pair's record of td3sbc's 8 metrics (16 slots)
    "record_metrics": (_record_metrics_kernel, dict(NAMES=tuple(range(8)), PRESENT=(True,) * 16, UPDATES=2,
                                                    MAX_UPDATES=2),
                       dict(num_warps=1, divisible=set(), tuples={"value_ptrs": ("*fp32",) * 16,
                                                                  "value_strides": ("i32",) * 16})),
    "gather_fields": (_gather_fields_kernel, dict(offsets=(0, 17, 23, 24, 41, 47, 48), widths=(17, 6, 1, 17, 6, 1, 1),
                                                  BLOCK_I=64, BLOCK_D=32), dict(divisible=set())),
    # the actor loss's (kernels/state_bc.py, kernels/actor_terms.py)
    "sbc_states": (_sbc_states_kernel, dict(STANDARDISED=False, BLOCK_M=32, BLOCK_N=32), {}),
    "sbc_rows": (_sbc_rows_kernel, dict(BLOCK_M=16, BLOCK_C=64), {}),
    "sbc_loss": (_sbc_loss_kernel, dict(BROADCAST=False, BLOCK_M=32, BLOCK_N=32), {}),
    "actor_terms": (_actor_terms_kernel, dict(MEAN_SQUARED=False, HAS_OTHER=True, BLOCK_M=64, BLOCK_N=8), {}),
    # the denoiser backward (one network unless named group): the last hidden layer (K = n_out -> BLOCK_K 16, weight
    # grads + db_out sums), the inner one (K = H), the input-gradient-only path (layer 2), the folded input gradient
    # of layer 1 (D' of the actor step, 2n+1+m = 41 columns -> BLOCK_D 64; FOLD_MAX_WIDTH 128 the widest folded), D
    # and E grouped (2n+1+m and n+1 = 18 columns), and three networks: D, E weight grads, D' its input gradient
    "ln_relu_bwd_last": _backward(dict(BWD, BLOCK_K=16), (True,), (True,), divisible={"rows", "H", "stride_w"}),
    "ln_relu_bwd": _backward(BWD, (True,)),
    "ln_relu_bwd_input": _backward(BWD, (False,)),
    "ln_relu_bwd_input_fold": _backward(BWD, (False,), fold=(64,)),
    "ln_relu_bwd_input_fold_max": _backward(BWD, (False,), fold=(FOLD_MAX_WIDTH,)),
    "ln_relu_bwd_group_last": _backward(dict(BWD, BLOCK_K=16), (True, True), (True, True),
                                        divisible={"rows", "H", "stride_w"}),
    "ln_relu_bwd_group": _backward(BWD, (True, True)),
    "ln_relu_bwd_group3_fold": _backward(BWD, (True, True, False), fold=(64, 32, 64)),
    # the vector gradients of one network and of three (seven vectors each: b_out, then g, beta, b per layer)
    "column_sum": (_column_sum_kernel, dict(BLOCK_P=16, BLOCK_C=128),
                   dict(divisible=set(), tuples=dict(x_ptrs=1, out_ptrs=7, programs=1, starts=7, widths=7))),
    "column_sum_group": (_column_sum_kernel, dict(BLOCK_P=16, BLOCK_C=128),
                         dict(divisible=set(), tuples=dict(x_ptrs=3, out_ptrs=21, programs=3, starts=7, widths=7))),
    # precision "bf16": bf16 weight matrices and activation buffers, bf16 wgmma/mma operands
    "mlp_forward_bf16": (_mlp_forward_kernel, dict(NETWORKS=3, SAVE=(False, True, True), **dict(MLP, PRECISION="bf16")),
                         mlp_group_options(3, bf16=True)),
    "reverse_chain_bf16": (_reverse_chain_kernel, dict(PREDICTION="v", SAMPLER="ddpm",
                                                       **dict(MLP, BLOCK_M=32, PRECISION="bf16")), dict(bf16=BF16)),
    "ln_relu_bwd_bf16": _backward(dict(BWD, PRECISION="bf16"), (True,), bf16={"pre_ptrs"}),
    "ln_relu_bwd_input_fold_bf16": _backward(dict(BWD, PRECISION="bf16"), (False,), fold=(64,),
                                             bf16={"pre_ptrs", "w1_ptrs"}),
}
# The weight-stationary chain at its defaults (BLOCK_M=32, BLOCK_NS=64, num_warps=8), each orchestration
# stage, tf32 and bf16: one program per SM, so it may hold up to a block's shared memory.
WS = dict(PREDICTION="v", SAMPLER="ddpm", BLOCK_M=32, BLOCK_N=64, BLOCK_K=32, BLOCK_O=32, BLOCK_H1=512, BLOCK_NS=64)
for _precision, _bf16 in (("tf32", ()), ("bf16", BF16 | {"w2f_ptr"})):
    for _stage in ("persistent", "prologue", "columns", "rows"):
        CONFIGS[f"ws_chain_{_stage}" + ("_bf16" if _precision == "bf16" else "")] = (
            _ws_chain_kernel, dict(STAGE=_stage, PRECISION=_precision, **WS),
            dict(num_warps=8, divisible=DIVISIBLE | {"rows_per_group"}, bf16=_bf16, shared_limit=BLOCK_SHARED_LIMIT))


def compile_sm90(fn, constexprs, num_warps=4, num_stages=2, divisible=DIVISIBLE, bf16=(), tuples=None):
    """fn compiled for sm_90; bf16: pointer arguments that point to bf16 data (the others fp32); tuples:
    {argument: its elements' types} of the tuple arguments (every element divisible by 16 when the argument
    is in `divisible`), or {argument: length} (pointers of _pointer's type if the name ends in _ptrs, else i32;
    divisibility hints on the pointers and on the integers of tuples named in divisible)."""
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in (tuples or {}):
            typed = not isinstance(tuples[name], int)
            sig[name] = tuple(tuples[name]) if typed else (
                (_pointer(name, bf16) if name.endswith("_ptrs") else "i32"),) * tuples[name]
            attrs.update({(i, j): [["tt.divisibility", 16]] for j, kind in enumerate(sig[name])
                          if name in divisible or (not typed and kind.startswith("*"))})
        else:
            sig[name] = (_pointer(name, bf16) if name.endswith("_ptr")
                         else "fp32" if name in FLOATS else "i32")
            if sig[name].startswith("*") or name in divisible:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return triton.compile(ASTSource(fn, sig, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=num_warps, num_stages=num_stages))


def _pointer(name, bf16):
    """A pointer argument's type: int64 levels and indices, the int32 counter, bf16 where named in bf16, else fp32."""
    return ("*i64" if name in ("t_ptr", "data_t_ptr", "idx_ptr", "levels_ptr", "first_ptr", "clock_ptr")
            else "*i32" if name == "counter_ptr" else "*bf16" if name in bf16 else "*fp32")


def registers(kernel) -> int:
    """Registers per thread of a compiled kernel, read off its cubin with Triton's cuobjdump."""
    return _resource_usage(kernel)["REG"]


def _resource_usage(kernel) -> dict:
    """cuobjdump's resource usage of a compiled kernel: {'REG': registers per thread, 'STACK': bytes of
    stack frame per thread (> 0: registers spilled), ...}."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([tool, "--dump-resource-usage", cubin.name], capture_output=True, text=True,
                               check=True).stdout
    return {key: int(usage.split(f"{key}:")[1].split()[0]) for key in ("REG", "STACK")}


def resources() -> dict:
    """{config name: {registers (per thread), stack (bytes per thread: spills), shared (bytes per program),
    num_warps}} of CONFIGS; raises if a program would need more than its shared-memory limit (SHARED_LIMIT
    unless the config says)."""
    return {name: usage(compile_config(name)) for name in CONFIGS}


def compile_config(name: str):
    """CONFIGS[name] compiled; raises if its shared memory is over its limit."""
    fn, constexprs, options = CONFIGS[name]
    options = dict(options)
    limit = options.pop("shared_limit", SHARED_LIMIT)
    kernel = compile_sm90(fn, constexprs, **options)
    if kernel.metadata.shared >= limit:
        raise ValueError(f"{name}: {kernel.metadata.shared} B of shared memory per program, over {limit}")
    return kernel


def usage(kernel) -> dict:
    found = _resource_usage(kernel)
    return {"registers": found["REG"], "stack": found["STACK"], "shared": kernel.metadata.shared,
            "num_warps": kernel.metadata.num_warps}


if __name__ == "__main__":
    print(json.dumps(resources(), indent=1))
