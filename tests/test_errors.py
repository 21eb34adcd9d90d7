"""Bad inputs give clear errors: the assertions are on the message text users will read."""
from __future__ import annotations

import os

import pytest
import torch

from d2reg import CheckpointError, DINOv2Backbone, load_dinov2_checkpoint
from d2reg.testing import TINY_ARCH, TINY_IMG, random_official_state_dict


def _kw(**kw):
    return dict(TINY_ARCH, pretrain_img_size=TINY_IMG, **kw)  # the tiny_kwargs fixture's model


def _save(tmp_path, obj, name="ckpt.pth"):
    path = str(tmp_path / name)
    torch.save(obj, path)
    return path


# ------------------------------------------------------------------------------------- files
def test_missing_file(tmp_path):
    path = str(tmp_path / "nowhere" / "dinov2_vits14_reg4_pretrain.pth")
    with pytest.raises(FileNotFoundError, match="checkpoint not found") as e:
        load_dinov2_checkpoint(path)
    assert path in str(e.value) and "never downloads" in str(e.value)
    with pytest.raises(FileNotFoundError, match="dinov2_vits14_reg4_pretrain.pth"):
        DINOv2Backbone(weights=path, **_kw())


@pytest.mark.parametrize("name", ["official.pth", "official.safetensors"])
def test_truncated_file(write_ckpt, name):
    path, _ = write_ckpt(name)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
        load_dinov2_checkpoint(path)
    assert path in str(e.value)


