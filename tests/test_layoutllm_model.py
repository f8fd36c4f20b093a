"""The drawer's network: diffusers' GLIGEN U-Net with LayoutLLM's relation module (t2i.models.gligen)."""
from __future__ import annotations

import torch

from t2i.models.gligen import (RelationCrossAttention, RelationUNet2DConditionModel, box_cells, level_size,
                               relation_kwargs)

TINY = dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            layers_per_block=1, cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8)


def _original_rela_fuse(module: RelationCrossAttention, x, relations, boxes, masks, h, w):
    """The original's RelationCrossAttention.forward, restated with its loops (LayoutLLM-T2I attention.py)."""
    b, _, c = x.shape
    hidden = module.norm3(x).reshape(b, h, w, c)
    mo = boxes.shape[1]
    count = masks.sum(-1).tolist()
    obj = torch.zeros(b, mo, c, dtype=x.dtype)
    obj_mask = torch.zeros(b, mo, h, w, 1, dtype=x.dtype)
    for k in range(b):
        for i in range(mo):
            left, top = int(boxes[k, i, 0] * w), int(boxes[k, i, 1] * h)
            right, bottom = int(min(boxes[k, i, 2] * w, w)), int(min(boxes[k, i, 3] * h, h))
            if i < count[k] and left != right and top != bottom:
                obj_mask[k, i, top:bottom, left:right] = 1
                obj[k, i] = hidden[k, top:bottom, left:right].reshape(-1, c).mean(0)
            else:
                break
    obj = obj + module.alpha_attn.tanh() * module.attn(module.norm1(obj), encoder_hidden_states=relations)
    obj = obj + module.alpha_dense.tanh() * module.ff(module.norm2(obj))
    out = hidden[:, None] + obj_mask * obj[:, :, None, None, :]
    return out.mean(1).reshape(b, h * w, c)


def test_relation_module_equals_the_original_loops():
    torch.manual_seed(0)
    module = RelationCrossAttention(16, 12, heads=2, head_dim=8).double()
    with torch.no_grad():
        module.alpha_attn.fill_(0.7), module.alpha_dense.fill_(-0.4)  # trained gates, so every path counts
    h, w, slots = 4, 6, 5
    x = torch.randn(3, h * w, 16, dtype=torch.float64)
    relations = torch.randn(3, 4, 12, dtype=torch.float64)
    boxes = torch.tensor([
        [[0.0, 0.0, 0.5, 0.5], [0.3, 0.2, 1.0, 0.9], [0.1, 0.6, 0.4, 1.0], [0, 0, 0, 0], [0, 0, 0, 0]],
        [[0.2, 0.2, 0.21, 0.8], [0.0, 0.0, 1.0, 1.0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],  # degenerate first
        [[0.5, 0.5, 1.2, 1.3], [0.1, 0.1, 0.9, 0.4], [0.6, 0.0, 0.9, 0.3], [0.0, 0.5, 0.3, 0.8], [0, 0, 0, 0]],
    ], dtype=torch.float64)
    masks = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.float64)
    ours = module(x, relation_kwargs(relations, boxes, masks, (h * 2, w * 2)))
    assert level_size((h * 2, w * 2), h * w) == (h, w)
    expected = _original_rela_fuse(module, x, relations, boxes, masks, h, w)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    cells = box_cells(boxes, masks, h, w)
    assert cells[1].sum() == 0  # the degenerate first box ends the list: nothing is pooled
    assert cells[0, 2].sum() > 0 and cells[0, 3].sum() == 0


def test_without_boxes_the_module_is_its_layer_norm_path():
    module = RelationCrossAttention(8, 8, heads=1, head_dim=8)
    x = torch.randn(2, 16, 8)
    torch.testing.assert_close(module(x, None), module.norm3(x))
    empty = relation_kwargs(torch.randn(2, 3, 8), torch.zeros(2, 4, 4), torch.zeros(2, 4), (4, 4))
    torch.testing.assert_close(module(x, empty), module.norm3(x))


def test_the_unet_is_gligen_plus_rela_fuse_and_round_trips(tmp_path):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = RelationUNet2DConditionModel(relation_dim=12, **TINY)
    plain = UNet2DConditionModel(attention_type="gated", **TINY)
    ours = {k: v.shape for k, v in unet.state_dict().items() if ".rela_fuse." not in k}
    assert ours == {k: v.shape for k, v in plain.state_dict().items()}  # dropping the module gives plain GLIGEN
    relation_keys = [k for k in unet.state_dict() if ".rela_fuse." in k]
    assert any(k.endswith("rela_fuse.attn.to_k.weight") for k in relation_keys)
    assert unet.state_dict()[next(k for k in relation_keys if k.endswith("attn.to_k.weight"))].shape[1] == 12
    unet.save_pretrained(tmp_path)
    back = RelationUNet2DConditionModel.from_pretrained(tmp_path)
    assert back.config.relation_dim == 12 and tuple(back.config.block_out_channels) == (16, 32)
    for (k, a), (_, b) in zip(unet.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k


def _inputs(batch=2):
    boxes = torch.zeros(batch, 30, 4)
    boxes[:, 0] = torch.tensor([0.0, 0.0, 0.5, 0.5])
    boxes[:, 1] = torch.tensor([0.5, 0.25, 1.0, 1.0])
    masks = torch.zeros(batch, 30)
    masks[:, :2] = 1
    gligen = {"boxes": boxes, "masks": masks, "positive_embeddings": torch.randn(batch, 30, 16)}
    return gligen, relation_kwargs(torch.randn(batch, 10, 12), boxes, masks, (8, 8))


def test_relations_reach_every_block_and_scheduled_sampling_leaves_them_on():
    from t2i.latent.gligen import set_fuser

    torch.manual_seed(0)
    unet = RelationUNet2DConditionModel(relation_dim=12, **TINY).eval()
    for name, p in unet.named_parameters():
        if name.endswith(("alpha_attn", "alpha_dense")):
            p.data.fill_(1.0)
    x, t, ctx = torch.randn(2, 3, 8, 8), torch.tensor([10, 500]), torch.randn(2, 5, 16)
    gligen, relation = _inputs()
    run = lambda rel: unet(x, t, ctx, cross_attention_kwargs={"gligen": gligen, "relation": rel}).sample  # noqa: E731
    with torch.no_grad():
        base = run(relation)
        other = run({**relation, "embeddings": torch.randn(2, 10, 12)})
        set_fuser(unet, False)
        without_fuser = run(relation)
        without_fuser_other = run({**relation, "embeddings": torch.randn(2, 10, 12)})
        set_fuser(unet, True)
    assert not torch.allclose(base, other)  # the relation embeddings change the output
    assert not torch.allclose(base, without_fuser)  # the gated fuser is switched off ...
    assert not torch.allclose(without_fuser, without_fuser_other)  # ... the relation module is not
