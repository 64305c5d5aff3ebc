"""An update's random numbers in two flat draws (TD3SBC.draw_noise: one randn, one randint, the UpdateNoise
fields views of them) and consecutive updates' draws at once (fastbdm.update_draws): the fields' shapes,
independence and distribution, and each seed's numbers alike alone, in a batch of seeds and against
explicit draws from its generator; a pair's draws laid out so that its frozen networks read
them as single views."""
import pytest
import torch
from scipy.stats import chisquare

from fastbdm import TD3SBC, TD3SBCConfig
from fastbdm.compat import CompatFlags
from fastbdm.launch_count import LaunchCounter
from fastbdm.seed_batch import SeedBatch
from fastbdm.update_draws import draw_high, draw_updates

from test_seed_batch import B, make_agent, make_buffer

N, M, STEPS = 6, 3, 4


def agent(algo="td3sbc", **fields):
    return TD3SBC(N, M, config=TD3SBCConfig.for_algo(algo, actor_hidden=(8,), critic_hidden=(8,), denoiser_hidden=(8,),
                                                     steps=STEPS, backend="torch", **fields))


@pytest.mark.parametrize("fields, expected", [
    ({}, {"policy": (B, M), "bdm_t": (B,), "bdm_eps": (B, N), "bdm_z": (B, N), "data_t": (B,), "data_eps": (B, N),
          "sbc_normal": (B, N), "sbc_t": (2 * B,), "sbc_eps": (2 * B, N), "sbc_z": (2 * B, N)}),
    ({"sampler": "ddpm"}, {"bdm_chain": (STEPS, B, N), "sbc_chain": (STEPS, 2 * B, N)}),
])
def test_one_update_draws_one_randn_and_one_randint_whose_views_are_its_fields(fields, expected):
    a = agent(**fields)
    with LaunchCounter() as counter:
        noise = a.draw_noise(B, "cpu", actor_step=True, generator=torch.Generator().manual_seed(0))
    assert counter.ops == {("other", "aten::randn"): 1, ("other", "aten::randint"): 1}
    present = {k: tuple(v.shape) for k, v in noise._asdict().items() if v is not None}
    assert {k: present[k] for k in expected} == expected
    normals = [v for k, v in noise._asdict().items() if v is not None and v.is_floating_point()]
    levels = [v for k, v in noise._asdict().items() if v is not None and not v.is_floating_point()]
    # views of one buffer each, side by side: no field overlaps another, together they fill the buffer
    for views, size in zip((normals, levels), a.noise_sizes(B)):
        base = views[0]._base if views[0]._base is not None else views[0]
        assert all(v._base is base for v in views) and base.numel() == size == sum(v.numel() for v in views)
        starts = sorted((v.storage_offset(), v.numel()) for v in views)
        assert all(s + n == t for (s, n), (t, _) in zip(starts, starts[1:]))
    # standard normals, independent across fields; levels uniform over [0, STEPS)
    many = a.draw_noise(4096, "cpu", generator=torch.Generator().manual_seed(1))
    flat = torch.cat([v.flatten() for v in many._asdict().values() if v is not None and v.is_floating_point()])
    assert abs(flat.mean()) < 0.01 and abs(flat.std() - 1) < 0.01
    corr = torch.corrcoef(torch.stack([many.bdm_eps.flatten(), many.bdm_z.flatten(), many.data_eps.flatten(),
                                       many.sbc_normal.flatten()]))
    assert (corr - torch.eye(4)).abs().max() < 0.02
    t = torch.cat([many.bdm_t, many.data_t, many.sbc_t])
    assert t.min() == 0 and t.max() == STEPS - 1 and (torch.bincount(t) / len(t) - 1 / STEPS).abs().max() < 0.02
    assert not torch.equal(many.bdm_t, many.data_t)


def test_compat_flags_and_baselines_drop_their_draws():
    shared = agent(compat=CompatFlags(shared_noise=True, standardised_sbc_half=True)).draw_noise(B, "cpu")
    assert shared.bdm_z is shared.bdm_eps and shared.sbc_z is shared.sbc_eps and shared.sbc_normal is None
    critic_only = agent().draw_noise(B, "cpu", actor_step=False)
    assert critic_only.sbc_t is None and critic_only.sbc_eps is None and critic_only.sbc_normal is None
    baseline = agent("rebrac")
    with LaunchCounter() as counter:
        rebrac = baseline.draw_noise(B, "cpu")
    assert counter.ops == {("other", "aten::randn"): 1}  # the policy noise; no levels
    assert rebrac.policy.shape == (B, M) and all(v is None for v in rebrac[1:])


def explicit_draws(template, buffer, actor_steps, generator):
    """A seed's updates' batches and UpdateNoise drawn explicitly from its generator: one randint over
    [0, N x steps) (N transitions) of the batch rows' draws and the levels' draws, then one randn of the
    normals; a row is its draw mod N, a level its draw mod the steps."""
    normal_count, level_count = template.noise_sizes(B, actor_steps)
    assert draw_high(template, buffer) == len(buffer) * STEPS
    draws = torch.randint(0, len(buffer) * STEPS, (len(actor_steps) * B + level_count,), generator=generator)
    normals = torch.randn(normal_count, generator=generator)
    indices, levels = draws.split([len(actor_steps) * B, level_count])
    batches = [buffer.fields(buffer.rows[part % len(buffer)]) for part in indices.split(B)]
    return batches, template.noise_views(normals, levels % STEPS, B, actor_steps)


