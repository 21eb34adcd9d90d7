"""Testing helpers (as detectron2's ``detectron2/utils/testing.py``): tiny model numbers and random
checkpoints in each real layout, for the tests, the tools' smoke runs and users without weights.

The official layout is written from the documented key names of the DINOv2 release (not derived
from timm), the Hugging Face layout by ``transformers`` itself (an optional dependency, imported
only by the functions that need it), the timm layout by timm's own conversion.
"""
from __future__ import annotations

import os
from typing import Dict

import torch

from .checkpoint.dinov2 import HF_EMBEDDING_KEYS, HF_LAYER_RENAMES, official_to_timm, split_qkv_for_hf
from .extras import require
from .vit import PRETRAIN_IMG_SIZE, PRETRAIN_PATCH_SIZE, get_arch, swiglu_hidden_features

__all__ = ["TINY_ARCH", "TINY_DEEP_ARCH", "TINY_IMG", "TINY_TRAIN_ARCH", "hf_saved_state_dict", "official_to_hf_model",
           "random_official_state_dict", "write_checkpoint", "write_random_checkpoint"]

# The one tiny DINOv2 model of the tests: 32 wide, 2 blocks, 2 heads, position grid 16x16 (224 px / 14).
TINY_ARCH = dict(embed_dim=32, depth=2, num_heads=2)
# The same model with 4 blocks, for tests that need several distinct intermediate blocks (outputs
# of blocks -4..-1, an outlier planted in a middle block, ViTDet's global/windowed block mix).
TINY_DEEP_ARCH = dict(TINY_ARCH, depth=4)
# The training tools' tiny model (the demo configs made tiny): 64 wide, the width the train / resume /
# DDP tests and the checkpoints they write for it were built at.
TINY_TRAIN_ARCH = dict(TINY_ARCH, embed_dim=64)
TINY_IMG = 224


def random_official_state_dict(
    arch: str = "vit_small",
    num_register_tokens: int = 4,
    img_size: int = PRETRAIN_IMG_SIZE,
    patch_size: int = PRETRAIN_PATCH_SIZE,
    seed: int = 0,
    **overrides,
) -> Dict[str, torch.Tensor]:
    """A random state dict with the official DINOv2 key names and shapes (``dinov2_vit*14*.pth``).

    Values are scaled so that every block changes the tokens visibly (LayerScale around 0.1-0.5,
    not the 1e-5 of initialisation), which makes layout mistakes show in the outputs.
    """
    spec = get_arch(arch, **overrides)
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, std=0.02, mean=0.0):
        return torch.randn(*shape, generator=g) * std + mean

    D, grid = spec.embed_dim, img_size // patch_size
    sd = {
        "cls_token": rand(1, 1, D, std=0.5),
        "pos_embed": rand(1, 1 + grid * grid, D, std=0.5),
        "mask_token": rand(1, D),
        "patch_embed.proj.weight": rand(D, 3, patch_size, patch_size, std=0.05),
        "patch_embed.proj.bias": rand(D, std=0.1),
        "norm.weight": rand(D, std=0.1, mean=1.0),
        "norm.bias": rand(D, std=0.1),
    }
    if num_register_tokens:
        sd["register_tokens"] = rand(1, num_register_tokens, D, std=0.5)
    for i in range(spec.depth):
        b = f"blocks.{i}."
        sd.update({
            b + "norm1.weight": rand(D, std=0.1, mean=1.0), b + "norm1.bias": rand(D, std=0.1),
            b + "attn.qkv.weight": rand(3 * D, D, std=D ** -0.5), b + "attn.qkv.bias": rand(3 * D, std=0.1),
            b + "attn.proj.weight": rand(D, D, std=D ** -0.5), b + "attn.proj.bias": rand(D, std=0.1),
            b + "ls1.gamma": rand(D, std=0.1, mean=0.3),
            b + "norm2.weight": rand(D, std=0.1, mean=1.0), b + "norm2.bias": rand(D, std=0.1),
            b + "ls2.gamma": rand(D, std=0.1, mean=0.3),
        })
        if spec.swiglu:
            H = swiglu_hidden_features(D)
            sd.update({
                b + "mlp.w12.weight": rand(2 * H, D, std=D ** -0.5), b + "mlp.w12.bias": rand(2 * H, std=0.1),
                b + "mlp.w3.weight": rand(D, H, std=H ** -0.5), b + "mlp.w3.bias": rand(D, std=0.1),
            })
        else:
            sd.update({
                b + "mlp.fc1.weight": rand(4 * D, D, std=D ** -0.5), b + "mlp.fc1.bias": rand(4 * D, std=0.1),
                b + "mlp.fc2.weight": rand(D, 4 * D, std=(4 * D) ** -0.5), b + "mlp.fc2.bias": rand(D, std=0.1),
            })
    return sd


