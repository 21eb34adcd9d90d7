"""d2reg.LinearSemSegHead: the DINOv2 linear protocol on frozen features, in detectron2's
SemanticSegmentor (kwargs, LazyCall and YACS)."""
from __future__ import annotations

import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.config import get_cfg, instantiate
from detectron2.modeling import SemanticSegmentor, build_model

from d2reg import DINOv2Backbone, LinearSemSegHead, add_d2reg_config
from d2reg.modeling.semseg import vit_feature_shapes
from d2reg.testing import TINY_DEEP_ARCH, TINY_IMG

TINY = dict(arch="vit_small", **TINY_DEEP_ARCH, pretrain_img_size=TINY_IMG)  # 4 blocks: out_indices -4..-1
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def frozen_backbone(out_indices=(-1,), patch_size=14, **kw):
    torch.manual_seed(0)
    return DINOv2Backbone(**TINY, patch_size=patch_size, freeze_at="all", final_norm=True, out_indices=out_indices,
                          **kw)


def segmentor(num_classes=3, out_indices=(-1,), norm="BN", patch_size=14):
    backbone = frozen_backbone(out_indices, patch_size)
    head = LinearSemSegHead(backbone.output_shape(), num_classes=num_classes, norm=norm)
    return SemanticSegmentor(backbone=backbone, sem_seg_head=head, pixel_mean=MEAN, pixel_std=STD)


def synthetic_batch(n=4, h=56, w=70, seed=0):
    """Images of coloured rectangles on grey; label = colour index (0 background), 255 on a border."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[128, 128, 128], [230, 40, 40], [40, 40, 230]], dtype=torch.float32)
    batch = []
    for _ in range(n):
        label = torch.zeros(h, w, dtype=torch.long)
        for cls in (1, 2):
            y0, x0 = int(torch.randint(0, h // 2, (1,), generator=g)), int(torch.randint(0, w // 2, (1,), generator=g))
            label[y0:y0 + h // 2, x0:x0 + w // 2] = cls
        img = colours[label].permute(2, 0, 1) + 8 * torch.randn(3, h, w, generator=g)
        label[:2] = 255  # ignored rows
        batch.append({"image": img.clamp(0, 255), "sem_seg": label, "height": h, "width": w})
    return batch


@pytest.mark.parametrize("out_indices", [(-1,), (-4, -3, -2, -1)])
def test_head_shapes(out_indices):
    backbone = frozen_backbone(out_indices)
    head = LinearSemSegHead(backbone.output_shape(), num_classes=5).eval()
    assert head.in_features == list(backbone.output_shape())
    assert head.in_channels == 32 * len(out_indices)
    x = torch.randn(2, 3, 70, 98)  # 5 x 7 patches of 14
    feats = backbone(x)
    logits = head.layers(feats)
    assert logits.shape == (2, 5, 5, 7)
    out, losses = head(feats)
    assert out.shape == (2, 5, 70, 98) and losses == {}


def test_head_concatenates_and_resizes_features():
    """Features on different grids are resized to the first one's grid before concatenation."""
    from detectron2.layers import ShapeSpec

    shapes = {"a": ShapeSpec(channels=4, stride=8), "b": ShapeSpec(channels=6, stride=16)}
    head = LinearSemSegHead(shapes, num_classes=3, norm="").eval()
    out, _ = head({"a": torch.randn(1, 4, 8, 8), "b": torch.randn(1, 6, 4, 4)})
    assert head.predictor.in_channels == 10 and out.shape == (1, 3, 64, 64)


def test_head_argument_errors():
    shapes = frozen_backbone().output_shape()
    with pytest.raises(ValueError, match="not in the backbone's outputs"):
        LinearSemSegHead(shapes, num_classes=3, in_features=["p2"])
    head = LinearSemSegHead(shapes, num_classes=3).train()
    with pytest.raises(ValueError, match="targets"):
        head({"last_feat": torch.randn(1, 32, 2, 2)})


def test_frozen_backbone_gets_no_grads_head_does():
    model = segmentor(out_indices=(-4, -3, -2, -1)).train()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    losses = model(synthetic_batch(n=2))
    assert set(losses) == {"loss_sem_seg"} and torch.isfinite(losses["loss_sem_seg"])
    losses["loss_sem_seg"].backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    head_params = list(model.sem_seg_head.parameters())
    assert head_params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in head_params)


