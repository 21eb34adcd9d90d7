"""ADE20k semantic FPN, DINOv3 ViT-S/16: sem_fpn_dinov3_vit_b_80k.py at size S
(drop path, layer decay, weights follow)."""
from .sem_fpn_dinov3_vit_b_80k import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net.arch = "vit_small"
