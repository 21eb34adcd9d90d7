"""EoMT, DINOv2-reg ViT-L/16, COCO panoptic at 640, 12 epochs at batch 16 (official PQ 56.0). Everything is in
../common/coco_eomt.py. Official EoMT weights: ``train.init_checkpoint=/path/eomt_large_640.bin`` (or its
transformers safetensors) with ``--eval-only``; other batch sizes: set ``dataloader.train.total_batch_size``
and ``train.max_iter`` (d2reg.recipes.eomt_max_iter): the schedule and annealing windows follow."""
from ..common.coco_eomt import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401
