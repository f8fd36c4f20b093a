"""LAFITE generator/discriminator and the StyleGAN2 ops they use.

Two fixtures come from the original code (drboog/Lafite @ 1ad161c, whose torch_utils/ops equal
NVlabs/stylegan2-ada-pytorch's), made once on CPU, where its ops take their plain-PyTorch
reference paths; the original code is not needed to run these tests:

- ``ORIGINAL_G_256`` / ``ORIGINAL_D_256`` (end of file): ``(name, shape)`` of every state-dict entry,
  in order, of ``training.networks.Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=256,
  img_channels=3, m_layer_features=512, mapping_kwargs=dict(num_layers=8),
  synthesis_kwargs=dict(channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256,
  change=256, f_dim=512))`` and ``Discriminator(c_dim=0, img_resolution=256, img_channels=3,
  use_norm=False, use_fts=True, channel_base=32768, channel_max=512, num_fp16_res=4,
  conv_clamp=256, epilogue_kwargs=dict(mbstd_group_size=4, f_dim=512))``: train.py's ``auto``
  config at 256 px with its defaults (f_dim 512, map_num 8, change 256, fmap 1).
- ``REFERENCE``: outputs of the original G and D at a tiny config (both style structures, active
  clamping), every tensor filled by :func:`fill`, on the inputs of :func:`tiny_inputs`.
"""
import math
import re
import zlib

import pytest
import torch
import torch.nn.functional as F

from t2i.models import public_config
from t2i.models import stylegan_ops as ops
from t2i.models.lafite import LAFITE_PRESETS, LafiteDiscriminator, LafiteGenerator, lafite_from_preset

pytestmark = pytest.mark.usefixtures("one_thread")

PAPER_G_PARAMS, PAPER_D_PARAMS = 44_997_026, 29_126_785  # the original's, counted at 256 px


def small(**overrides):
    cfg = dict(resolution=16, z_dim=16, w_dim=16, f_dim=8, map_num=2, text_hidden=16, channel_base=128,
               channel_max=16, change=16, conv_clamp=None, num_fp16_res=0)
    cfg.update(overrides)
    torch.manual_seed(0)
    return lafite_from_preset("shapes32", **cfg)


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def live(G: LafiteGenerator) -> LafiteGenerator:
    """Non-zero noise strengths, so that noise modes differ."""
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.3)
    return G


# ---------------------------------------------------------------------------------------------- ops

def naive_upfirdn2d(x, f, up, down, pad, flip, gain):
    """Zero-insert, pad (negative crops), then a loop over filter taps: y[i] = sum_k xp[i + k] * f'[k]."""
    n, c, h, w = x.shape
    xu = x.new_zeros(n, c, h * up, w * up)
    xu[:, :, ::up, ::up] = x
    px0, px1, py0, py1 = pad
    xp = F.pad(xu, [px0, px1, py0, py1])
    taps = f if flip else f.flip([0, 1])
    fh, fw = taps.shape
    oh, ow = xp.shape[2] - fh + 1, xp.shape[3] - fw + 1
    y = sum(taps[i, j] * xp[:, :, i:i + oh, j:j + ow] for i in range(fh) for j in range(fw))
    return y[:, :, ::down, ::down] * gain


@pytest.mark.parametrize("up,down,pad,flip", [(1, 1, [1, 1, 1, 1], False), (2, 1, [2, 1, 2, 1], False),
                                              (1, 2, [1, 2, 0, 1], True), (3, 2, [3, -1, 1, 2], True),
                                              (2, 2, [-1, 2, 2, -1], False)])
