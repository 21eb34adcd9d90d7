"""ADE20k, DINOv2-reg ViT-g/16 + simple feature pyramid + semantic FPN head, fine-tuned. See
../common/ade20k_sem_fpn.py (recipe) and ../common/d2reg_vit.py (drop path, layer decay)."""
from ..common.ade20k_sem_fpn import dataloader, lr_multiplier, model, optimizer, train
from ..common.d2reg_vit import set_size

set_size(model, optimizer, "vit_giant2")
# ViT-g: recompute block activations in the backward pass to save memory.
model.backbone.net.use_act_checkpoint = True
