"""Mask R-CNN, DINOv3 ViT-H+/16 (840M, 32 blocks, SwiGLU): mask_rcnn_dinov3_vit_b_100ep.py at size H+.
Memory: ~13 GB of fp32 weights + gradients + AdamW state per GPU, and 4096 tokens x 32 blocks of
activations at 1024x1024: activation checkpointing on (as the DINOv2 ViT-g configs). ViT-7B: no COCO
fine-tuning config (6.7B parameters, ~108 GB of weights, gradients and AdamW state per GPU under DDP:
it needs a frozen backbone, the frozen-detector path of a later issue, or sharded training)."""
from .mask_rcnn_dinov3_vit_b_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.net.arch = "vit_huge_plus"
model.backbone.net.use_act_checkpoint = True  # ViT-H+ at 1024x1024, global attention: recompute activations
