"""What the three diagnostic tools share: their command-line arguments, the model and the images.

The model is a :class:`d2reg.DINOv2Backbone` (so every checkpoint layout d2reg loads works, loaded
by the backbone's own ``load_weights``); the tools use its timm ViT (``.vit``) directly. Images are
RGB in [0, 1] normalised with the ImageNet mean/std, as DINOv2 was trained. Sizes that are not a
multiple of the patch size are zero-padded bottom/right by the model itself (zero = the mean colour
after normalisation); the patch grid is ``ceil(H / p) x ceil(W / p)``.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..checkpoint import CheckpointInfo, read_checkpoint_info
from ..modeling import DINOv2Backbone
from ..vit import ARCHS, PRETRAIN_IMG_SIZE, PRETRAIN_PATCH_SIZE, ViTArch, get_arch

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AnalysisModel",
    "InputImage",
    "common_parser",
    "load_images",
    "load_model",
    "load_model_from_args",
    "output_dir",
    "peek_checkpoint",
    "to_tensor",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


# ---------------------------------------------------------------------------------------------- CLI
def common_parser() -> argparse.ArgumentParser:
    """The arguments all three tools share (an ``argparse`` parent: ``parents=[common_parser()]``)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("model and input (shared by token_norms / attention_maps / pca_features)")
    g.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image file(s), folder(s), glob pattern(s) or registered detectron2 data set name(s)")
    g.add_argument("--weights", default="",
                   help="local DINOv2 checkpoint (official / timm / Hugging Face / d2reg detectron2 layout); "
                        "without it the model is RANDOMLY initialised (meaningless features)")
    g.add_argument("--arch", default=None, choices=sorted(ARCHS),
                   help="architecture (default: read from the checkpoint; vit_small without --weights)")
    g.add_argument("--registers", type=int, default=None,
                   help="number of register tokens (default: read from the checkpoint; 4 without --weights)")
    g.add_argument("--patch-size", type=int, default=PRETRAIN_PATCH_SIZE,
                   help="patch size the model runs at (default 14, DINOv2's own; 16 = d2reg's detectron2 "
                        "backbone, kernels PI-resized)")
    g.add_argument("--patch-resize", default="pi", choices=("pi", "bicubic"),
                   help="how 14-px kernels are resized to --patch-size")
    g.add_argument("--embed-dim", type=int, default=None, help="custom width (default: from arch / checkpoint)")
    g.add_argument("--depth", type=int, default=None, help="custom depth (default: from arch / checkpoint)")
    g.add_argument("--num-heads", type=int, default=None,
                   help="attention heads (default: the arch's; embed_dim // 64 for custom widths)")
    g.add_argument("--resize", type=int, nargs="+", default=None, metavar="N",
                   help="resize inputs: one number = shorter side, two = H W (default: keep each image's size; "
                        "sides that are not a patch multiple are zero-padded bottom/right by the model)")
    g.add_argument("--max-images", type=int, default=0, help="use at most this many images (0: all)")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--output", "-o", default=None, metavar="DIR", help="output folder")
    return p


