"""JiT-Text network: presets, shapes, RoPE, init, save/load, and the seed's init bugs kept out."""
import json

import pytest
import torch

from t2i.models.jit import JIT_PRESETS, JiT, Rope2D, jit_from_preset

LLM_JP_3_3_7B_DIM = 3072  # hidden size of llm-jp/llm-jp-3-3.7b, the seed's text encoder

# name: (depth, hidden, heads, patch, bottleneck, in_context_start, image size)
PAPER = {
    "JiT-B/16-Text": (12, 768, 12, 16, 128, 4, 256),
    "JiT-B/32-Text": (12, 768, 12, 32, 128, 4, 512),
    "JiT-L/16-Text": (24, 1024, 16, 16, 128, 8, 256),
    "JiT-L/32-Text": (24, 1024, 16, 32, 128, 8, 512),
    "JiT-H/16-Text": (32, 1280, 16, 16, 256, 10, 256),
    "JiT-H/32-Text": (32, 1280, 16, 32, 256, 10, 512),
}
SEED_TABLE_M = {"B": 92, "L": 308, "H": 637}  # the seed README's parameter column
PAPER_M = {"B": 131, "L": 459, "H": 953}  # JiT paper, class-conditional /16 models


pytestmark = pytest.mark.usefixtures("one_thread")


