"""StyleGAN2 primitives in plain PyTorch: no custom CUDA kernels, so they run on any device and OS.

A re-implementation of the semantics of ``torch_utils/ops`` and the layer classes of
NVlabs/stylegan2-ada-pytorch (which LAFITE ships unchanged), with their gradients written out as
the original's ops write them (so that R1 and path length, gradients of gradients, stay fast; see
``t2i.models.conv_gradfix``): FIR resampling (``upfirdn2d``), convolution with up/down-sampling (``conv2d_resample``),
fused bias + activation (``bias_act``), the modulated convolution, equalised-learning-rate layers
and the minibatch-stddev layer. Buffers and parameters carry the original's names, so state dicts
map one to one. Float32 only: the original's fp16 pre-normalisation is left out.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from t2i.models import conv_gradfix

# name -> (function(x, alpha), default alpha, default gain)
ACTIVATIONS = {
    "linear": (lambda x, alpha: x, 0.0, 1.0),
    "relu": (lambda x, alpha: F.relu(x), 0.0, math.sqrt(2)),
    "lrelu": (lambda x, alpha: F.leaky_relu(x, alpha), 0.2, math.sqrt(2)),
}


def _padding4(padding) -> list[int]:
    """``p``, ``[px, py]`` or ``[px0, px1, py0, py1]`` -> ``[px0, px1, py0, py1]``."""
    if isinstance(padding, int):
        padding = [padding, padding]
    if len(padding) == 2:
        px, py = padding
        return [px, px, py, py]
    return list(padding)


def _filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """``(width, height)`` of a filter from :func:`setup_filter`; ``None`` is 1x1."""
    return (1, 1) if f is None else (f.shape[-1], f.shape[0])


def setup_filter(f, normalize: bool = True, flip_filter: bool = False, gain: float = 1,
                 separable: bool | None = None) -> torch.Tensor:
    """A float32 FIR filter for :func:`upfirdn2d`: 1-D taps become their outer product (2-D)
    unless separable (default: 1-D with >= 8 taps); normalised to unit DC gain, times ``gain``."""
    f = torch.as_tensor(1 if f is None else f, dtype=torch.float32)
    if f.ndim == 0:
        f = f[None]
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    return f * gain ** (f.ndim / 2)


def _upfirdn2d_forward(x: torch.Tensor, f: torch.Tensor, up: int, down: int, padding: list[int],
                       flip_filter: bool, gain: float) -> torch.Tensor:
    n, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.reshape(n, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
    x = F.pad(x, padding)
    f = f.to(x) * gain ** (f.ndim / 2)
    if not flip_filter:  # F.conv2d correlates; flipping the taps makes it a convolution
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        return F.conv2d(x, f.expand(c, 1, *f.shape).contiguous(), groups=c, stride=down)
    x = F.conv2d(x, f.expand(c, 1, 1, -1).contiguous(), groups=c, stride=(1, down))
    return F.conv2d(x, f[:, None].expand(c, 1, -1, 1).contiguous(), groups=c, stride=(down, 1))


class _UpFirDn2d(torch.autograd.Function):
    """:func:`upfirdn2d` with its adjoint as backward: the gradient of a FIR resampling is another one
    (up and down swapped, the filter mirrored, the padding from the shapes), so gradients of any order
    stay FIR resamplings. Autograd through ``F.conv2d`` instead differentiates the depthwise
    convolution generically, and its double backward (R1, path length) computes convolutions with
    image-sized kernels: on an H200 that took ~90 % of a 256-px LAFITE step."""

    @staticmethod
    def forward(ctx, x, f, up, down, padding, flip_filter, gain):
        ctx.save_for_backward(f)
        ctx.args = (x.shape[-2:], up, down, padding, flip_filter, gain)
        return _upfirdn2d_forward(x, f, up, down, padding, flip_filter, gain)

    @staticmethod
    def backward(ctx, dy):
        (f,), ((ih, iw), up, down, (px0, px1, py0, py1), flip_filter, gain) = ctx.saved_tensors, ctx.args
        fw, fh = _filter_size(f)
        oh, ow = dy.shape[-2:]
        p = [fw - px0 - 1, iw * up - ow * down + px0 - up + 1, fh - py0 - 1, ih * up - oh * down + py0 - up + 1]
        dx = _UpFirDn2d.apply(dy, f, down, up, p, not flip_filter, gain) if ctx.needs_input_grad[0] else None
        return dx, None, None, None, None, None, None


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up: int = 1, down: int = 1, padding=0,
              flip_filter: bool = False, gain: float = 1) -> torch.Tensor:
    """Per channel: upsample by inserting ``up - 1`` zeros after each pixel, pad (negative = crop),
    convolve with the FIR ``f`` (correlate if ``flip_filter``) times ``gain``, keep every
    ``down``-th pixel. ``f`` is 2-D, or 1-D and applied along x then y; it is a constant (no gradient)."""
    f = torch.ones(1, 1) if f is None else f
    return _UpFirDn2d.apply(x, f.detach(), up, down, _padding4(padding), flip_filter, gain)


def upsample2d(x: torch.Tensor, f: torch.Tensor | None, up: int = 2, padding=0, flip_filter: bool = False,
               gain: float = 1) -> torch.Tensor:
    """Upsample by ``up`` with the FIR ``f``, padded so the output is ``up`` times the input."""
    fw, fh = _filter_size(f)
    px0, px1, py0, py1 = _padding4(padding)
    p = [px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2, py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2]
    return upfirdn2d(x, f, up=up, padding=p, flip_filter=flip_filter, gain=gain * up * up)


def downsample2d(x: torch.Tensor, f: torch.Tensor | None, down: int = 2, padding=0, flip_filter: bool = False,
                 gain: float = 1) -> torch.Tensor:
    """Downsample by ``down`` with the FIR ``f``, padded so the output is the input over ``down``."""
    fw, fh = _filter_size(f)
    px0, px1, py0, py1 = _padding4(padding)
    p = [px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2, py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2]
    return upfirdn2d(x, f, down=down, padding=p, flip_filter=flip_filter, gain=gain)


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None = None, up: int = 1, down: int = 1,
                    padding=0, groups: int = 1, flip_weight: bool = True, flip_filter: bool = False) -> torch.Tensor:
    """2-D convolution with optional FIR up/down-sampling by an integer factor, composed as in the
    original: ``padding`` is relative to the upsampled image and applied once; upsampling is a
    strided transposed convolution followed by the FIR, downsampling the FIR followed by a strided
    convolution. ``flip_weight=True`` correlates (like ``F.conv2d``), ``False`` convolves."""
    out_ch, in_per_group, kh, kw = w.shape
    fw, fh = _filter_size(f)
    px0, px1, py0, py1 = _padding4(padding)
    if up > 1:
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2

    def conv(x, w, stride=1, pad=(0, 0), transpose=False, flip=flip_weight):
        if not flip:
            w = w.flip([2, 3])
        op = conv_gradfix.conv_transpose2d if transpose else conv_gradfix.conv2d
        return op(x, w, stride=stride, padding=pad, groups=groups)

    if kw == kh == 1 and down > 1 and up == 1:
        return conv(upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1], flip_filter=flip_filter), w)
    if kw == kh == 1 and up > 1 and down == 1:
        return upfirdn2d(conv(x, w), f, up=up, padding=[px0, px1, py0, py1], gain=up ** 2, flip_filter=flip_filter)
    if down > 1 and up == 1:
        return conv(upfirdn2d(x, f, padding=[px0, px1, py0, py1], flip_filter=flip_filter), w, stride=down)
    if up > 1:
        # conv_transpose2d wants [in, out/groups, kh, kw]
        w = w.reshape(groups, out_ch // groups, in_per_group, kh, kw).transpose(1, 2)
        w = w.reshape(groups * in_per_group, out_ch // groups, kh, kw)
        px0, px1, py0, py1 = px0 - (kw - 1), px1 - (kw - up), py0 - (kh - 1), py1 - (kh - up)
        pxt, pyt = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)
        x = conv(x, w, stride=up, pad=(pyt, pxt), transpose=True, flip=not flip_weight)
        x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up ** 2,
                      flip_filter=flip_filter)
        return upfirdn2d(x, f, down=down, flip_filter=flip_filter) if down > 1 else x
    if px0 == px1 >= 0 and py0 == py1 >= 0:
        return conv(x, w, pad=(py0, px0))
    return conv(F.pad(x, [px0, px1, py0, py1]), w)


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, dim: int = 1, act: str = "linear",
             alpha: float | None = None, gain: float | None = None, clamp: float | None = None) -> torch.Tensor:
    """``clamp(act(x + b) * gain, -clamp, clamp)``; ``gain`` defaults to the activation's
    (sqrt(2) for relu/lrelu, 1 for linear), ``alpha`` to 0.2 for lrelu; ``b`` runs along ``dim``."""
    func, def_alpha, def_gain = ACTIVATIONS[act]
    if b is not None:
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = func(x, def_alpha if alpha is None else alpha)
    gain = def_gain if gain is None else gain
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale ``x`` to unit mean square along ``dim``."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, noise: torch.Tensor | None = None,
                     up: int = 1, down: int = 1, padding: int = 0, resample_filter: torch.Tensor | None = None,
                     demodulate: bool = True, flip_weight: bool = True, fused_modconv: bool = True) -> torch.Tensor:
    """StyleGAN2's modulated convolution: input channels scaled by ``styles`` ``[N, in]``, output
    channels optionally demodulated to unit norm, then ``noise`` added. ``fused_modconv`` builds
    per-sample weights and runs one grouped convolution; otherwise activations are scaled before
    and after a shared convolution (same result)."""
    n = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    if demodulate:  # 1/||weight * style|| per sample and output channel, without the [N, O, I, k, k] tensor
        dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()  # [N, O]
    if not fused_modconv:
        x = x * styles.reshape(n, -1, 1, 1)
        x = conv2d_resample(x, weight, f=resample_filter, up=up, down=down, padding=padding, flip_weight=flip_weight)
        if demodulate:
            x = x * dcoefs.reshape(n, -1, 1, 1)
        return x if noise is None else x + noise
    w = weight[None] * styles.reshape(n, 1, -1, 1, 1)  # [N, O, I, k, k]
    if demodulate:
        w = w * dcoefs.reshape(n, -1, 1, 1, 1)
    x = conv2d_resample(x.reshape(1, -1, *x.shape[2:]), w.reshape(-1, in_ch, kh, kw), f=resample_filter, up=up,
                        down=down, padding=padding, groups=n, flip_weight=flip_weight)
    x = x.reshape(n, -1, *x.shape[2:])
    return x if noise is None else x + noise


class FullyConnectedLayer(nn.Module):
    """Equalised-learning-rate linear layer: the weight is stored as N(0, 1/lr_multiplier^2) and used
    times ``lr_multiplier / sqrt(in_features)``; the bias is stored as ``bias_init`` and used times
    ``lr_multiplier``; then ``bias_act`` with ``activation``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1, bias_init: float = 0):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = None if self.bias is None else self.bias * self.bias_gain
        if self.activation == "linear":
            return F.linear(x, self.weight * self.weight_gain, b)
        return bias_act(x.matmul((self.weight * self.weight_gain).t()), b, act=self.activation)


class Conv2dLayer(nn.Module):
    """Equalised-learning-rate convolution with optional up/down-sampling by 2, bias, activation
    (times its default gain and ``gain``) and output clamping to ``conv_clamp * gain``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1, resample_filter=(1, 3, 3, 1),
                 conv_clamp: float | None = None):
        super().__init__()
        self.activation = activation
        self.up, self.down = up, down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = ACTIVATIONS[activation][2]
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1) -> torch.Tensor:
        x = conv2d_resample(x, self.weight * self.weight_gain, f=self.resample_filter, up=self.up, down=self.down,
                            padding=self.padding, flip_weight=self.up == 1)
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return bias_act(x, self.bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp)


class MinibatchStdLayer(nn.Module):
    """Appends ``num_channels`` feature maps holding the standard deviation across groups of
    ``group_size`` samples (sample ``i`` belongs to group ``i % (N / group_size)``)."""

    def __init__(self, group_size: int | None, num_channels: int = 1):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = n if self.group_size is None else min(self.group_size, n)
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)
        y = (y.var(dim=0, correction=0) + 1e-8).sqrt()  # [n/g, F, c/F, H, W]
        y = y.mean(dim=[2, 3, 4]).reshape(-1, f, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)
