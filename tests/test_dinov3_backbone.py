"""DINOv3Backbone as a detectron2 backbone: weights through the checkpoint pipeline (official, timm,
d2reg-detectron2 files), the YACS family switch, the pyramid, cross-family errors, freezing and lr decay."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from dinov3_reference import get_intermediate_layers, random_official_dinov3_state_dict, window_attention_mask
from timm.models._manipulate import reinit_non_persistent_buffers

from d2reg import CheckpointError, DINOv2Backbone, DINOv3Backbone, load_checkpoint, lr_decay_rate
from d2reg.checkpoint import convert_to_detectron2, dinov3
from d2reg.testing import write_checkpoint

TINY = dict(embed_dim=128, depth=2, num_heads=2)  # head dim 64: the RoPE shapes of the real models


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    sd = random_official_dinov3_state_dict("vit_small", seed=3, **TINY)
    return write_checkpoint(str(tmp_path_factory.mktemp("v3") / "dinov3_vits16_pretrain_tiny.pth"), sd), sd


def _rel(a, b) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def test_backbone_equals_official_reference_non_square(official_file):
    path, sd = official_file
    net = DINOv3Backbone(arch="vit_small", weights=path, out_indices=(0, 1), **TINY).eval()
    assert net.checkpoint_info.family == "dinov3" and net.checkpoint_info.format == "official"
    x = torch.randn(1, 3, 200, 333, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = net(x)
    assert list(out) == ["block0", "last_feat"] and out["last_feat"].shape == (1, 128, 13, 21)
    ref = get_intermediate_layers(sd, F.pad(x, (0, 21 * 16 - 333, 0, 13 * 16 - 200)), n=[0, 1], norm=False)
    assert _rel(out["block0"], ref[0]) <= 1e-4 and _rel(out["last_feat"], ref[1]) <= 1e-4


def test_windowed_backbone_from_weights_rebuilds_every_derived_buffer(official_file):
    """A backbone with weights is built on the meta device and allocated without init; the buffers no
    state dict holds (the inert K bias, also inside the windowed blocks) must be rebuilt, not left as
    whatever the allocated memory held (seen: a K bias of 1e7 and NaN outputs, depending on the run)."""
    path, sd = official_file
    net = DINOv3Backbone(arch="vit_small", weights=path, window_size=4, window_block_indexes=(0,), **TINY).eval()
    derived = {n for n, _ in net.vit.named_buffers()} - set(net.vit.state_dict())
    assert "blocks.0.attn.k_bias" in derived and "blocks.1.attn.k_bias" in derived
    for name, buf in net.vit.named_buffers():
        if name in derived:
            assert torch.equal(buf, torch.zeros_like(buf)), name
            buf.fill_(float("nan"))  # what to_empty may leave; the rebuild must reach every one
    reinit_non_persistent_buffers(net.vit)
    assert all(torch.equal(b, torch.zeros_like(b)) for n, b in net.vit.named_buffers() if n in derived)
    x = torch.randn(1, 3, 96, 144, generator=torch.Generator().manual_seed(0))  # 6 x 9 grid: padded windows
    with torch.no_grad():
        out = net(x)["last_feat"]
    ref = get_intermediate_layers(sd, x, n=[1], norm=False, attn_masks={0: window_attention_mask(6, 9, 4, 5)})[0]
    assert _rel(out, ref) <= 1e-4


def test_timm_and_detectron2_layouts_load_the_same_model(official_file, tmp_path):
    path, _ = official_file
    ref = DINOv3Backbone(weights=path, **TINY).eval()
    timm_path = write_checkpoint(str(tmp_path / "timm.safetensors"), dinov3.to_timm(torch.load(path), "official"))
    d2_path = str(tmp_path / "d2.pth")
    torch.save(convert_to_detectron2(path), d2_path)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        want = ref(x)["last_feat"]
        for p, layout in ((timm_path, "timm"), (d2_path, "detectron2")):
            assert load_checkpoint(p)[1].format == layout
            got = DINOv3Backbone(weights=p, **TINY).eval()(x)["last_feat"]
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_cross_family_files_are_clear_errors(official_file, write_ckpt):
    path, _ = official_file
    with pytest.raises(CheckpointError, match=r"dinov3 checkpoint .*DINOv2Backbone.* was asked|DINOv3Backbone"):
        DINOv2Backbone(weights=path, embed_dim=128, depth=2, num_heads=2)
    v2_path, _ = write_ckpt("v2.pth")
    with pytest.raises(CheckpointError, match=r"dinov2 checkpoint.*DINOv2Backbone"):
        DINOv3Backbone(weights=v2_path, **TINY)
    with pytest.raises(CheckpointError, match="embed_dim|width"):
        DINOv3Backbone(weights=path, embed_dim=64, depth=2, num_heads=1)


def test_yacs_family_switch_builds_pyramid_and_loads_through_checkpointer(official_file, tiny_maskrcnn_cfg):
    from detectron2.modeling import build_model

    from d2reg.engine import D2RegCheckpointer

    path, _ = official_file
    cfg = tiny_maskrcnn_cfg(FAMILY="dinov3", EMBED_DIM=128, DEPTH=2, NUM_HEADS=2)
    model = build_model(cfg).eval()
    assert isinstance(model.backbone.net, DINOv3Backbone)
    feats = model.backbone(torch.randn(1, 3, 96, 128))
    assert {k: v.shape[-1] for k, v in feats.items()} == {"p2": 32, "p3": 16, "p4": 8, "p5": 4, "p6": 2}
    D2RegCheckpointer(model).load(path)  # an official DINOv3 file as MODEL.WEIGHTS
    want = DINOv3Backbone(weights=path, **TINY).vit.state_dict()
    for k, v in model.backbone.net.vit.state_dict().items():
        torch.testing.assert_close(v, want[k], rtol=0, atol=0)
    cfg.MODEL.D2REG.FAMILY = "dinov4"
    with pytest.raises(ValueError, match="FAMILY must be one of"):
        build_model(cfg)


def test_freeze_and_lr_decay_treat_storage_tokens_as_layer_zero():
    net = DINOv3Backbone(freeze_at=2, **TINY)
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert {"vit.cls_token", "vit.reg_token", "vit.patch_embed.proj.weight"} <= frozen
    assert any(n.startswith("vit.blocks.0.") for n in frozen) and not any(n.startswith("vit.blocks.1.") for n in frozen)
    assert lr_decay_rate("backbone.net.vit.reg_token", 0.5, num_layers=2) == 0.5 ** 3
    assert lr_decay_rate("backbone.net.vit.blocks.1.attn.qkv.weight", 0.5, num_layers=2) == 0.5