def randomized(model: JiT, seed: int = 0) -> JiT:
    """Replace the zero-initialised weights so that every path of the network is live."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + (1.0 if "norm" in name else 0.0))
    return model


def tiny(**overrides) -> JiT:
    return jit_from_preset("JiT-T/4-Text", input_size=overrides.pop("input_size", 32), text_dim=16, **overrides)


@pytest.mark.parametrize("name", list(PAPER))
def test_paper_presets_match_the_seed_architecture_and_size(name):
    depth, hidden, heads, patch, bottleneck, start, size = PAPER[name]
    size_class = name[4]
    with torch.device("meta"):
        model = jit_from_preset(name, input_size=size, text_dim=LLM_JP_3_3_7B_DIM)
    cfg = model.config
    assert (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.patch_size) == (depth, hidden, heads, patch)
    assert (cfg.bottleneck_dim, cfg.in_context_len, cfg.in_context_start) == (bottleneck, 32, start)
    assert len(model.blocks) == depth
    total = sum(p.numel() for p in model.parameters())
    adaln = sum(p.numel() for n, p in model.named_parameters() if "adaLN_modulation" in n)
    # The network as in the code (and the JiT paper) ...
    assert abs(total / 1e6 / PAPER_M[size_class] - 1) < 0.10
    # ... while the seed's README table leaves out the adaLN modulation layers.
    assert abs((total - adaln) / 1e6 / SEED_TABLE_M[size_class] - 1) < 0.10


@pytest.mark.parametrize("name", ["JiT-T/4-Text", "JiT-T/8-Text", "JiT-S/4-Text", "JiT-S/8-Text"])
@pytest.mark.parametrize("size", [32, 64])
def test_small_presets_forward_shapes_and_conditioning(name, size):
    torch.manual_seed(0)
    model = jit_from_preset(name, input_size=size, text_dim=24).eval()
    x, t, y = torch.randn(2, 3, size, size), torch.rand(2), torch.randn(2, 24)
    out = model(x, t, y)
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # adaLN-Zero: zero final layer at init
    randomized(model)
    out = model(x, t, y)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, model(x, t, torch.randn(2, 24)))  # depends on the text
    assert not torch.allclose(out, model(x, t.flip(0), y))  # and on the time


def test_samples_in_a_batch_are_independent():
    model = randomized(tiny()).eval()
    x, t, y = torch.randn(3, 3, 32, 32), torch.rand(3), torch.randn(3, 16)
    together = model(x, t, y)
    alone = torch.cat([model(x[i:i + 1], t[i:i + 1], y[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_in_context_tokens_join_at_in_context_start():
    model = tiny(depth=4, in_context_len=5, in_context_start=1)
    lengths = []
    for block in model.blocks:
        block.register_forward_hook(lambda mod, inp, out: lengths.append(out.shape[1]))
    model(torch.randn(1, 3, 32, 32), torch.rand(1), torch.randn(1, 16))
    assert lengths == [64, 69, 69, 69]  # 8x8 patches, then 5 text tokens in front


def test_rope_is_relative_and_leaves_in_context_tokens_alone():
    grid, head_dim, prefix = 4, 8, 2
    rope = Rope2D(head_dim, grid, prefix)
    q = torch.randn(head_dim).expand(1, 1, prefix + grid * grid, head_dim)
    out = rope(q)
    torch.testing.assert_close(out[..., :prefix, :], q[..., :prefix, :])
    torch.testing.assert_close(out.norm(dim=-1), q.norm(dim=-1))
    torch.testing.assert_close(rope(q[..., prefix:, :]), out[..., prefix:, :])  # before the prefix joins
    tok = out[0, 0, prefix:].reshape(grid, grid, head_dim)
    # equal (row, col) offsets give equal scores, different offsets different ones
    torch.testing.assert_close(tok[0, 0] @ tok[1, 2], tok[2, 1] @ tok[3, 3])
    assert not torch.allclose(tok[0, 0] @ tok[1, 2], tok[0, 0] @ tok[2, 1])


def test_save_pretrained_round_trip(tmp_path):
    model = randomized(tiny(proj_dropout=0.1)).eval()
    model.save_pretrained(tmp_path)
    loaded = JiT.from_pretrained(tmp_path).eval()
    public = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(model.config)
    x, t, y = torch.randn(2, 3, 32, 32), torch.rand(2), torch.randn(2, 16)
    torch.testing.assert_close(loaded(x, t, y), model(x, t, y), rtol=0, atol=0)
    # the system's path: config dict (JSON) + a state dict
    rebuilt = JiT.from_config(json.loads(json.dumps(dict(model.config))))
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt.eval()(x, t, y), model(x, t, y), rtol=0, atol=0)


def test_initialisation_xavier_linears_and_zero_adaln():
    model = tiny()
    zero = [b.adaLN_modulation[-1] for b in model.blocks]
    zero += [model.final_layer.adaLN_modulation[-1], model.final_layer.linear]
    assert all(torch.count_nonzero(m.weight) == 0 and torch.count_nonzero(m.bias) == 0 for m in zero)
    for linear in (model.blocks[0].attn.qkv, model.blocks[-1].mlp.w12, model.text_proj):
        bound = (6 / (linear.in_features + linear.out_features)) ** 0.5
        assert linear.weight.abs().max() <= bound and linear.weight.std() > bound / 3
        assert torch.count_nonzero(linear.bias) == 0
    assert 0.01 < model.t_embedder.mlp[0].weight.std() < 0.03


def test_only_trainable_network_weights_are_parameters_and_saved():
    """The seed nested the frozen LLM in the network and re-initialised it; here it is outside."""
    model = tiny()
    names = dict(model.named_parameters())
    assert all(p.requires_grad for p in names.values())
    assert set(model.state_dict()) == set(names)  # fixed tables are not checkpointed
    assert not any("llm" in n or "embedding_table" in n for n in names)
    assert model.text_proj.in_features == 16 and model.text_proj.out_features == model.config.hidden_size
    assert torch.count_nonzero(model.text_proj.weight) > 0  # initialised, trainable


def test_dropout_only_in_the_middle_half_of_the_blocks():
    model = jit_from_preset("JiT-T/4-Text", input_size=32, text_dim=16, depth=8, proj_dropout=0.3, attn_dropout=0.2)
    assert [b.mlp.drop.p for b in model.blocks] == [0.0, 0.0, 0.3, 0.3, 0.3, 0.3, 0.0, 0.0]
    assert [b.attn.attn_drop for b in model.blocks] == [0.0, 0.0, 0.2, 0.2, 0.2, 0.2, 0.0, 0.0]


def test_preset_lookup_and_config_errors():
    assert set(JIT_PRESETS) >= {"JiT-B/16-Text", "JiT-H/32-Text", "JiT-T/4-Text", "JiT-S/8-Text"}
    assert tiny(hidden_size=32, num_heads=1).config.hidden_size == 32
    with pytest.raises(ValueError, match="in_context_start"):
        tiny(depth=2, in_context_start=2)
    with pytest.raises(KeyError, match="JiT-X/4-Text"):
        jit_from_preset("JiT-X/4-Text", input_size=32, text_dim=16)
    with pytest.raises(ValueError, match="hiden_size"):
        tiny(hiden_size=64)
    with pytest.raises(ValueError, match="patch_size"):
        tiny(input_size=30)
    with pytest.raises(ValueError, match="num_heads"):
        tiny(num_heads=5)
    with pytest.raises(ValueError, match="expected 32x32"):
        tiny()(torch.randn(1, 3, 64, 64), torch.rand(1), torch.randn(1, 16))


def test_public_config_is_the_same_in_every_process():
    """A state saved by one process must match the fingerprint of the next (set order varies with the hash seed)."""
    import os
    import subprocess
    import sys

    code = ("import json; from t2i.models import public_config; from t2i.models.jit import jit_from_preset; "
            "m = jit_from_preset('JiT-T/4-Text', input_size=32, text_dim=8, depth=2); "
            "print(json.dumps(public_config(m))); print(json.dumps(m.config['_use_default_values']))")
    outs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout.splitlines() for seed in ("1", "2")]
    assert outs[0][0] == outs[1][0]
    assert len(json.loads(outs[0][1])) >= 2  # a set of several names, the case that varied
    assert "_use_default_values" not in json.loads(outs[0][0])


def test_patch_embedding_is_the_seeds_pair_of_convolutions():
    """The patch embedding runs as matrix products on the patches; it must be the map of the seed's
    strided convolution followed by its 1x1 convolution, tokens in row-major patch order."""
    embed = randomized(tiny(input_size=32)).x_embedder
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    embed = embed.double()
    reference = embed.proj2(embed.proj1(x)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(embed(x), reference, rtol=1e-12, atol=1e-12)
