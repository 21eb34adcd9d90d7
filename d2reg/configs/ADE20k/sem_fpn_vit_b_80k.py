"""ADE20k, DINOv2-reg ViT-B/16 + simple feature pyramid + semantic FPN head, fine-tuned. Everything is
in ../common/ade20k_sem_fpn.py; other sizes: ``model.backbone.net.arch=vit_large``, no registers:
``model.backbone.net.num_register_tokens=0`` (drop path, layer decay and weights follow)."""
from ..common.ade20k_sem_fpn import dataloader, lr_multiplier, model, optimizer, train
