"""ADE20k linear probe (DINOv3 protocol), frozen DINOv3 ViT-L/16: linear_dinov3_vit_b_40k.py at size L."""
from .linear_dinov3_vit_b_40k import dataloader, lr_multiplier, model, optimizer, train

model.backbone.arch = "vit_large"
