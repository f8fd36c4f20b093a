"""Pixel-SDXL flow math (noising, time sampling, losses, the x0 Euler sampler with CFG) and post-hoc EMA."""
import math

import numpy as np
import pytest
import torch

from t2i.diffusion.pixel_sdxl import (FlowX0EulerScheduler, add_noise, flow_shift_times, model_timesteps, sample,
                                      sample_timesteps, velocity_loss, x0_loss)
from t2i.diffusion.posthoc_ema import (SIGMA_REL_MAX, gamma_to_sigma_rel, posthoc_ema, posthoc_ema_weights,
                                       sigma_rel_to_gamma)

pytestmark = pytest.mark.usefixtures("one_thread")

f64 = torch.float64


# ---------------------------------------------------------------- schedules


def sigmas(schedule, n, shift=3.0):
    scheduler = FlowX0EulerScheduler(schedule, flow_shift=shift)
    scheduler.set_timesteps(n)
    return scheduler


def test_flow_shift_schedule_closed_form():
    # sigma = 1, .75, .5, .25, 0 and t = 3 s / (1 + 2 s)
    assert sigmas("flow_shift", 4).sigmas.tolist() == pytest.approx([1.0, 0.9, 0.75, 0.5, 0.0], abs=1e-15)
    s = torch.linspace(0, 1, 101, dtype=f64)
    torch.testing.assert_close(flow_shift_times(s, 5.0), 5 * s / (1 + 4 * s), rtol=0, atol=1e-15)


def test_shift_one_is_linear_and_endpoints_are_exact():
    for n in (1, 7, 30):
        linear = sigmas("linear", n).sigmas
        assert torch.equal(sigmas("flow_shift", n, shift=1.0).sigmas, linear)
        assert torch.equal(linear, torch.linspace(1, 0, n + 1, dtype=f64))
        for shift in (0.5, 3.0, 10.0):
            t = sigmas("flow_shift", n, shift).sigmas
            assert t[0].item() == 1.0 and t[-1].item() == 0.0 and len(t) == n + 1
            assert bool((t[1:] < t[:-1]).all())
            if n > 1:  # shift > 1 spends more steps near noise, shift < 1 near data
                assert bool((t[1:-1] > linear[1:-1]).all()) == (shift > 1)


def test_model_timesteps_are_t_times_999():
    scheduler = sigmas("flow_shift", 4)
    torch.testing.assert_close(scheduler.timesteps, torch.tensor([999.0, 899.1, 749.25, 499.5], dtype=f64))
    assert model_timesteps(torch.tensor([0.0, 1.0])).tolist() == [0.0, 999.0]


def test_bad_scheduler_settings_raise():
    with pytest.raises(ValueError, match="schedule"):
        FlowX0EulerScheduler("cosine")
    with pytest.raises(ValueError, match="flow_shift"):
        FlowX0EulerScheduler("flow_shift", flow_shift=0.0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        FlowX0EulerScheduler().set_timesteps(0)


# ---------------------------------------------------------------- training objective


def test_add_noise_interpolates_from_data_to_scaled_noise():
    x0, e = torch.randn(3, 3, 4, 4, dtype=f64), torch.randn(3, 3, 4, 4, dtype=f64)
    t = torch.tensor([0.0, 0.25, 1.0], dtype=f64)
    xt = add_noise(x0, e, t, noise_scale=2.0)
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[2], 2.0 * e[2])
    torch.testing.assert_close(xt[1], 0.75 * x0[1] + 0.25 * 2.0 * e[1], rtol=0, atol=1e-15)


def test_losses_by_hand_with_the_clamp():
    x0 = torch.zeros(2, 1, 1, 2)
    pred = torch.tensor([1.0, -1.0, 2.0, 2.0]).view(2, 1, 1, 2)
    t = torch.tensor([0.01, 0.5])  # 0.01 is clamped to 0.05
    # sample 0: 1 / 0.05^2 = 400 (twice); sample 1: 4 / 0.5^2 = 16 (twice)
    assert velocity_loss(pred, x0, t).item() == pytest.approx(208.0, rel=1e-6)
    assert x0_loss(pred, x0).item() == pytest.approx(2.5, rel=1e-7)
    # the velocity form, through x_t (float64: the x_t terms cancel)
    x0, pred, e = (torch.randn(4, 3, 8, 8, dtype=f64) for _ in range(3))
    t = torch.tensor([0.0, 0.03, 0.4, 1.0], dtype=f64)
    xt, d = add_noise(x0, e, t), t.clamp_min(0.05).view(-1, 1, 1, 1)
    v_form = (((xt - pred) / d - (xt - x0) / d) ** 2).mean()
    assert velocity_loss(pred, x0, t).item() == pytest.approx(v_form.item(), rel=1e-12)


