"""EoMT's training data in detectron2: dataset mappers giving one binary mask and one class per
segment, and EoMT's augmentation as detectron2 transforms.

What the official code (tue-mps/eomt, ``datasets/transforms.py`` and the data modules) does, and how
it maps here:

- the same pipeline for every task, in this order: colour jitter (ADE20k only; off for COCO, as the
  official ``color_jitter_enabled`` defaults), horizontal flip, scale jitter (torchvision's
  ``ScaleJitter``: the image fits in ``input_size`` × U(scale range), aspect kept = detectron2's
  ``ResizeScale``), padding bottom/right to ``input_size`` with 0, a random ``input_size`` crop
  (= detectron2's ``FixedSizeCrop(pad_value=0)``). Scale range 0.1-2.0 for COCO (LSJ), 0.5-2.0 for
  ADE20k, whose 512 crop has no category-ratio constraint in the official code;
- crowd segments / annotations are removed before augmenting (their pixels belong to no target);
- masks left empty by the crop are dropped; when none is left, the official code re-draws the whole
  augmentation (here: up to ``max_retries`` times, then the empty target is returned);
- masks are rasterised first and transformed with nearest interpolation (also for COCO polygons);
- evaluation images are not transformed: the model resizes / pads / slides windows itself.

Output of every mapper: ``"image"`` (3, H, W) uint8 tensor in ``image_format``, ``"height"``,
``"width"`` (the original size, as in detectron2), ``"image_id"``, ``"file_name"``; with targets (by
default in training), ``"instances"``: ``Instances`` of the augmented (H, W) with ``gt_classes`` (K,)
int64 contiguous ids, ``gt_masks`` ``BitMasks`` (K, H, W) and ``gt_boxes`` (from the masks); the
semantic mapper adds ``"sem_seg"`` (H, W) int64 (``ignore_label`` where unlabelled).
"""
from __future__ import annotations

import copy
import logging
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances, polygons_to_bitmask

from .synthetic_panoptic import rgb2id

__all__ = [
    "EoMTColorJitter",
    "EoMTInstanceDatasetMapper",
    "EoMTPanopticDatasetMapper",
    "EoMTSemanticDatasetMapper",
    "add_eomt_input_config",
    "build_eomt_augmentation",
]

logger = logging.getLogger(__name__)
TASKS = ("panoptic", "instance", "semantic")
_GRAY = np.array([0.2989, 0.587, 0.114], np.float32)  # torchvision's rgb_to_grayscale weights


def add_eomt_input_config(cfg) -> None:
    """Add the YACS keys of EoMT's augmentation (Mask2Former's names; existing keys are kept):
    ``INPUT.IMAGE_SIZE`` (640; int or [h, w], the crop), ``INPUT.MIN_SCALE`` / ``INPUT.MAX_SCALE``
    (0.1 / 2.0), ``INPUT.COLOR_AUG_SSD`` (False). COCO defaults; ADE20k semantic: 512, 0.5, 2.0, True.
    detectron2's ``INPUT.FORMAT`` and ``INPUT.RANDOM_FLIP`` are used as they are."""
    defaults = dict(IMAGE_SIZE=640, MIN_SCALE=0.1, MAX_SCALE=2.0, COLOR_AUG_SSD=False)
    for key, value in defaults.items():
        if key not in cfg.INPUT:
            cfg.INPUT[key] = value


