"""JiT's GPU training path on a CPU: uint8 batches, the compiled bf16 step against the eager fp32 one,
the fused optimizer against the default one."""
import pytest
import torch

from t2i.data.captions import to_signed_unit
from t2i.systems.jit import JiTTask
from t2i.train.loop import _build_optimizer, keep_fused
from t2i.train.optim import adamw_from_train_config
from test_jit_model import randomized, tiny

pytestmark = pytest.mark.usefixtures("one_thread")

OBJECTIVE = {"P_mean": -0.8, "P_std": 0.8, "noise_scale": 1.0, "t_eps": 0.05, "cond_dropout": 0.25}


class _GradContext:
    """The part of the loop's step context a JiT step uses: backward only, no optimizer step."""

    def __init__(self, net: torch.nn.Module):
        self.net = net

    def module(self, name: str) -> torch.nn.Module:
        return self.net

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def optimizer_step(self, name: str) -> None:
        return None


def _step(model, net, batch: dict) -> tuple[float, dict[str, torch.Tensor]]:
    """One JiT training step's loss and gradients, with the step's randomness fixed."""
    task = JiTTask(model, {"model": OBJECTIVE, "train": {"batch_size": 8}}, torch.linspace(-1, 1, 16), meta={})
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    loss = task.step(batch, 0, _GradContext(net))["loss"]
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.fixture()
def batch() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g),
            "text": torch.randn(8, 16, generator=g)}


def test_uint8_batches_train_exactly_as_float_ones(batch):
    """The loader ships uint8 pixels and the step scales them: the same loss and gradients, bit for bit,
    as the float images the dataset used to yield (``x.float() / 127.5 - 1`` on the CPU)."""
    every = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_signed_unit(every), every.float() / 127.5 - 1.0)
    model = randomized(tiny())
    loss_u8, grads_u8 = _step(model, model, batch)
    loss_f, grads_f = _step(model, model, {**batch, "image": batch["image"].float() / 127.5 - 1.0})
    assert loss_u8 == loss_f
    for name in grads_f:
        assert torch.equal(grads_u8[name], grads_f[name]), name


def test_compiled_bf16_step_matches_the_eager_fp32_step(batch):
    """What a CUDA train job runs by default (compile auto, bf16 autocast) against the reference arithmetic.

    bf16 keeps 8 significant bits (relative rounding 2^-9 = 0.2% per rounding); matmuls round their inputs
    and accumulate in fp32, norms and the loss run in fp32, so independent roundings mostly cancel in the
    mean loss and add up in the gradients, where the backward rounds again (measured on this network: loss
    0.013%, gradients at most 1.3% of their norm). The bounds leave 15x and 7x of room for CPUs whose bf16
    matmuls round otherwise; a wrong graph (a dropped residual, RoPE or scale) moves both by tens of percent."""
    model = randomized(tiny())
    loss_ref, grads_ref = _step(model, model, batch)
    compiled = torch.compile(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_fast, grads_fast = _step(model, compiled, batch)
    assert loss_fast == pytest.approx(loss_ref, rel=2e-3)
    for name, ref in grads_ref.items():
        if ref.norm() < 1e-3 * max(g.norm() for g in grads_ref.values()):
            continue  # a vanishing gradient has no relative precision to speak of
        err = (grads_fast[name] - ref).norm() / ref.norm()
        assert err < 0.1, f"{name}: gradient off by {float(err):.3f} of its norm"


def test_a_fused_optimizer_stays_fused_after_loading_an_unfused_state():
    """A state saved by an unfused AdamW (on a CPU, or before the loop fused it) carries its groups' flags;
    ``load_state_dict`` would switch the fused kernel off unless the loop sets it back."""
    model = randomized(tiny())
    spec = adamw_from_train_config(model, {"lr": 1e-2})
    unfused, _ = _build_optimizer(spec)
    fused, _ = _build_optimizer(spec, fused=True)
    fused.load_state_dict(unfused.state_dict())
    assert not any(g["fused"] for g in fused.param_groups)
    keep_fused(fused)
    assert all(g["fused"] for g in fused.param_groups)
    keep_fused(unfused)
    assert not any(g["fused"] for g in unfused.param_groups)


def test_fused_adamw_takes_the_default_adamw_steps():
    """The loop builds torch's fused AdamW on CUDA; it must move the weights as the default one does."""
    runs = []
    for fused in (False, True):
        model = randomized(tiny())
        optimizer, _ = _build_optimizer(adamw_from_train_config(model, {"lr": 1e-2, "weight_decay": 0.05}), fused=fused)
        assert bool(optimizer.defaults.get("fused")) == fused
        g = torch.Generator().manual_seed(1)
        for _ in range(5):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=g)
            optimizer.step()
        runs.append(model.state_dict())
    for name, value in runs[0].items():
        torch.testing.assert_close(runs[1][name], value, rtol=1e-5, atol=1e-6, msg=name)
