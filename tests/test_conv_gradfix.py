"""Written-out convolution gradients (t2i.models.conv_gradfix) equal autograd's, to the second order."""
import pytest
import torch
import torch.nn.functional as F

from t2i.models import conv_gradfix


@pytest.mark.parametrize("transposed,stride,padding,groups,size", [
    (False, 1, 1, 1, (7, 9)), (False, 2, 0, 1, (8, 7)), (False, 2, 1, 2, (9, 6)),
    (True, 1, 0, 1, (5, 6)), (True, 2, 1, 1, (4, 5)), (True, 2, 0, 2, (5, 3)),
])
def test_first_and_second_order_gradients_match_autograd(transposed, stride, padding, groups, size):
    """Value, gradient and gradient of a gradient (with respect to input and weight) as through
    F.conv2d / F.conv_transpose2d; float64, where both sum the same products."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, *size, dtype=torch.float64, requires_grad=True)
    w_shape = (4, 6 // groups, 3, 3) if transposed else (6, 4 // groups, 3, 3)
    w = torch.randn(w_shape, dtype=torch.float64, requires_grad=True)
    ours = conv_gradfix.conv_transpose2d if transposed else conv_gradfix.conv2d
    ref = F.conv_transpose2d if transposed else F.conv2d
    results = []
    for op in (ours, ref):
        y = op(x, w, stride=stride, padding=padding, groups=groups)
        weights = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).reshape(y.shape)
        gx, gw = torch.autograd.grad((y * weights).sum() + y.square().sum(), (x, w), create_graph=True)
        # R1's shape: a penalty on the input gradient, differentiated with respect to the weights (and input)
        ggx, ggw = torch.autograd.grad(gx.square().sum() + (gw * gw.detach()).sum(), (x, w))
        results.append((y, gx, gw, ggx, ggw))
    for name, a, b in zip(("y", "dx", "dw", "d2x", "d2w"), *results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


def test_under_autocast_saves_and_returns_consistent_dtypes():
    """bf16 autocast on the CPU: the forward runs in bf16, the gradients reach float32 leaves."""
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    w = torch.randn(5, 3, 3, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv_gradfix.conv2d(x, w, padding=1)
    assert y.dtype == torch.bfloat16
    (gx,) = torch.autograd.grad(y.float().square().sum(), x, create_graph=True)
    (gw,) = torch.autograd.grad(gx.float().square().sum(), w)
    assert gx.dtype == gw.dtype == torch.float32 and torch.isfinite(gw).all()
