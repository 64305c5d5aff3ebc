"""fastbdm.replay.TransitionBuffer: one (N, width) matrix of all fields, sampled in one gather."""
from types import SimpleNamespace

import pytest
import torch

from fastbdm.networks import normalize_states
from fastbdm.replay import TransitionBuffer

N, B, ROWS = 4, 9, 30


def transitions(act_dim):
    obs = torch.randn(ROWS, N)
    return SimpleNamespace(observations=obs, next_observations=torch.randn(ROWS, N),
                           actions=torch.rand(ROWS, act_dim), next_actions=torch.rand(ROWS, act_dim),
                           rewards=torch.randn(ROWS), terminals=(torch.rand(ROWS) < 0.3).float(),
                           valid=(torch.rand(ROWS) < 0.7).float(), obs_mean=obs.mean(0), obs_std=obs.std(0))


@pytest.mark.parametrize("act_dim", [1, 3])  # one action column: a (B, 1) matrix, not a (B,) vector
def test_sample_is_each_fields_rows_at_the_indices_the_generator_draws(act_dim):
    """The batch equals, bit for bit, gathering every field at torch.randint(0, N, (B,)) of the same
    generator (the per-field sampling the buffer replaced), and leaves the generator where that draw does:
    a run's batches, and every seed's, are the ones they were."""
    data = transitions(act_dim)
    buffer = TransitionBuffer(data, "cpu")
    drawn, reference = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(3):
        batch = buffer.sample(B, generator=drawn)
        idx = torch.randint(0, ROWS, (B,), generator=reference)
        mean, std = data.obs_mean, data.obs_std
        expected = (normalize_states(data.observations, mean, std)[idx], data.actions[idx], data.rewards[idx],
                    normalize_states(data.next_observations, mean, std)[idx], data.next_actions[idx],
                    data.terminals[idx], data.valid[idx])
        for name, got, want in zip(batch._fields, batch, expected):
            assert got.shape == want.shape and got.dtype == want.dtype, name
            assert torch.equal(got, want), name
    assert torch.equal(drawn.get_state(), reference.get_state())


def test_sampled_fields_are_views_of_one_gathered_block():
    """One gather (index_select) of the buffer's rows per sample: every field reads the same storage."""
    buffer = TransitionBuffer(transitions(2), "cpu")
    batch = buffer.sample(B, generator=torch.Generator().manual_seed(0))
    storages = {field.untyped_storage().data_ptr() for field in batch}
    assert len(storages) == 1
    assert batch.obs.untyped_storage().nbytes() == B * buffer.rows.shape[1] * 4


@pytest.mark.parametrize("act_dim", [1, 3])
def test_gather_dense_fields_equal_the_column_views_and_are_contiguous(act_dim):
    """TransitionBuffer.gather of S seeds' U updates: each update's Batch from gather_fields (dense, the triton
    backend's) equals the index_select's column views field for field, and every field is contiguous."""
    buffer = TransitionBuffer(transitions(act_dim), "cpu")
    indices = torch.randint(0, ROWS, (3, 2, B))
    views, dense = buffer.gather(indices), buffer.gather(indices, dense=True)
    assert len(views) == len(dense) == 2
    for view_batch, dense_batch in zip(views, dense):
        for name, view, field in zip(view_batch._fields, view_batch, dense_batch):
            assert field.is_contiguous() and torch.equal(field, view), name
    assert not views[0].obs.is_contiguous()  # the views are strided: the dense gather is what saves the copies
