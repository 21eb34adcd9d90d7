"""ADE20k semantic FPN, DINOv3 ViT-L/16: sem_fpn_dinov3_vit_b_80k.py at size L
(drop path, layer decay, weights follow)."""
from .sem_fpn_dinov3_vit_b_80k import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net.arch = "vit_large"
