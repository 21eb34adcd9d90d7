"""EoMT, DINOv2-reg ViT-G/16, COCO panoptic at 640: eomt_panoptic_vit_l_640.py with ``arch="vit_giant2"``
(5 query blocks and its weights follow)."""
from .eomt_panoptic_vit_l_640 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.arch = "vit_giant2"
model.backbone.use_act_checkpoint = True  # ViT-g at batch 16: activations do not fit otherwise
