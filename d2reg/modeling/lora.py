"""LoRA on the linear layers of a d2reg ViT through ``peft`` (``inject_adapter_in_model``), and the
merge that folds it back into plain ``nn.Linear`` weights.

The adapted layers are chosen by one regex over the timm module names, e.g.
``blocks\\.(0|5)\\.(attn\\.qkv|attn\\.proj)`` (peft full-matches a string ``target_modules``). peft
freezes every parameter of the ViT except the LoRA matrices (``bias="none"``). After
:func:`merge_lora` the ViT is an ordinary timm ViT again: its state dict has the plain key names, so
the merged model saves, loads and exports like any d2reg model.

Two timm details are handled here:

- DINOv3's timm ``EvaAttention`` with separate q/k/v biases calls ``F.linear(x, qkv.weight, bias)``,
  which would bypass a wrapped ``qkv``; its own ``qkv_bias_separate=True`` path calls the module and
  adds the bias after (the same sum), so the adapted blocks are switched to it (and back on merge).
- d2reg's DINOv3 windowed attention also applies ``qkv.weight`` directly: LoRA on the ``qkv`` of a
  windowed DINOv3 block is refused (the other targets and the DINOv2 windowed blocks are fine).

peft is the optional ``[lora]`` extra: it is imported by :func:`add_lora` only. A model can hold peft
layers only once peft has been imported, so the helpers that look for them (:func:`without_lora`, used
by every weight load, and :func:`merge_lora`) never import it themselves.
"""
from __future__ import annotations

import contextlib
import re
from typing import Dict, Iterator, List, Optional, Sequence

import torch
import torch.nn as nn
from timm.models.eva import EvaAttention

from ..extras import is_imported, require
from ..vit import resolve_block_indices
from ..vit.dinov3 import DINOv3WindowedAttention

__all__ = ["LORA_DEFAULTS", "LORA_TARGETS", "add_lora", "check_lora", "lora_from_config", "lora_parameter_names",
           "lora_target_regex", "merge_lora", "to_lora_keys", "without_lora"]

# target name -> module path inside a block (timm names; SwiGLU MLPs: DINOv3 fc1_g/fc1_x, DINOv2-g packed fc1)
LORA_TARGETS: Dict[str, str] = {"qkv": r"attn\.qkv", "proj": r"attn\.proj", "fc1": r"mlp\.fc1(_g|_x)?",
                                "fc2": r"mlp\.fc2"}
LORA_DEFAULTS = dict(rank=8, alpha=16.0, dropout=0.0, blocks=None, targets=("qkv", "proj"))


def check_lora(lora: Optional[dict]) -> Optional[dict]:
    """``lora`` kwargs with defaults filled (``rank``, ``alpha``, ``dropout``, ``blocks`` (None: all),
    ``targets`` (subset of :data:`LORA_TARGETS`)), or None when off (None / rank 0). Raises ValueError."""
    if not lora:
        return None
    unknown = set(lora) - set(LORA_DEFAULTS)
    if unknown:
        raise ValueError(f"lora takes {sorted(LORA_DEFAULTS)}; got unknown keys {sorted(unknown)}.")
    out = dict(LORA_DEFAULTS, **lora)
    if out["rank"] == 0:
        return None
    if not isinstance(out["rank"], int) or out["rank"] < 0:
        raise ValueError(f"lora rank must be an int >= 1 (0: no LoRA), got {out['rank']!r}.")
    if not 0.0 <= out["dropout"] < 1.0:
        raise ValueError(f"lora dropout must be in [0, 1), got {out['dropout']!r}.")
    targets = tuple(out["targets"])
    bad = [t for t in targets if t not in LORA_TARGETS]
    if bad or not targets:
        raise ValueError(f"lora targets must be a non-empty subset of {list(LORA_TARGETS)}, got {list(targets)}.")
    out["targets"] = targets
    out["blocks"] = None if out["blocks"] is None or not len(out["blocks"]) else tuple(out["blocks"])
    return out


def lora_from_config(c) -> Optional[dict]:
    """The ``lora`` kwarg from a ``cfg.MODEL.D2REG.LORA`` node (``RANK 0``: None)."""
    return check_lora(dict(rank=c.RANK, alpha=c.ALPHA, dropout=c.DROPOUT, blocks=list(c.BLOCKS),
                           targets=list(c.TARGETS)))


def lora_target_regex(blocks: Sequence[int], targets: Sequence[str]) -> str:
    """The peft ``target_modules`` regex (full match) for ``targets`` in the ViT blocks ``blocks``."""
    return (r"blocks\.(" + "|".join(str(int(b)) for b in blocks) + r")\.("
            + "|".join(LORA_TARGETS[t] for t in targets) + ")")


