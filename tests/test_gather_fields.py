"""kernels/gather_fields.py: the sampled rows' fields gathered into contiguous update-major blocks in one launch,
against torch indexing (an exact copy: equality)."""
import pytest
import torch

from fastbdm.kernels.gather_fields import gather_fields
from fastbdm.launch_count import LaunchCounter

WIDTHS = (17, 6, 1, 17, 6, 1, 1)  # hopper-like obs, actions, reward, next obs, next actions, done, valid


@pytest.mark.parametrize("seeds,updates,rows", [(1, 1, 37), (3, 2, 37), (2, 2, 64), (1, 2, 5)])
def test_each_field_is_its_rows_update_major_and_contiguous(seeds, updates, rows):
    data = torch.randn(53, sum(WIDTHS))
    idx = torch.randint(0, 53, (seeds, updates, rows))
    with LaunchCounter() as counter:
        flat = gather_fields(data, idx, WIDTHS, block_i=16)
    assert counter.total() == 1
    blocks = flat.split([seeds * updates * rows * d for d in WIDTHS])
    columns = data[idx].split(WIDTHS, dim=-1)  # (S, U, B, d) each
    for block, column, d in zip(blocks, columns, WIDTHS):
        assert torch.equal(block.view(updates, seeds, rows, d), column.transpose(0, 1))


@pytest.mark.parametrize("seeds,levels", [(1, 0), (1, 70), (3, 37)])
def test_raw_draws_gather_their_row_mod_n_and_levels_become_draws_mod_steps_in_the_same_launch(seeds, levels):
    """Draws over [0, N x steps) (fastbdm.update_draws; here wider): row = draw mod N; the level draws, a strided (S, L) view of
    the same buffer after the rows' draws, replaced in place by draw mod steps; one launch for both."""
    data, steps = torch.randn(53, sum(WIDTHS)), 10
    draws = torch.randint(0, 2 ** 62, (seeds, 2 * 37 + levels))
    want_levels = draws[:, 2 * 37:] % steps
    idx = draws[:, :2 * 37].view(seeds, 2, 37)
    with LaunchCounter() as counter:
        flat = gather_fields(data, idx, WIDTHS, draws[:, 2 * 37:], steps, block_i=16)
    assert counter.total() == 1
    assert torch.equal(draws[:, 2 * 37:], want_levels)
    assert torch.equal(draws[:, :2 * 37].view(seeds, 2, 37), idx)  # the row draws are read, not changed
    obs = flat[:seeds * 2 * 37 * WIDTHS[0]].view(2, seeds, 37, WIDTHS[0])
    assert torch.equal(obs, data[idx % 53][..., :WIDTHS[0]].transpose(0, 1))


def test_widths_that_do_not_cover_the_rows_are_refused():
    with pytest.raises(ValueError, match="sum to 49"):
        gather_fields(torch.randn(4, 50), torch.zeros(1, 1, 2, dtype=torch.int64), WIDTHS)
