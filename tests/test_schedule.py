import pytest
import torch

from fastbdm.schedule import DiffusionSchedule, network_target, split_prediction

# Spec §2 table for T = 10 (printed with 5 decimals there).
SPEC_BETAS = [0.02791, 0.07549, 0.1244, 0.17719, 0.23728, 0.30988, 0.404, 0.537, 0.74383, 0.999]
SPEC_ALPHABAR = [0.97209, 0.89871, 0.78691, 0.64748, 0.49384, 0.34081, 0.20312, 0.09405, 0.02409, 0.00002]


def test_schedule_matches_spec_table():
    sch = DiffusionSchedule(10)
    torch.testing.assert_close(sch.betas, torch.tensor(SPEC_BETAS), atol=6e-6, rtol=0)
    torch.testing.assert_close(sch.alphas_cumprod, torch.tensor(SPEC_ALPHABAR), atol=6e-6, rtol=0)
    assert sch.alphas_cumprod_prev[0] == 1.0
    torch.testing.assert_close(sch.alphas_cumprod_prev[1:], sch.alphas_cumprod[:-1])


def test_posterior_coefficients_and_eta():
    sch = DiffusionSchedule(10)
    ab, abp, beta, alpha = sch.alphas_cumprod, sch.alphas_cumprod_prev, sch.betas, sch.alphas
    torch.testing.assert_close(sch.coef_x0, abp.sqrt() * beta / (1 - ab))
    torch.testing.assert_close(sch.coef_xt, alpha.sqrt() * (1 - abp) / (1 - ab))
    torch.testing.assert_close(sch.posterior_std.square(), beta * (1 - abp) / (1 - ab))
    torch.testing.assert_close(sch.eta, beta.square() * alpha * (1 - ab))
    assert sch.posterior_std[0] == 0


def test_time_input_and_forward_noising():
    sch = DiffusionSchedule(10)
    t = torch.tensor([0, 5, 9])
    torch.testing.assert_close(sch.time_input(t), torch.tensor([[-1.0], [0.0], [0.8]]))
    x0, eps = torch.randn(3, 4), torch.randn(3, 4)
    expected = sch.alphas_cumprod[t, None].sqrt() * x0 + (1 - sch.alphas_cumprod[t, None]).sqrt() * eps
    torch.testing.assert_close(sch.q_sample(x0, t, eps), expected)


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