def add_lora(vit: nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
             blocks: Optional[Sequence[int]] = None, targets: Sequence[str] = ("qkv", "proj")) -> List[str]:
    """Wrap ``targets`` of ``vit.blocks[blocks]`` (None: every block; negative indexes count from the
    end) with peft LoRA, in place; everything else in ``vit`` is frozen. Returns the adapted module names."""
    spec = check_lora(dict(rank=rank, alpha=alpha, dropout=dropout, blocks=blocks, targets=targets))
    depth = len(vit.blocks)
    take = tuple(range(depth)) if spec["blocks"] is None else resolve_block_indices(spec["blocks"], depth,
                                                                                    "lora blocks")
    if "qkv" in spec["targets"]:
        windowed = [i for i in take if isinstance(vit.blocks[i].attn, DINOv3WindowedAttention)]
        if windowed:
            raise ValueError(
                f"LoRA on attn.qkv of the windowed DINOv3 blocks {windowed} is not supported (the windowed "
                "attention applies qkv.weight directly). Leave those blocks out of lora blocks, or use targets "
                "without 'qkv'."
            )
    peft = require("peft", f"lora={dict(rank=spec['rank'], targets=list(spec['targets']))}")
    BaseTunerLayer = _base_tuner_layer()
    regex = lora_target_regex(take, spec["targets"])
    config = peft.LoraConfig(r=spec["rank"], lora_alpha=spec["alpha"], lora_dropout=spec["dropout"],
                        target_modules=regex, bias="none")
    peft.inject_adapter_in_model(config, vit)
    names = [n for n, m in vit.named_modules() if isinstance(m, BaseTunerLayer)]
    missing = [t for t in spec["targets"] if not any(re.search(LORA_TARGETS[t] + "$", n) for n in names)]
    if missing:
        raise ValueError(f"lora targets {missing} match no linear layer of this ViT ({type(vit).__name__}).")
    for i in take:
        attn = vit.blocks[i].attn
        if isinstance(attn, EvaAttention) and isinstance(attn.qkv, BaseTunerLayer) and attn.q_bias is not None:
            attn.qkv_bias_separate = True  # call the (wrapped) qkv module, add the bias after
    return names


def lora_parameter_names(module: nn.Module) -> List[str]:
    """Names of the LoRA matrices in ``module`` (``...lora_A.default.weight`` / ``lora_B``)."""
    return [n for n, _ in module.named_parameters() if ".lora_A." in n or ".lora_B." in n]


def _base_tuner_layer():
    """peft's ``BaseTunerLayer``, or None while peft has not been imported (then no peft layer exists)."""
    if not is_imported("peft"):
        return None
    return require("peft.tuners.tuners_utils", "LoRA").BaseTunerLayer


def _tuner_layers(module: nn.Module) -> Iterator[tuple]:
    """(parent, attribute, layer) of every peft layer in ``module`` (none nested inside another)."""
    BaseTunerLayer = _base_tuner_layer()
    if BaseTunerLayer is None:
        return
    for name, layer in list(module.named_modules()):
        if isinstance(layer, BaseTunerLayer):
            parent_name, _, attr = name.rpartition(".")
            yield module.get_submodule(parent_name), attr, layer


def merge_lora(module: nn.Module) -> int:
    """Fold every LoRA layer in ``module`` into its base ``nn.Linear`` (peft's ``merge(safe_merge=True)``)
    and put the plain layer back, in place; returns the number merged. The result has the plain
    timm state-dict keys (``blocks.i.attn.qkv.weight``). Backbones: prefer ``backbone.merge_lora()``."""
    n = 0
    for parent, attr, layer in _tuner_layers(module):
        layer.merge(safe_merge=True)
        setattr(parent, attr, layer.get_base_layer())
        if isinstance(parent, EvaAttention) and attr == "qkv":
            parent.qkv_bias_separate = False
        n += 1
    for m in module.modules():
        if "peft_config" in m.__dict__:
            del m.peft_config
    return n


@contextlib.contextmanager
def without_lora(module: nn.Module):
    """Inside the block, ``module``'s LoRA layers are replaced by their base layers (plain state-dict
    keys, no LoRA tensors), e.g. to fit a pre-trained file to the ViT; they are put back after."""
    swapped = [(parent, attr, layer) for parent, attr, layer in _tuner_layers(module)]
    for parent, attr, layer in swapped:
        setattr(parent, attr, layer.get_base_layer())
    try:
        yield module
    finally:
        for parent, attr, layer in swapped:
            setattr(parent, attr, layer)


def to_lora_keys(state_dict: Dict[str, torch.Tensor], own_keys) -> Dict[str, torch.Tensor]:
    """Rename plain keys (``x.qkv.weight``) to peft's (``x.qkv.base_layer.weight``) where ``own_keys``
    (the model's state-dict keys) has the LoRA-wrapped name and not the plain one."""
    own = set(own_keys)
    out = {}
    for k, v in state_dict.items():
        base, _, leaf = k.rpartition(".")
        wrapped = f"{base}.base_layer.{leaf}"
        out[wrapped if k not in own and wrapped in own else k] = v
    return out
