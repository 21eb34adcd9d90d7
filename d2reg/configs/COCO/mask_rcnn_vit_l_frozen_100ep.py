"""Mask R-CNN on a FROZEN DINOv2-reg ViT-L/16 read at 4 evenly spaced blocks (5, 11, 17, 23; the DINOv3
rule m*depth/4 - 1), each LayerNorm-ed and concatenated into one stride-16 map (4096 channels) under the
simple pyramid: mask_rcnn_vit_l_100ep.py with the multi-layer pyramid, only pyramid and heads training
(see docs/configs.md, "Multi-layer and frozen recipes")."""
from ..common.multilayer import frozen, multilayer
from .mask_rcnn_vit_l_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone = multilayer(frozen(model.backbone))
