"""JiT flow math: logit-normal times, the x-prediction/v-loss, and the Heun/Euler sampler with a CFG interval."""
import pytest
import torch

from t2i.diffusion.flow import jit_loss, sample, sample_t
from t2i.models.jit import jit_from_preset

LOSS = dict(P_mean=-0.8, P_std=0.8, noise_scale=1.0, t_eps=0.05)


pytestmark = pytest.mark.usefixtures("one_thread")


class Recorder:
    """Stub denoiser: predicts ``fn(text) + z / 2`` and records every call."""

    def __init__(self, fn=lambda y: y[:, :1, None, None].expand(-1, 3, 4, 4)):
        self.fn, self.calls = fn, []

    def __call__(self, z, t, y):
        assert t.shape == (z.shape[0],) and y.shape[0] == z.shape[0]
        self.calls.append((z.shape[0], float(t[0]), y.clone()))
        return self.fn(y) + 0.5 * z


def conds(n=2, d=3):
    cond = torch.arange(1.0, n + 1)[:, None].expand(n, d).clone()  # text i -> image value i + 1
    return cond, torch.full((d,), -1.0)  # the empty prompt -> image value -1


def test_sample_t_is_logit_normal_and_seeded():
    t = sample_t(20000, -0.8, 0.8, torch.Generator().manual_seed(0))
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean() + 0.8) < 0.03 and abs(logit.std() - 0.8) < 0.03
    assert torch.equal(t, sample_t(20000, -0.8, 0.8, torch.Generator().manual_seed(0)))
    assert not torch.equal(t, sample_t(20000, -0.8, 0.8, torch.Generator().manual_seed(1)))


def test_loss_is_zero_for_the_oracle_and_finite_near_data():
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    oracle = lambda z, t, y: x  # noqa: E731
    assert jit_loss(oracle, x, torch.zeros(4, 2), **LOSS).item() == pytest.approx(0.0, abs=1e-10)
    # t -> 1 would blow up 1/(1 - t) without the t_eps clamp
    zero = lambda z, t, y: torch.zeros_like(z)  # noqa: E731
    near_data = jit_loss(zero, x, torch.zeros(4, 2), **{**LOSS, "P_mean": 12.0})
    assert torch.isfinite(near_data) and near_data.item() < (1 / 0.05) ** 2 * 1.01


def test_loss_matches_the_v_loss_formula():
    x, y = torch.rand(2, 3, 4, 4) * 2 - 1, torch.zeros(2, 1)
    model = lambda z, t, y: 0.5 * z  # noqa: E731
    torch.manual_seed(3)
    loss = jit_loss(model, x, y, **{**LOSS, "noise_scale": 2.0})
    torch.manual_seed(3)
    t = sample_t(2, -0.8, 0.8).view(-1, 1, 1, 1)
    z = t * x + (1 - t) * 2.0 * torch.randn_like(x)
    expected = (((x - z) - (0.5 * z - z)) / (1 - t).clamp_min(0.05)).pow(2).mean()
    torch.testing.assert_close(loss, expected)


def test_loss_decreases_when_overfitting_one_batch():
    torch.manual_seed(0)
    model = jit_from_preset("JiT-T/4-Text", input_size=16, text_dim=8, depth=2, in_context_start=1)
    x = torch.rand(8, 3, 16, 16).round() * 2 - 1
    y = torch.randn(8, 8)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)

    def fixed_noise_loss():
        with torch.random.fork_rng():
            torch.manual_seed(123)
            return jit_loss(model, x, y, **LOSS)

    with torch.no_grad():
        before = fixed_noise_loss().item()
    for _ in range(100):
        loss = jit_loss(model, x, y, **LOSS)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = fixed_noise_loss().item()
    assert after < 0.5 * before


@pytest.mark.parametrize("method, steps, calls", [("heun", 1, 1), ("heun", 6, 11), ("euler", 6, 6)])
def test_model_calls_per_solver(method, steps, calls):
    cond, uncond = conds()
    model = Recorder()
    sample(model, torch.randn(2, 3, 4, 4), cond, uncond, steps=steps, method=method, cfg=1.0)
    assert len(model.calls) == calls
    assert all(rows == 2 for rows, _, _ in model.calls)  # cfg 1: no unconditional pass
    ts = sorted({t for _, t, _ in model.calls})
    assert ts == pytest.approx([i / steps for i in range(steps)])  # last evaluation at t = 1 - 1/steps


