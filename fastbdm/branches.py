"""Independent work of an update on two CUDA streams (issue 14): a side branch forked from the current
stream and joined back to it with events, so that a CUDA graph captured over the update holds the two as
parallel branches of its DAG (docs/PERFORMANCE.md#two-streams-issue-14).

    fork = agent.branches.fork(inputs)        # the side waits for everything issued so far
    with fork.side():
        ...                                   # issued on the side stream
    ...                                       # issued on the current stream, beside it
    fork.join(outputs)                        # the current stream waits for the side

With one stream, or off CUDA, the side work runs on the current stream where it is issued: the host issues
the same ops in the same order either way, so the learning does not depend on the setting.

Tensors that cross: every tensor handed to the side is marked as used on the side stream and every one
handed back as used on the current stream (Tensor.record_stream), so that the caching allocator gives
neither's memory to new work on the stream it was allocated on while the other stream may still read it
(during graph capture such blocks are not reused before the capture ends).

OPEN (the forks of two-stream Branches not yet joined) and SIDE (the fork whose side work is being issued)
let fastbdm.launch_count count the launches on the update's serial path: a fork's side launches run beside
the current stream's launches between its fork and its join. They are tracked whenever two streams are
asked for, a CPU included, so that the CPU counts what CUDA would run.
"""
import contextlib
import itertools
from typing import Iterable, List, Optional

import torch

OPEN: List["Fork"] = []
SIDE: List["Fork"] = []
STREAMS = (1, 2)
_numbers = itertools.count()


def _tensors(values) -> Iterable[torch.Tensor]:
    """The tensors in nested lists, tuples (NamedTuples included) and dict values; None skipped."""
    if isinstance(values, torch.Tensor):
        yield values
    elif isinstance(values, dict):
        for v in values.values():
            yield from _tensors(v)
    elif isinstance(values, (list, tuple)):
        for v in values:
            yield from _tensors(v)


def _record(values, stream: torch.cuda.Stream) -> None:
    for t in _tensors(values):
        if t.is_cuda:
            t.record_stream(stream)


class Fork:
    """One side branch: its stream (None: inline on the current stream) and the stream it joins; parallel:
    its side runs beside the current stream's work (two streams asked for), number: its tally's key."""

    def __init__(self, stream: Optional[torch.cuda.Stream], parallel: bool, inputs=()):
        self.stream, self.parallel, self.number = stream, parallel, next(_numbers)
        self.main = None
        if stream is not None:
            self.main = torch.cuda.current_stream(stream.device)
            stream.wait_stream(self.main)
            _record(inputs, stream)
        if parallel:
            OPEN.append(self)

    @contextlib.contextmanager
    def side(self):
        """Work issued inside runs on the side stream (inline without one)."""
        SIDE.append(self)
        try:
            with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
                yield
        finally:
            SIDE.pop()

    def join(self, outputs=()):
        """The current stream waits for the side's work; outputs (what the side hands back) are returned."""
        if self.stream is not None:
            self.main.wait_stream(self.stream)
            _record(outputs, self.main)
        if self in OPEN:
            OPEN.remove(self)
        return outputs


class Branches:
    """An agent's side stream: streams 1 (everything on the current stream) or 2 (forks on a side stream,
    created on a fork's first CUDA input)."""

    def __init__(self, streams: int = 1):
        if streams not in STREAMS:
            raise ValueError(f"streams={streams}: choose 1 (one stream) or 2 (the update's independent work "
                             "on a side stream)")
        self.streams = streams
        self._stream: Optional[torch.cuda.Stream] = None

    def fork(self, like: torch.Tensor, inputs=(), parallel: bool = True) -> Fork:
        """A side branch that starts after everything issued so far on the current stream of `like`'s device;
        inputs: the tensors the side reads. parallel=False (nothing to run beside it): inline."""
        if self.streams == 1 or not parallel:
            return Fork(None, parallel=False)
        if like.is_cuda and self._stream is None:
            self._stream = torch.cuda.Stream(like.device)
        return Fork(self._stream if like.is_cuda else None, parallel=True, inputs=inputs)
