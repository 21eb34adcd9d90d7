"""Mask R-CNN on a FROZEN DINOv2-reg ViT-g/16, multi-layer concat (blocks 9, 19, 29, 39 of 40; 6144
channels): mask_rcnn_vit_l_frozen_100ep.py at size g. Frozen, the 1.1B-parameter ViT needs no gradients,
optimizer state or activation checkpointing, and runs with bf16 weights (2.3 GB instead of 4.5 GB); what
trains is the pyramid (~177M parameters, most in the 4x/2x deconvolutions of the wide concatenation) and
the heads."""
from ..common.multilayer import frozen, multilayer
from .mask_rcnn_vit_g_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.net.use_act_checkpoint = False  # nothing to recompute: no backward through a frozen ViT
model.backbone.net.frozen_dtype = "bfloat16"
model.backbone = multilayer(frozen(model.backbone))
