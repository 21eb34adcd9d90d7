"""Random DINOv2 checkpoints in each real layout, for tests, the demo and users without weights.

The official layout is written from the documented key names of the DINOv2 release (not derived
from timm), the Hugging Face layout by ``transformers`` itself, the timm layout by timm.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import torch

from ..modeling.vit import PRETRAIN_IMG_SIZE, PRETRAIN_PATCH_SIZE, get_arch, swiglu_hidden_features

__all__ = ["random_official_state_dict", "write_random_checkpoint"]


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
    import transformers

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
    emb = {"cls_token": "embeddings.cls_token", "register_tokens": "embeddings.register_tokens",
           "mask_token": "embeddings.mask_token", "pos_embed": "embeddings.position_embeddings",
           "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
           "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
           "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"}
    renames = [("attn.proj.", "attention.output.dense."), ("ls1.gamma", "layer_scale1.lambda1"),
               ("ls2.gamma", "layer_scale2.lambda1"), ("mlp.w12.", "mlp.weights_in."), ("mlp.w3.", "mlp.weights_out.")]
    for k, v in sd.items():
        if k in emb:
            hf[emb[k]] = v.reshape(model.state_dict()[emb[k]].shape)
            continue
        _, i, rest = k.split(".", 2)
        if rest.startswith("attn.qkv."):
            for name, part in zip(("query", "key", "value"), v.chunk(3, dim=0)):
                hf[f"encoder.layer.{i}.attention.attention.{name}.{rest.rsplit('.', 1)[1]}"] = part
            continue
        for old, new in renames:
            rest = rest.replace(old, new)
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


def write_random_checkpoint(
    path: str,
    layout: str = "official",
    arch: str = "vit_small",
    num_register_tokens: int = 4,
    seed: int = 0,
    num_heads: Optional[int] = None,
    **overrides,
) -> Dict[str, torch.Tensor]:
    """Write a random checkpoint to ``path`` in ``layout`` ("official", "timm" or "hf"; the file
    type follows the suffix: .safetensors or torch.save). Returns the official-layout tensors."""
    spec = get_arch(arch, num_heads=num_heads, **overrides)
    sd = random_official_state_dict(spec, num_register_tokens, seed=seed)
    if layout == "official":
        out = sd
    elif layout == "timm":
        from .formats import official_to_timm

        out = official_to_timm(dict(sd))
    elif layout == "hf":
        out = hf_saved_state_dict(official_to_hf_model(sd, spec.num_heads))
    else:
        raise ValueError(f"layout must be 'official', 'timm' or 'hf', got {layout!r}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in out.items()}, path)
    else:
        torch.save(out, path)
    return sd
