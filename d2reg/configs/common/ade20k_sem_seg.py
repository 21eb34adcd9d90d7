"""ADE20k semantic segmentation data (detectron2's builtin ``ade20k_sem_seg_{train,val}``: 150 classes,
label 255 ignored; prepare with detectron2's datasets/prepare_ade20k_sem_seg.py under
$DETECTRON2_DATASETS/ADEChallengeData2016). The DINOv2/mmseg recipe: short side rescaled to
512 x 0.5-2.0, 512x512 crops (no class over 75% of a crop), flip, photometric jitter; 16 images per
iteration; test at short side 512. Inference is on the whole image (mmseg's DINOv2 evaluation used
512x512 sliding windows; expect slightly different numbers)."""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import DatasetMapper, build_detection_test_loader, build_detection_train_loader
from detectron2.data import get_detection_dataset_dicts as dataset_dicts
from detectron2.evaluation import SemSegEvaluator
from omegaconf import OmegaConf

from d2reg.data import load_sem_seg_gt

crop_size = 512

dataloader = OmegaConf.create()
dataloader.train = L(build_detection_train_loader)(
    dataset=L(dataset_dicts)(names="ade20k_sem_seg_train"),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(
                short_edge_length=[int(crop_size * x / 10) for x in range(5, 21)],  # 256 ... 1024
                sample_style="choice",
                max_size=4 * crop_size,
            ),
            L(T.RandomCrop_CategoryAreaConstraint)(
                crop_type="absolute", crop_size=(crop_size, crop_size), single_category_max_area=0.75,
                ignored_category=255,
            ),
            L(T.RandomFlip)(horizontal=True),
            L(T.RandomBrightness)(intensity_min=0.875, intensity_max=1.125),
            L(T.RandomContrast)(intensity_min=0.5, intensity_max=1.5),
            L(T.RandomSaturation)(intensity_min=0.5, intensity_max=1.5),
        ],
        image_format="RGB",
    ),
    total_batch_size=16,
    num_workers=4,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(dataset_dicts)(names="ade20k_sem_seg_val", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=crop_size, max_size=4 * crop_size)],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=4,
)
# load_sem_seg_gt: detectron2's default ground-truth loader calls np.array(..., copy=False), which NumPy 2 rejects
dataloader.evaluator = L(SemSegEvaluator)(dataset_name="${..test.dataset.names}", sem_seg_loading_fn=load_sem_seg_gt)
