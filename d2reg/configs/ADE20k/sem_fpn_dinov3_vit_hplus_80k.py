"""ADE20k semantic FPN, DINOv3 ViT-H+/16: sem_fpn_dinov3_vit_b_80k.py at size H+, activation checkpointing on."""
from .sem_fpn_dinov3_vit_b_80k import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net.arch = "vit_huge_plus"
model.backbone.net.use_act_checkpoint = True  # ViT-H+ fine-tuned at 512x512: recompute activations
