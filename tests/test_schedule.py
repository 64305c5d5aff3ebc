import pytest
import torch

from fastbdm.schedule import DiffusionSchedule, network_target, split_prediction

# Spec §2 table for T = 10, printed to 5 decimals (trailing zeros dropped): each value is known to
# +-5e-6. The code computes in float64 and stores float32 (6e-8 relative more).
SPEC_BETAS = [0.02791, 0.07549, 0.1244, 0.17719, 0.23728, 0.30988, 0.404, 0.537, 0.74383, 0.999]
SPEC_ALPHABAR = [0.97209, 0.89871, 0.78691, 0.64748, 0.49384, 0.34081, 0.20312, 0.09405, 0.02409, 0.00002]
PRINTED = 5e-6


def test_schedule_matches_spec_table():
    sch = DiffusionSchedule(10)
    torch.testing.assert_close(sch.betas, torch.tensor(SPEC_BETAS), atol=PRINTED + 1e-6, rtol=0)
    torch.testing.assert_close(sch.alphas_cumprod, torch.tensor(SPEC_ALPHABAR), atol=PRINTED + 1e-6, rtol=0)
    assert sch.alphas_cumprod_prev[0] == 1.0
    torch.testing.assert_close(sch.alphas_cumprod_prev[1:], torch.tensor(SPEC_ALPHABAR[:-1]), atol=PRINTED + 1e-6,
                               rtol=0)


def spec_coefficients(beta, ab):
    """The spec's formulas (§2 DDIM/DDPM, §4 SBC weights) on (steps,) beta and abar."""
    ab_prev = torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
    alpha = 1 - beta
    return {
        "sqrt_ab": ab.sqrt(), "sqrt_one_minus_ab": (1 - ab).sqrt(),
        "sqrt_ab_prev": ab_prev.sqrt(), "sqrt_one_minus_ab_prev": (1 - ab_prev).sqrt(),
        "coef_x0": ab_prev.sqrt() * beta / (1 - ab),
        "coef_xt": alpha.sqrt() * (1 - ab_prev) / (1 - ab),
        "posterior_std": (beta * (1 - ab_prev) / (1 - ab)).sqrt(),
        "eta": beta.square() * alpha * (1 - ab),
    }


@pytest.mark.parametrize("name", ["sqrt_ab", "sqrt_one_minus_ab", "sqrt_ab_prev", "sqrt_one_minus_ab_prev", "coef_x0",
                                  "coef_xt", "posterior_std", "eta"])
def test_derived_buffers_match_the_spec_formulas_on_the_printed_table(name):
    """Each derived buffer against the spec's formula evaluated on the spec's printed table (not on the
    code's own betas), within what the printing leaves open: twice the first-order bound
    sum_i |d coef / d x_i| * 5e-6 over the table entries x_i (float64 autograd; the factor 2 covers the
    curvature of sqrt(abar) at abar = 0.00002), plus float32 storage."""
    table = torch.tensor([SPEC_BETAS, SPEC_ALPHABAR], dtype=torch.float64, requires_grad=True)
    want = spec_coefficients(*table)[name]
    # nan_to_num: posterior_std[0] = sqrt(beta_0 (1 - 1) / (1 - abar_0)) = 0 whatever the table, but
    # sqrt's backward at 0 puts 0/0 into every level's gradient
    sensitivity = torch.stack([torch.autograd.grad(w, table, retain_graph=True)[0].nan_to_num(0.0).abs().sum()
                               for w in want])
    tolerance = 2 * sensitivity * PRINTED + 1e-7 * want.detach().abs() + 1e-7
    got = getattr(DiffusionSchedule(10), name).double()
    excess = (got - want.detach()).abs() - tolerance
    assert (excess <= 0).all(), f"{name}: off the spec by more than the printing allows at levels {excess > 0}"


def test_time_input_and_forward_noising():
    sch = DiffusionSchedule(10)
    t = torch.tensor([0, 5, 9])
    torch.testing.assert_close(sch.time_input(t), torch.tensor([[-1.0], [0.0], [0.8]]))
    x0, eps = torch.randn(3, 4), torch.randn(3, 4)
    t = torch.tensor([0, 5, 8])  # the printed abar_9 = 0.00002 +- 5e-6 leaves its sqrt open by 6e-4
    ab = torch.tensor(SPEC_ALPHABAR)[t, None]  # its sqrt moves by <= 2e-5 at these levels
    torch.testing.assert_close(sch.q_sample(x0, t, eps), ab.sqrt() * x0 + (1 - ab).sqrt() * eps, atol=1e-4, rtol=0)


@pytest.mark.parametrize("prediction", ["sample", "epsilon", "v"])
def test_parameterisations_invert_their_target(prediction):
    sch = DiffusionSchedule(10)
    t = torch.arange(9)  # the top level's sqrt(abar) ~ 5e-3 amplifies eps errors 200x: tested apart
    x0, eps = torch.randn(9, 5), torch.randn(9, 5)
    sa, s1 = sch.gather("sqrt_ab", t), sch.gather("sqrt_one_minus_ab", t)
    x_t = sa * x0 + s1 * eps
    x0hat, epshat = split_prediction(prediction, network_target(prediction, x0, eps, sa, s1), x_t, sa, s1)
    torch.testing.assert_close(x0hat, x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(epshat, eps, atol=1e-4, rtol=1e-4)


def test_rejects_bad_step_count():
    with pytest.raises(ValueError, match="steps"):
        DiffusionSchedule(0)