def test_upfirdn2d_gradients_of_first_and_second_order_match_autograd_through_the_naive_form(up, down, pad, flip):
    """The hand-written adjoint (backward = another FIR resampling) gives the same gradients, and the same
    gradients of gradients (what R1 and path length differentiate), as autograd through the tap loop; float64,
    where both are exact sums of the same few products."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64, requires_grad=True)
    v = torch.randn_like(x)
    for f in (ops.setup_filter([[1, 2, 0], [3, 5, 1]], normalize=False).double(),
              ops.setup_filter(list(range(1, 9))).double()):
        fn = (lambda t: naive_upfirdn2d(t, f, up, down, pad, flip, 1.5)) if f.ndim == 2 else \
            (lambda t: naive_upfirdn2d(t, torch.outer(f, f), up, down, pad, flip, 1.5))
        results = []
        for op in (lambda t: ops.upfirdn2d(t, f, up=up, down=down, padding=pad, flip_filter=flip, gain=1.5), fn):
            y = op(x)
            w = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).reshape(y.shape)
            (g,) = torch.autograd.grad((y * w).sum() + y.square().sum(), x, create_graph=True)
            (gg,) = torch.autograd.grad((g * v).sum(), x)
            results.append((y, g, gg))
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_setup_filter():
    f = ops.setup_filter([1, 3, 3, 1])
    taps = torch.tensor([1., 3, 3, 1])
    assert f.shape == (4, 4) and torch.allclose(f, torch.outer(taps, taps) / 64)
    assert ops.setup_filter(list(range(1, 9))).shape == (8,)  # >= 8 taps: separable
    assert torch.isclose(ops.setup_filter([1, 2, 1], gain=4).sum(), torch.tensor(4.0))
    assert torch.equal(ops.setup_filter([[1, 2], [3, 4]], flip_filter=True), ops.setup_filter([[4, 3], [2, 1]]))


def test_upfirdn2d_delta_filter_is_identity_and_up_inserts_zeros():
    x = torch.randn(2, 3, 5, 6)
    assert torch.equal(ops.upfirdn2d(x, None), x)
    assert torch.equal(ops.upfirdn2d(x, ops.setup_filter([[0, 0, 0], [0, 1, 0], [0, 0, 0]]), padding=1), x)
    y = ops.upfirdn2d(x, ops.setup_filter([1]), up=2)
    assert y.shape == (2, 3, 10, 12) and torch.equal(y[:, :, ::2, ::2], x) and y[:, :, 1::2].abs().sum() == 0
    assert torch.equal(ops.upfirdn2d(x, None, down=2), x[:, :, ::2, ::2])
    assert torch.equal(ops.upfirdn2d(x, None, padding=[1, -1, 0, -2]), F.pad(x, [1, -1, 0, -2]))


@pytest.mark.parametrize("up,down,pad,flip,gain", [(1, 1, [0, 0, 0, 0], False, 1), (2, 1, [2, 1, 2, 1], False, 4),
                                                   (1, 2, [1, 2, 0, 1], True, 1), (3, 2, [3, -1, 1, 2], True, 2.5),
                                                   (2, 2, [-1, 2, 2, -1], False, 1)])
def test_upfirdn2d_matches_naive(up, down, pad, flip, gain):
    x = torch.randn(2, 3, 7, 9)
    f = ops.setup_filter([[1, 2, 0], [3, 5, 1]], normalize=False)  # asymmetric, so flips and offsets show
    got = ops.upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain)
    torch.testing.assert_close(got, naive_upfirdn2d(x, f, up, down, pad, flip, gain))
    f1 = ops.setup_filter(list(range(1, 9)))  # separable 1-D path
    torch.testing.assert_close(ops.upfirdn2d(x, f1, up=up, down=down, padding=[4, 3, 4, 3], gain=gain),
                               naive_upfirdn2d(x, torch.outer(f1, f1), up, down, [4, 3, 4, 3], False, gain))


def test_resampling_preserves_a_constant_image_and_shapes():
    f = ops.setup_filter([1, 3, 3, 1])
    x = torch.full((1, 2, 8, 8), 0.7)
    up = ops.upsample2d(x, f)
    assert up.shape == (1, 2, 16, 16)
    torch.testing.assert_close(up[:, :, 2:-2, 2:-2], torch.full((1, 2, 12, 12), 0.7))
    down = ops.downsample2d(up, f)
    assert down.shape == (1, 2, 8, 8)
    torch.testing.assert_close(down[:, :, 2:-2, 2:-2], torch.full((1, 2, 4, 4), 0.7))


@pytest.mark.parametrize("flip_weight", [True, False])
def test_conv2d_resample_is_conv_of_the_resampled_input_padded_once(flip_weight):
    f = ops.setup_filter([1, 3, 3, 1])
    x, w = torch.randn(2, 4, 8, 8), torch.randn(5, 4, 3, 3)
    w_corr = w if flip_weight else w.flip([2, 3])
    same = ops.conv2d_resample(x, w, f, padding=1, flip_weight=flip_weight)
    torch.testing.assert_close(same, F.conv2d(x, w_corr, padding=1))
    up = ops.conv2d_resample(x, w, f, up=2, padding=1, flip_weight=flip_weight)
    torch.testing.assert_close(up, F.conv2d(ops.upsample2d(x, f, padding=1), w_corr), rtol=1e-4, atol=1e-4)
    down = ops.conv2d_resample(x, w, f, down=2, padding=1, flip_weight=flip_weight)
    torch.testing.assert_close(down, ops.upfirdn2d(F.conv2d(F.pad(x, [2, 2, 2, 2]), w_corr), f, down=2))
    grouped = ops.conv2d_resample(x, torch.randn(6, 2, 3, 3), f, up=2, padding=1, groups=2)
    assert grouped.shape == (2, 6, 16, 16)
    w1 = torch.randn(5, 4, 1, 1)  # 1x1 kernels take their own paths
    torch.testing.assert_close(ops.conv2d_resample(x, w1, f, down=2), F.conv2d(ops.downsample2d(x, f), w1))
    torch.testing.assert_close(ops.conv2d_resample(x, w1, f, up=2), ops.upsample2d(F.conv2d(x, w1), f))


def test_bias_act():
    x, b = torch.randn(3, 4, 5), torch.randn(4)
    torch.testing.assert_close(ops.bias_act(x, b, act="lrelu"), F.leaky_relu(x + b[:, None], 0.2) * math.sqrt(2))
    torch.testing.assert_close(ops.bias_act(x, b), x + b[:, None])
    y = ops.bias_act(x * 10, act="lrelu", gain=1, clamp=0.5)
    assert y.abs().max() <= 0.5 and torch.equal(y, F.leaky_relu(x * 10, 0.2).clamp(-0.5, 0.5))


def test_normalize_2nd_moment():
    y = ops.normalize_2nd_moment(torch.randn(4, 7) * 5)
    torch.testing.assert_close(y.square().mean(dim=1), torch.ones(4))


def test_modulated_conv2d():
    x, weight = torch.randn(3, 4, 8, 8), torch.randn(5, 4, 3, 3)
    gain = 0.3
    for fused in (True, False):
        got = ops.modulated_conv2d(x, weight, torch.full((3, 4), gain), padding=1, demodulate=False,
                                   fused_modconv=fused)
        torch.testing.assert_close(got, F.conv2d(x, weight * gain, padding=1), rtol=1e-4, atol=1e-5)
    styles, noise = torch.randn(3, 4), torch.randn(3, 1, 8, 8)
    naive = []
    for i in range(3):  # per-sample modulated, demodulated weights
        w = weight * styles[i].reshape(1, -1, 1, 1)
        w = w / w.square().sum(dim=[1, 2, 3], keepdim=True).add(1e-8).sqrt()
        naive.append(F.conv2d(x[i:i + 1], w, padding=1))
    naive = torch.cat(naive) + noise
    for fused in (True, False):
        got = ops.modulated_conv2d(x, weight, styles, noise=noise, padding=1, fused_modconv=fused)
        torch.testing.assert_close(got, naive, rtol=1e-4, atol=1e-5)
    # demodulation removes any per-sample scale of the styles
    torch.testing.assert_close(ops.modulated_conv2d(x, weight, styles * 7, padding=1),
                               ops.modulated_conv2d(x, weight, styles, padding=1), rtol=1e-4, atol=1e-5)
    f = ops.setup_filter([1, 3, 3, 1])
    up = [ops.modulated_conv2d(x, weight, styles, up=2, padding=1, resample_filter=f, flip_weight=False,
                               fused_modconv=fused) for fused in (True, False)]
    assert up[0].shape == (3, 5, 16, 16)
    torch.testing.assert_close(up[0], up[1], rtol=1e-4, atol=1e-5)


def test_equalized_lr_layers():
    fc = ops.FullyConnectedLayer(64, 32, activation="lrelu", lr_multiplier=0.01, bias_init=1)
    assert fc.weight.std().item() == pytest.approx(100, rel=0.1) and torch.all(fc.bias == 1)
    x = torch.randn(5, 64)
    want = F.leaky_relu(x @ (fc.weight * 0.01 / 8).t() + 0.01, 0.2) * math.sqrt(2)
    torch.testing.assert_close(fc(x), want)
    conv = ops.Conv2dLayer(4, 6, 3, activation="lrelu", conv_clamp=0.5)
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(2, 4, 8, 8)
    want = F.leaky_relu(F.conv2d(x, conv.weight / 6, conv.bias, padding=1), 0.2) * math.sqrt(2) * 0.5
    want = want.clamp(-0.25, 0.25)
    torch.testing.assert_close(conv(x, gain=0.5), want)
    assert ops.Conv2dLayer(4, 6, 3, down=2)(x).shape == (2, 6, 4, 4)
    assert ops.Conv2dLayer(4, 6, 1, bias=False, down=2).bias is None


def test_minibatch_std():
    x = torch.randn(8, 6, 4, 4)
    y = ops.MinibatchStdLayer(4)(x)
    assert y.shape == (8, 7, 4, 4) and torch.equal(y[:, :6], x)
    # sample i is in group i % 2; its channel is the mean over (C, H, W) of the stddev over its group
    group = x[[1, 3, 5, 7]]
    torch.testing.assert_close(y[3, 6], group.std(dim=0, unbiased=False).mean().expand(4, 4), rtol=1e-4, atol=1e-5)
    assert ops.MinibatchStdLayer(4)(torch.ones(4, 6, 4, 4))[:, 6].max() < 1e-3


# ------------------------------------------------------------------------------------------ models

def test_generator_shapes_and_conditioning():
    G, _ = small()
    G = live(G).eval()
    assert G.num_ws == 6  # b4: conv1; b8, b16: conv0, conv1; + the last ToRGB
    z, fts = torch.randn(4, 16), unit(4, 8)
    img, styles = G(z, fts, noise_mode="const", return_styles=True)
    assert img.shape == (4, 3, 16, 16) and torch.isfinite(img).all()
    assert [s.shape[1] for s in styles] == [16] * 6 + [8, 8]  # in-channels of each conv and ToRGB
    assert img.abs().max() < 10
    again = G(z, fts, noise_mode="const")
    assert torch.equal(img, again)
    assert not torch.allclose(G(z, unit(4, 8, seed=1), noise_mode="const"), img, atol=1e-3)  # text matters
    assert not torch.allclose(G(torch.randn(4, 16), fts, noise_mode="const"), img, atol=1e-3)  # z matters
    assert not torch.allclose(G(z, fts, noise_mode="random"), img, atol=1e-4)
    assert not torch.allclose(G(z, fts, noise_mode="none"), img, atol=1e-4)
    with pytest.raises(ValueError, match="noise_mode"):
        G(z, fts, noise_mode="fixed")


def test_fused_and_unfused_modconv_agree():
    G, _ = small(change=8)  # b16 uses structure 1
    G = live(G)
    z, fts = torch.randn(3, 16), unit(3, 8)
    a = G.eval()(z, fts, noise_mode="const")
    b = G(z, fts, noise_mode="const", fused_modconv=False)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert hasattr(G.synthesis.b16.conv0, "scale_layer_0") and hasattr(G.synthesis.b8.conv0, "pre_0")


def test_truncation_and_w_avg():
    G, _ = small()
    G.train()
    fts = unit(8, 8)
    before = G.mapping.w_avg.clone()
    G(torch.randn(8, 16), fts)
    assert not torch.equal(G.mapping.w_avg, before)  # tracked in training mode
    G.eval()
    tracked = G.mapping.w_avg.clone()
    a = G(torch.randn(8, 16), fts, truncation_psi=0, noise_mode="const")
    b = G(torch.randn(8, 16), fts, truncation_psi=0, noise_mode="const")
    torch.testing.assert_close(a, b)
    assert torch.equal(G.mapping.w_avg, tracked)
    ws = G.mapping(torch.randn(2, 16), truncation_psi=0, truncation_cutoff=2)
    assert torch.equal(ws[:, :2], tracked.expand(2, 2, -1)) and not torch.allclose(ws[:, 2:], tracked.expand(2, 4, -1))


def test_style_mixing_through_mapping_and_synthesis():
    G, _ = small()
    G.eval()
    z1, z2, fts = torch.randn(2, 16), torch.randn(2, 16), unit(2, 8)
    ws = G.mapping(z1)
    ws[:, 3:] = G.mapping(z2, skip_w_avg_update=True)[:, 3:]
    mixed, _ = G.synthesis(ws, fts, noise_mode="const")
    assert mixed.shape == (2, 3, 16, 16)
    assert not torch.allclose(mixed, G(z1, fts, noise_mode="const"), atol=1e-4)


def test_discriminator_outputs_and_projection():
    _, D = small()
    img, fts = torch.randn(4, 3, 16, 16), unit(4, 8)
    logit, d_fts = D(img, fts)
    assert logit.shape == (4, 1) and d_fts.shape == (4, 8)
    torch.testing.assert_close(logit - (d_fts * fts).sum(), D.b4.out(D.b4.fc(D.b4.conv(D.b4.mbstd(
        D.b8(D.b16(None, img), img))).flatten(1))))
    # changing one sample's text changes every logit under batch_sum, only its own under per_sample
    other = fts.clone()
    other[0] = unit(8, seed=5)
    changed = D(img, other)[0] != logit
    assert changed.all()
    D_ps = LafiteDiscriminator(**{**public_config(D), "projection": "per_sample"})
    D_ps.load_state_dict(D.state_dict())
    a, _ = D_ps(img, fts)
    b, _ = D_ps(img, other)
    assert (a != b).flatten().tolist() == [True, False, False, False]
    torch.testing.assert_close(a, logit - (d_fts * fts).sum() + (d_fts * fts).sum(dim=1, keepdim=True))
    D_norm = LafiteDiscriminator(**{**public_config(D), "use_norm": True})
    torch.testing.assert_close(D_norm(img, fts)[1].norm(dim=1), torch.ones(4))
    with pytest.raises(ValueError, match="projection"):
        LafiteDiscriminator(resolution=16, projection="sum")


def test_save_and_load_round_trip(tmp_path):
    G, D = small()
    G = live(G).eval()
    G.mapping.w_avg.normal_()  # a buffer, saved too
    z, fts, img = torch.randn(4, 16), unit(4, 8), torch.randn(4, 3, 16, 16)
    G.save_pretrained(tmp_path / "G")
    D.save_pretrained(tmp_path / "D")
    G2 = LafiteGenerator.from_pretrained(tmp_path / "G").eval()
    D2 = LafiteDiscriminator.from_pretrained(tmp_path / "D")
    assert public_config(G2) == public_config(G) and public_config(D2) == public_config(D)
    kwargs = dict(truncation_psi=0.5, noise_mode="const")
    assert torch.equal(G2(z, fts, **kwargs), G(z, fts, **kwargs))
    assert all(torch.equal(a, b) for a, b in zip(D2(img, fts), D(img, fts)))


def test_presets():
    with pytest.raises(KeyError, match="unknown LAFITE preset"):
        lafite_from_preset("tiny", f_dim=8)
    with pytest.raises(ValueError, match="unknown LAFITE config"):
        lafite_from_preset("shapes32", f_dim=8, width=3)
    G, D = lafite_from_preset("shapes32", f_dim=64)
    assert G.config.resolution == D.config.resolution == 32 and D.config.f_dim == 64
    assert G(torch.randn(4, G.config.z_dim), unit(4, 64)).shape == (4, 3, 32, 32)
    assert set(LAFITE_PRESETS) == {"paper256", "shapes32"}


def _names(module):
    return [(n, tuple(t.shape)) for n, t in module.state_dict().items()]


def _parse(fixture):
    return [(name, tuple(int(d) for d in dims.split("x")) if dims != "-" else ()) for name, dims in
            (line.split() for line in fixture.strip().splitlines())]


def test_paper_config_state_dict_matches_the_original_one_to_one():
    with torch.device("meta"):
        G, D = lafite_from_preset("paper256", f_dim=512)
    assert _names(G) == _parse(ORIGINAL_G_256)
    assert _names(D) == _parse(ORIGINAL_D_256)
    assert sum(p.numel() for p in G.parameters()) == PAPER_G_PARAMS
    assert sum(p.numel() for p in D.parameters()) == PAPER_D_PARAMS
    assert G.num_ws == 14


# ------------------------------------------------------------- numbers from the original networks

def det(shape, key):
    """Deterministic pseudo-random values, uniform with unit variance, independent of torch's RNG."""
    n = torch.Size(shape).numel()
    i = torch.arange(n, dtype=torch.float64) + zlib.crc32(key.encode()) % 10007
    return ((torch.sin(i * 12.9898) * 43758.5453).frac().abs() - 0.5).mul(12 ** 0.5).float().reshape(shape)