# -------------------------------------------------------------------------------------------- model
@dataclass
class AnalysisModel:
    """A loaded ViT plus what the tools need to read its tokens."""

    vit: torch.nn.Module  # timm VisionTransformer (DINOv2VisionTransformer), eval mode
    spec: ViTArch
    patch_size: int
    num_register_tokens: int
    weights: str  # "" = random init
    info: Optional[CheckpointInfo]
    device: torch.device

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.num_register_tokens

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    @property
    def label(self) -> str:
        return f"{self.short_label[:-1]}, {self.spec.name}, patch {self.patch_size})"

    @property
    def short_label(self) -> str:
        name = os.path.basename(self.weights) if self.weights else "RANDOM INIT"
        return f"{name} ({self.num_register_tokens} reg)"

    def grid(self, height: int, width: int) -> tuple:
        return -(-height // self.patch_size), -(-width // self.patch_size)


def peek_checkpoint(path: str) -> CheckpointInfo:
    """The architecture of a checkpoint from its tensor shapes alone: :func:`d2reg.checkpoint.read_checkpoint_info`."""
    return read_checkpoint_info(path)


def load_model(
    weights: str = "",
    arch: Optional[str] = None,
    registers: Optional[int] = None,
    patch_size: int = PRETRAIN_PATCH_SIZE,
    patch_resize: str = "pi",
    final_norm: bool = False,
    device: str = "cpu",
    embed_dim: Optional[int] = None,
    depth: Optional[int] = None,
    num_heads: Optional[int] = None,
) -> AnalysisModel:
    """Build the ViT as a :class:`DINOv2Backbone` (all blocks kept) and load ``weights`` with the
    backbone's own loader. ``arch`` / ``registers`` / sizes default to what the checkpoint holds.
    ``final_norm=True`` keeps the final LayerNorm (needed for post-norm views)."""
    info = peek_checkpoint(weights) if weights else None
    if info is not None:
        arch = arch or info.arch
        registers = info.num_register_tokens if registers is None else registers
        if arch is None:  # custom width: shapes come from the checkpoint
            embed_dim = embed_dim or info.embed_dim
            num_heads = num_heads or info.num_heads
            arch = ViTArch("custom", embed_dim, info.depth, num_heads, info.swiglu)
        depth = depth or info.depth
    arch = arch or "vit_small"
    registers = 4 if registers is None else registers
    spec = get_arch(arch, embed_dim=embed_dim, depth=depth, num_heads=num_heads)
    if not weights:
        print("=" * 100 + "\nNOTE: no --weights given: the ViT is RANDOMLY INITIALISED. Norms, attention maps and PCA "
              "maps say nothing\n      about DINOv2; pass --weights /path/to/dinov2_vitX14[_reg4]_pretrain.pth.\n"
              + "=" * 100, flush=True)
    pretrain = info.pos_grid * PRETRAIN_PATCH_SIZE if info is not None else PRETRAIN_IMG_SIZE
    net = DINOv2Backbone(
        arch=spec, num_register_tokens=registers, patch_size=patch_size, patch_resize=patch_resize,
        weights=weights or None, out_indices=(spec.depth - 1,), final_norm=final_norm, pretrain_img_size=pretrain,
    )
    dev = torch.device(device)
    vit = net.vit.to(dev).eval()
    return AnalysisModel(vit, spec, patch_size, registers, weights, net.checkpoint_info or info, dev)


def load_model_from_args(args: argparse.Namespace, final_norm: bool = False) -> AnalysisModel:
    """:func:`load_model` from the shared command-line arguments."""
    return load_model(
        args.weights, args.arch, args.registers, args.patch_size, args.patch_resize, final_norm, args.device,
        args.embed_dim, args.depth, args.num_heads,
    )


# ------------------------------------------------------------------------------------------- images
@dataclass
class InputImage:
    name: str  # unique, file-name safe
    source: str  # path (or "<dataset>:<index>")
    rgb: np.ndarray  # (H, W, 3) uint8, after --resize

    @property
    def size(self) -> tuple:
        return self.rgb.shape[0], self.rgb.shape[1]


def load_images(inputs: Sequence[str], resize: Optional[Sequence[int]] = None, max_images: int = 0) -> List[InputImage]:
    """Expand files, folders (their images, sorted, not recursive), glob patterns and registered
    detectron2 data set names (their ``file_name`` entries) into RGB images."""
    sources: List[tuple] = []  # (source label, path or array)
    for item in inputs:
        if os.path.isfile(item):
            sources.append((item, item))
        elif os.path.isdir(item):
            files = sorted(f for f in os.listdir(item) if f.lower().endswith(IMAGE_SUFFIXES))
            if not files:
                raise FileNotFoundError(f"folder {item!r} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
            sources.extend((os.path.join(item, f), os.path.join(item, f)) for f in files)
        elif glob.has_magic(item):
            files = sorted(f for f in glob.glob(item) if os.path.isfile(f))
            if not files:
                raise FileNotFoundError(f"glob {item!r} matches no file.")
            sources.extend((f, f) for f in files)
        else:
            sources.extend(_dataset_sources(item))
        if max_images and len(sources) >= max_images:
            break
    if max_images:
        sources = sources[:max_images]
    images, seen = [], set()
    for label, src in sources:
        rgb = _read_rgb(src)
        if resize:
            rgb = _resize(rgb, resize)
        stem = os.path.splitext(os.path.basename(label))[0] if isinstance(src, str) else label.replace(":", "_")
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) or "image"
        base, n = name, 1
        while name in seen:
            name, n = f"{base}_{n}", n + 1
        seen.add(name)
        images.append(InputImage(name, label, rgb))
    return images


def _dataset_sources(name: str) -> List[tuple]:
    if importlib.util.find_spec("d2reg.data") is not None:
        import d2reg.data  # noqa: F401  (registers the embedded synthetic data set)
    from detectron2.data import DatasetCatalog

    if name not in DatasetCatalog.list():
        raise FileNotFoundError(
            f"input {name!r} is no file, folder or glob match, nor a registered detectron2 data set "
            f"(registered: {', '.join(sorted(DatasetCatalog.list())[:12])} ...)."
        )
    out = []
    for i, d in enumerate(DatasetCatalog.get(name)):
        if "file_name" in d:
            out.append((d["file_name"], d["file_name"]))
        elif "image" in d:
            out.append((f"{name}:{d.get('image_id', i)}", np.asarray(d["image"])))
        else:
            raise ValueError(f"data set {name!r} entry {i} has neither 'file_name' nor 'image'.")
    return out


def _read_rgb(src) -> np.ndarray:
    if isinstance(src, np.ndarray):
        arr = src if src.ndim == 3 else np.repeat(src[..., None], 3, axis=-1)
        return np.ascontiguousarray(arr[..., :3]).astype(np.uint8)
    with Image.open(src) as im:
        return np.asarray(im.convert("RGB"))


def _resize(rgb: np.ndarray, size: Sequence[int]) -> np.ndarray:
    h, w = rgb.shape[:2]
    if len(size) == 1:
        s = size[0] / min(h, w)
        new = (max(1, round(h * s)), max(1, round(w * s)))
    elif len(size) == 2:
        new = (size[0], size[1])
    else:
        raise ValueError(f"--resize takes one number (shorter side) or two (H W), got {list(size)}.")
    return np.asarray(Image.fromarray(rgb).resize((new[1], new[0]), Image.BICUBIC))


def to_tensor(image: InputImage, device="cpu") -> torch.Tensor:
    """(1, 3, H, W) float32: RGB in [0, 1], ImageNet-normalised (no padding: the model pads)."""
    x = torch.from_numpy(np.array(image.rgb)).to(device).permute(2, 0, 1).float().div(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def output_dir(args: argparse.Namespace, tool: str) -> str:
    path = args.output or os.path.join("output", tool)
    os.makedirs(path, exist_ok=True)
    return path
