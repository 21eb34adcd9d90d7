"""What the three diagnostic tools share: their command-line arguments, the model and the images.

The model is the checkpoint family's backbone, :class:`d2reg.DINOv2Backbone` or
:class:`d2reg.DINOv3Backbone` (``d2reg.modeling.BACKBONE_FAMILIES[info.family]``, all blocks kept), so
every checkpoint layout d2reg loads works, loaded by the backbone's own ``load_weights``; the tools use
its timm ViT (``.vit``: a ``VisionTransformer`` for DINOv2, an ``Eva`` with RoPE for DINOv3) directly.
DINOv3's 4 storage tokens take the place of DINOv2's registers (tokens ``[CLS, storage x4, patches]``,
patch 16). Images are RGB in [0, 1] normalised with the ImageNet mean/std, as both families were
trained. Sizes that are not a multiple of the patch size are zero-padded bottom/right by the model
itself (zero = the mean colour after normalisation); the patch grid is ``ceil(H / p) x ceil(W / p)``.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .. import recipes
from ..checkpoint import CheckpointInfo, read_checkpoint_info
from ..modeling import BACKBONE_FAMILIES
from ..vit import ARCHS, PRETRAIN_IMG_SIZE, PRETRAIN_PATCH_SIZE, ViTArch, get_arch
from ..vit.dinov3 import DINOV3_ARCHS, DINOV3_NUM_STORAGE_TOKENS, DINOV3_PATCH_SIZE, DINOv3Arch, get_dinov3_arch

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

# The one ImageNet normalisation (d2reg.recipes, 0-255 pixels), on the [0, 1] scale the tools use.
IMAGENET_MEAN = tuple(v / 255.0 for v in recipes.IMAGENET_MEAN)
IMAGENET_STD = tuple(v / 255.0 for v in recipes.IMAGENET_STD)
FAMILY_NAMES = ("dinov2", "dinov3")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


# ---------------------------------------------------------------------------------------------- CLI
def common_parser() -> argparse.ArgumentParser:
    """The arguments all three tools share (an ``argparse`` parent: ``parents=[common_parser()]``)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("model and input (shared by token_norms / attention_maps / pca_features)")
    g.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image file(s), folder(s), glob pattern(s) or registered detectron2 data set name(s)")
    g.add_argument("--weights", default="",
                   help="local DINOv2 or DINOv3 checkpoint (official / timm / Hugging Face / d2reg detectron2 "
                        "layout; the family is read from the tensors); without it the model is RANDOMLY "
                        "initialised (meaningless features)")
    g.add_argument("--family", default=None, choices=sorted(FAMILY_NAMES),
                   help="model family WITHOUT --weights (random init; default dinov2); with --weights the "
                        "checkpoint tells, and a different --family is an error")
    g.add_argument("--arch", default=None, choices=sorted(set(ARCHS) | set(DINOV3_ARCHS)),
                   help="architecture (default: read from the checkpoint; vit_small without --weights)")
    g.add_argument("--registers", type=int, default=None,
                   help="number of register tokens (default: read from the checkpoint; 4 without --weights; "
                        "DINOv3: always its 4 storage tokens)")
    g.add_argument("--patch-size", type=int, default=None,
                   help="patch size the model runs at (default: the family's own, DINOv2 14, DINOv3 16; "
                        "DINOv2 at 16 = d2reg's detectron2 backbone, kernels PI-resized; DINOv3: 16 only)")
    g.add_argument("--patch-resize", default="pi", choices=("pi", "bicubic"),
                   help="how DINOv2's 14-px kernels are resized to --patch-size")
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
    """A loaded ViT plus what the tools need to read its tokens. ``num_register_tokens`` counts
    DINOv2's registers or DINOv3's storage tokens (they sit in the same place: after the CLS)."""

    vit: torch.nn.Module  # timm VisionTransformer (DINOv2) or Eva (DINOv3), eval mode
    spec: Union[ViTArch, DINOv3Arch]
    patch_size: int
    num_register_tokens: int
    weights: str  # "" = random init
    info: Optional[CheckpointInfo]
    device: torch.device
    family: str = "dinov2"

    @property
    def num_prefix_tokens(self) -> int:
        """CLS + registers / storage tokens: the tokens before the patches."""
        return 1 + self.num_register_tokens

    @property
    def register_name(self) -> str:
        """What the family calls its extra prefix tokens: "register" (DINOv2) or "storage" (DINOv3)."""
        return "storage" if self.family == "dinov3" else "register"

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    @property
    def label(self) -> str:
        return f"{self.short_label[:-1]}, {self.spec.name}, patch {self.patch_size})"

    @property
    def short_label(self) -> str:
        name = os.path.basename(self.weights) if self.weights else "RANDOM INIT"
        if self.family == "dinov3":
            return f"{name} (DINOv3, {self.num_register_tokens} storage)"
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
    patch_size: Optional[int] = None,
    patch_resize: str = "pi",
    final_norm: bool = False,
    device: str = "cpu",
    embed_dim: Optional[int] = None,
    depth: Optional[int] = None,
    num_heads: Optional[int] = None,
    family: Optional[str] = None,
) -> AnalysisModel:
    """Build the ViT as its family's backbone (:class:`DINOv2Backbone` / :class:`DINOv3Backbone`, all
    blocks kept) and load ``weights`` with the backbone's own loader. The family comes from the
    checkpoint (``family`` only chooses it without ``weights``: random init, default "dinov2"; a
    ``family`` that contradicts the checkpoint is an error). ``arch`` / ``registers`` / sizes default
    to what the checkpoint holds; ``patch_size`` to the family's own (DINOv2 14, DINOv3 16).
    ``final_norm=True`` keeps the final LayerNorm (needed for post-norm views)."""
    if family is not None and family not in FAMILY_NAMES:
        raise ValueError(f"family must be one of {FAMILY_NAMES}, got {family!r}.")
    info = peek_checkpoint(weights) if weights else None
    if info is not None:
        if family is not None and family != info.family:
            raise ValueError(f"--family {family} was given, but {weights} is a {info.family} checkpoint "
                             f"({info.describe()}): drop --family (the checkpoint tells) or pass a {family} file.")
        family = info.family
    family = family or "dinov2"
    if not weights:
        model_name = "DINOv3" if family == "dinov3" else "DINOv2"
        example = "dinov3_vits16_pretrain_*.pth" if family == "dinov3" else "dinov2_vitX14[_reg4]_pretrain.pth"
        print("=" * 100 + f"\nNOTE: no --weights given: the ViT is RANDOMLY INITIALISED. Norms, attention maps and "
              f"PCA maps say nothing\n      about {model_name}; pass --weights /path/to/{example}.\n"
              + "=" * 100, flush=True)
    if family == "dinov3":
        return _load_dinov3(weights, info, arch, registers, patch_size, final_norm, device, embed_dim, depth,
                            num_heads)
    patch_size = PRETRAIN_PATCH_SIZE if patch_size is None else patch_size
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
    pretrain = info.pos_grid * PRETRAIN_PATCH_SIZE if info is not None else PRETRAIN_IMG_SIZE
    net = BACKBONE_FAMILIES["dinov2"](
        arch=spec, num_register_tokens=registers, patch_size=patch_size, patch_resize=patch_resize,
        weights=weights or None, out_indices=(spec.depth - 1,), final_norm=final_norm, pretrain_img_size=pretrain,
    )
    dev = torch.device(device)
    vit = net.vit.to(dev).eval()
    return AnalysisModel(vit, spec, patch_size, registers, weights, net.checkpoint_info or info, dev, "dinov2")


