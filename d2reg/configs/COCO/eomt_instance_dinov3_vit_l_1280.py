"""EoMT, DINOv3 ViT-L/16, COCO instance segmentation at 1280 (official mask AP 49.9)."""
from ..common.coco_eomt import set_input_size
from .eomt_instance_dinov3_vit_l_640 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

set_input_size(model, dataloader, 1280)