class EoMTColorJitter(T.Augmentation):
    """EoMT's photometric jitter (official ``Transforms.color_jitter``): brightness (p 0.5, factor
    1 ± ``brightness_delta``/255), then contrast (p 0.5, 1 ± ``contrast``) and saturation (p 0.5,
    1 ± ``saturation``) + hue (p 0.5, ± ``hue_delta`` degrees) in a random order, each step on the
    result of the previous one and rounded to uint8 as torchvision does. Returns a detectron2
    ``ColorTransform`` (images only; masks and boxes pass unchanged)."""

    def __init__(self, brightness_delta: float = 32, contrast: float = 0.5, saturation: float = 0.5,
                 hue_delta: float = 18, image_format: str = "RGB"):
        super().__init__()
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"EoMTColorJitter needs an RGB or BGR image, got image_format={image_format!r}.")
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        rand, uniform = np.random.rand, np.random.uniform
        ops = []
        if rand() < 0.5:
            b = self.brightness_delta / 255.0
            ops.append(("brightness", uniform(1 - b, 1 + b)))
        contrast = [("contrast", uniform(1 - self.contrast, 1 + self.contrast))] if rand() < 0.5 else []
        sat_hue = []
        if rand() < 0.5:
            sat_hue.append(("saturation", uniform(1 - self.saturation, 1 + self.saturation)))
        if rand() < 0.5:
            sat_hue.append(("hue", uniform(-self.hue_delta, self.hue_delta)))
        ops += contrast + sat_hue if rand() < 0.5 else sat_hue + contrast
        return T.ColorTransform(lambda img: _color_ops(img, ops, self.image_format == "BGR"))


def _color_ops(img: np.ndarray, ops: List[Tuple[str, float]], bgr: bool) -> np.ndarray:
    """Apply EoMTColorJitter's drawn ``ops`` to an (H, W, 3) uint8 image."""
    x = img[..., ::-1] if bgr else img
    x = x.astype(np.float32)
    for name, f in ops:
        if name == "brightness":
            x = x * f
        elif name == "contrast":
            x = f * x + (1 - f) * float((x @ _GRAY).mean())
        elif name == "saturation":
            x = f * x + (1 - f) * (x @ _GRAY)[..., None]
        else:  # hue: rotate H in HSV (cv2's float HSV: H in degrees)
            hsv = cv2.cvtColor(x / 255.0, cv2.COLOR_RGB2HSV)
            hsv[..., 0] = (hsv[..., 0] + f) % 360.0
            x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0
        x = np.floor(np.clip(x, 0, 255))  # torchvision's float -> uint8 after every step
    x = x.astype(np.uint8)
    return np.ascontiguousarray(x[..., ::-1] if bgr else x)


def build_eomt_augmentation(
    task: str,
    input_size: Union[int, Sequence[int]],
    is_train: bool,
    *,
    scale_range: Optional[Tuple[float, float]] = None,
    color_jitter: Optional[bool] = None,
    random_flip: str = "horizontal",
    image_format: str = "RGB",
    ignore_label: int = 255,
) -> List[T.Augmentation]:
    """EoMT's training augmentation as a list of detectron2 augmentations (empty for evaluation).

    Args:
        task: "panoptic", "instance" (COCO: scale 0.1-2.0, no colour jitter) or "semantic" (ADE20k:
            0.5-2.0, colour jitter); ``scale_range`` / ``color_jitter`` override these defaults.
        input_size: the crop, int or (h, w): 640 / 1280 for COCO, 512 for ADE20k.
        random_flip: detectron2's ``INPUT.RANDOM_FLIP`` ("horizontal", "vertical" or "none").
        ignore_label: the padding value of semantic labels.
    """
    if task not in TASKS:
        raise ValueError(f"Unknown EoMT task {task!r}: use one of {TASKS}.")
    if not is_train:
        return []
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(int(v) for v in input_size)
    if scale_range is None:
        scale_range = (0.5, 2.0) if task == "semantic" else (0.1, 2.0)
    if color_jitter is None:
        color_jitter = task == "semantic"
    augs: List[T.Augmentation] = [EoMTColorJitter(image_format=image_format)] if color_jitter else []
    if random_flip != "none":
        augs.append(T.RandomFlip(horizontal=random_flip == "horizontal", vertical=random_flip == "vertical"))
    augs += [
        T.ResizeScale(float(scale_range[0]), float(scale_range[1]), h, w),
        T.FixedSizeCrop((h, w), pad=True, pad_value=0.0, seg_pad_value=ignore_label),
    ]
    return augs