def _dinov3_spec(info: Optional[CheckpointInfo], arch: Optional[str], embed_dim, depth, num_heads):
    """The DINOv3 arch: the table's (``arch`` or the checkpoint's standard name) with the size overrides,
    or, for a checkpoint of non-standard width, its own shapes (MLP kind and width, qkv bias)."""
    if info is not None:
        depth = depth or info.depth
        if arch is None and info.arch is None:  # custom width: every shape from the checkpoint
            dim, hidden = embed_dim or info.embed_dim, info.mlp_hidden
            if info.swiglu:  # int(dim * ratio * 2 / 3) == hidden, no rounding up
                ratio, align = (hidden + 0.5) * 1.5 / dim, 1
            else:
                ratio, align = (hidden + 0.5) / dim, 8
            return DINOv3Arch("custom", dim, depth, num_heads or info.num_heads, swiglu=info.swiglu,
                              ffn_ratio=ratio, swiglu_align_to=align, qkv_bias=info.qkv_bias)
        arch = arch or info.arch
        num_heads = num_heads or (info.num_heads if embed_dim in (None, info.embed_dim) else None)
    return get_dinov3_arch(arch or "vit_small", embed_dim=embed_dim, depth=depth, num_heads=num_heads)


def _load_dinov3(weights, info, arch, registers, patch_size, final_norm, device, embed_dim, depth, num_heads):
    if patch_size not in (None, DINOV3_PATCH_SIZE):
        raise ValueError(f"DINOv3 models run at patch {DINOV3_PATCH_SIZE} only (RoPE, no kernel resampling); "
                         f"got --patch-size {patch_size}.")
    if registers not in (None, DINOV3_NUM_STORAGE_TOKENS):
        raise ValueError(f"DINOv3 models have {DINOV3_NUM_STORAGE_TOKENS} storage tokens (in place of registers); "
                         f"got --registers {registers}.")
    spec = _dinov3_spec(info, arch, embed_dim, depth, num_heads)
    net = BACKBONE_FAMILIES["dinov3"](arch=spec, weights=weights or None, out_indices=(spec.depth - 1,),
                                      final_norm=final_norm)
    dev = torch.device(device)
    vit = net.vit.to(dev).eval()
    return AnalysisModel(vit, spec, DINOV3_PATCH_SIZE, vit.num_prefix_tokens - 1, weights,
                         net.checkpoint_info or info, dev, "dinov3")


def load_model_from_args(args: argparse.Namespace, final_norm: bool = False) -> AnalysisModel:
    """:func:`load_model` from the shared command-line arguments."""
    return load_model(
        args.weights, args.arch, args.registers, args.patch_size, args.patch_resize, final_norm, args.device,
        args.embed_dim, args.depth, args.num_heads, getattr(args, "family", None),
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
