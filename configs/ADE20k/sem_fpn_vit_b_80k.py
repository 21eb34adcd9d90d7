"""ADE20k, DINOv2-reg ViT-B/16 + simple feature pyramid + semantic FPN head, fine-tuned. See
../common/ade20k_sem_fpn.py (recipe) and ../common/d2reg_vit.py (drop path, layer decay)."""
from ..common.ade20k_sem_fpn import dataloader, lr_multiplier, model, optimizer, train
from ..common.d2reg_vit import set_size

set_size(model, optimizer, "vit_base")
