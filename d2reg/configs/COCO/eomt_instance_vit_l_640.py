"""EoMT, DINOv2-reg ViT-L/16, COCO instance segmentation at 640 (official mask AP 45.2): the panoptic recipe
on ``coco_2017_{train,val}`` (80 classes), top-100 (query, class) pairs per image, segm AP."""
from ..common.coco_eomt import to_instance
from .eomt_panoptic_vit_l_640 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

to_instance(model, dataloader)
