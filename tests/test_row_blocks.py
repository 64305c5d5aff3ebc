"""fastbdm.row_blocks.concat_rows: a view of row blocks that lie back to back (no launch), torch.cat's copy
otherwise; and the pair's draws (fastbdm.update_draws at one seed, the triton backend's dense gather) laid out
so that TD3SBC.frozen_outputs reads the updates' next_obs, policy normals and chain start noise as views
(and the chain its s and a in two row segments): a pair launches no concatenation, and learns bit for bit
alike from the views and from separate copies (torch.cat's fallback)."""
import pytest
import torch
from torch.func import vmap

from fastbdm.compat import CompatFlags
from fastbdm.launch_count import LaunchCounter
from fastbdm.row_blocks import concat_rows
from fastbdm.update_draws import draw_updates

from test_seed_batch import B, make_agent, make_buffer


def test_adjacent_blocks_are_one_view_without_a_launch():
    flat = torch.randn(40)
    parts = list(flat[:36].view(6, 6).split([1, 2, 3]))  # rows 0, 1-2, 3-5 of a (6, 6) block
    with LaunchCounter() as counter:
        merged = concat_rows(parts)
    assert counter.total() == 0 and merged.data_ptr() == flat.data_ptr()
    assert torch.equal(merged, torch.cat(parts))
    steps = flat[:36].view(2, 6, 3)  # along a middle dim: (2, 6, 3) -> rows 0-1 and 2-5 of dim 1
    cols = [steps[:, :2], steps[:, 2:]]
    assert torch.equal(concat_rows(cols), torch.cat(cols, -2)) and concat_rows(cols).data_ptr() == flat.data_ptr()


@pytest.mark.parametrize("case", ["separate", "reversed", "gap", "strides", "dtype"])
def test_blocks_that_are_not_back_to_back_are_concatenated(case):
    flat = torch.randn(40)
    a, b = flat[:12].view(4, 3), flat[12:24].view(4, 3)
    parts = {"separate": [a, torch.randn(4, 3)], "reversed": [b, a], "gap": [a, flat[15:27].view(4, 3)],
             "strides": [a, flat[12:24].view(3, 4).t()[:4, :3]], "dtype": [a, b.double()]}[case]
    with LaunchCounter() as counter:
        merged = concat_rows(parts)
    assert counter.total() == 1 and merged.data_ptr() != flat.data_ptr()
    assert torch.equal(merged, torch.cat(parts))


def test_under_vmap_it_concatenates_each_seeds_rows():
    flat = torch.randn(3, 20)  # seed k's row k: its two blocks back to back inside the row
    got = vmap(lambda x: concat_rows([x[:8].view(4, 2), x[8:16].view(4, 2)]))(flat)
    assert torch.equal(got, flat[:, :16].view(3, 8, 2))


@pytest.mark.parametrize("compat", [CompatFlags(), CompatFlags(shared_noise=True, standardised_sbc_half=True)])
def test_a_pairs_draws_are_adjacent_where_its_frozen_networks_read_them(compat):
    """One seed (UpdateRunner's draws), the triton backend: both batches' next_obs, both policy normals, and
    the chain's start noise (update 1's bdm_z, update 2's, the SBC's sbc_z) are each one view."""
    agent = make_agent("td3sbc", 0, backend="triton", compat=compat)
    (b1, b2), (n1, n2) = draw_updates(agent, make_buffer(), B, [False, True], [torch.Generator().manual_seed(3)],
                                      seed_axis=False)
    for parts in ([b1.next_obs, b2.next_obs], [n1.policy, n2.policy], [n1.bdm_z, n2.bdm_z, n2.sbc_z]):
        with LaunchCounter() as counter:
            merged = concat_rows(parts)
        assert counter.total() == 0 and merged.data_ptr() == parts[0].data_ptr()
        assert torch.equal(merged, torch.cat(parts))


def test_a_pair_on_the_views_launches_no_cat_and_learns_as_on_separate_copies():
    """update_pair on the draws as drawn (views: frozen_outputs concatenates nothing) and on per-field copies
    (not adjacent: torch.cat) learns bit for bit the same."""
    learned = []
    for copies in (False, True):
        agent = make_agent("td3sbc", 0, backend="triton")
        batches, noises = draw_updates(agent, make_buffer(), B, [False, True], [torch.Generator().manual_seed(3)],
                                       seed_axis=False)
        if copies:
            batches = [type(b)(*(f.clone() for f in b)) for b in batches]
            noises = [type(n)(*(None if f is None else f.clone() for f in n)) for n in noises]
        with LaunchCounter() as counter:
            metrics = agent.update_pair(batches, noises)
        cats = {phase: count for (phase, op), count in counter.ops.items() if op == "aten::cat"}
        # the chain's s and a in segments (no cat); its start noise: a view of the draws, else one cat
        assert cats == ({"critic": 2, "chain": 1} if copies else {})
        learned.append((metrics, {k: v.detach().clone() for k, v in agent.state_dict().items()}))
    (metrics, params), (want_metrics, want_params) = learned
    assert all(torch.equal(params[k], want_params[k]) for k in want_params)
    assert all(torch.equal(m[k], w[k]) for m, w in zip(metrics, want_metrics) for k in w)
