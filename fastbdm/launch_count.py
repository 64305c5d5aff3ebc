"""The GPU kernels a piece of code would launch on CUDA, counted on any device (the CPU included), per
phase of the update (fastbdm.nvtx_ranges.phase): a TorchDispatchMode over the ATen ops plus a counter on
every @triton.jit launch.

The rule (one launch per op unless listed):
- not counted: view and metadata ops (an op whose schema returns an alias of an input: view, t,
  expand, slice, select, unsqueeze, split ...; and detach, alias, _unsafe_view, lift_fresh), and
  allocations (empty, empty_strided, empty_like, new_empty): no kernel on CUDA;
- _local_scalar_dense (.item(), a host read): counted apart, as `syncs`; ops outside the aten
  namespace (profiler:: ranges) are not counted, nor are composite ops themselves (CompositeImplicitAutograd,
  e.g. matmul reached with autograd off, in a backward pass or a custom op's body): the mode runs their
  decomposition under itself, so their parts (mm, bmm, ...) are counted;
- two launches: the backward of a slice or select (a zero fill, then a copy into the slice), and
  native_layer_norm_backward asked for the gain and bias gradients too (its dX kernel, then theirs);
- multi-tensor ops (_fused_adam_, _fused_adamw_, _foreach_*): the launches of ATen's
  multi_tensor_apply (ATen/native/cuda/MultiTensorApply.cuh): a launch whenever its tensor list (110,
  64, 48, 36, 30 tensors for 1-5 lists) or its 320 blocks of 65536-element chunks fill, and at the end;
- the fastbdm:: custom ops themselves are not counted: their Python bodies are (their torch ops
  through this mode, their Triton kernels through the launch counter; the ops the Triton CPU
  interpreter runs inside a launch are not counted);
- every other ATen op: one launch. Known over- and under-counts against CUDA: a contiguous
  copy_/_to_copy is a cudaMemcpyAsync (a copy node, not a kernel; counted, it costs a dependent node
  the same); cuBLAS may add a split-K reduction kernel to a matmul, and the gain and bias gradients of
  LayerNorm take two kernels at some row counts (under); a tensor created from a
  host value (torch.tensor) is a host-to-device copy on CUDA and nothing on the CPU; torch.randn and
  randint are one kernel each (Philox); a foreach op off its fast path (mixed devices, dtypes or
  strides) launches one kernel per tensor (under).

The exact CUDA count is torch.profiler's (`cuda_kernels`), pending a GPU.

With two streams (fastbdm.branches) a fork's side launches run beside the launches the current stream issues
between its fork and its join: `serial()` is the total less, per fork, the smaller of the two, the launches
one after another on the update's longest path (the total with one stream).

    with LaunchCounter() as counter:
        agent.update(batch)
    counter.total(), counter.by_phase(), counter.serial()
"""
import math
from collections import Counter
from typing import Dict, Iterable, List

import torch
from torch._library.custom_ops import _maybe_get_opdef
from torch.utils._python_dispatch import TorchDispatchMode

from . import branches, nvtx_ranges

NO_KERNEL = {"detach", "alias", "_unsafe_view", "lift_fresh", "empty", "empty_strided", "empty_like",
             "new_empty", "new_empty_strided", "resize_", "set_", "_reshape_alias"}
SYNC = "_local_scalar_dense"
ZEROS_THEN_COPY = {"slice_backward", "select_backward", "index_select_backward", "diagonal_backward"}
# multi_tensor_apply's limits (ATen/native/cuda/MultiTensorApply.cuh): tensors per launch for 1..5 lists
MAX_TENSORS = (110, 64, 48, 36, 30)
MAX_BLOCKS, CHUNK = 320, 65536
# the tensor lists each multi-tensor op walks together (fused Adam: params, grads, exp_avg, exp_avg_sq)
MULTI_TENSOR_DEPTH = {"_fused_adam_": 4, "_fused_adamw_": 4}
UNPHASED = "other"


def multi_tensor_launches(numels: Iterable[int], depth: int) -> int:
    """Kernels multi_tensor_apply launches for tensors of these sizes walked `depth` lists at a time."""
    numels = [n for n in numels if n > 0]
    launches = tensors = blocks = 0
    for i, numel in enumerate(numels):
        tensors += 1
        chunks = math.ceil(numel / CHUNK)
        for chunk in range(chunks):
            blocks += 1
            last_of_tensor = chunk == chunks - 1
            if (tensors == MAX_TENSORS[depth - 1] and last_of_tensor) or blocks == MAX_BLOCKS or (
                    i == len(numels) - 1 and last_of_tensor):
                launches += 1
                blocks = 0
                tensors = 0 if last_of_tensor else 1
    return launches


def _tensor_lists(args) -> List[List[torch.Tensor]]:
    return [a for a in args if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor)]


