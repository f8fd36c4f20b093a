"""t2i.models.lpips: LPIPS-VGG v0.1 (random weights: no network, CPU, float32)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from t2i.models.lpips import LPIPS

# Key layout of the lpips package's weights/v0.1/vgg.pth (lpips.LPIPS.lin{i} = NetLinLayer, whose
# `model` is Sequential(Dropout, Conv2d(C, 1, 1, bias=False))), written out here, not imported.
LIN_KEYS = [f"lin{i}.model.1.weight" for i in range(5)]
LIN_CHANNELS = [64, 128, 256, 512, 512]

# Tiny images: one intra-op thread is ~15x faster here than two on a busy CPU (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> LPIPS:
    torch.manual_seed(0)
    return LPIPS()


def images(seed: int, n: int = 2, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_frozen_eval_and_shape(model):
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    d = model(images(1), images(2))
    assert d.shape == (2,) and d.dtype == torch.float32


def test_distance_to_itself_is_zero(model):
    x = images(1)
    torch.testing.assert_close(model(x, x), torch.zeros(2), atol=1e-7, rtol=0)


def test_symmetric_and_positive(model):
    x, y = images(1), images(2)
    dxy, dyx = model(x, y), model(y, x)
    torch.testing.assert_close(dxy, dyx, rtol=1e-5, atol=0)
    assert (dxy > 0).all()
    # A smaller change is a smaller distance.
    assert (model(x, x + 0.01 * (y - x)) < dxy).all()


def test_gradient_reaches_the_inputs_only(model):
    x, y = images(1).requires_grad_(), images(2)
    model(x, y).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_rejects_mismatched_inputs(model):
    with pytest.raises(ValueError, match="one shape"):
        model(images(1, size=32), images(2, size=48))


def reference_lpips(model: LPIPS, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS-VGG written straight from the formula, in float64, with the model's weights but none of
    its code: VGG16's 13 3x3 convs (cfg D) with ReLU and 2x2 max-pools, features taken after the 2nd,
    4th, 7th, 10th and 13th ReLU (relu1_2 ... relu5_3)."""
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13
    pool_after = {2, 4, 7, 10}  # conv counts after which VGG16 max-pools (the pool after 13 is unused)
    tap_after = {2, 4, 7, 10, 13}
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)

    def taps(img):
        h = (img.double() - shift) / scale
        out = []
        for k, conv in enumerate(convs, start=1):
            h = F.relu(F.conv2d(h, conv.weight.double(), conv.bias.double(), padding=1))
            if k in tap_after:
                out.append(h)
            if k in pool_after:
                h = F.max_pool2d(h, 2, 2)
        return out

    total = torch.zeros(x.shape[0], 1, 1, 1, dtype=torch.float64)
    for fx, fy, w in zip(taps(x), taps(y), model.lins):
        nx = fx / (torch.sqrt((fx ** 2).sum(dim=1, keepdim=True)) + 1e-10)
        ny = fy / (torch.sqrt((fy ** 2).sum(dim=1, keepdim=True)) + 1e-10)
        total = total + F.conv2d((nx - ny) ** 2, w.double()).mean(dim=(2, 3), keepdim=True)
    return total.flatten()


def test_agrees_with_a_float64_reference(model):
    x, y = images(3, n=3, size=48), images(4, n=3, size=48)
    ours = model(x, y)
    ref = reference_lpips(model, x, y)
    # Tolerance: the module runs the trunk in float32 (unit roundoff 6e-8). Through 13 convs that each
    # sum up to 4608 products the features carry relative errors of order 1e-6; normalisation, the
    # non-negative weighted sums and means add no cancellation of their own (the images differ by O(1),
    # so the feature differences are not small), so the distance keeps that relative error. Seen here:
    # at most 1.5e-7 relative (3 seeds x 32/48/64 px). rtol 1e-5 leaves a margin of ~70x, yet a change
    # of formula (a layer tapped before its ReLU or left out, a pixel sum for the mean, other shift/scale
    # constants) moves the result by far more. (The eps, 1e-10 against norms of order 1..100, is below
    # what any float test can see.)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=0)


