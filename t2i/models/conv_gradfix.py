"""2-D convolution whose gradients of every order are convolutions run by the fast kernels.

PyTorch's own double backward of a convolution (needed by R1 and path-length regularisation, which
differentiate a gradient) computes the weight-gradient term as a convolution whose "kernel" is the
whole feature map: on an H200 one such call took ~4 s in a 256-px LAFITE discriminator. Here the
backward is written out, as StyleGAN2's ``conv2d_gradfix`` does: the input gradient is the
transposed convolution (the same :class:`_Conv`, so differentiable again) and the weight gradient a
:class:`_ConvWeightGrad` that runs ``aten.convolution_backward``'s weight kernel and whose own
backward is again two convolutions.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class ConvParams(NamedTuple):
    stride: tuple[int, int]
    padding: tuple[int, int]
    transposed: bool
    output_padding: tuple[int, int]
    groups: int

    def run(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.convolution(x, w, None, self.stride, self.padding, (1, 1), self.transposed,
                                          self.output_padding, self.groups)

    def adjoint(self, x_size, y_size, w_size) -> "ConvParams":
        """The convolution taking ``y``-shaped gradients back to ``x``'s shape with the same weight."""
        if self.transposed:
            return self._replace(transposed=False, output_padding=(0, 0))
        k = w_size[2:]
        out_pad = tuple(x_size[i + 2] - ((y_size[i + 2] - 1) * self.stride[i] - 2 * self.padding[i] + k[i])
                        for i in range(2))
        return self._replace(transposed=True, output_padding=out_pad)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Autocast's dtype where it is on (the forward casts explicitly, so that what the backward saved and gets agree)."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, p: ConvParams):
        dtype = _compute_dtype(x)
        x, w = x.to(dtype), w.to(dtype)
        ctx.save_for_backward(x, w)
        ctx.p = p
        return p.run(x, w)

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        p, dy = ctx.p, dy.to(x.dtype)
        dx = _Conv.apply(dy, w, p.adjoint(x.shape, dy.shape, w.shape)) if ctx.needs_input_grad[0] else None
        dw = _ConvWeightGrad.apply(dy, x, w, p) if ctx.needs_input_grad[1] else None
        return dx, dw, None


class _ConvWeightGrad(torch.autograd.Function):
    """``dw(dy, x)``, bilinear; ``w`` only gives the shape and dtype."""

    @staticmethod
    def forward(ctx, dy, x, w, p: ConvParams):
        dy, w = dy.to(x.dtype), w.to(x.dtype)
        ctx.save_for_backward(dy, x)
        ctx.p, ctx.w_shape = p, w.shape
        return torch.ops.aten.convolution_backward(dy, x, w, None, p.stride, p.padding, (1, 1), p.transposed,
                                                   p.output_padding, p.groups, (False, True, False))[1]

    @staticmethod
    def backward(ctx, ddw):
        dy, x = ctx.saved_tensors
        p, ddw = ctx.p, ddw.to(x.dtype)
        d_dy = _Conv.apply(x, ddw, p) if ctx.needs_input_grad[0] else None
        d_x = _Conv.apply(dy, ddw, p.adjoint(x.shape, dy.shape, ctx.w_shape)) if ctx.needs_input_grad[1] else None
        return d_dy, d_x, None, None


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def conv2d(x: torch.Tensor, w: torch.Tensor, stride=1, padding=0, groups: int = 1) -> torch.Tensor:
    """``F.conv2d`` without bias, with the written-out gradients of this module."""
    return _Conv.apply(x, w, ConvParams(_pair(stride), _pair(padding), False, (0, 0), groups))


def conv_transpose2d(x: torch.Tensor, w: torch.Tensor, stride=1, padding=0, groups: int = 1) -> torch.Tensor:
    """``F.conv_transpose2d`` without bias or output padding, with the written-out gradients of this module."""
    return _Conv.apply(x, w, ConvParams(_pair(stride), _pair(padding), True, (0, 0), groups))
