"""d2reg.lr_decay_rate: layer ids of DINOv2 parameters, and how it relates to detectron2's
get_vit_lr_decay_rate (same for blocks and embeddings; CLS/register tokens decay with the stem)."""
from __future__ import annotations

import pytest
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate

from d2reg import lr_decay_rate

D, N = 0.7, 12  # decay, number of blocks
VIT = "backbone.net.vit."


@pytest.mark.parametrize(
    "name,layer_id",
    [
        (VIT + "cls_token", 0),
        (VIT + "reg_token", 0),
        (VIT + "pos_embed", 0),
        (VIT + "patch_embed.proj.weight", 0),
        (VIT + "patch_embed.proj.bias", 0),
        (VIT + "blocks.0.norm1.weight", 1),
        (VIT + "blocks.0.attn.qkv.weight", 1),
        (VIT + "blocks.5.mlp.fc1.bias", 6),
        (VIT + "blocks.11.ls2.gamma", 12),
        (VIT + "norm.weight", N + 1),  # final norm (final_norm=True): top rate
        ("backbone.simfp_2.0.weight", N + 1),  # pyramid
        ("backbone.simfp_5.1.norm.bias", N + 1),
        ("backbone.top_block.weight", N + 1),
    ],
)
def test_layer_ids(name, layer_id):
    assert lr_decay_rate(name, D, N) == pytest.approx(D ** (N + 1 - layer_id))


@pytest.mark.parametrize("name", ["roi_heads.box_predictor.cls_score.weight", "proposal_generator.rpn_head.conv.weight",
                                  "sem_seg_head.predictor.weight"])
def test_heads_at_full_rate(name):
    assert lr_decay_rate(name, D, N) == 1.0


def test_decay_off():
    assert lr_decay_rate(VIT + "cls_token", 1.0, N) == 1.0
    assert lr_decay_rate(VIT + "blocks.3.attn.proj.weight", 1.0, N) == 1.0


def test_agrees_with_detectron2_except_tokens(tiny_maskrcnn_cfg):
    """Over every parameter of a real Mask R-CNN with the d2reg backbone: identical to detectron2's
    get_vit_lr_decay_rate everywhere except the CLS/register tokens, which detectron2 leaves at the
    top rate (its ViT has no such tokens) and d2reg puts with the embeddings at layer 0."""
    from detectron2.modeling import build_model

    model = build_model(tiny_maskrcnn_cfg(DEPTH=4))
    depth = model.backbone.net.num_layers
    assert depth == 4
    differ = set()
    for name, _ in model.named_parameters():
        ours, theirs = lr_decay_rate(name, D, depth), get_vit_lr_decay_rate(name, D, depth)
        if ours != pytest.approx(theirs):
            differ.add(name)
            assert ours == pytest.approx(D ** (depth + 1)) and theirs == 1.0, name
    assert differ == {VIT + "cls_token", VIT + "reg_token"}
    # and the blocks really are spread over the layers
    rates = [lr_decay_rate(f"{VIT}blocks.{i}.norm1.weight", D, depth) for i in range(depth)]
    assert rates == pytest.approx([D ** (depth - i) for i in range(depth)])
