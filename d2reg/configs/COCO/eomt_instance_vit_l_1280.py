"""EoMT, DINOv2-reg ViT-L/16, COCO instance segmentation at 1280."""
from ..common.coco_eomt import set_input_size
from .eomt_instance_vit_l_640 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

set_input_size(model, dataloader, 1280)
