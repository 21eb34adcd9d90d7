"""Mask R-CNN, DINOv3 ViT-B/16 + simple feature pyramid: mask_rcnn_vit_b_100ep.py (ViTDet recipe, LSJ 1024,
100 epochs at batch 64, AdamW lr 1e-4, wd 0.05) with the backbone switched to DINOv3. Drop path, layer
decay and weights follow ``model.backbone.net.arch`` from d2reg.recipes' DINOv3 rows (extrapolated from
ViTDet and the DINOv2 ViT-Adapter evidence: no DINOv3 fine-tuning recipe is published; see d2reg/recipes.py).
Weights: $D2REG_CHECKPOINTS/dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth (DINOv3 License, not Apache-2.0)."""
from ..common.d2reg_vit import dinov3_vit
from .mask_rcnn_vit_b_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.net = dinov3_vit("vit_base")