def is_composite(func) -> bool:
    """Whether an op is CompositeImplicitAutograd: no kernel of its own, a decomposition into other ops."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd")


def aten_launches(func, args) -> int:
    """Kernels one dispatched op launches on CUDA by this module's rule (0 for views, allocations,
    syncs and ops outside aten); composite ops never reach it (LaunchCounter counts their parts)."""
    namespace, name = func._schema.name.split("::")
    if namespace != "aten" or func.is_view or name in NO_KERNEL or name == SYNC:
        return 0
    if name in ZEROS_THEN_COPY:
        return 2
    if name == "native_layer_norm_backward":  # dX, then the gain and bias gradients when asked for
        mask = args[-1]
        return int(mask[0]) + int(mask[1] or mask[2])
    lists = _tensor_lists(args)
    if name in MULTI_TENSOR_DEPTH or (name.startswith("_foreach_") and lists):
        depth = MULTI_TENSOR_DEPTH.get(name, len(lists) + (0 if name.endswith("_") else 1))
        return multi_tensor_launches([t.numel() for t in lists[0]], min(depth, len(MAX_TENSORS)))
    return 1


class LaunchCounter(TorchDispatchMode):
    """Counts, while active, the kernels the dispatched ops and Triton launches would start on CUDA,
    keyed by (phase, "aten" | "triton"); `syncs` counts host reads. `ops` keeps (phase, op name) counts
    for inspection."""

    def __init__(self):
        super().__init__()
        self.launches: Counter = Counter()
        self.ops: Counter = Counter()
        self.syncs = 0
        self.side: Counter = Counter()  # fork number -> launches issued on its side stream
        self.beside: Counter = Counter()  # fork number -> launches issued on the current stream while it was open
        self._inside_triton = 0
        self._restore = []

    @staticmethod
    def phase() -> str:
        return nvtx_ranges.ACTIVE[-1] if nvtx_ranges.ACTIVE else UNPHASED

    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._inside_triton:  # the interpreter's own tensor traffic
            return func(*args, **kwargs)
        opdef = _maybe_get_opdef(func)
        if opdef is not None:  # a torch.library.custom_op: count what its Python body runs
            with self:
                return opdef._init_fn(*args, **kwargs)
        if func._schema.name == "aten::" + SYNC:
            self.syncs += 1
        if is_composite(func):  # below autograd (a backward, a custom op's body): count its parts
            with self:
                return func.decompose(*args, **kwargs)
        count = aten_launches(func, args)
        if count:
            self._count("aten", func._schema.name, count)
        return func(*args, **kwargs)

    def _count(self, kind: str, name: str, count: int) -> None:
        key = self.phase()
        self.launches[key, kind] += count
        self.ops[key, name] += count
        if branches.SIDE:
            self.side[branches.SIDE[-1].number] += count
        else:
            for fork in branches.OPEN:
                self.beside[fork.number] += count

    def _triton_run(self, run):
        counter = self

        def counted(kernel, *args, **kwargs):
            if kwargs.get("warmup"):
                return run(kernel, *args, **kwargs)
            counter._count("triton", "triton::" + getattr(kernel.fn, "__name__", "kernel"), 1)
            counter._inside_triton += 1
            try:
                return run(kernel, *args, **kwargs)
            finally:
                counter._inside_triton -= 1

        return counted

    def __enter__(self):
        if not self._restore:  # the outermost entry patches Triton's launchers (re-entry from custom ops)
            branches.OPEN.clear()  # forks an exception left unjoined (a failed capture) would skew serial()
            for cls in _triton_kernel_classes():
                self._restore.append((cls, cls.run))
                cls.run = self._triton_run(cls.run)
        self._depth = getattr(self, "_depth", 0) + 1
        return super().__enter__()

    def __exit__(self, *exc):
        self._depth -= 1
        if not self._depth:
            for cls, run in self._restore:
                cls.run = run
            self._restore = []
        return super().__exit__(*exc)

    def total(self) -> int:
        return sum(self.launches.values())

    def serial(self) -> int:
        """The launches on the longest path with two streams: the total less each fork's overlap."""
        return self.total() - sum(min(n, self.beside[fork]) for fork, n in self.side.items())

    def by_phase(self) -> Dict[str, Dict[str, int]]:
        """{phase: {"aten": n, "triton": n, "total": n}} in the order the phases first launched."""
        table: Dict[str, Dict[str, int]] = {}
        for (name, kind), n in self.launches.items():
            row = table.setdefault(name, {"aten": 0, "triton": 0, "total": 0})
            row[kind] += n
            row["total"] += n
        return table


def _triton_kernel_classes():
    """The classes whose `run` launches a @triton.jit kernel: the compiled one and the interpreter's."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction
    except ImportError:  # no Triton: only ATen ops to count
        return []
    return [JITFunction, InterpretedFunction]


def cuda_kernels(fn) -> Dict[str, int]:
    """fn() under torch.profiler on CUDA (after a synchronisation): {"kernels": device kernels,
    "memcpy": copies, "memset": sets}, the exact count the dispatch rule estimates."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    names = [e.name.lower() for e in events]
    memcpy, memset = sum("memcpy" in n for n in names), sum("memset" in n for n in names)
    return {"kernels": len(events) - memcpy - memset, "memcpy": memcpy, "memset": memset}