class _EoMTDatasetMapper:
    """Shared by the three mappers: read, augment (re-drawn when no mask survives), format."""

    task = ""

    @configurable
    def __init__(self, is_train: bool = True, *, augmentations: List[Union[T.Augmentation, T.Transform]],
                 image_format: str = "RGB", ignore_label: int = 255, return_targets: Optional[bool] = None,
                 max_retries: int = 10):
        """
        Args:
            is_train: training (targets returned, ``augmentations`` used as given).
            augmentations: e.g. :func:`build_eomt_augmentation` (``[]``: images as read).
            image_format: detectron2's ``INPUT.FORMAT`` of the output image.
            ignore_label: semantic label excluded from the masks (and the padding of ``sem_seg``).
            return_targets: add ``"instances"`` (and ``"sem_seg"``); default ``is_train``.
            max_retries: re-draws of the augmentation while it leaves no mask.
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_label = ignore_label
        self.return_targets = is_train if return_targets is None else return_targets
        self.max_retries = max_retries
        logger.info(f"[{type(self).__name__}] augmentations ({'train' if is_train else 'eval'}): {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict:
        if "IMAGE_SIZE" not in cfg.INPUT:
            raise KeyError(f"{cls.__name__} reads cfg.INPUT.IMAGE_SIZE / MIN_SCALE / MAX_SCALE / COLOR_AUG_SSD: "
                           "call d2reg.data.add_eomt_input_config(cfg) before merging the config file.")
        names = cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST
        ignore_label = MetadataCatalog.get(names[0]).get("ignore_label", 255) if len(names) else 255
        augs = build_eomt_augmentation(
            cls.task, cfg.INPUT.IMAGE_SIZE, is_train, scale_range=(cfg.INPUT.MIN_SCALE, cfg.INPUT.MAX_SCALE),
            color_jitter=cfg.INPUT.COLOR_AUG_SSD, random_flip=cfg.INPUT.RANDOM_FLIP,
            image_format=cfg.INPUT.FORMAT, ignore_label=ignore_label,
        )
        return {"is_train": is_train, "augmentations": augs, "image_format": cfg.INPUT.FORMAT,
                "ignore_label": ignore_label}

    # -- per task
    def _read_targets(self, dataset_dict: Dict) -> Tuple[Optional[np.ndarray], object]:
        """-> (sem_seg (H, W) or None, for ``AugInput``; whatever :meth:`_targets` needs)."""
        raise NotImplementedError

    def _targets(self, raw, sem_seg: Optional[np.ndarray], transforms: T.TransformList
                 ) -> Tuple[List[int], List[np.ndarray]]:
        """-> (classes, (H, W) bool masks, non-empty) after ``transforms``."""
        raise NotImplementedError

    def __call__(self, dataset_dict: Dict) -> Dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        sem_seg, raw = self._read_targets(dataset_dict) if self.return_targets else (None, None)
        for _ in range(self.max_retries + 1):
            aug_input = T.AugInput(image, sem_seg=sem_seg)
            transforms = self.augmentations(aug_input)
            if not self.return_targets:
                break
            classes, masks = self._targets(raw, aug_input.sem_seg, transforms)
            if masks or not self.augmentations.augs or not self._has_targets(raw, sem_seg):
                break
        out_image = aug_input.image
        h, w = out_image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(out_image.transpose(2, 0, 1)))
        for key in ("annotations", "segments_info", "pan_seg_file_name", "sem_seg_file_name"):
            dataset_dict.pop(key, None)
        if self.return_targets:
            inst = Instances((h, w))
            inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
            stacked = np.stack(masks) if masks else np.zeros((0, h, w), bool)
            inst.gt_masks = BitMasks(torch.from_numpy(np.ascontiguousarray(stacked)))
            inst.gt_boxes = inst.gt_masks.get_bounding_boxes()
            dataset_dict["instances"] = inst
            if aug_input.sem_seg is not None:
                dataset_dict["sem_seg"] = torch.as_tensor(aug_input.sem_seg.astype(np.int64))
        return dataset_dict

    def _has_targets(self, raw, sem_seg: Optional[np.ndarray]) -> bool:
        return bool(raw)


class EoMTPanopticDatasetMapper(_EoMTDatasetMapper):
    """COCO panoptic dataset dicts (``pan_seg_file_name``, ``segments_info`` with contiguous
    ``category_id``, as detectron2's ``load_coco_panoptic_json`` gives) -> one mask per non-crowd
    segment of the PNG (ids R + 256 G + 256² B), things and stuff alike."""

    task = "panoptic"

    def _read_targets(self, dataset_dict):
        if "pan_seg_file_name" not in dataset_dict:
            raise KeyError(f"{type(self).__name__} needs COCO panoptic dataset dicts ('pan_seg_file_name', "
                           f"'segments_info'); got keys {sorted(dataset_dict)} for {dataset_dict['file_name']}.")
        pan_rgb = utils.read_image(dataset_dict["pan_seg_file_name"], "RGB")
        segments = [s for s in dataset_dict["segments_info"] if not s.get("iscrowd", 0)]
        return None, (pan_rgb, segments)

    def _targets(self, raw, sem_seg, transforms):
        pan_rgb, segments = raw
        # padding writes seg_pad_value into all three channels: an id (e.g. 0xFFFFFF) no segment has
        ids = rgb2id(transforms.apply_segmentation(pan_rgb))
        classes, masks = [], []
        for s in segments:
            m = ids == s["id"]
            if m.any():
                classes.append(int(s["category_id"]))
                masks.append(m)
        return classes, masks

    def _has_targets(self, raw, sem_seg):
        return bool(raw[1])


class EoMTInstanceDatasetMapper(_EoMTDatasetMapper):
    """COCO instance dataset dicts (``annotations`` with ``segmentation`` as polygons or RLE, contiguous
    ``category_id``, as detectron2's ``load_coco_json`` gives) -> one mask per non-crowd annotation,
    rasterised at the original size, then transformed (as the official code)."""

    task = "instance"

    def _read_targets(self, dataset_dict):
        h, w = dataset_dict.get("height"), dataset_dict.get("width")
        anns = [a for a in dataset_dict.get("annotations", []) if not a.get("iscrowd", 0)]
        return None, [(int(a["category_id"]), _decode_segmentation(a["segmentation"], h, w)) for a in anns]

    def _targets(self, raw, sem_seg, transforms):
        classes, masks = [], []
        for cls, m in raw:
            m = transforms.apply_segmentation(m) == 1  # padding (seg_pad_value, e.g. 255) is not the object
            if m.any():
                classes.append(cls)
                masks.append(m)
        return classes, masks


def _decode_segmentation(segm, h: int, w: int) -> np.ndarray:
    """COCO polygons / RLE (compressed or not) / (H, W) array -> (H, W) uint8 0/1 mask."""
    if isinstance(segm, list):
        return polygons_to_bitmask([np.asarray(p, dtype=np.float64) for p in segm], h, w).astype(np.uint8)
    if isinstance(segm, dict):
        if isinstance(segm["counts"], list):  # uncompressed RLE
            segm = mask_util.frPyObjects(segm, *segm["size"])
        return mask_util.decode(segm).astype(np.uint8)
    if isinstance(segm, np.ndarray) and segm.ndim == 2:
        return (segm > 0).astype(np.uint8)
    raise ValueError(f"Cannot read a segmentation of type {type(segm)}: expected COCO polygons (list), "
                     "RLE (dict) or an (H, W) array.")


class EoMTSemanticDatasetMapper(_EoMTDatasetMapper):
    """Semantic dataset dicts (``sem_seg_file_name``, labels 0..C-1, ``ignore_label`` unlabelled, as
    detectron2's ``load_sem_seg`` gives, e.g. ADE20k's ``annotations_detectron2``) -> one mask per class
    present (``ignore_label`` excluded), plus ``"sem_seg"``."""

    task = "semantic"

    def _read_targets(self, dataset_dict):
        if "sem_seg_file_name" not in dataset_dict:
            raise KeyError(f"{type(self).__name__} needs semantic dataset dicts with 'sem_seg_file_name'; got "
                           f"keys {sorted(dataset_dict)} for {dataset_dict['file_name']}.")
        sem = utils.read_image(dataset_dict["sem_seg_file_name"])
        if sem.ndim == 3:
            sem = sem[..., 0]
        return sem, None

    def _targets(self, raw, sem_seg, transforms):
        classes = [int(c) for c in np.unique(sem_seg) if c != self.ignore_label]
        return classes, [sem_seg == c for c in classes]

    def _has_targets(self, raw, sem_seg):
        return bool((sem_seg != self.ignore_label).any())
