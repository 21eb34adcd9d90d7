"""EoMT, DINOv3 ViT-L/16, COCO instance segmentation at 640."""
from ..common.coco_eomt import to_instance
from ..common.eomt import to_dinov3
from .eomt_panoptic_vit_l_640 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

to_instance(model, dataloader)
to_dinov3(model, optimizer, lr_multiplier, train)
