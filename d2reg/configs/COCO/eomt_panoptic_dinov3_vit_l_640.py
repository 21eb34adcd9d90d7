"""EoMT, DINOv3 ViT-L/16, COCO panoptic at 640 (official PQ 56.8): the DINOv2-reg recipe with the DINOv3
rows of d2reg.recipes (lr 2e-4, query blocks at full lr, warm-up 2000 + 3000, the first query block
annealed during the ViT warm-up). Weights: $D2REG_CHECKPOINTS/dinov3_vitl16_pretrain_lvd1689m-*.pth (DINOv3
License); the official EoMT DINOv3 checkpoints are deltas over them: load one with
``train.init_checkpoint=`` (d2reg adds the DINOv3 weights the backbone loaded)."""
from ..common.eomt import to_dinov3
from .eomt_panoptic_vit_l_640 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

to_dinov3(model, optimizer, lr_multiplier, train)
