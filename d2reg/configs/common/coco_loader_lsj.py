"""COCO data with large-scale jitter (LSJ), as ViTDet trains: flip, rescale the 1024x1024 frame by
0.1-2.0, crop/pad to 1024x1024; test at longest side 1024. 64 images per iteration in total."""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from d2reg.zoo import get_config

image_size = 1024

dataloader = get_config("common/data/coco.py").dataloader
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.ResizeScale)(min_scale=0.1, max_scale=2.0, target_height=image_size, target_width=image_size),
    L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),
]
dataloader.train.mapper.image_format = "RGB"
dataloader.train.mapper.recompute_boxes = True  # crops cut boxes: recompute them from the masks
dataloader.train.total_batch_size = 64
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size),
]
