"""LPD's prompt decomposer (against a reference written from the formulas, the original's weight layout, the
saved config, the optional padding mask) and its composition around SD3 (condition layout, mean, CFG)."""
import pytest
import torch

from t2i.diffusion.lpd import component_conditions, guided, mean_over_components, repeat_for_components
from t2i.models.lpd import ORIGINAL_PREFIX, PromptDecomposer, from_original_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")
W, N, T, HEADS, LAYERS = 16, 3, 4, 2, 2


@pytest.fixture
def model() -> PromptDecomposer:
    torch.manual_seed(0)
    m = PromptDecomposer(width=W, num_components=N, num_tokens=T, heads=HEADS, layers=LAYERS).double().eval()
    with torch.no_grad():  # non-zero biases, so that every term is exercised
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def reference(model: PromptDecomposer, text: torch.Tensor) -> torch.Tensor:
    """One (prompt, component) at a time: LN without affine, attention of the queries over [queries; text]
    with the packed in_proj split into q, k, v and heads of W / HEADS, then the squared-ReLU MLP."""
    def ln(x):
        return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-6)

    out = torch.empty(text.shape[0], N, T, W, dtype=text.dtype)
    d = W // HEADS
    for b in range(text.shape[0]):
        for i in range(N):
            lat = model.queries[i]
            for block in model.blocks:
                a = block.attn
                q_in, kv = ln(lat), torch.cat([ln(lat), ln(text[b])])
                wq, wk, wv = a.in_proj_weight.chunk(3)
                bq, bk, bv = a.in_proj_bias.chunk(3)
                q, k, v = q_in @ wq.T + bq, kv @ wk.T + bk, kv @ wv.T + bv
                heads = []
                for h in range(HEADS):
                    s = q[:, h * d:(h + 1) * d] @ k[:, h * d:(h + 1) * d].T / d ** 0.5
                    heads.append(torch.softmax(s, -1) @ v[:, h * d:(h + 1) * d])
                lat = lat + torch.cat(heads, -1) @ a.out_proj.weight.T + a.out_proj.bias
                fc, proj = block.mlp["c_fc"], block.mlp["c_proj"]
                lat = lat + torch.relu(ln(lat) @ fc.weight.T + fc.bias).square() @ proj.weight.T + proj.bias
            out[b, i] = lat
    return out


def test_decomposer_is_the_perceiver_of_the_formulas(model):
    text = torch.randn(2, 7, W, dtype=torch.float64)
    with torch.no_grad():
        out = model(text)
        torch.testing.assert_close(out, reference(model, text), rtol=1e-10, atol=1e-10)
        assert out.shape == (2, N, T, W)
        assert not torch.allclose(out[:, 0], out[:, 1])  # components differ by their queries
        torch.testing.assert_close(model(text[1:]), out[1:], rtol=1e-12, atol=1e-12)  # rows are independent
    with pytest.raises(ValueError, match=f"text states \\[B, L, {W}\\]"):
        model(torch.randn(1, 5, W + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="must divide the width"):
        PromptDecomposer(width=W, heads=3)


def test_padding_is_attended_by_default_and_left_out_with_a_mask(model):
    text = torch.randn(2, 6, W, dtype=torch.float64)
    changed = text.clone()
    changed[:, 4:] = torch.randn(2, 2, W, dtype=torch.float64)  # the "padding" tokens
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]] * 2, dtype=torch.bool)
    with torch.no_grad():
        assert not torch.allclose(model(text), model(changed))  # the original: pads change the result
        torch.testing.assert_close(model(text, mask), model(changed, mask), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(model(text, torch.ones(2, 6, dtype=torch.bool)), model(text))
        torch.testing.assert_close(model(text, mask), model(text[:, :4]), rtol=1e-10, atol=1e-10)


def _original_layout(model: PromptDecomposer) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {ORIGINAL_PREFIX + ("latents" if k == "queries" else k.replace("blocks.", "perceiver_blocks.", 1)): v
            for k, v in state.items()}


def test_the_originals_weights_load_strictly_and_need_heads(model):
    original = _original_layout(model)
    assert f"{ORIGINAL_PREFIX}perceiver_blocks.1.mlp.c_proj.weight" in original
    loaded = from_original_state_dict(original, heads=HEADS).double()  # built in float32: weights rounded once
    assert {k: loaded.config[k] for k in ("width", "num_components", "num_tokens", "layers", "heads")} == \
        {"width": W, "num_components": N, "num_tokens": T, "layers": LAYERS, "heads": HEADS}
    text = torch.randn(1, 5, W, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(text), model(text), rtol=1e-5, atol=1e-5)
        # the original's defect: heads is in no tensor shape, so another value loads and computes something else
        assert not torch.allclose(from_original_state_dict(original, heads=4).double()(text), model(text))
    with pytest.raises(ValueError, match="unexpected tensor 'extra'"):
        from_original_state_dict({**original, "extra": torch.zeros(1)}, heads=HEADS)
    with pytest.raises(ValueError, match="no mask_head.connector.latents"):
        from_original_state_dict({k: v for k, v in original.items() if not k.endswith("latents")}, heads=HEADS)
    gap = {k: v for k, v in original.items() if ".perceiver_blocks.0." not in k}
    with pytest.raises(ValueError, match=r"not numbered 0..0"):
        from_original_state_dict(gap, heads=HEADS)


def test_saved_folder_keeps_the_config(model, tmp_path):
    model.save_pretrained(tmp_path / "decomposer")
    again = PromptDecomposer.from_pretrained(tmp_path / "decomposer").double()  # loaded as float32, then widened
    assert again.config.heads == HEADS and again.config.num_tokens == T
    text = torch.randn(1, 3, W, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(again(text), model(text), rtol=1e-5, atol=1e-5)


def test_conditions_are_clip_then_each_component_component_major():
    clip, comps = torch.randn(2, 5, 6), torch.randn(2, N, T, W)
    cond = component_conditions(clip, comps)
    assert cond.shape == (N * 2, 5 + T, W)
    for i in range(N):
        for b in range(2):
            row = cond[i * 2 + b]
            torch.testing.assert_close(row[:5, :6], clip[b])
            assert not row[:5, 6:].any()  # zero-padded to the width
            torch.testing.assert_close(row[5:], comps[b, i])
    with pytest.raises(ValueError, match="more than the decomposer's width"):
        component_conditions(torch.randn(2, 5, W + 1), comps)
    torch.testing.assert_close(repeat_for_components(torch.arange(2.0), N), torch.tensor([0.0, 1, 0, 1, 0, 1]))


def test_the_composition_is_the_mean_and_guidance_commutes_with_it():
    v_u, v_c = torch.randn(N * 2, 4, 3, 3), torch.randn(N * 2, 4, 3, 3)
    mean = mean_over_components(v_c, N)
    torch.testing.assert_close(mean[1], (v_c[1] + v_c[3] + v_c[5]) / 3)
    per_component = mean_over_components(guided(v_u, v_c, 4.5), N)
    torch.testing.assert_close(per_component, guided(mean_over_components(v_u, N), mean, 4.5))
    with pytest.raises(ValueError, match="not 3 components"):
        mean_over_components(torch.randn(4, 2), N)
