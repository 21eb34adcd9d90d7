"""A synthetic instance / semantic segmentation data set of coloured shapes, generated on demand.

Images of circles, squares and triangles (random colours, sizes, rotations, partial occlusions: each
shape stays at least 75% visible) on textured backgrounds (gradients, stripes, checkerboards, smooth
noise) of lower contrast than the shapes; the class is the shape alone. One set of images is written
in two layouts, so detectron2's own loaders and evaluators read it like the real data sets:

- COCO instances: ``annotations/instances_{train,val}.json`` (polygons of the *visible* part of
  each shape, boxes, areas) over ``images/{training,validation}/*.jpg``;
- ADE20k (detectron2's ``ADEChallengeData2016`` layout): ``annotations_detectron2/{training,validation}/*.png``
  with pixel values 0 (background), 1..3 (the shape classes).

Everything is a pure function of ``(num_train, num_val, image_size, seed)``.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np

__all__ = [
    "SYNTH_THING_CLASSES",
    "SYNTH_STUFF_CLASSES",
    "SYNTH_NUM_SEM_SEG_CLASSES",
    "SYNTH_DEFAULTS",
    "default_cache_dir",
    "synthetic_dataset_dir",
    "generate_synthetic_dataset",
    "render_scene",
]

SYNTH_THING_CLASSES: Tuple[str, ...] = ("circle", "square", "triangle")
SYNTH_STUFF_CLASSES: Tuple[str, ...] = ("background",) + SYNTH_THING_CLASSES
SYNTH_NUM_SEM_SEG_CLASSES = len(SYNTH_STUFF_CLASSES)  # 4: background + 3 shapes
SYNTH_DEFAULTS = dict(num_train=256, num_val=64, image_size=192, seed=0)
FORMAT_VERSION = 2
SPLITS = (("train", "training"), ("val", "validation"))

_MIN_VISIBLE_FRACTION = 0.75  # a placed shape may hide at most a quarter of an earlier one
_MIN_VISIBLE_PIXELS = 40


def default_cache_dir() -> str:
    """``$D2REG_CACHE``, else ``$XDG_CACHE_HOME/d2reg``, else ``~/.cache/d2reg``."""
    if os.environ.get("D2REG_CACHE"):
        return os.path.expanduser(os.environ["D2REG_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "d2reg")


def synthetic_dataset_dir(root: Optional[str], num_train: int, num_val: int, image_size: int, seed: int) -> str:
    """Directory of one generated variant under ``root`` (default :func:`default_cache_dir`)."""
    root = default_cache_dir() if root is None else os.path.expanduser(root)
    name = f"synth_v{FORMAT_VERSION}_seed{seed}_{image_size}px_{num_train}-{num_val}"
    return os.path.join(root, name)


# ----------------------------------------------------------------------------------------- drawing
def _background(rng: np.random.Generator, size: int, kind: Optional[int] = None) -> np.ndarray:
    """(H, W, 3) float texture: ``kind`` 0 gradient, 1 stripes, 2 checkerboard, 3 smooth noise
    (None: drawn from ``rng``)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * math.pi)
    proj = xx * math.cos(angle) + yy * math.sin(angle)
    if kind is None:
        kind = rng.integers(4)
    if kind == 0:  # linear gradient
        t = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)
    elif kind == 1:  # stripes
        t = 0.5 + 0.5 * np.sin(2 * math.pi * rng.uniform(3, 10) * proj + rng.uniform(0, 2 * math.pi))
    elif kind == 2:  # (rotated) checkerboard
        f = rng.uniform(3, 8)
        u = xx * math.cos(angle) - yy * math.sin(angle)
        t = ((np.floor(proj * f) + np.floor(u * f)) % 2).astype(np.float32)
    else:  # smooth noise
        n = rng.integers(3, 7)
        t = cv2.resize(rng.uniform(0, 1, (n, n)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
        t = np.clip(t, 0, 1)
    c1 = rng.uniform(30, 225, 3)
    c2 = np.clip(c1 + rng.uniform(-60, 60, 3), 0, 255)  # textured, but fainter than any shape
    img = c1[None, None] * (1 - t[..., None]) + c2[None, None] * t[..., None]
    return img + rng.normal(0, 6, img.shape)


def _shape_mask(rng: np.random.Generator, cls: int, size: int) -> np.ndarray:
    """Mask (H, W) bool of one random shape of class ``cls`` (0 circle, 1 square, 2 triangle)."""
    r = rng.uniform(0.09, 0.22) * size
    cx, cy = rng.uniform(r * 0.6, size - r * 0.6, 2)
    mask = np.zeros((size, size), np.uint8)
    if cls == 0:
        cv2.circle(mask, (round(cx * 16), round(cy * 16)), round(r * 16), 1, -1, cv2.LINE_8, shift=4)
    else:
        n = 4 if cls == 1 else 3
        rot = rng.uniform(0, 2 * math.pi)
        pts = np.array([[cx + r * math.cos(rot + 2 * math.pi * k / n), cy + r * math.sin(rot + 2 * math.pi * k / n)]
                        for k in range(n)])
        cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    return mask.astype(bool)


def render_scene(rng: np.random.Generator, size: int, max_objects: int = 5):
    """One image: (H, W, 3) uint8 RGB, (H, W) int32 instance map (-1 background) and the list of
    instance classes (index = instance id)."""
    return _place_shapes(rng, _background(rng, size), max_objects)


def _place_shapes(rng: np.random.Generator, img: np.ndarray, max_objects: int):
    """Draw 2..max_objects shapes onto the (H, W, 3) float background ``img``; returns what
    :func:`render_scene` does."""
    size = img.shape[0]
    inst = np.full((size, size), -1, np.int32)
    full_areas: List[int] = []
    classes: List[int] = []
    target = int(rng.integers(2, max_objects + 1))
    tries = 0
    while len(classes) < target and tries < 10 * target:
        tries += 1
        cls = int(rng.integers(len(SYNTH_THING_CLASSES)))
        m = _shape_mask(rng, cls, size)
        if m.sum() < _MIN_VISIBLE_PIXELS:
            continue
        # Occlusion is allowed, but every earlier shape must stay mostly visible.
        hidden = np.bincount(inst[m & (inst >= 0)], minlength=len(classes))
        visible = np.bincount(inst[inst >= 0], minlength=len(classes)) - hidden
        if any(v < max(_MIN_VISIBLE_FRACTION * a, _MIN_VISIBLE_PIXELS) for v, a in zip(visible, full_areas)):
            continue
        # Colour: far enough from the background under the shape, so the shape is always visible.
        bg = img[m].mean(0)
        for _ in range(20):
            color = rng.uniform(0, 255, 3)
            if np.linalg.norm(color - bg) > 90:
                break
        shade = rng.normal(0, 8, (size, size, 1)) + color[None, None]
        img[m] = shade[m]
        inst[m] = len(classes)
        classes.append(cls)
        full_areas.append(int(m.sum()))
    return np.clip(img, 0, 255).astype(np.uint8), inst, classes


def _polygons(mask: np.ndarray) -> List[List[float]]:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        if len(c) >= 3 and cv2.contourArea(c) >= 2:
            # pixel centres -> pixel-area outline (detectron2/pycocotools rasterise polygons by area)
            polys.append([float(v) + 0.5 for v in c.reshape(-1)])
    return polys


# -------------------------------------------------------------------------------------- generation
def _write_split(out: str, split: str, dirname: str, num: int, size: int, seed: int) -> None:
    img_dir = os.path.join(out, "images", dirname)
    sem_dir = os.path.join(out, "annotations_detectron2", dirname)
    os.makedirs(img_dir)
    os.makedirs(sem_dir)
    images, annotations = [], []
    split_id = 0 if split == "train" else 1
    for i in range(num):
        rng = np.random.default_rng([seed, split_id, i])
        img, inst, classes = render_scene(rng, size)
        stem = f"{split}_{i:06d}"
        cv2.imwrite(os.path.join(img_dir, stem + ".jpg"), img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        sem = np.zeros((size, size), np.uint8)
        image_id = i + 1
        images.append({"id": image_id, "file_name": stem + ".jpg", "height": size, "width": size})
        for k, cls in enumerate(classes):
            sem[inst == k] = cls + 1
        annotations += instance_annotations(inst, classes, image_id, len(annotations) + 1)
        cv2.imwrite(os.path.join(sem_dir, stem + ".png"), sem)
    write_instances_json(os.path.join(out, "annotations", f"instances_{split}.json"), images, annotations,
                         f"d2reg synthetic shapes ({split}, seed {seed})")


def _bbox(m: np.ndarray) -> List[float]:
    """COCO ``[x, y, w, h]`` of a non-empty (H, W) bool mask."""
    ys, xs = np.nonzero(m)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def instance_annotations(inst: np.ndarray, classes: List[int], image_id: int, first_id: int) -> List[dict]:
    """COCO instance annotations (polygons of the visible parts, category ids ``class + 1``) of the
    (H, W) instance map ``inst`` (-1 background, k = ``classes[k]``), ids from ``first_id``."""
    annotations = []
    for k, cls in enumerate(classes):
        m = inst == k
        polys = _polygons(m)
        if not polys:
            continue
        annotations.append({
            "id": first_id + len(annotations), "image_id": image_id, "category_id": cls + 1,
            "bbox": _bbox(m), "area": float(m.sum()), "segmentation": polys, "iscrowd": 0,
        })
    return annotations


def write_instances_json(path: str, images: List[dict], annotations: List[dict], description: str) -> None:
    """A COCO instances json over the three shape categories (ids 1..3)."""
    coco = {
        "info": {"description": description, "version": str(FORMAT_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SYNTH_THING_CLASSES)],
    }
    with open(path, "w") as f:
        json.dump(coco, f)


def generate_synthetic_dataset(
    root: Optional[str] = None,
    num_train: int = SYNTH_DEFAULTS["num_train"],
    num_val: int = SYNTH_DEFAULTS["num_val"],
    image_size: int = SYNTH_DEFAULTS["image_size"],
    seed: int = SYNTH_DEFAULTS["seed"],
) -> str:
    """Generate the data set (if not there yet) and return its directory.

    ``root`` is the cache root (default :func:`default_cache_dir`); the variant goes into a
    sub-directory named after the arguments. Written to a temporary directory and renamed into
    place, so concurrent processes (DDP workers) never see half a data set.
    """
    out = synthetic_dataset_dir(root, num_train, num_val, image_size, seed)
    if image_size < 64:
        raise ValueError(f"image_size must be >= 64 pixels, got {image_size}.")

    def write(tmp):
        os.makedirs(os.path.join(tmp, "annotations"))
        for (split, dirname), num in zip(SPLITS, (num_train, num_val)):
            _write_split(tmp, split, dirname, num, image_size, seed)

    return write_atomically(out, write, dict(num_train=num_train, num_val=num_val, image_size=image_size, seed=seed))


def write_atomically(out: str, write: Callable[[str], None], info: dict) -> str:
    """Run ``write(tmp_dir)`` unless ``out/DONE`` exists, then rename ``tmp_dir`` to ``out`` (with a
    ``DONE`` file holding ``info``), so concurrent processes (DDP workers) never see half a data set."""
    if os.path.isfile(os.path.join(out, "DONE")):
        return out
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp_" + os.path.basename(out) + "_", dir=parent)
    try:
        write(tmp)
        with open(os.path.join(tmp, "DONE"), "w") as f:
            json.dump(info, f)
        try:
            os.rename(tmp, out)
        except OSError:  # another process finished first (or a stale, incomplete directory)
            if not os.path.isfile(os.path.join(out, "DONE")):
                shutil.rmtree(out, ignore_errors=True)
                os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def dataset_paths(root: str) -> Dict[str, Dict[str, str]]:
    """Paths of each split inside a generated data set directory."""
    return {
        split: {
            "image_root": os.path.join(root, "images", dirname),
            "json_file": os.path.join(root, "annotations", f"instances_{split}.json"),
            "sem_seg_root": os.path.join(root, "annotations_detectron2", dirname),
        }
        for split, dirname in SPLITS
    }