def fill(module):
    """Every tensor but the FIR filters from :func:`det`: weights at their init scale (x100 in the
    lr-multiplier-0.01 layers), everything else at 0.2 of it."""
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not name.endswith("resample_filter"):
                scale = 100 if re.search(r"(mapping\.fc\d+|pre_\d|_layer_[01])\.", name) else 1
                t.copy_(det(t.shape, name) * scale * (1 if re.search(r"(weight|const)$", name) else 0.2))
    return module


def tiny_inputs():
    return det([4, 32], "z"), F.normalize(det([4, 16], "fts"), dim=1)


REFERENCE = dict(  # original G eval(), noise_mode='const'; D on that image; img values at flatten()[::257]
    img=[-0.152869, -0.571195, 0.503781, -0.380192, -0.073533, 1.18138, -0.879003, -0.26042, 1.04771, -0.331563,
         0.508112, 0.22198],
    img_psi07=[-0.114511, -0.666597, 0.605271, -0.416248, -0.175086, 1.08696, -0.779604, -0.302583, 1.02838,
               -0.318044, 0.496668, 0.323905],
    img_sum_abssum=[123.839, 1397.29],
    logit=[0.0268577, -0.166776, -0.266242, 0.142226],
    d_fts_first4=[-1.12082, -0.995279, -0.153231, 0.699458, -1.12117, -1.1197, -0.103737, 0.855455, -0.915241,
                  -0.979877, -0.24628, 0.720873, -0.853817, -0.5893, -0.0196979, 0.448833],
)


