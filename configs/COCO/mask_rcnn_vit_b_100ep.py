"""Mask R-CNN, DINOv2-reg ViT-B/16 + simple feature pyramid, ViTDet recipe (LSJ 1024, 100 epochs, batch 64).
Everything is in ../common/coco_vitdet.py (recipe) and ../common/d2reg_vit.py (backbone, sizes)."""
from ..common.coco_vitdet import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401
