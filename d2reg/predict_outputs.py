"""The files :mod:`d2reg.predict` writes, each whole or not at all.

Layout of the output folder (``<name>``: the input's file name without extension, made unique):

- ``<name>.png``: the picture (detectron2's ``Visualizer``: panoptic segments, else the semantic map
  and the instances above ``--confidence-threshold``);
- ``images.json``: ``{"images": [{"id", "file_name", "height", "width", "visualization", ...}],
  "categories": [{"id", "name"}]}`` — a COCO data set without annotations, so that
  ``COCO("images.json").loadRes("instances.json")`` works as for any COCO results;
- ``instances.json``: COCO results (``image_id``, ``category_id`` in the data set's ids, ``bbox``
  XYWH, ``score``, ``segmentation`` RLE with ``counts`` a str; plus ``file_name``), detectron2's
  ``instances_to_coco_json``;
- ``sem_seg/<name>.png``: the per-pixel argmax label map, uint8 (uint16 above 256 classes);
- ``panoptic/<name>.png`` (segment ids, panopticapi's RGB encoding ``id = R + 256 G + 256² B``) and
  ``panoptic.json`` (panopticapi's prediction format: ``{"annotations": [{"image_id", "file_name",
  "segments_info": [{"id", "category_id", "isthing", "score", "area"}]}], "categories": [...]}``).

The JSON files are written by :meth:`ResultWriter.close`, the per-image files as each image finishes.
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Dict, Iterator, List, Optional

import numpy as np
import torch
from detectron2.data import Metadata
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image

from .data import id2rgb

__all__ = ["ResultWriter", "atomic_path", "draw", "num_classes", "visual_metadata"]


@contextlib.contextmanager
def atomic_path(dst: str) -> Iterator[str]:
    """A temporary path beside ``dst`` (same extension, so writers pick the format from it), renamed to
    ``dst`` when the block succeeds and removed when it raises."""
    folder, name = os.path.split(dst)
    stem, ext = os.path.splitext(name)
    tmp = os.path.join(folder, f".{stem}.partial{ext}")
    try:
        yield tmp
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _save_png(array: np.ndarray, dst: str) -> None:
    with atomic_path(dst) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _save_json(obj, dst: str) -> None:
    with atomic_path(dst) as tmp, open(tmp, "w") as f:
        json.dump(obj, f)


def num_classes(model: torch.nn.Module) -> int:
    """The first ``num_classes`` found on the model or its submodules (ROI heads, semantic head, EoMT); 0 if none."""
    for module in model.modules():
        n = getattr(module, "num_classes", None)
        if isinstance(n, int) and n > 0:
            return n
    return 0


def visual_metadata(metadata: Metadata, model: torch.nn.Module) -> Metadata:
    """``metadata``, or a copy with ``thing_classes`` / ``stuff_classes`` named "0", "1", ... where it
    has none (detectron2's visualizers index them for panoptic and semantic outputs)."""
    if metadata.get("thing_classes") is not None and metadata.get("stuff_classes") is not None:
        return metadata
    n = max(num_classes(model), 1)
    known = {k: metadata.get(k) for k in ("thing_classes", "stuff_classes", "thing_colors", "stuff_colors")
             if metadata.get(k) is not None}
    names = known.get("thing_classes") or known.get("stuff_classes") or [str(i) for i in range(n)]
    return Metadata(name=f"{metadata.name}+names").set(**{"thing_classes": names, "stuff_classes": names, **known})


def _instances(out: Dict, threshold: float):
    inst = out["instances"]
    return inst[inst.scores >= threshold] if inst.has("scores") else inst


def draw(rgb: np.ndarray, out: Dict, threshold: float, metadata: Optional[Metadata] = None,
         video: Optional[VideoVisualizer] = None) -> np.ndarray:
    """The picture of one image's outputs: RGB ``(H, W, 3)`` uint8, ``rgb``'s size. ``video``: draw with
    this ``VideoVisualizer`` (colours kept across frames) instead of a ``Visualizer(metadata)``."""
    if video is not None:
        if "panoptic_seg" in out:
            seg, info = out["panoptic_seg"]
            return video.draw_panoptic_seg_predictions(rgb, seg, info).get_image()
        if "instances" in out:
            return video.draw_instance_predictions(rgb, _instances(out, threshold)).get_image()
        return video.draw_sem_seg(rgb, out["sem_seg"].argmax(0)).get_image()
    vis = Visualizer(rgb, metadata, instance_mode=ColorMode.IMAGE)
    result = vis.output
    if "panoptic_seg" in out:
        seg, info = out["panoptic_seg"]
        result = vis.draw_panoptic_seg(seg, info)
    else:
        if "sem_seg" in out:
            result = vis.draw_sem_seg(out["sem_seg"].argmax(0))
        if "instances" in out:
            result = vis.draw_instance_predictions(_instances(out, threshold))
    return result.get_image()


class ResultWriter:
    """Collects one run's results and writes them under ``output`` (layout: the module docstring)."""

    def __init__(self, output: str, metadata: Metadata, model: torch.nn.Module):
        self.output, self.metadata = output, metadata
        self.vis_metadata = visual_metadata(metadata, model)
        self.images: List[Dict] = []
        self.instances: Optional[List[Dict]] = None
        self.panoptic: Optional[List[Dict]] = None
        self.files: List[str] = []
        self._names: set = set()
        self._thing_ids = {v: k for k, v in (metadata.get("thing_dataset_id_to_contiguous_id") or {}).items()}
        self._stuff_ids = {v: k for k, v in (metadata.get("stuff_dataset_id_to_contiguous_id") or {}).items()}

    def _name(self, path: str) -> str:
        stem = os.path.splitext(os.path.basename(path))[0] or "image"
        name, k = stem, 1
        while name in self._names:
            name, k = f"{stem}_{k}", k + 1
        self._names.add(name)
        return name

    def _write_png(self, array: np.ndarray, *parts: str) -> str:
        dst = os.path.join(self.output, *parts)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        _save_png(array, dst)
        self.files.append(dst)
        return os.path.relpath(dst, self.output)

    def add(self, path: str, rgb: np.ndarray, out: Dict, threshold: float) -> None:
        """Write the files of one predicted image: ``rgb`` ``(H, W, 3)`` uint8, ``out`` the model's outputs."""
        image_id = len(self.images) + 1
        name = self._name(path)
        entry = {"id": image_id, "file_name": path, "height": int(rgb.shape[0]), "width": int(rgb.shape[1])}
        entry["visualization"] = self._write_png(draw(rgb, out, threshold, self.vis_metadata), f"{name}.png")
        if "sem_seg" in out:
            labels = out["sem_seg"].argmax(0).numpy()
            entry["sem_seg"] = self._write_png(labels.astype(np.uint8 if out["sem_seg"].shape[0] <= 256 else np.uint16),
                                               "sem_seg", f"{name}.png")
        if "panoptic_seg" in out:
            seg, info = out["panoptic_seg"]
            seg = seg.numpy()
            entry["panoptic"] = png = self._write_png(id2rgb(seg), "panoptic", f"{name}.png")
            areas = dict(zip(*np.unique(seg, return_counts=True)))  # one pass, not one per segment
            segments = [{**s, "category_id": self._category(s["category_id"], s.get("isthing", True)),
                         "area": int(areas.get(s["id"], 0))} for s in info]
            self.panoptic = self.panoptic if self.panoptic is not None else []
            self.panoptic.append({"image_id": image_id, "file_name": png, "segments_info": segments})
        if "instances" in out:
            results = instances_to_coco_json(_instances(out, threshold), image_id)
            for r in results:
                r["category_id"] = self._category(r["category_id"], True)
                r["file_name"] = path
            self.instances = self.instances if self.instances is not None else []
            self.instances.extend(results)
        self.images.append(entry)

    def _category(self, contiguous: int, isthing: bool) -> int:
        ids = self._thing_ids if isthing else self._stuff_ids
        return int(ids.get(contiguous, contiguous))

    def _categories(self) -> List[Dict]:
        things = self.vis_metadata.get("thing_classes") or []
        return [{"id": self._category(k, True), "name": n} for k, n in enumerate(things)
                if not self._thing_ids or k in self._thing_ids]  # panoptic metadata lists stuff there too

    def close(self) -> List[str]:
        """Write the JSON files (nothing when no image was predicted); returns every file written."""
        if not self.images:
            return self.files
        os.makedirs(self.output, exist_ok=True)
        json_files = {"images.json": {"images": self.images, "categories": self._categories()}}
        if self.instances is not None:
            json_files["instances.json"] = self.instances
        if self.panoptic is not None:
            json_files["panoptic.json"] = {"annotations": self.panoptic, "categories": self._panoptic_categories()}
        for name, obj in json_files.items():
            dst = os.path.join(self.output, name)
            _save_json(obj, dst)
            self.files.append(dst)
        return self.files

    def _panoptic_categories(self) -> List[Dict]:
        """Every class (``stuff_classes`` lists all of them in detectron2's panoptic metadata), in data set ids."""
        things = set(self._thing_ids)
        return [{"id": self._category(k, k in things), "name": n, "isthing": int(k in things)}
                for k, n in enumerate(self.vis_metadata.get("stuff_classes") or [])]