def test_outputs_match_the_original_networks():
    G = fill(LafiteGenerator(resolution=16, z_dim=32, w_dim=24, f_dim=16, map_num=3, text_hidden=512,
                             channel_base=256, channel_max=32, change=8, conv_clamp=2.0, num_fp16_res=0))
    D = fill(LafiteDiscriminator(resolution=16, f_dim=16, channel_base=256, channel_max=32, conv_clamp=256,
                                 num_fp16_res=0, mbstd_group_size=2))
    z, fts = tiny_inputs()
    close = dict(rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        img = G.eval()(z, fts, noise_mode="const")
        torch.testing.assert_close(G(z, fts, noise_mode="const", truncation_psi=0.7).flatten()[::257],
                                   torch.tensor(REFERENCE["img_psi07"]), **close)
        logit, d_fts = D(img, fts)
        for train in (False, True):  # fused and unfused modulated convs; training mode moves w_avg only
            img = G.train(train)(z, fts, noise_mode="const")
            torch.testing.assert_close(img.flatten()[::257], torch.tensor(REFERENCE["img"]), **close)
            torch.testing.assert_close(torch.stack([img.sum(), img.abs().sum()]),
                                       torch.tensor(REFERENCE["img_sum_abssum"]), rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(logit.flatten(), torch.tensor(REFERENCE["logit"]), **close)
    torch.testing.assert_close(d_fts[:, :4].flatten(), torch.tensor(REFERENCE["d_fts_first4"]), **close)


ORIGINAL_G_256 = """
synthesis.b4.const 512x4x4
synthesis.b4.resample_filter 4x4
synthesis.b4.conv1.weight 512x512x3x3
synthesis.b4.conv1.noise_strength -
synthesis.b4.conv1.bias 512
synthesis.b4.conv1.resample_filter 4x4
synthesis.b4.conv1.noise_const 4x4
synthesis.b4.conv1.pre_0.weight 512x512
synthesis.b4.conv1.pre_0.bias 512
synthesis.b4.conv1.pre_1.weight 512x512
synthesis.b4.conv1.pre_1.bias 512
synthesis.b4.conv1.affine_0.weight 512x1024
synthesis.b4.conv1.affine_0.bias 512
synthesis.b4.torgb.weight 3x512x1x1
synthesis.b4.torgb.bias 3
synthesis.b4.torgb.pre_0.weight 512x512
synthesis.b4.torgb.pre_0.bias 512
synthesis.b4.torgb.pre_1.weight 512x512
synthesis.b4.torgb.pre_1.bias 512
synthesis.b4.torgb.affine_0.weight 512x1024
synthesis.b4.torgb.affine_0.bias 512
synthesis.b8.resample_filter 4x4
synthesis.b8.conv0.weight 512x512x3x3
synthesis.b8.conv0.noise_strength -
synthesis.b8.conv0.bias 512
synthesis.b8.conv0.resample_filter 4x4
synthesis.b8.conv0.noise_const 8x8
synthesis.b8.conv0.pre_0.weight 512x512
synthesis.b8.conv0.pre_0.bias 512
synthesis.b8.conv0.pre_1.weight 512x512
synthesis.b8.conv0.pre_1.bias 512
synthesis.b8.conv0.affine_0.weight 512x1024
synthesis.b8.conv0.affine_0.bias 512
synthesis.b8.conv1.weight 512x512x3x3
synthesis.b8.conv1.noise_strength -
synthesis.b8.conv1.bias 512
synthesis.b8.conv1.resample_filter 4x4
synthesis.b8.conv1.noise_const 8x8
synthesis.b8.conv1.pre_0.weight 512x512
synthesis.b8.conv1.pre_0.bias 512
synthesis.b8.conv1.pre_1.weight 512x512
synthesis.b8.conv1.pre_1.bias 512
synthesis.b8.conv1.affine_0.weight 512x1024
synthesis.b8.conv1.affine_0.bias 512
synthesis.b8.torgb.weight 3x512x1x1
synthesis.b8.torgb.bias 3
synthesis.b8.torgb.pre_0.weight 512x512
synthesis.b8.torgb.pre_0.bias 512
synthesis.b8.torgb.pre_1.weight 512x512
synthesis.b8.torgb.pre_1.bias 512
synthesis.b8.torgb.affine_0.weight 512x1024
synthesis.b8.torgb.affine_0.bias 512
synthesis.b16.resample_filter 4x4
synthesis.b16.conv0.weight 512x512x3x3
synthesis.b16.conv0.noise_strength -
synthesis.b16.conv0.bias 512
synthesis.b16.conv0.resample_filter 4x4
synthesis.b16.conv0.noise_const 16x16
synthesis.b16.conv0.pre_0.weight 512x512
synthesis.b16.conv0.pre_0.bias 512
synthesis.b16.conv0.pre_1.weight 512x512
synthesis.b16.conv0.pre_1.bias 512
synthesis.b16.conv0.affine_0.weight 512x1024
synthesis.b16.conv0.affine_0.bias 512
synthesis.b16.conv1.weight 512x512x3x3
synthesis.b16.conv1.noise_strength -
synthesis.b16.conv1.bias 512
synthesis.b16.conv1.resample_filter 4x4
synthesis.b16.conv1.noise_const 16x16
synthesis.b16.conv1.pre_0.weight 512x512
synthesis.b16.conv1.pre_0.bias 512
synthesis.b16.conv1.pre_1.weight 512x512
synthesis.b16.conv1.pre_1.bias 512
synthesis.b16.conv1.affine_0.weight 512x1024
synthesis.b16.conv1.affine_0.bias 512
synthesis.b16.torgb.weight 3x512x1x1
synthesis.b16.torgb.bias 3
synthesis.b16.torgb.pre_0.weight 512x512
synthesis.b16.torgb.pre_0.bias 512
synthesis.b16.torgb.pre_1.weight 512x512
synthesis.b16.torgb.pre_1.bias 512
synthesis.b16.torgb.affine_0.weight 512x1024
synthesis.b16.torgb.affine_0.bias 512
synthesis.b32.resample_filter 4x4
synthesis.b32.conv0.weight 512x512x3x3
synthesis.b32.conv0.noise_strength -
synthesis.b32.conv0.bias 512
synthesis.b32.conv0.resample_filter 4x4
synthesis.b32.conv0.noise_const 32x32
synthesis.b32.conv0.pre_0.weight 512x512
synthesis.b32.conv0.pre_0.bias 512
synthesis.b32.conv0.pre_1.weight 512x512
synthesis.b32.conv0.pre_1.bias 512
synthesis.b32.conv0.affine_0.weight 512x1024
synthesis.b32.conv0.affine_0.bias 512
synthesis.b32.conv1.weight 512x512x3x3
synthesis.b32.conv1.noise_strength -
synthesis.b32.conv1.bias 512
synthesis.b32.conv1.resample_filter 4x4
synthesis.b32.conv1.noise_const 32x32
synthesis.b32.conv1.pre_0.weight 512x512
synthesis.b32.conv1.pre_0.bias 512
synthesis.b32.conv1.pre_1.weight 512x512
synthesis.b32.conv1.pre_1.bias 512
synthesis.b32.conv1.affine_0.weight 512x1024
synthesis.b32.conv1.affine_0.bias 512
synthesis.b32.torgb.weight 3x512x1x1
synthesis.b32.torgb.bias 3
synthesis.b32.torgb.pre_0.weight 512x512
synthesis.b32.torgb.pre_0.bias 512
synthesis.b32.torgb.pre_1.weight 512x512
synthesis.b32.torgb.pre_1.bias 512
synthesis.b32.torgb.affine_0.weight 512x1024
synthesis.b32.torgb.affine_0.bias 512
synthesis.b64.resample_filter 4x4
synthesis.b64.conv0.weight 512x512x3x3
synthesis.b64.conv0.noise_strength -
synthesis.b64.conv0.bias 512
synthesis.b64.conv0.resample_filter 4x4
synthesis.b64.conv0.noise_const 64x64
synthesis.b64.conv0.pre_0.weight 512x512
synthesis.b64.conv0.pre_0.bias 512
synthesis.b64.conv0.pre_1.weight 512x512
synthesis.b64.conv0.pre_1.bias 512
synthesis.b64.conv0.affine_0.weight 512x1024
synthesis.b64.conv0.affine_0.bias 512
synthesis.b64.conv1.weight 512x512x3x3
synthesis.b64.conv1.noise_strength -
synthesis.b64.conv1.bias 512
synthesis.b64.conv1.resample_filter 4x4
synthesis.b64.conv1.noise_const 64x64
synthesis.b64.conv1.pre_0.weight 512x512
synthesis.b64.conv1.pre_0.bias 512
synthesis.b64.conv1.pre_1.weight 512x512
synthesis.b64.conv1.pre_1.bias 512
synthesis.b64.conv1.affine_0.weight 512x1024
synthesis.b64.conv1.affine_0.bias 512
synthesis.b64.torgb.weight 3x512x1x1
synthesis.b64.torgb.bias 3
synthesis.b64.torgb.pre_0.weight 512x512
synthesis.b64.torgb.pre_0.bias 512
synthesis.b64.torgb.pre_1.weight 512x512
synthesis.b64.torgb.pre_1.bias 512
synthesis.b64.torgb.affine_0.weight 512x1024
synthesis.b64.torgb.affine_0.bias 512
synthesis.b128.resample_filter 4x4
synthesis.b128.conv0.weight 256x512x3x3
synthesis.b128.conv0.noise_strength -
synthesis.b128.conv0.bias 256
synthesis.b128.conv0.resample_filter 4x4
synthesis.b128.conv0.noise_const 128x128
synthesis.b128.conv0.pre_0.weight 512x512
synthesis.b128.conv0.pre_0.bias 512
synthesis.b128.conv0.pre_1.weight 512x512
synthesis.b128.conv0.pre_1.bias 512
synthesis.b128.conv0.affine_0.weight 512x1024
synthesis.b128.conv0.affine_0.bias 512
synthesis.b128.conv1.weight 256x256x3x3
synthesis.b128.conv1.noise_strength -
synthesis.b128.conv1.bias 256
synthesis.b128.conv1.resample_filter 4x4
synthesis.b128.conv1.noise_const 128x128
synthesis.b128.conv1.pre_0.weight 512x512
synthesis.b128.conv1.pre_0.bias 512
synthesis.b128.conv1.pre_1.weight 512x512
synthesis.b128.conv1.pre_1.bias 512
synthesis.b128.conv1.affine_0.weight 256x1024
synthesis.b128.conv1.affine_0.bias 256
synthesis.b128.torgb.weight 3x256x1x1
synthesis.b128.torgb.bias 3
synthesis.b128.torgb.pre_0.weight 512x512
synthesis.b128.torgb.pre_0.bias 512
synthesis.b128.torgb.pre_1.weight 512x512
synthesis.b128.torgb.pre_1.bias 512
synthesis.b128.torgb.affine_0.weight 256x1024
synthesis.b128.torgb.affine_0.bias 256
synthesis.b256.resample_filter 4x4
synthesis.b256.conv0.weight 128x256x3x3
synthesis.b256.conv0.noise_strength -
synthesis.b256.conv0.bias 128
synthesis.b256.conv0.resample_filter 4x4
synthesis.b256.conv0.noise_const 256x256
synthesis.b256.conv0.pre_0.weight 512x512
synthesis.b256.conv0.pre_0.bias 512
synthesis.b256.conv0.pre_1.weight 512x512
synthesis.b256.conv0.pre_1.bias 512
synthesis.b256.conv0.affine_0.weight 256x1024
synthesis.b256.conv0.affine_0.bias 256
synthesis.b256.conv1.weight 128x128x3x3
synthesis.b256.conv1.noise_strength -
synthesis.b256.conv1.bias 128
synthesis.b256.conv1.resample_filter 4x4
synthesis.b256.conv1.noise_const 256x256
synthesis.b256.conv1.pre_0.weight 512x512
synthesis.b256.conv1.pre_0.bias 512
synthesis.b256.conv1.pre_1.weight 512x512
synthesis.b256.conv1.pre_1.bias 512
synthesis.b256.conv1.affine_0.weight 128x1024
synthesis.b256.conv1.affine_0.bias 128
synthesis.b256.torgb.weight 3x128x1x1
synthesis.b256.torgb.bias 3
synthesis.b256.torgb.pre_0.weight 512x512
synthesis.b256.torgb.pre_0.bias 512
synthesis.b256.torgb.pre_1.weight 512x512
synthesis.b256.torgb.pre_1.bias 512
synthesis.b256.torgb.affine_0.weight 128x1024
synthesis.b256.torgb.affine_0.bias 128
mapping.w_avg 512
mapping.fc0.weight 512x512
mapping.fc0.bias 512
mapping.fc1.weight 512x512
mapping.fc1.bias 512
mapping.fc2.weight 512x512
mapping.fc2.bias 512
mapping.fc3.weight 512x512
mapping.fc3.bias 512
mapping.fc4.weight 512x512
mapping.fc4.bias 512
mapping.fc5.weight 512x512
mapping.fc5.bias 512
mapping.fc6.weight 512x512
mapping.fc6.bias 512
mapping.fc7.weight 512x512
mapping.fc7.bias 512
"""
ORIGINAL_D_256 = """
b256.resample_filter 4x4
b256.fromrgb.weight 128x3x1x1
b256.fromrgb.bias 128
b256.fromrgb.resample_filter 4x4
b256.conv0.weight 128x128x3x3
b256.conv0.bias 128
b256.conv0.resample_filter 4x4
b256.conv1.weight 256x128x3x3
b256.conv1.bias 256
b256.conv1.resample_filter 4x4
b256.skip.weight 256x128x1x1
b256.skip.resample_filter 4x4
b128.resample_filter 4x4
b128.conv0.weight 256x256x3x3
b128.conv0.bias 256
b128.conv0.resample_filter 4x4
b128.conv1.weight 512x256x3x3
b128.conv1.bias 512
b128.conv1.resample_filter 4x4
b128.skip.weight 512x256x1x1
b128.skip.resample_filter 4x4
b64.resample_filter 4x4
b64.conv0.weight 512x512x3x3
b64.conv0.bias 512
b64.conv0.resample_filter 4x4
b64.conv1.weight 512x512x3x3
b64.conv1.bias 512
b64.conv1.resample_filter 4x4
b64.skip.weight 512x512x1x1
b64.skip.resample_filter 4x4
b32.resample_filter 4x4
b32.conv0.weight 512x512x3x3
b32.conv0.bias 512
b32.conv0.resample_filter 4x4
b32.conv1.weight 512x512x3x3
b32.conv1.bias 512
b32.conv1.resample_filter 4x4
b32.skip.weight 512x512x1x1
b32.skip.resample_filter 4x4
b16.resample_filter 4x4
b16.conv0.weight 512x512x3x3
b16.conv0.bias 512
b16.conv0.resample_filter 4x4
b16.conv1.weight 512x512x3x3
b16.conv1.bias 512
b16.conv1.resample_filter 4x4
b16.skip.weight 512x512x1x1
b16.skip.resample_filter 4x4
b8.resample_filter 4x4
b8.conv0.weight 512x512x3x3
b8.conv0.bias 512
b8.conv0.resample_filter 4x4
b8.conv1.weight 512x512x3x3
b8.conv1.bias 512
b8.conv1.resample_filter 4x4
b8.skip.weight 512x512x1x1
b8.skip.resample_filter 4x4
b4.conv.weight 512x513x3x3
b4.conv.bias 512
b4.conv.resample_filter 4x4
b4.fc.weight 512x8192
b4.fc.bias 512
b4.fts.weight 512x512
b4.fts.bias 512
b4.out.weight 1x512
b4.out.bias 1
"""
