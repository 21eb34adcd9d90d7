"""Run a trained d2reg model on a user's own images and videos (``tools/predict.py``, ``d2reg-predict``).

What detectron2's ``demo/demo.py`` does, for d2reg's YACS keys and for LazyConfigs, from an installed
package, with machine-readable results:

    predictor = build_predictor("demo/mask_rcnn_vit_tiny_synth.yaml", ["MODEL.WEIGHTS", "out/model_final.pth"])
    summary = predict_images(predictor, collect_inputs(["imgs/"])[0], "out/pred")

The model is the config's own (``detectron2.modeling.build_model`` / ``instantiate(cfg.model)``), its
weights loaded with :class:`d2reg.engine.D2RegCheckpointer`; each image is resized as the config's test
loader does (YACS ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``, none for EoMT, which resizes itself;
LazyConfig ``dataloader.test.mapper.augmentations``) and the outputs come back at the image's own size. Class
names and colours come from the config's first test data set (``DATASETS.TEST[0]`` /
``dataloader.test.dataset.names``). Files written under the output folder (layout in
:mod:`d2reg.predict_outputs`): a picture per image (detectron2's ``Visualizer``), instances as COCO
results with RLE masks, semantic label maps and panoptic id maps as PNG, an annotated video per video.
"""
from __future__ import annotations

import glob
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import detectron2.data.transforms as T
import numpy as np
import torch
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.data import Metadata, MetadataCatalog
from detectron2.data.detection_utils import build_augmentation, read_image
from detectron2.modeling import build_model
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode
from tqdm import tqdm

from .config import add_d2reg_config, resolve_recipe
from .data import build_eomt_augmentation
from .engine import D2RegCheckpointer
from .model_zoo import resolve_config_file
from .predict_outputs import ResultWriter, atomic_path, draw, visual_metadata

__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "PredictError", "PredictSummary", "Predictor", "build_predictor",
           "collect_inputs", "predict_images", "predict_video"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


class PredictError(RuntimeError):
    """Bad input for prediction (no such file, no weights, an unreadable image with ``on_error="stop"``)."""


@dataclass
class Predictor:
    """A model in eval mode and how to feed it.

    Attributes:
        model: a detectron2 model taking ``[{"image": (3, h, w) float 0-255 in input_format, "height": H,
            "width": W}]`` and returning, per image, ``"instances"`` / ``"sem_seg"`` ``(C, H, W)`` /
            ``"panoptic_seg"`` ``((H, W) int ids, segments_info)`` at ``H x W``.
        augmentations: the test-time resize (detectron2 augmentations applied to the image only).
        input_format: "RGB" or "BGR", the channel order the model takes.
        metadata: class names and colours (a detectron2 ``Metadata``).
    """

    model: torch.nn.Module
    augmentations: List[T.Augmentation] = field(default_factory=list)
    input_format: str = "RGB"
    metadata: Metadata = field(default_factory=lambda: MetadataCatalog.get("__d2reg_predict_unnamed"))

    def __post_init__(self):
        self._augment = T.AugmentationList(self.augmentations)

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray]) -> List[Dict]:
        """``images``: RGB ``(H, W, 3)`` uint8 arrays -> the model's output dict per image, on the CPU."""
        inputs = []
        for rgb in images:
            aug = T.AugInput(rgb)
            self._augment(aug)
            img = aug.image if self.input_format == "RGB" else aug.image[:, :, ::-1]
            tensor = torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1)).astype("float32"))
            inputs.append({"image": tensor, "height": rgb.shape[0], "width": rgb.shape[1]})
        return [_to_cpu(out) for out in self.model(inputs)]


def _to_cpu(out: Dict) -> Dict:
    res = {}
    for key, value in out.items():
        if key == "panoptic_seg":
            res[key] = (value[0].cpu(), value[1])
        else:
            res[key] = value.to("cpu")
    return res


def _default_device(device: Optional[str]) -> str:
    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise PredictError(f"--device {device}: no CUDA device is available here; use --device cpu.")
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_weights(weights: str, key: str) -> None:
    """Refuse before anything is built or written: predicting with untrained heads is never meant."""
    if not weights:
        raise PredictError(f"The config names no trained weights: pass {key} (e.g. the model_final.pth a training "
                           "run wrote to its output folder).")
    if "://" not in weights and not os.path.isfile(weights):
        raise PredictError(f"Checkpoint not found: {weights!r} ({key}). Pass the path of a trained model (e.g. "
                           "OUTPUT_DIR/model_final.pth of tools/train_net.py).")


