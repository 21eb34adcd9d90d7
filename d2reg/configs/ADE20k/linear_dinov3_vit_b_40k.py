"""ADE20k linear probe, DINOv3 protocol, frozen DINOv3 ViT-B/16, last layer (normed patch tokens):
../common/ade20k_linear.py with ``use_dinov3`` (wd 1e-3, cosine decay; the official
dinov3/eval/segmentation/configs/config-ade20k-linear-training.yaml). The paper reports 51.8 mIoU for
ViT-B (sliding-window evaluation). Other sizes: ``model.backbone.arch=vit_large``; last 4 blocks:
``model.backbone.out_indices=[-4,-3,-2,-1]``."""
from ..common.ade20k_linear import dataloader, lr_multiplier, model, optimizer, train, use_dinov3

use_dinov3(model, optimizer, lr_multiplier, "vit_base")