@pytest.mark.parametrize("algo", ["td3sbc", "rebrac"])
def test_a_seeds_draws_are_alike_alone_in_a_batch_and_from_its_generator(algo):
    """Seed 1 of seeds 0, 1, 2 (SeedBatch, rows of (S, ...) tensors) draws what seed 1 alone draws (no seed
    axis: UpdateRunner's draws), and that is, from its generator, explicit_draws: for a single update and for
    a pair."""
    buffer, template = make_buffer(), make_agent(algo, 0)
    generators = lambda: [torch.Generator().manual_seed(10 + seed) for seed in range(3)]  # noqa: E731
    for actor_steps in ([True], [False, True]):
        three = draw_updates(template, buffer, B, actor_steps, generators())
        alone = draw_updates(template, buffer, B, actor_steps, [generators()[1]], seed_axis=False)
        batches, noises = explicit_draws(template, buffer, actor_steps, generators()[1])
        for u in range(len(actor_steps)):
            for got3, got1, want in zip((*three[0][u], *three[1][u]), (*alone[0][u], *alone[1][u]),
                                        (*batches[u], *noises[u])):
                assert (got3 is None) == (got1 is None) == (want is None)
                if want is not None:
                    assert torch.equal(got3[1], want) and torch.equal(got1, want)
            assert not torch.equal(three[0][u].obs[0], batches[u].obs)  # seed 0 draws from its own stream
            assert not torch.equal(three[1][u].policy[0], noises[u].policy)


def test_row_and_level_draws_are_uniform():
    """The batch rows (draw mod the dataset size) and levels (draw mod steps) of many updates: uniform."""
    buffer, template = make_buffer(), make_agent("td3sbc", 0)
    batches, noises = draw_updates(template, buffer, B, [False, True] * 200, [torch.Generator().manual_seed(3)],
                                   seed_axis=False)
    t = torch.cat([torch.cat([n.bdm_t, n.data_t] + ([] if n.sbc_t is None else [n.sbc_t])) for n in noises])
    rows = torch.cat([(b.obs[:, :1] == buffer.obs[:, 0]).float().argmax(-1) for b in batches])  # obs are distinct
    for draws, size in ((t, STEPS), (rows, len(buffer))):
        counts = torch.bincount(draws, minlength=size)
        assert len(counts) == size and chisquare(counts.numpy()).pvalue > 1e-3


def test_seed_batch_draws_without_stacks():
    """SeedBatch.draw: seed k's batch and noise are explicit_draws from seed k's generator; S randint and S randn,
    then one gather (on the torch backend an index_select, with the rows' and the levels' remainders)."""
    buffer, seeds = make_buffer(), 3
    batch = SeedBatch([make_agent("td3sbc", seed) for seed in range(seeds)],
                      [torch.Generator().manual_seed(10 + seed) for seed in range(seeds)])
    with LaunchCounter() as counter:
        batches, noise = batch.draw(buffer, B, actor_step=True)
    assert counter.ops == {("sample", "aten::randint"): seeds, ("sample", "aten::index_select"): 1,
                           ("sample", "aten::remainder"): 1,
                           ("sample", "aten::remainder_"): 1, ("noise", "aten::normal_"): seeds}
    for k in range(seeds):
        (want_batch,), (want,) = explicit_draws(batch.template, buffer, [True], torch.Generator().manual_seed(10 + k))
        for got, field in zip((*batches, *noise), (*want_batch, *want)):
            assert (got is None) == (field is None) and (field is None or torch.equal(got[k], field))


def test_seed_batch_learns_alike_from_the_strided_views_and_from_contiguous_copies():
    """A SeedBatch pair on the Triton kernels (interpreter) reads the seeds' noise as strided views of the
    (S, ...) draws (no field is contiguous at S = 3; the batches are gathered dense, TransitionBuffer.gather):
    bit for bit what it learns from contiguous copies."""
    buffer, learned = make_buffer(), []
    for contiguous in (False, True):
        batch = SeedBatch([make_agent("td3sbc", seed, backend="triton") for seed in range(3)],
                          [torch.Generator().manual_seed(10 + seed) for seed in range(3)])
        batches, noises = draw_updates(batch.template, buffer, B, [False, True], batch.generators)
        assert not any(f.is_contiguous() for f in noises[1] if f is not None and f.dim() > 1)
        assert all(f.is_contiguous() for b in batches for f in b)
        if contiguous:
            batches = [type(b)(*(f.contiguous() for f in b)) for b in batches]
            noises = [type(n)(*(None if f is None else f.contiguous() for f in n)) for n in noises]
        metrics = batch.update_pair(batches, noises)
        learned.append((metrics, {name: p.detach().clone() for name, p in batch.parameters.items()}))
    (metrics, params), (want_metrics, want_params) = learned
    assert all(torch.equal(params[name], want_params[name]) for name in want_params)
    assert all(torch.equal(m[k], w[k]) for m, w in zip(metrics, want_metrics) for k in w)
