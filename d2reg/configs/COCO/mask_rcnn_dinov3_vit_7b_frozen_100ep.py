"""Mask R-CNN on a FROZEN DINOv3 ViT-7B/16 read as in the DINOv3 paper's detector: blocks 9, 19, 29, 39
of 40, each LayerNorm-ed, concatenated (16384 channels) and projected to the block width (4096) under the
simple pyramid: mask_rcnn_dinov3_vit_l_frozen_100ep.py at size 7B. Fine-tuning the 7B does not fit
data-parallel training (docs/configs.md, DINOv3); frozen, it runs with bf16 weights (~13 GB), no
gradients or optimizer state; what trains is ~167M parameters (projection + pyramid 148M, heads). Without the
projection the pyramid's branches on 16384 channels alone would hold ~1.2B parameters."""
from .mask_rcnn_dinov3_vit_l_frozen_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.net.arch = "vit_7b"
model.backbone.net.frozen_dtype = "bfloat16"
model.backbone.project = True
