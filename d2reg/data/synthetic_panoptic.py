"""The synthetic shapes as a COCO panoptic data set: the three shape classes as things, textured
background regions as stuff.

Each scene splits the background into 1-3 Voronoi regions, each a texture of one stuff class
(``SYNTH_PANOPTIC_STUFF_CLASSES``: smooth = gradient or noise, stripes, checkerboard; the class is the
texture, the colours are random), then draws the shapes of :func:`d2reg.data.render_scene` on it.
Written in COCO panoptic's layout, which detectron2's ``load_coco_panoptic_json`` and panopticapi read:

- ``panoptic/{training,validation}/*.png``: RGB, segment id = R + 256 G + 256² B (panopticapi's
  ``id2rgb``), 0 = void (stuff left with fewer than 40 visible pixels);
- ``annotations/panoptic_{train,val}.json``: ``images``, ``annotations`` (``file_name``,
  ``segments_info`` of ``{id, category_id, iscrowd, bbox, area}``: one segment per shape, one per
  stuff class present), ``categories`` with ``isthing`` (ids 1-3 things, 4-6 stuff);
- ``annotations/instances_{train,val}.json``: the things as COCO instances (``json_file``, as
  detectron2's builtin panoptic sets have), over ``images/{training,validation}/*.jpg``.

A pure function of ``(num_train, num_val, image_size, seed)``, like the instance set.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
from PIL import Image

from .synthetic import (
    _MIN_VISIBLE_PIXELS,
    SPLITS,
    SYNTH_DEFAULTS,
    SYNTH_THING_CLASSES,
    _background,
    _bbox,
    _place_shapes,
    default_cache_dir,
    instance_annotations,
    write_atomically,
    write_instances_json,
)

__all__ = [
    "SYNTH_PANOPTIC_STUFF_CLASSES",
    "SYNTH_PANOPTIC_CLASSES",
    "generate_synthetic_panoptic_dataset",
    "id2rgb",
    "panoptic_dataset_paths",
    "render_panoptic_scene",
    "rgb2id",
    "synthetic_panoptic_dataset_dir",
]

SYNTH_PANOPTIC_STUFF_CLASSES: Tuple[str, ...] = ("smooth", "stripes", "checkerboard")
# All classes, things first: the contiguous ids 0..5 (json category ids 1..6).
SYNTH_PANOPTIC_CLASSES: Tuple[str, ...] = SYNTH_THING_CLASSES + SYNTH_PANOPTIC_STUFF_CLASSES
PANOPTIC_FORMAT_VERSION = 1
_STUFF_KINDS = ((0, 3), (1,), (2,))  # _background texture kinds of each stuff class
_CATEGORY_COLORS = [(230, 60, 60), (60, 160, 230), (90, 200, 90), (120, 120, 120), (200, 170, 60), (150, 80, 200)]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) integer segment ids -> (H, W, 3) uint8, R + 256 G + 256² B = id (panopticapi's)."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 256 ** 2 % 256], axis=-1).astype(np.uint8)


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 panoptic PNG -> (H, W) int64 segment ids (panopticapi's ``rgb2id``)."""
    rgb = np.asarray(rgb, dtype=np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 ** 2 * rgb[..., 2]


def synthetic_panoptic_dataset_dir(root: Optional[str], num_train: int, num_val: int, image_size: int,
                                   seed: int) -> str:
    """Directory of one generated panoptic variant under ``root`` (default :func:`default_cache_dir`)."""
    root = default_cache_dir() if root is None else os.path.expanduser(root)
    name = f"synth_panoptic_v{PANOPTIC_FORMAT_VERSION}_seed{seed}_{image_size}px_{num_train}-{num_val}"
    return os.path.join(root, name)


def render_panoptic_scene(rng: np.random.Generator, size: int, max_objects: int = 5):
    """One panoptic scene: (H, W, 3) uint8 RGB image, (H, W) int32 instance map (-1 = no shape), the
    instance classes (index = instance id, 0..2) and the (H, W) int64 stuff class map (0..2, indices
    into ``SYNTH_PANOPTIC_STUFF_CLASSES``; meaningful where the instance map is -1)."""
    n = int(rng.integers(1, 4))
    centres = rng.uniform(0, size, (n, 2))
    yy, xx = np.mgrid[0:size, 0:size]
    region = np.argmin((xx[None] - centres[:, 0, None, None]) ** 2 + (yy[None] - centres[:, 1, None, None]) ** 2, 0)
    img = np.zeros((size, size, 3), np.float64)
    stuff = np.zeros((size, size), np.int64)
    for r in range(n):
        cls = int(rng.integers(len(SYNTH_PANOPTIC_STUFF_CLASSES)))
        kind = int(rng.choice(_STUFF_KINDS[cls]))
        m = region == r
        img[m] = _background(rng, size, kind)[m]
        stuff[m] = cls
    img, inst, classes = _place_shapes(rng, img, max_objects)
    return img, inst, classes, stuff


def _segment(seg_id: int, category_id: int, m: np.ndarray) -> dict:
    return {"id": seg_id, "category_id": category_id, "iscrowd": 0, "bbox": _bbox(m), "area": int(m.sum())}


def _write_panoptic_split(out: str, split: str, dirname: str, num: int, size: int, seed: int) -> None:
    img_dir = os.path.join(out, "images", dirname)
    pan_dir = os.path.join(out, "panoptic", dirname)
    os.makedirs(img_dir)
    os.makedirs(pan_dir)
    images, pan_annotations, inst_annotations = [], [], []
    num_things = len(SYNTH_THING_CLASSES)
    for i in range(num):
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, i, 2])  # not the instance set's
        img, inst, classes, stuff = render_panoptic_scene(rng, size)
        ids = np.zeros((size, size), np.int64)
        segments = []
        # segment id = category_id * 256² + 257 * (k + 1): unique in the image, uses all three channels
        for k, cls in enumerate(classes):
            m = inst == k
            if m.any():
                segments.append(_segment((cls + 1) * 65536 + 257 * (k + 1), cls + 1, m))
                ids[m] = segments[-1]["id"]
        for s in range(len(SYNTH_PANOPTIC_STUFF_CLASSES)):
            m = (stuff == s) & (inst < 0)
            if m.sum() >= _MIN_VISIBLE_PIXELS:  # smaller slivers stay void (id 0)
                cat = num_things + s + 1
                segments.append(_segment(cat * 65536 + 257, cat, m))
                ids[m] = segments[-1]["id"]
        stem = f"{split}_{i:06d}"
        image_id = i + 1
        cv2.imwrite(os.path.join(img_dir, stem + ".jpg"), img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        Image.fromarray(id2rgb(ids)).save(os.path.join(pan_dir, stem + ".png"))
        images.append({"id": image_id, "file_name": stem + ".jpg", "height": size, "width": size})
        pan_annotations.append({"image_id": image_id, "file_name": stem + ".png", "segments_info": segments})
        inst_annotations += instance_annotations(inst, classes, image_id, len(inst_annotations) + 1)
    categories = [
        {"id": c + 1, "name": name, "supercategory": "shape" if c < num_things else "texture",
         "isthing": int(c < num_things), "color": list(_CATEGORY_COLORS[c])}
        for c, name in enumerate(SYNTH_PANOPTIC_CLASSES)
    ]
    description = f"d2reg synthetic panoptic shapes ({split}, seed {seed})"
    with open(os.path.join(out, "annotations", f"panoptic_{split}.json"), "w") as f:
        json.dump({"info": {"description": description, "version": str(PANOPTIC_FORMAT_VERSION)},
                   "licenses": [], "images": images, "annotations": pan_annotations, "categories": categories}, f)
    write_instances_json(os.path.join(out, "annotations", f"instances_{split}.json"), images, inst_annotations,
                         description)


def generate_synthetic_panoptic_dataset(
    root: Optional[str] = None,
    num_train: int = SYNTH_DEFAULTS["num_train"],
    num_val: int = SYNTH_DEFAULTS["num_val"],
    image_size: int = SYNTH_DEFAULTS["image_size"],
    seed: int = SYNTH_DEFAULTS["seed"],
) -> str:
    """Generate the panoptic data set (if not there yet; atomically, as
    :func:`d2reg.data.generate_synthetic_dataset`) and return its directory."""
    if image_size < 64:
        raise ValueError(f"image_size must be >= 64 pixels, got {image_size}.")
    out = synthetic_panoptic_dataset_dir(root, num_train, num_val, image_size, seed)

    def write(tmp):
        os.makedirs(os.path.join(tmp, "annotations"))
        for (split, dirname), num in zip(SPLITS, (num_train, num_val)):
            _write_panoptic_split(tmp, split, dirname, num, image_size, seed)

    return write_atomically(out, write, dict(num_train=num_train, num_val=num_val, image_size=image_size, seed=seed))


def panoptic_dataset_paths(root: str) -> Dict[str, Dict[str, str]]:
    """Paths of each split inside a generated panoptic data set directory (the keys of detectron2's
    ``register_coco_panoptic`` metadata)."""
    return {
        split: {
            "image_root": os.path.join(root, "images", dirname),
            "panoptic_root": os.path.join(root, "panoptic", dirname),
            "panoptic_json": os.path.join(root, "annotations", f"panoptic_{split}.json"),
            "json_file": os.path.join(root, "annotations", f"instances_{split}.json"),
        }
        for split, dirname in SPLITS
    }


def panoptic_metadata() -> Dict[str, List]:
    """Class metadata in the layout of detectron2's builtin ``coco_panoptic_standard``: ``thing_classes``
    and ``stuff_classes`` both list all classes (things first; contiguous ids index both lists, as
    detectron2's panoptic ``Visualizer`` and ``COCOPanopticEvaluator`` expect)."""
    n = len(SYNTH_THING_CLASSES)
    return dict(
        thing_classes=list(SYNTH_PANOPTIC_CLASSES),
        thing_colors=[list(c) for c in _CATEGORY_COLORS],
        stuff_classes=list(SYNTH_PANOPTIC_CLASSES),
        stuff_colors=[list(c) for c in _CATEGORY_COLORS],
        thing_dataset_id_to_contiguous_id={i + 1: i for i in range(n)},
        stuff_dataset_id_to_contiguous_id={i + 1: i for i in range(n, len(SYNTH_PANOPTIC_CLASSES))},
    )
