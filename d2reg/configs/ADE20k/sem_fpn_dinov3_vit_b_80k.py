"""ADE20k, DINOv3 ViT-B/16 + simple feature pyramid + semantic FPN head, fine-tuned: sem_fpn_vit_b_80k.py
with the backbone switched to DINOv3 (drop path, layer decay and weights follow ``model.backbone.net.arch``
from d2reg.recipes' DINOv3 rows, extrapolated: see d2reg/recipes.py)."""
from ..common.d2reg_vit import dinov3_vit
from .sem_fpn_vit_b_80k import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net = dinov3_vit("vit_base")