def test_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = segmentor(num_classes=3).train()
    batch = synthetic_batch(n=3, h=42, w=56)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2, weight_decay=0.0)
    history = []
    for _ in range(12):
        loss = model(batch)["loss_sem_seg"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[-1] < 0.5 * history[0], history
    # the trained probe segments the (training) images well
    model.eval()
    with torch.no_grad():
        pred = model([{"image": b["image"]} for b in batch])
    correct = total = 0
    for p, b in zip(pred, batch):
        valid = b["sem_seg"] != 255
        correct += (p["sem_seg"].argmax(0)[valid] == b["sem_seg"][valid]).sum().item()
        total += valid.sum().item()
    assert correct / total > 0.8


@pytest.mark.parametrize("size,out", [((50, 75), None), ((50, 75), (100, 150)), ((64, 64), (40, 30))])
def test_inference_output_is_image_size(size, out):
    model = segmentor(num_classes=4).eval()
    inp = {"image": torch.rand(3, *size) * 255}
    if out:
        inp["height"], inp["width"] = out
    with torch.no_grad():
        (res,) = model([inp])
    assert res["sem_seg"].shape == (4, *(out or size))


def test_semantic_fpn_path_also_reaches_image_size():
    """Patch 16 backbone (what the fine-tuning configs pyramid over) through the linear head: the
    padded 16-multiple is cropped back."""
    model = segmentor(num_classes=2, patch_size=16).eval()
    with torch.no_grad():
        (res,) = model([{"image": torch.rand(3, 37, 53) * 255}])
    assert res["sem_seg"].shape == (2, 37, 53)


@pytest.mark.parametrize("out_indices,patch", [((-1,), 14), ((-4, -3, -2, -1), 16), ((0, 2), 16)])
def test_vit_feature_shapes_matches_backbone(out_indices, patch):
    backbone = DINOv2Backbone(**TINY, patch_size=patch, out_indices=out_indices)
    assert vit_feature_shapes("vit_small", out_indices, patch, **TINY_DEEP_ARCH) == \
        backbone.output_shape()


def test_lazycall_head_and_segmentor():
    cfg = L(SemanticSegmentor)(
        backbone=L(DINOv2Backbone)(**TINY, patch_size=14, freeze_at="all", out_indices=(-2, -1)),
        sem_seg_head=L(LinearSemSegHead)(
            input_shape=L(vit_feature_shapes)(arch="vit_small", out_indices=(-2, -1), patch_size=14, **TINY_DEEP_ARCH),
            num_classes=7,
            norm="SyncBN",  # plain BatchNorm on a single process
        ),
        pixel_mean=MEAN,
        pixel_std=STD,
    )
    model = instantiate(cfg)
    assert isinstance(model.sem_seg_head.norm, torch.nn.SyncBatchNorm)
    model.train()
    loss = model(synthetic_batch(n=2, h=28, w=28))["loss_sem_seg"]
    assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        (res,) = model([{"image": torch.rand(3, 30, 44) * 255}])
    assert res["sem_seg"].shape == (7, 30, 44)


def test_yacs_linear_probe():
    """META_ARCHITECTURE SemanticSegmentor + build_d2reg_vit_backbone + LinearSemSegHead; detectron2's
    default SEM_SEG_HEAD.IN_FEATURES (p2-p5, meant for FPN) falls back to all backbone features."""
    cfg = get_cfg()
    add_d2reg_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = "SemanticSegmentor"
    cfg.MODEL.BACKBONE.NAME = "build_d2reg_vit_backbone"
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = MEAN, STD
    c = cfg.MODEL.D2REG
    for key, value in dict(TINY_DEEP_ARCH, pretrain_img_size=TINY_IMG).items():
        setattr(c, key.upper(), value)
    c.PATCH_SIZE, c.FREEZE_AT, c.OUT_INDICES, c.FINAL_NORM = 14, -1, [-4, -3, -2, -1], True
    cfg.MODEL.SEM_SEG_HEAD.NAME = "LinearSemSegHead"
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 150
    cfg.MODEL.SEM_SEG_HEAD.NORM = "BN"
    model = build_model(cfg)
    assert isinstance(model.backbone, DINOv2Backbone) and isinstance(model.sem_seg_head, LinearSemSegHead)
    assert model.sem_seg_head.in_features == ["block0", "block1", "block2", "last_feat"]
    assert model.sem_seg_head.ignore_value == 255
    assert not any(p.requires_grad for p in model.backbone.parameters())
    model.eval()
    with torch.no_grad():
        (res,) = model([{"image": torch.rand(3, 40, 60) * 255}])
    assert res["sem_seg"].shape == (150, 40, 60)