def test_not_a_checkpoint(tmp_path):
    path = str(tmp_path / "notes.pth")
    with open(path, "w") as f:
        f.write("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="could not read checkpoint"):
        load_dinov2_checkpoint(path)


class _TrainingState:  # a class the loader must not import to read the file
    def __init__(self):
        self.lr = 0.1


def test_pickle_needing_code_is_refused(write_ckpt, tmp_path):
    _, sd = write_ckpt("official.pth")
    path = _save(tmp_path, {"model": sd, "trainer": _TrainingState()})
    with pytest.raises(CheckpointError) as e:
        load_dinov2_checkpoint(path)
    msg = str(e.value)
    assert "weights_only" in msg and "torch.save(model.state_dict(), path)" in msg


def test_not_a_dict(tmp_path):
    with pytest.raises(CheckpointError, match="expected a dict of tensors, got Tensor"):
        load_dinov2_checkpoint(_save(tmp_path, torch.zeros(3)))


# ------------------------------------------------------------------------------------ layouts
def test_unknown_layout(tmp_path):
    path = _save(tmp_path, {"encoder.conv1.weight": torch.zeros(8, 3, 3, 3), "fc.bias": torch.zeros(8)})
    with pytest.raises(CheckpointError, match="unknown checkpoint layout") as e:
        load_dinov2_checkpoint(path)
    assert "encoder.conv1.weight" in str(e.value)  # shows what it found


def test_incomplete_official_checkpoint(write_ckpt, tmp_path):
    _, sd = write_ckpt("official.pth")
    del sd["pos_embed"]
    with pytest.raises(CheckpointError, match="missing 'pos_embed'"):
        load_dinov2_checkpoint(_save(tmp_path, sd))


def test_missing_block_weights_are_reported(write_ckpt, tmp_path):
    _, sd = write_ckpt("official.pth")
    del sd["blocks.1.mlp.fc2.weight"]
    with pytest.raises(CheckpointError, match="does not fit the model: missing blocks.1.mlp.fc2.weight"):
        DINOv2Backbone(weights=_save(tmp_path, sd), **_kw())


def test_non_square_pos_embed(write_ckpt, tmp_path):
    _, sd = write_ckpt("official.pth")
    sd["pos_embed"] = sd["pos_embed"][:, :-3]
    with pytest.raises(CheckpointError, match="not a square grid"):
        load_dinov2_checkpoint(_save(tmp_path, sd))


def test_hf_checkpoint_missing_key_projection(write_ckpt, tmp_path):
    path, _ = write_ckpt("hf.pth", layout="hf")
    sd = torch.load(path)
    del sd["encoder.layer.1.attention.attention.key.weight"]
    with pytest.raises(CheckpointError, match=r"lacks part of blocks\.1\.attn\.qkv\.weight.*'query', 'value'"):
        load_dinov2_checkpoint(_save(tmp_path, sd, "hf_broken.pth"))


# ------------------------------------------------------------------------ architecture mismatch
def test_wrong_architecture_names_both(tmp_path):
    sd = random_official_state_dict("vit_small", 4, img_size=56, depth=1)  # ViT-S width (384), 1 block
    path = _save(tmp_path, sd)
    with pytest.raises(CheckpointError) as e:
        DINOv2Backbone(arch="vit_base", depth=1, pretrain_img_size=56, weights=path)
    msg = str(e.value)
    assert "embed_dim" in msg and "384" in msg and "768" in msg and "vit_base" in msg and "vit_small" in msg


def test_wrong_register_count(write_ckpt):
    path, _ = write_ckpt("reg4.pth", num_register_tokens=4)
    msg = "checkpoint has {} register tokens, config asks for num_register_tokens={}"
    with pytest.raises(CheckpointError, match=msg.format(4, 0)):
        DINOv2Backbone(weights=path, num_register_tokens=0, **_kw())
    free, _ = write_ckpt("free.pth", num_register_tokens=0)
    with pytest.raises(CheckpointError, match=msg.format(0, 4)):
        DINOv2Backbone(weights=free, num_register_tokens=4, **_kw())


def test_swiglu_mismatch(write_ckpt):
    giant, _ = write_ckpt("g.pth", arch="vit_giant2")
    with pytest.raises(CheckpointError, match="checkpoint MLP is SwiGLU, config .* uses GELU"):
        DINOv2Backbone(arch="vit_small", weights=giant, **_kw())
    small, _ = write_ckpt("s.pth", arch="vit_small")
    with pytest.raises(CheckpointError, match="checkpoint MLP is GELU, config .* uses SwiGLU"):
        DINOv2Backbone(arch="vit_giant2", weights=small, **_kw())


def test_too_few_blocks(write_ckpt):
    path, _ = write_ckpt("d2.pth")  # 2 blocks
    with pytest.raises(CheckpointError, match="checkpoint has 2 blocks, the model uses 3"):
        DINOv2Backbone(weights=path, **_kw(depth=3))


def test_final_norm_without_norm_in_checkpoint(write_ckpt, tmp_path):
    _, sd = write_ckpt("official.pth")
    sd = {k: v for k, v in sd.items() if not k.startswith("norm.")}
    path = _save(tmp_path, sd)
    DINOv2Backbone(weights=path, **_kw())  # fine without the final norm
    with pytest.raises(CheckpointError, match=r"final_norm=True but the checkpoint has no final norm"):
        DINOv2Backbone(weights=path, final_norm=True, **_kw())


# ------------------------------------------------------------------------------------- kwargs
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(patch_resize="foo"), "patch_resize must be 'pi' or 'bicubic', got 'foo'"),
        (dict(out_indices=(2,)), "out_indices entry 2 is out of range for a 2-block ViT"),
        (dict(out_indices=(-3,)), "out_indices entry -3 is out of range for a 2-block ViT"),
        (dict(out_indices=()), "out_indices must be a non-empty sequence"),
        (dict(out_indices=1), "out_indices must be a non-empty sequence"),
        (dict(out_indices=(1, -1)), "name the same block twice"),
        (dict(freeze_at=4), r"freeze_at must be 0\.\.3 or 'all' \(-1\), got 4"),
        (dict(freeze_at=-2), r"freeze_at must be 0\.\.3 or 'all' \(-1\), got -2"),
        (dict(freeze_at="some"), r"freeze_at must be 0\.\.3 or 'all' \(-1\), got 'some'"),
        (dict(num_register_tokens=-1), "num_register_tokens must be an int >= 0"),
        (dict(patch_size=0), "patch_size must be a positive int"),
        (dict(window_size=-1), "window_size must be >= 0"),
        (dict(arch="vit_huge"), "Unknown arch 'vit_huge'"),
        (dict(num_heads=3), "embed_dim 32 is not divisible by num_heads 3"),
    ],
)
def test_invalid_kwargs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DINOv2Backbone(**_kw(**kwargs))