def test_timestep_sampler_statistics():
    n = 200_000
    t = sample_timesteps(n, generator=torch.Generator().manual_seed(0)).double()
    logit = torch.log(t / (1 - t))
    # standard errors at n = 2e5: mean 0.8/sqrt(n) = 0.0018, std 0.8/sqrt(2n) = 0.0013; t's mean 0.159/sqrt(n) = 0.00036
    assert abs(logit.mean().item() - 0.8) < 0.01 and abs(logit.std().item() - 0.8) < 0.008
    nodes, w = np.polynomial.hermite_e.hermegauss(80)  # E[sigmoid(N(0.8, 0.8^2))] = 0.66896
    assert abs(t.mean().item() - float((w / (1 + np.exp(-(0.8 + 0.8 * nodes)))).sum() / w.sum())) < 0.002
    assert torch.equal(t.float(), sample_timesteps(n, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(t.float(), sample_timesteps(n, generator=torch.Generator().manual_seed(1)))

    u = sample_timesteps(n, uniform=True, generator=torch.Generator().manual_seed(0)).double()
    # standard errors: mean 0.289/sqrt(n) = 0.00065, variance 0.0745/sqrt(n) = 0.00017
    assert 0 <= u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.004 and abs(u.var().item() - 1 / 12) < 0.001


# ---------------------------------------------------------------- sampler


class Recorder:
    """Stub x0 model: ``target(text_embeds) + coef * x``; records batch size, timesteps and text of each call."""

    def __init__(self, target, coef=0.0):
        self.target, self.coef, self.calls = target, coef, []

    def __call__(self, x, timesteps, *, text_embeds, time_ids):
        assert timesteps.shape == (x.shape[0],) and text_embeds.shape[0] == time_ids.shape[0] == x.shape[0]
        self.calls.append((x.shape[0], timesteps.clone(), text_embeds.clone()))
        return self.target(text_embeds) + self.coef * x


def conds(n=2):
    cond = dict(text_embeds=torch.arange(1.0, n + 1)[:, None].repeat(1, 3), time_ids=torch.ones(n, 6))
    uncond = dict(text_embeds=torch.full((1, 3), -1.0), time_ids=torch.ones(1, 6))
    return cond, uncond


@pytest.mark.parametrize("schedule,steps", [("linear", 1), ("linear", 30), ("linear", 100), ("flow_shift", 7)])
@pytest.mark.parametrize("cfg", [1.0, 7.0])
def test_oracle_model_lands_exactly_on_x0(schedule, steps, cfg):
    x0, noise = torch.rand(2, 3, 4, 4) * 2 - 1, torch.randn(2, 3, 4, 4)
    cond, uncond = conds()
    batches = []

    def oracle(x, timesteps, **_):
        batches.append(x.shape[0])
        return x0.repeat(x.shape[0] // 2, 1, 1, 1)

    out = sample(oracle, noise, cond, uncond, scheduler=FlowX0EulerScheduler(schedule),
                 num_inference_steps=steps, cfg_scale=cfg)
    assert torch.equal(out, x0) and batches == [4 if cfg != 1 else 2] * steps


def test_trajectory_of_the_oracle_stays_on_the_straight_line():
    x0, noise = torch.randn(1, 3, 4, 4, dtype=f64), torch.randn(1, 3, 4, 4, dtype=f64)
    seen = []

    def oracle(x, timesteps, **_):
        seen.append(x.clone())
        return x0

    scheduler = FlowX0EulerScheduler("flow_shift")
    sample(oracle, noise, {}, scheduler=scheduler, num_inference_steps=10, noise_scale=2.0)
    assert len(seen) == 10
    for x, t in zip(seen, scheduler.sigmas.tolist()):  # every t here is >= 0.05, so the implied noise is exact
        torch.testing.assert_close(x, (1 - t) * x0 + t * 2.0 * noise, rtol=0, atol=1e-12)


def test_step_is_the_originals_formula_with_the_clamp():
    scheduler = sigmas("linear", 100)  # t = 0.02 -> 0.01 is clamped to d = 0.05
    x, x0 = torch.randn(2, 3, 4, 4, dtype=f64), torch.randn(2, 3, 4, 4, dtype=f64)
    d, s = 0.05, 0.01
    expected = (1 - s) * x0 + s * (x - (1 - d) * x0) / d
    torch.testing.assert_close(scheduler.step(x0, 98, x), expected, rtol=1e-12, atol=1e-12)
    # unclamped it is Euler on v = (x - x0) / t
    t, s = scheduler.sigmas[10].item(), scheduler.sigmas[11].item()
    torch.testing.assert_close(scheduler.step(x0, 10, x), x + (s - t) * (x - x0) / t, rtol=1e-12, atol=1e-12)
    assert scheduler.step(x0, 99, x) is x0


def test_cfg_is_on_x0_with_one_batched_forward_per_step():
    steps, cfg, noise = 5, 4.0, torch.randn(2, 3, 4, 4)
    cond, uncond = conds()
    model = Recorder(lambda y: y[:, :1, None, None].expand(-1, 3, 4, 4), coef=0.5)
    out = sample(model, noise, cond, uncond, scheduler=FlowX0EulerScheduler("flow_shift"),
                 num_inference_steps=steps, cfg_scale=cfg)

    scheduler = sigmas("flow_shift", steps)
    assert len(model.calls) == steps
    for (batch, timesteps, text), t in zip(model.calls, scheduler.timesteps):
        assert batch == 4 and torch.allclose(timesteps, torch.full((4,), float(t)))
        assert torch.equal(text, torch.cat([cond["text_embeds"], uncond["text_embeds"].expand(2, 3)]))
    # the same steps by hand, with separate conditional and unconditional calls
    x, plain = noise.clone(), Recorder(model.target, coef=0.5)
    for i, t in enumerate(scheduler.timesteps):
        ts = torch.full((2,), float(t))
        x0_c = plain(x, ts, **cond)
        x0_u = plain(x, ts, text_embeds=uncond["text_embeds"].expand(2, 3), time_ids=cond["time_ids"])
        x = scheduler.step(x0_u + cfg * (x0_c - x0_u), i, x)
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_uncond,cfg", [(False, 7.0), (True, 1.0)])
def test_unguided_sampling_makes_one_conditional_call_per_step(with_uncond, cfg):
    cond, uncond = conds()
    model = Recorder(lambda y: y[:, :1, None, None].expand(-1, 3, 4, 4))
    sample(model, torch.randn(2, 3, 4, 4), cond, uncond if with_uncond else None,
           scheduler=FlowX0EulerScheduler(), num_inference_steps=3, cfg_scale=cfg)
    assert [c[0] for c in model.calls] == [2, 2, 2]
    assert all(torch.equal(c[2], cond["text_embeds"]) for c in model.calls)


# ---------------------------------------------------------------- post-hoc EMA


def snapshot(value, dtype=torch.float32):
    return {"w": torch.full((2, 3), value, dtype=dtype), "b": torch.tensor([value], dtype=dtype),
            "count": torch.tensor(int(value * 10))}


def test_sigma_rel_and_gamma_invert_each_other():
    assert sigma_rel_to_gamma(1 / math.sqrt(12)) == pytest.approx(0.0, abs=1e-9)
    assert sigma_rel_to_gamma(math.sqrt(1 / 18)) == pytest.approx(1.0, rel=1e-9)
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)  # EDM2's values
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    for sigma_rel in (0.01, 0.05, 0.1, 0.2, 0.3):
        assert gamma_to_sigma_rel(sigma_rel_to_gamma(sigma_rel)) == pytest.approx(sigma_rel, rel=1e-9)
    for bad in (0.0, -0.1, SIGMA_REL_MAX + 1e-3):
        with pytest.raises(ValueError, match="sigma_rel"):
            sigma_rel_to_gamma(bad)


@pytest.mark.parametrize("mode,value", [("geometric", 0.9), ("geometric", 0.0), ("power", 0.05), ("power", 0.25)])
def test_constant_snapshots_average_to_themselves(mode, value):
    snaps = [(step, snapshot(0.7)) for step in (0, 100, 250, 900)]
    out = posthoc_ema(snaps, mode, value)
    for k, v in snapshot(0.7).items():
        assert out[k].dtype == v.dtype and torch.equal(out[k], v)
    assert math.fsum(posthoc_ema_weights([0, 100, 250, 900], mode, value)) == pytest.approx(1.0, abs=1e-15)


def test_geometric_weights_by_hand_and_as_a_recursion():
    assert posthoc_ema_weights([1, 2, 3], "geometric", 0.5) == pytest.approx([1 / 7, 2 / 7, 4 / 7], rel=1e-15)
    values = [0.3, -1.2, 2.5, 0.8]
    snaps = [(step, snapshot(v, f64)) for step, v in zip((40, 10, 30, 20), values)]  # given out of order
    num = den = 0.0
    for v in (values[1], values[3], values[2], values[0]):  # oldest to newest
        num, den = 0.9 * num + v, 0.9 * den + 1
    out = posthoc_ema(snaps, "geometric", 0.9)
    torch.testing.assert_close(out["w"], torch.full((2, 3), num / den, dtype=f64), rtol=1e-14, atol=0)
    assert out["count"].item() == 3  # non-float entries come from the newest snapshot (step 40)
    assert posthoc_ema_weights([5, 6, 7, 8], "geometric", 1.0) == pytest.approx([0.25] * 4, rel=1e-15)


def test_power_weights_on_linear_in_step_weights():
    # gamma = 1 (sigma_rel = sqrt(1/18)): w_i = (t_i^2 - t_{i-1}^2) / T^2 = 1/16, 3/16, 5/16, 7/16
    sigma_rel = math.sqrt(1 / 18)
    assert posthoc_ema_weights([100, 200, 300, 400], "power", sigma_rel) == pytest.approx(
        [1 / 16, 3 / 16, 5 / 16, 7 / 16], rel=1e-9)
    a, b = 0.5, -0.002
    out = posthoc_ema([(t, snapshot(a + b * t, f64)) for t in (100, 200, 300, 400)], "power", sigma_rel)
    expected = a + b * 100 * (1 + 2 * 3 + 3 * 5 + 4 * 7) / 16  # = a + 312.5 b
    torch.testing.assert_close(out["w"], torch.full((2, 3), expected, dtype=f64), rtol=1e-12, atol=1e-15)
    # a step-0 snapshot (the initial weights) owns an empty interval
    assert posthoc_ema_weights([0, 10], "power", 0.1)[0] == 0.0


def test_power_with_a_snapshot_every_step_is_edm2s_running_ema():
    gen, steps, sigma_rel = torch.Generator().manual_seed(0), 60, 0.1
    thetas = [torch.randn(5, generator=gen, dtype=f64) for _ in range(steps)]
    gamma, avg = sigma_rel_to_gamma(sigma_rel), torch.zeros(5, dtype=f64)
    for t, theta in enumerate(thetas, start=1):
        beta = (1 - 1 / t) ** (gamma + 1)
        avg = beta * avg + (1 - beta) * theta
    out = posthoc_ema([(t, {"w": th}) for t, th in enumerate(thetas, start=1)], "power", sigma_rel)
    torch.testing.assert_close(out["w"], avg, rtol=1e-12, atol=1e-14)


def test_power_on_dense_linear_weights_approaches_the_continuous_profile_mean():
    # Weights theta(t) = t: the continuous profile's mean is T (g+1)/(g+2); the per-step boxes lag it by 1/2 step
    # (Euler-Maclaurin: the next term is -(g+1)/(12 T), 4e-4 here).
    T, sigma_rel = 2000, 0.1
    gamma = sigma_rel_to_gamma(sigma_rel)
    w = posthoc_ema_weights(list(range(1, T + 1)), "power", sigma_rel)
    mean = math.fsum(wi * t for wi, t in zip(w, range(1, T + 1)))
    assert mean == pytest.approx(T * (gamma + 1) / (gamma + 2) + 0.5, abs=1e-3)


def test_accumulation_is_float64():
    # float32 accumulation would lose these 1e-12 differences
    snaps = [(t, {"w": torch.tensor([1.0 + k * 1e-12], dtype=f64)}) for k, t in enumerate((1, 2, 3, 4))]
    out = posthoc_ema(snaps, "geometric", 1.0)
    assert out["w"].item() == pytest.approx(1.0 + 1.5e-12, abs=1e-15)


def test_bad_snapshots_raise():
    with pytest.raises(ValueError, match="distinct"):
        posthoc_ema([(5, snapshot(1.0)), (5, snapshot(2.0))], "geometric", 0.9)
    with pytest.raises(ValueError, match="keys"):
        posthoc_ema([(1, snapshot(1.0)), (2, {"w": torch.zeros(2, 3)})], "geometric", 0.9)
    with pytest.raises(ValueError, match="shape"):
        posthoc_ema([(1, {"w": torch.zeros(2)}), (2, {"w": torch.zeros(3)})], "power", 0.1)
    with pytest.raises(ValueError, match="mode"):
        posthoc_ema([(1, snapshot(1.0))], "karras", 0.1)
    with pytest.raises(ValueError, match="mu"):
        posthoc_ema([(1, snapshot(1.0))], "geometric", 1.5)
