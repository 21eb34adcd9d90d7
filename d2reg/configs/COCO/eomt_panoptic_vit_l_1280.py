"""EoMT, DINOv2-reg ViT-L/16, COCO panoptic at 1280 (official PQ 58.3): the 640 config with 1280 crops and
inference size."""
from ..common.coco_eomt import set_input_size
from .eomt_panoptic_vit_l_640 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

set_input_size(model, dataloader, 1280)