def test_unconditional_pass_only_inside_the_cfg_interval():
    cond, uncond = conds()
    model = Recorder()
    sample(model, torch.randn(2, 3, 4, 4), cond, uncond, steps=10, method="heun", cfg=3.0,
           interval_min=0.25, interval_max=0.75)
    assert len(model.calls) == 19  # Heun: 2 per step, the last step Euler
    for rows, t, y in model.calls:
        inside = 0.25 < t < 0.75
        assert rows == (4 if inside else 2), t
        if inside:  # one batched call: conditional rows, then unconditional rows
            torch.testing.assert_close(y, torch.cat([cond, uncond.expand_as(cond)]))
    assert sum(rows == 4 for rows, _, _ in model.calls) == 10  # t = 0.3 ... 0.7, each twice


@pytest.mark.parametrize("lo, hi, guided_ts", [(0.0, 0.5, [0.0, 0.25]), (0.25, 1.0, [0.5, 0.75])])
def test_interval_is_open_except_at_zero_as_in_jit(lo, hi, guided_ts):
    model = Recorder()
    sample(model, torch.randn(2, 3, 4, 4), *conds(), steps=4, method="euler", cfg=2.0,
           interval_min=lo, interval_max=hi)
    assert [t for rows, t, _ in model.calls if rows == 4] == guided_ts


@pytest.mark.parametrize("method", ["heun", "euler"])
def test_guidance_is_applied_exactly_inside_the_interval(method):
    """x-prediction makes the velocity affine in x, so guided sampling of the stub equals
    unguided sampling of a stub that predicts the guided image inside the interval."""
    cond, uncond = conds()
    noise, cfg, lo, hi = torch.randn(2, 3, 4, 4), 2.5, 0.25, 0.75
    image = lambda y: y[:, :1, None, None].expand(-1, 3, 4, 4)  # noqa: E731
    guided = sample(Recorder(image), noise, cond, uncond, steps=8, method=method, cfg=cfg,
                    interval_min=lo, interval_max=hi)

    def reference(z, t, y):
        x_c, x_u = image(y) + 0.5 * z, -1.0 + 0.5 * z
        return x_u + cfg * (x_c - x_u) if lo < float(t[0]) < hi else x_c

    unguided = sample(reference, noise, cond, uncond, steps=8, method=method, cfg=1.0)
    torch.testing.assert_close(guided, unguided)
    plain = sample(Recorder(image), noise, cond, uncond, steps=8, method=method, cfg=1.0)
    assert not torch.allclose(guided, plain)


@pytest.mark.parametrize("method", ["heun", "euler"])
def test_a_constant_prediction_is_reached_exactly(method):
    """Noise at t = 0, data at t = 1: for a model that always predicts x, the path is straight."""
    target = torch.rand(2, 3, 4, 4)
    out = sample(lambda z, t, y: target, torch.randn(2, 3, 4, 4), *conds(), steps=7, method=method,
                 noise_scale=2.0)
    torch.testing.assert_close(out, target)


def test_sampling_is_deterministic_and_batch_independent():
    torch.manual_seed(0)
    model = jit_from_preset("JiT-T/4-Text", input_size=16, text_dim=8, depth=2, in_context_start=1).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    cond, uncond = torch.randn(3, 8), torch.randn(8)
    kw = dict(steps=5, method="heun", cfg=2.0, interval_min=0.1, interval_max=1.0)

    def noise(seed):
        return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(seed))

    a = sample(model, noise(0), cond, uncond, **kw)
    assert torch.equal(a, sample(model, noise(0), cond, uncond, **kw))
    assert not torch.allclose(a, sample(model, noise(1), cond, uncond, **kw))
    one_by_one = torch.cat([sample(model, noise(0)[i:i + 1], cond[i:i + 1], uncond, **kw) for i in range(3)])
    torch.testing.assert_close(a, one_by_one, atol=1e-4, rtol=1e-4)


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        sample(Recorder(), torch.randn(2, 3, 4, 4), *conds(), steps=4, method="rk4")
    with pytest.raises(ValueError, match="steps"):
        sample(Recorder(), torch.randn(2, 3, 4, 4), *conds(), steps=0)


def test_loss_and_sampler_under_bf16_autocast():
    """The training loop and the sampler run the network under bf16 autocast on GPUs."""
    torch.manual_seed(0)
    model = jit_from_preset("JiT-T/4-Text", input_size=16, text_dim=8, depth=2, in_context_start=1)
    x, y = torch.rand(4, 3, 16, 16) * 2 - 1, torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = jit_loss(model, x, y, **LOSS)
        out = sample(model, torch.randn(4, 3, 16, 16), y, torch.zeros(8), steps=3, cfg=2.0, interval_min=0.1)
    assert loss.dtype == out.dtype == torch.float32
    assert torch.isfinite(loss) and torch.isfinite(out).all()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
