"""ADE20k linear probe (DINOv2 protocol), frozen DINOv2-reg ViT-S/14, last block: linear_vit_b_40k.py at size S."""
from .linear_vit_b_40k import dataloader, lr_multiplier, model, optimizer, train

model.backbone.arch = "vit_small"
