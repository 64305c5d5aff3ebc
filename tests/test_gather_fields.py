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


def test_widths_that_do_not_cover_the_rows_are_refused():
    with pytest.raises(ValueError, match="sum to 49"):
        gather_fields(torch.randn(4, 50), torch.zeros(1, 1, 2, dtype=torch.int64), WIDTHS)
