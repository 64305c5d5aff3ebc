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

from .denoiser_backward import _column_sum_kernel, _ln_relu_bwd_kernel
from .denoiser_mlp import _mlp_forward_kernel
from .noising import _noised_rows_kernel
from .reverse_chain import _reverse_chain_kernel
from .td_loss import _td_loss_kernel

FLOATS = {"eps", "c_scale", "gamma", "inv_count"}
DIVISIBLE = {"R", "H1", "H2", "H", "K", "stride_dy", "stride_w"}
SHARED_LIMIT = 200 * 1024  # of the 228 KB per SM, what one program may take and still fit with the L1 carve-out

MLP = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, BLOCK_O=32, PRECISION="tf32")
BWD = dict(PRECISION="tf32", BLOCK_R=32, BLOCK_K=32, BLOCK_H=64)
BF16 = {"w1_ptr", "w2_ptr", "wo_ptr", "pre1_ptr", "pre2_ptr"}
# name: (kernel, constexprs, {divisible, bf16, num_warps}): the launch configurations of the update
CONFIGS = {
    "mlp_forward": (_mlp_forward_kernel, dict(SAVE_STATS=True, **MLP), {}),
    "reverse_chain": (_reverse_chain_kernel, dict(PREDICTION="v", SAMPLER="ddpm", **dict(MLP, BLOCK_M=32)), {}),
    "noised_rows": (_noised_rows_kernel, dict(HAS_COND=True, BLOCK_M=16, BLOCK_C=64), {}),
    "td_loss": (_td_loss_kernel, dict(BLOCK_M=64, BLOCK_N=32), {}),
    # the last hidden layer (K = n_out -> BLOCK_K 16, weight grads + db_out sums), the inner one (K = H),
    # the input-gradient-only path
    "ln_relu_bwd_last": (_ln_relu_bwd_kernel, dict(WEIGHT_GRADS=True, DY_SUMS=True, **dict(BWD, BLOCK_K=16)),
                         dict(divisible={"R", "H", "stride_w"})),
    "ln_relu_bwd": (_ln_relu_bwd_kernel, dict(WEIGHT_GRADS=True, DY_SUMS=False, **BWD), {}),
    "ln_relu_bwd_input": (_ln_relu_bwd_kernel, dict(WEIGHT_GRADS=False, DY_SUMS=False, **BWD), {}),
    "column_sum": (_column_sum_kernel, dict(BLOCK_P=16, BLOCK_C=128), dict(divisible=set())),
    # precision "bf16": bf16 weight matrices and activation buffers, bf16 wgmma/mma operands
    "mlp_forward_bf16": (_mlp_forward_kernel, dict(SAVE_STATS=True, **dict(MLP, PRECISION="bf16")), dict(bf16=BF16)),
    "reverse_chain_bf16": (_reverse_chain_kernel, dict(PREDICTION="v", SAMPLER="ddpm",
                                                       **dict(MLP, BLOCK_M=32, PRECISION="bf16")), dict(bf16=BF16)),
    "ln_relu_bwd_bf16": (_ln_relu_bwd_kernel, dict(WEIGHT_GRADS=True, DY_SUMS=False, **dict(BWD, PRECISION="bf16")),
                         dict(bf16={"pre_ptr"})),
}


def compile_sm90(fn, constexprs, num_warps=4, num_stages=2, divisible=DIVISIBLE, bf16=()):
    """fn compiled for sm_90; bf16: pointer arguments that point to bf16 data (the others fp32)."""
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*i64" if name == "t_ptr" else "*bf16" if name in bf16 else "*fp32"
        else:
            sig[name] = "fp32" if name in FLOATS else "i32"
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
             if sig[name].startswith("*") or name in divisible}
    return triton.compile(ASTSource(fn, sig, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=num_warps, num_stages=num_stages))


def registers(kernel) -> int:
    """Registers per thread of a compiled kernel, read off its cubin with Triton's cuobjdump."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([tool, "--dump-resource-usage", cubin.name], capture_output=True, text=True,
                               check=True).stdout
    return int(usage.split("REG:")[1].split()[0])


def resources() -> dict:
    """{config name: {registers (per thread), shared (bytes per program), num_warps}} of CONFIGS; raises
    if a program would need more than SHARED_LIMIT of shared memory."""
    table = {}
    for name, (fn, constexprs, options) in CONFIGS.items():
        kernel = compile_sm90(fn, constexprs, **options)
        shared = kernel.metadata.shared
        if shared >= SHARED_LIMIT:
            raise ValueError(f"{name}: {shared} B of shared memory per program, over {SHARED_LIMIT}")
        table[name] = {"registers": registers(kernel), "shared": shared, "num_warps": kernel.metadata.num_warps}
    return table


if __name__ == "__main__":
    print(json.dumps(resources(), indent=1))
