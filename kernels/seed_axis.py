"""The seed axis of the kernels: S independent learners (seeds) stacked on a leading dimension.

Stacked layout: rows (S, R, width), per-row vectors (S, R), weight matrices (S, out, in), weight
vectors (S, H); seed k's rows meet only seed k's weights. The grid is (row blocks, S): a program reads
its seed's weights and rows at the offset seed * (elements per seed). A 2-D call, rows (R, width) with
unstacked weights, is the single-seed case S = 1: `add_seed_axis` gives every tensor a leading axis of
1, the one stacked code path runs, and the wrapper returns its results with the axis dropped.
"""


def add_seed_axis(*tensors):
    """Each tensor with a leading seed axis of size 1 (a view); None stays None."""
    return tuple(None if x is None else x.unsqueeze(0) for x in tensors)


def check_stacked(seeds, weights):
    """Every weight stacked on a leading seed axis of size `seeds`, else a one-line ValueError."""
    for i, w in enumerate(weights):
        if w.dim() < 2 or w.shape[0] != seeds:
            raise ValueError(f"rows stacked for {seeds} seeds need weights stacked (S, ...) with S = {seeds}; "
                             f"weight {i} has shape {tuple(w.shape)}: stack each seed's weights with torch.stack")


def unit_columns(x):
    """x (S, R, D) as it is when its columns have unit stride (a column view of a batch's row matrix: a
    kernel reads it with its seed and row strides, x.stride(0), x.stride(1)), else a contiguous copy."""
    return x if x.stride(-1) == 1 else x.contiguous()
