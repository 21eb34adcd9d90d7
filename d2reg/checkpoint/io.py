"""Stage 1 of the checkpoint pipeline: read tensors from a local file, safely, optionally shapes only."""
from __future__ import annotations

import os

import torch

from .errors import CheckpointError, StateDict

__all__ = ["D2_PREFIXES", "SUFFIXES", "read_state_dict", "unwrap_state_dict"]

SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".pkl", ".ckpt")
# A d2reg ViT inside a detectron2 model: under SimpleFeaturePyramid, or the bare backbone (linear probe).
D2_PREFIXES = ("backbone.net.vit.", "backbone.vit.")


def _meta(shape, dtype) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=dtype, device="meta")


def read_state_dict(path: str, shapes_only: bool = False) -> StateDict:
    """Read tensors from ``path``: safetensors, or ``torch.load(weights_only=True)``; containers
    unwrapped (:func:`unwrap_state_dict`). ``shapes_only``: meta tensors read from the safetensors
    header or a memory-mapped zip (no tensor data is loaded)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"checkpoint not found: {path!r}. d2reg never downloads weights: pass a local .pth/.pt/"
            ".bin/.safetensors file (e.g. dinov2_vits14_reg4_pretrain.pth from the DINOv2 release)."
        )
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open
            from safetensors.torch import load_file

            if shapes_only:
                with safe_open(path, "pt") as f:
                    return unwrap_state_dict({k: _meta(f.get_slice(k).get_shape(), torch.float32) for k in f.keys()})
            obj = load_file(path, device="cpu")
        else:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=shapes_only)
            except RuntimeError:
                if not shapes_only:
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) file: no mmap
    except Exception as e:  # truncated zip, pickle with code objects, wrong format...
        raise CheckpointError(
            f"could not read checkpoint {path!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "The file may be truncated or corrupt (download it again), or not a tensor checkpoint; "
            "pickles that need code to load are refused (weights_only=True): re-save the state dict "
            "with torch.save(model.state_dict(), path) or as .safetensors."
        ) from e
    sd = unwrap_state_dict(obj)
    return {k: _meta(v.shape, v.dtype) for k, v in sd.items()} if shapes_only else sd


def unwrap_state_dict(obj) -> StateDict:
    """Strip the containers training scripts wrap weights in ({"model": ...}, {"state_dict": ...},
    DINOv2/DINOv3's {"teacher": {"backbone.*"}}, DDP's "module." prefix). A detectron2 checkpoint of a
    d2reg model keeps its full key names (``backbone.net.vit.*``)."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"expected a dict of tensors, got {type(obj).__name__}.")
    for key in ("model", "state_dict", "teacher"):
        if key in obj and isinstance(obj[key], dict):
            if key == "model" and any(k.startswith(D2_PREFIXES) for k in obj[key]):
                return {k: v for k, v in obj[key].items() if isinstance(v, torch.Tensor)}
            return unwrap_state_dict(obj[key])
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    if "backbone.patch_embed.proj.weight" in sd:  # DINO training checkpoint (teacher/student)
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    return sd
