"""ADE20k linear probe (DINOv2 protocol), frozen DINOv2-reg ViT-B/14, last block. Everything is in
../common/ade20k_linear.py; other sizes: ``model.backbone.arch=vit_large``, no registers:
``model.backbone.num_register_tokens=0`` (weights follow)."""
from ..common.ade20k_linear import dataloader, lr_multiplier, model, optimizer, train