def build_predictor(config_file: str, opts: Sequence[str] = (), *, device: Optional[str] = None) -> Predictor:
    """A :class:`Predictor` from a config: a YACS ``.yaml`` (``opts`` as ``KEY VALUE`` pairs, weights
    ``MODEL.WEIGHTS``), a LazyConfig ``.py`` (``opts`` as ``key=value``, weights ``train.init_checkpoint``),
    or a packaged config name (:func:`d2reg.model_zoo.resolve_config_file`). ``device``: "cpu", "cuda",
    "cuda:1", ... (default: cuda when available). Raises :class:`PredictError` when the weights are
    missing, before building anything."""
    path = resolve_config_file(config_file)
    device = _default_device(device)
    if path.endswith(".py"):
        cfg = LazyConfig.apply_overrides(LazyConfig.load(path), list(opts))
        weights = str(cfg.train.get("init_checkpoint", "") or "") if "train" in cfg else ""
        _check_weights(weights, "train.init_checkpoint=PATH")
        test = cfg.dataloader.test if "dataloader" in cfg and "test" in cfg.dataloader else {}
        mapper = test.get("mapper", {}) if test else {}
        augmentations = [instantiate(a) for a in mapper.get("augmentations", [])]
        model = instantiate(cfg.model)
        input_format = mapper.get("image_format", None) or getattr(model, "input_format", "RGB")
        names = test.get("dataset", {}).get("names", "") if test else ""
        dataset = names if isinstance(names, str) else (list(names) or [""])[0]
    elif path.endswith((".yaml", ".yml")):
        cfg = add_d2reg_config(get_cfg())
        cfg.merge_from_file(path)
        cfg.merge_from_list(list(opts))
        cfg.MODEL.DEVICE = device
        _check_weights(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS PATH")
        cfg = resolve_recipe(cfg)
        if cfg.MODEL.META_ARCHITECTURE == "EoMT":  # as its test mapper: images as read, EoMT resizes itself
            augmentations = build_eomt_augmentation(cfg.MODEL.EOMT.TASK, cfg.INPUT.IMAGE_SIZE, is_train=False)
        else:  # detectron2's DatasetMapper(cfg, is_train=False): INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST
            augmentations = build_augmentation(cfg, is_train=False)
        model = build_model(cfg)
        input_format = cfg.INPUT.FORMAT
        weights = cfg.MODEL.WEIGHTS
        dataset = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else ""
    else:
        raise PredictError(f"--config-file {config_file!r}: expected a YACS .yaml or a LazyConfig .py file.")
    model.to(torch.device(device))
    D2RegCheckpointer(model).load(weights)
    metadata = MetadataCatalog.get(dataset) if dataset else MetadataCatalog.get("__d2reg_predict_unnamed")
    return Predictor(model.eval(), augmentations, input_format, metadata)


def collect_inputs(inputs: Sequence[str]) -> Tuple[List[str], List[str]]:
    """``--input`` items -> (image paths, video paths): a file (by extension, else an image), a folder
    (its images and videos, sorted, not recursive) or a glob pattern. An item matching nothing is a
    :class:`PredictError`, as is an empty result."""
    images, videos = [], []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, n) for n in os.listdir(item)
                           if n.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS))
        elif os.path.isfile(item):
            found = [item]
        elif glob.has_magic(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
        else:
            found = []
        if not found:
            raise PredictError(f"--input {item!r}: no such file or folder, or nothing matches it (config "
                               "overrides go last, after --output DIR).")
        for p in found:
            (videos if p.lower().endswith(VIDEO_EXTENSIONS) else images).append(p)
    return images, videos


@dataclass
class PredictSummary:
    """What :func:`predict_images` / :func:`predict_video` did: images (or frames) predicted, the ones
    skipped with the reason, the seconds spent in the loop and the files written."""

    images: int = 0
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    files: List[str] = field(default_factory=list)

    def line(self, output: str) -> str:
        per = f"{self.seconds / self.images:.3f} s/image" if self.images else "no image predicted"
        skipped = f", {len(self.skipped)} skipped (unreadable)" if self.skipped else ""
        return f"predicted {self.images} image(s){skipped} in {self.seconds:.1f} s, {per}; results in {output}"


def _read(path: str) -> np.ndarray:
    """RGB ``(H, W, 3)`` uint8 (detectron2's ``read_image``, EXIF orientation applied)."""
    img = read_image(path, format="RGB")
    if img.ndim != 3 or img.shape[2] != 3 or img.size == 0:
        raise ValueError(f"not an RGB image (shape {img.shape})")
    return img


def predict_images(predictor: Predictor, paths: Sequence[str], output: str, *, confidence_threshold: float = 0.5,
                   batch_size: int = 1, on_error: str = "skip", progress: bool = True) -> PredictSummary:
    """Predict ``paths`` in batches of ``batch_size`` and write the results under ``output``.

    Instances below ``confidence_threshold`` are dropped (pictures and JSON alike). An image that cannot
    be read is logged and skipped (``on_error="skip"``) or stops the run (``"stop"``: a
    :class:`PredictError` after the results of the images before it are written). Every file is
    written whole or not at all (a temporary name, renamed when complete)."""
    if on_error not in ("skip", "stop"):
        raise ValueError(f"on_error must be 'skip' or 'stop', got {on_error!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    writer = ResultWriter(output, predictor.metadata, predictor.model)
    summary = PredictSummary()
    start = time.perf_counter()
    stopped: Optional[PredictError] = None
    bar = tqdm(total=len(paths), desc="predict", unit="image", disable=not progress)
    try:
        for first in range(0, len(paths), batch_size):
            batch: List[Tuple[str, np.ndarray]] = []
            for path in paths[first: first + batch_size]:
                try:
                    batch.append((path, _read(path)))
                except Exception as e:  # noqa: BLE001  (PIL / OSError / ValueError: whatever the file is)
                    reason = f"{type(e).__name__}: {e}"
                    logger.info("cannot read %s (%s)%s", path, reason, ": skipped" if on_error == "skip" else "")
                    if on_error == "stop":
                        stopped = PredictError(f"cannot read {path}: {reason} (--on-error stop). Results of the "
                                               f"{summary.images} image(s) before it are in {output}.")
                        break
                    summary.skipped.append((path, reason))
            outputs = predictor([img for _, img in batch]) if batch else []
            for (path, img), out in zip(batch, outputs):
                writer.add(path, img, out, confidence_threshold)
                summary.images += 1
            bar.update(len(batch))
            if stopped is not None:
                break
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - start
        summary.files = writer.close()
    if stopped is not None:
        raise stopped
    return summary


def predict_video(predictor: Predictor, path: str, output: str, *, confidence_threshold: float = 0.5,
                  batch_size: int = 1, progress: bool = True) -> PredictSummary:
    """``path`` -> ``output/<name>.mp4``, every frame annotated with detectron2's ``VideoVisualizer``
    (instance colours kept across frames), at the input's frame rate and size. Raises
    :class:`PredictError` for a video OpenCV cannot open; the output appears only when complete."""
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise PredictError(f"cannot open video {path} (OpenCV: no backend reads it).")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    os.makedirs(output, exist_ok=True)
    dst = os.path.join(output, os.path.splitext(os.path.basename(path))[0] + ".mp4")
    visualizer = VideoVisualizer(visual_metadata(predictor.metadata, predictor.model), ColorMode.IMAGE)
    summary = PredictSummary()
    start = time.perf_counter()
    with atomic_path(dst) as tmp:
        out = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not out.isOpened():
            raise PredictError(f"OpenCV cannot write {dst} (no mp4v encoder in this OpenCV build).")
        bar = tqdm(total=frames, desc=os.path.basename(path), unit="frame", disable=not progress)
        try:
            done = False
            while not done:
                batch = []
                while len(batch) < batch_size:
                    ok, frame = cap.read()
                    if not ok:
                        done = True
                        break
                    batch.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
                for rgb, pred in zip(batch, predictor(batch) if batch else []):
                    vis = draw(rgb, pred, confidence_threshold, video=visualizer)
                    out.write(cv2.cvtColor(vis, cv2.COLOR_RGB2BGR))
                    summary.images += 1
                bar.update(len(batch))
        finally:
            bar.close()
            out.release()
            cap.release()
    if summary.images == 0:
        os.remove(dst)
        raise PredictError(f"video {path}: no frame could be read.")
    summary.seconds = time.perf_counter() - start
    summary.files = [dst]
    return summary
