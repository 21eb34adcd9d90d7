"""ADE20k semantic FPN, DINOv2-reg ViT-g/16: sem_fpn_vit_b_80k.py at size g (drop path, layer decay, weights follow)."""
from .sem_fpn_vit_b_80k import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net.arch = "vit_giant2"
model.backbone.net.use_act_checkpoint = True  # ViT-g at 512x512, global attention: recompute activations