# ------------------------------------------------------------------ files


def torchvision_layout_state_dict(model: LPIPS) -> dict:
    """A whole-VGG16 state dict in torchvision's key layout (what vgg16-397923af.pth holds): the model's
    trunk as ``features.*`` and the ``classifier.*`` keys torchvision has. from_files ignores the
    classifier, so its tensors are kept tiny here (the real ones are 124M numbers)."""
    from torchvision.models import vgg16

    with torch.device("meta"):
        keys = list(vgg16(weights=None).state_dict())
    feats = {f"features.{k}": v.clone() for k, v in model.features.state_dict().items()}
    assert set(feats) == {k for k in keys if k.startswith("features.")}
    return {k: feats[k] if k in feats else torch.zeros(1) for k in keys}


def lin_state_dict(model: LPIPS) -> dict:
    return {k: w.detach().clone() for k, w in zip(LIN_KEYS, model.lins)}


@pytest.fixture
def weight_files(tmp_path):
    torch.manual_seed(1)
    source = LPIPS()
    vgg_path, lin_path = tmp_path / "vgg16-397923af.pth", tmp_path / "vgg.pth"
    torch.save(torchvision_layout_state_dict(source), vgg_path)
    torch.save(lin_state_dict(source), lin_path)
    return source, vgg_path, lin_path


def test_from_files_round_trip(weight_files, model):
    source, vgg_path, lin_path = weight_files
    for k, w in zip(LIN_KEYS, LIN_CHANNELS):
        assert torch.load(lin_path, weights_only=True)[k].shape == (1, w, 1, 1)
    loaded = LPIPS.from_files(vgg_path, lin_path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x, y = images(5), images(6)
    torch.testing.assert_close(loaded(x, y), source(x, y), rtol=0, atol=0)
    assert not torch.allclose(model(x, y), source(x, y))  # the weights did come from the files


@pytest.mark.parametrize("which,edit,needle", [
    ("vgg", lambda sd: sd.pop("features.28.bias"), "missing: features.28.bias"),
    ("vgg", lambda sd: sd.update({"features.30.weight": torch.zeros(1)}), "unexpected: features.30.weight"),
    ("vgg", lambda sd: sd.update({"model.conv.weight": torch.zeros(1)}), "unexpected: model.conv.weight"),
    ("vgg", lambda sd: sd.update({"features.0.weight": torch.zeros(64, 3, 5, 5)}), "wrong shape: features.0.weight"),
    ("lin", lambda sd: sd.pop("lin4.model.1.weight"), "missing: lin4.model.1.weight"),
    ("lin", lambda sd: sd.update({"lin2.model.1.weight": torch.zeros(1, 128, 1, 1)}), "wrong shape: lin2.model.1.weight"),
    ("lin", lambda sd: sd.update({"lin0.model.1.bias": torch.zeros(1)}), "unexpected: lin0.model.1.bias"),
])
def test_from_files_is_strict(weight_files, which, edit, needle):
    source, vgg_path, lin_path = weight_files
    path = vgg_path if which == "vgg" else lin_path
    sd = torch.load(path, weights_only=True)
    edit(sd)
    torch.save(sd, path)
    with pytest.raises(ValueError) as e:
        LPIPS.from_files(vgg_path, lin_path)
    assert str(path) in str(e.value) and needle in str(e.value)


def test_from_files_refuses_pickled_code(weight_files, tmp_path):
    _, vgg_path, lin_path = weight_files
    torch.save({"lin0.model.1.weight": torch.nn.Conv2d(64, 1, 1)}, lin_path)  # a module, not a tensor
    with pytest.raises(ValueError, match=str(lin_path)):
        LPIPS.from_files(vgg_path, lin_path)
