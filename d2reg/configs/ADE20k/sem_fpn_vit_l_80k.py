"""ADE20k semantic FPN, DINOv2-reg ViT-L/16: sem_fpn_vit_b_80k.py at size L (drop path, layer decay, weights follow)."""
from .sem_fpn_vit_b_80k import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net.arch = "vit_large"
