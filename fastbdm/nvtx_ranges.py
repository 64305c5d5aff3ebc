"""Named ranges around the update's phases, for Nsight Systems / Nsight Compute and torch.profiler.

`with phase("critic"):` pushes an NVTX range in the "fastbdm" domain (the `nvtx` package: about a
microsecond while no NVIDIA profiler is attached) and, only while a torch.profiler session is
recording, a record_function range, so the phase also shows in Chrome traces. Without the `nvtx`
package the NVTX part is skipped. ACTIVE is the stack of open phases' names (innermost last), which
fastbdm.launch_count reads to attribute launches.
"""
import torch

try:
    import nvtx
except ImportError:  # optional at run time
    nvtx = None

DOMAIN = "fastbdm"
ACTIVE = []


class phase:
    """Context manager marking one phase of the update (nested phases nest)."""

    __slots__ = ("name", "_record")

    def __init__(self, name: str):
        self.name, self._record = name, None

    def __enter__(self):
        if torch.compiler.is_compiling():  # a traced region: no NVTX call (dynamo cannot trace it)
            return self
        ACTIVE.append(self.name)
        if nvtx is not None:
            nvtx.push_range(self.name, domain=DOMAIN)
        if torch.autograd._profiler_enabled():
            self._record = torch.profiler.record_function(self.name)
            self._record.__enter__()
        return self

    def __exit__(self, *exc):
        if torch.compiler.is_compiling():
            return False
        if self._record is not None:
            self._record.__exit__(*exc)
            self._record = None
        if nvtx is not None:
            nvtx.pop_range(domain=DOMAIN)
        ACTIVE.pop()
        return False
