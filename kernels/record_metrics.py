"""One update's or one pair's training metrics recorded in one launch (fastbdm.monitor.UpdateMonitor.record on the
triton backend): each seed's running sums of the finite values, the counts of the records, the first update
where a term was NaN or inf, and the update clock, in one program per seed. The torch path of the monitor does
the same in seven kernels.

State (S seeds; fastbdm.monitor's layout): totals (2, S, k) (sums, counts), first_update (S, k) int64, clock
(S, MAX_UPDATES) int64 (column c holds step - (MAX_UPDATES - 1 - c)). The values: one pointer per (name,
update) slot of the record, name-major ([name 0's update 0, update 1, name 1's ...]), each a 0-d tensor or
(S,) with its seed stride; a slot an update lacks (the first of a pair has no actor terms) is a placeholder
that PRESENT marks absent: it adds neither a value nor a count.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _record_metrics_kernel(value_ptrs, value_strides, sums_ptr, counts_ptr, first_ptr, clock_ptr, k,
                           NAMES: tl.constexpr, PRESENT: tl.constexpr, UPDATES: tl.constexpr,
                           MAX_UPDATES: tl.constexpr):
    """Seed program_id(0): for each name j (index NAMES[j] of the k) the slots j UPDATES .. j UPDATES + UPDATES - 1
    of value_ptrs; the clock advanced by UPDATES, update u of the record numbered step + 1 + u (old step)."""
    sid = tl.program_id(0).to(tl.int64)
    step = tl.load(clock_ptr + sid * MAX_UPDATES + MAX_UPDATES - 1)
    for j in tl.static_range(len(NAMES)):
        total = tl.zeros([], dtype=tl.float32)
        count = tl.zeros([], dtype=tl.float32)
        first = tl.full([], 9223372036854775807, tl.int64)
        for u in tl.static_range(UPDATES):
            if PRESENT[j * UPDATES + u]:
                value = tl.load(value_ptrs[j * UPDATES + u] + sid * value_strides[j * UPDATES + u]).to(tl.float32)
                finite = tl.abs(value) < float("inf")  # False for NaN too
                total += tl.where(finite, value, 0.0)
                count += 1.0
                first = tl.where(finite, first, tl.minimum(first, step + 1 + u))
        at = sid * k + NAMES[j]
        tl.store(sums_ptr + at, tl.load(sums_ptr + at) + total)
        tl.store(counts_ptr + at, tl.load(counts_ptr + at) + count)
        tl.store(first_ptr + at, tl.minimum(tl.load(first_ptr + at), first))
    for c in tl.static_range(MAX_UPDATES):
        tl.store(clock_ptr + sid * MAX_UPDATES + c, tl.load(clock_ptr + sid * MAX_UPDATES + c) + UPDATES)


def record_metrics(values, present, names, totals, first_update, clock, updates):
    """values: the record's slots name-major (len(names) x updates tensors, 0-d or (S,); a placeholder where
    present is False), names: each name's index into the k columns, totals (2, S, k) fp32, first_update (S, k)
    int64, clock (S, MAX_UPDATES) int64, all contiguous and updated in place (one launch, S programs)."""
    S, max_updates = clock.shape
    k = totals.shape[-1]
    strides = tuple(v.stride(0) if v.dim() else 0 for v in values)
    _record_metrics_kernel[(S,)](
        tuple(values), strides, totals[0], totals[1], first_update, clock, k,
        NAMES=tuple(names), PRESENT=tuple(bool(p) for p in present), UPDATES=updates, MAX_UPDATES=max_updates,
        num_warps=1)
