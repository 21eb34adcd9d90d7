"""Mask R-CNN, DINOv2-reg ViT-B/16 + simple feature pyramid, ViTDet recipe (LSJ 1024, 100 epochs, batch 64).
Everything is in ../common/coco_vitdet.py; other sizes: ``model.backbone.net.arch=vit_large``, no
registers: ``model.backbone.net.num_register_tokens=0`` (drop path, layer decay and weights follow)."""
from ..common.coco_vitdet import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401