def official_to_hf_model(sd: Dict[str, torch.Tensor], num_heads: int, img_size: int = PRETRAIN_IMG_SIZE):
    """A ``transformers`` Dinov2(WithRegisters)Model holding the weights of official-layout ``sd``."""
    transformers = require("transformers", "official_to_hf_model (Hugging Face test checkpoints)")
    D = sd["cls_token"].shape[-1]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    regs = sd.get("register_tokens")
    swiglu = "blocks.0.mlp.w12.weight" in sd
    hidden = sd["blocks.0.mlp.w3.weight"].shape[1] if swiglu else sd["blocks.0.mlp.fc1.weight"].shape[0]
    common = dict(
        hidden_size=D, num_hidden_layers=depth, num_attention_heads=num_heads, image_size=img_size,
        patch_size=sd["patch_embed.proj.weight"].shape[-1], layerscale_value=1.0,
        # mlp_ratio must be an int: transformers>=5 validates the config field types.
        use_swiglu_ffn=swiglu, mlp_ratio=hidden // D if not swiglu else 4, layer_norm_eps=1e-6,
    )
    if regs is not None:
        cfg = transformers.Dinov2WithRegistersConfig(num_register_tokens=regs.shape[1], **common)
        model = transformers.Dinov2WithRegistersModel(cfg)
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**common))
    hf = {}
    emb = {official: name for name, official in HF_EMBEDDING_KEYS.items()}
    for k, v in sd.items():
        if k in emb:
            hf[emb[k]] = v.reshape(model.state_dict()[emb[k]].shape)
            continue
        if ".attn.qkv." in k:
            hf.update(split_qkv_for_hf(k, v))
            continue
        _, i, rest = k.split(".", 2)
        for name, official in HF_LAYER_RENAMES:
            rest = rest.replace(official, name)
        hf[f"encoder.layer.{i}.{rest}"] = v
    # The names above are the on-disk layout (hub files, save_pretrained). transformers>=5 renames
    # modules in memory (attention.q_proj, mlp.gate_proj...) and converts on load: let from_pretrained
    # do that conversion, strictly.
    import tempfile

    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as d:
        model.config.save_pretrained(d)
        save_file({k: v.contiguous() for k, v in hf.items()}, os.path.join(d, "model.safetensors"))
        model, info = type(model).from_pretrained(d, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        raise RuntimeError(f"transformers did not take the converted weights: {bad}")
    return model.eval()


def hf_saved_state_dict(model) -> Dict[str, torch.Tensor]:
    """The tensors ``model.save_pretrained`` writes (the Hugging Face on-disk layout)."""
    import tempfile

    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        return load_file(os.path.join(d, "model.safetensors"))


def write_checkpoint(path: str, tensors: Dict[str, torch.Tensor]) -> str:
    """Save ``tensors`` to ``path``: safetensors for a ``.safetensors`` suffix, else ``torch.save``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    else:
        torch.save(tensors, path)
    return path


def write_random_checkpoint(
    path: str,
    layout: str = "official",
    arch: str = "vit_small",
    num_register_tokens: int = 4,
    seed: int = 0,
    img_size: int = PRETRAIN_IMG_SIZE,
    **overrides,
) -> Dict[str, torch.Tensor]:
    """Write a random DINOv2 checkpoint to ``path`` in ``layout`` ("official", "timm" or "hf"; the file
    type follows the suffix: .safetensors or torch.save). ``overrides``: embed_dim, depth, num_heads
    (e.g. ``**TINY_ARCH`` with ``img_size=TINY_IMG``). Returns the official-layout tensors."""
    spec = get_arch(arch, **overrides)
    sd = random_official_state_dict(spec, num_register_tokens, img_size=img_size, seed=seed)
    if layout == "official":
        out = sd
    elif layout == "timm":
        out = official_to_timm(dict(sd))
    elif layout == "hf":
        out = hf_saved_state_dict(official_to_hf_model(sd, spec.num_heads, img_size=img_size))
    else:
        raise ValueError(f"layout must be 'official', 'timm' or 'hf', got {layout!r}")
    write_checkpoint(path, out)
    return sd
