"""Official EoMT checkpoints through ``D2RegCheckpointer`` into a d2reg ``EoMT``:

- transformers' ``EomtForUniversalSegmentation`` (DINOv2-reg) and ``EomtDinov3ForUniversalSegmentation``
  files written by transformers itself: the loaded model reproduces transformers' outputs;
- the tue-mps/eomt Lightning layout, written by the test from a timm ``vit_*_reg4_dinov2`` made as the
  official ``models/vit.py`` makes it (DINOv2), and as a delta over a DINOv3 file (DINOv3, the
  official releases' form): the loaded model reproduces tests/eomt_reference.py on the same tensors;
- clear errors for class / query-count mismatches, a delta without its base, a non-EoMT model.
"""
from __future__ import annotations

import pytest
import timm
import torch
from dinov3_reference import official_to_hf, random_official_dinov3_state_dict
from eomt_reference import dinov2_timm_vit, dinov3_official_vit, eomt_reference_forward
from test_eomt_model import DEPTH, HEADS, NUM_BLOCKS, NUM_C, NUM_Q, V2, V3, _randomise, _rel

from d2reg import CheckpointError, DINOv2Backbone, DINOv3Backbone, EoMT
from d2reg.engine import D2RegCheckpointer
from d2reg.testing import write_checkpoint

transformers = pytest.importorskip("transformers")


def _eomt(family: str, weights=None, **kw) -> EoMT:
    if family == "dinov2":
        backbone = DINOv2Backbone(arch="vit_small", final_norm=True, **V2)
    else:
        backbone = DINOv3Backbone(arch="vit_small", weights=weights, final_norm=True, **V3)
    kw = {**dict(num_classes=NUM_C, num_queries=NUM_Q, num_blocks=NUM_BLOCKS), **kw}
    return EoMT(backbone=backbone, **kw).eval()


def _images(h=128, w=128):
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(3))


def _check(model: EoMT, ref_masks, ref_classes, images):
    torch.manual_seed(11)
    with torch.no_grad():
        masks, classes = model.forward_logits(images)
    assert len(masks) == len(ref_masks)
    for m, c, rm, rc in zip(masks, classes, ref_masks, ref_classes):
        assert _rel(m, rm) <= 1e-4 and _rel(c, rc) <= 1e-4, (_rel(m, rm), _rel(c, rc))


@pytest.mark.parametrize("family", ["dinov2", "dinov3"])
def test_transformers_eomt_file_reproduces_transformers(family, tmp_path):
    common = dict(num_hidden_layers=DEPTH, num_attention_heads=2, image_size=128, patch_size=16, num_queries=NUM_Q,
                  num_blocks=NUM_BLOCKS, num_labels=NUM_C, num_register_tokens=4)
    if family == "dinov2":
        hf = transformers.EomtForUniversalSegmentation(transformers.EomtConfig(hidden_size=64, **common))
    else:
        hf = transformers.EomtDinov3ForUniversalSegmentation(transformers.EomtDinov3Config(
            hidden_size=128, intermediate_size=512, layer_norm_eps=1e-5, **common))
    _randomise(hf, 5)
    hf.eval().save_pretrained(tmp_path / "hf")
    images = _images()
    with torch.no_grad():
        out = hf(pixel_values=images)
    model = _eomt(family)
    D2RegCheckpointer(model).load(str(tmp_path / "hf" / "model.safetensors"))
    with torch.no_grad():
        masks, classes = model.forward_logits(images)
    assert _rel(masks[-1], out.masks_queries_logits) <= 1e-4
    assert _rel(classes[-1], out.class_queries_logits) <= 1e-4


def _lightning(vit_sd, heads, vit_prefix="network.encoder.backbone."):
    sd = {vit_prefix + k: v for k, v in vit_sd.items()}
    sd.update({"network." + k: v for k, v in heads.items()})
    sd["network.encoder.pixel_mean"] = torch.tensor([0.485, 0.456, 0.406]).reshape(1, -1, 1, 1)
    sd["network.encoder.pixel_std"] = torch.tensor([0.229, 0.224, 0.225]).reshape(1, -1, 1, 1)
    sd["criterion.empty_weight"] = torch.ones(NUM_C + 1)
    return {"state_dict": sd, "epoch": 12, "global_step": 1000, "pytorch-lightning_version": "2.5.1"}


def _random_heads(family: str, seed: int, probs) -> dict:
    src = _eomt(family)
    _randomise(src, seed, HEADS)
    heads = {k: v for k, v in src.state_dict().items() if k.startswith(HEADS)}
    heads["attn_mask_probs"] = torch.tensor(probs)
    return heads


def test_official_lightning_dinov2_checkpoint_reproduces_the_official_forward(tmp_path):
    # the official ViT: timm.create_model(backbone_name, img_size=..., patch_size=16, num_classes=0)
    vit = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=128, patch_size=16,
                            num_classes=0, embed_dim=64, depth=DEPTH, num_heads=2)
    _randomise(vit, 8)
    vit_sd = vit.state_dict()
    heads = _random_heads("dinov2", 9, [1.0, 0.0, 1.0])
    path = str(tmp_path / "eomt_small_640.ckpt")
    torch.save(_lightning(vit_sd, heads), path)
    model = _eomt("dinov2")
    D2RegCheckpointer(model).load(path)
    assert model.attn_mask_probs.tolist() == [1.0, 0.0, 1.0]
    images = _images()
    torch.manual_seed(11)
    ref = eomt_reference_forward(dinov2_timm_vit({k: v.double() for k, v in vit_sd.items()}, 2), heads, images,
                                 DEPTH, NUM_BLOCKS, [1.0, 0.0, 1.0])
    _check(model, *ref, images)


@pytest.fixture(scope="module")
def dinov3_base(tmp_path_factory):
    sd = random_official_dinov3_state_dict("vit_small", seed=6, **V3)
    return write_checkpoint(str(tmp_path_factory.mktemp("v3") / "dinov3_vits16_tiny.pth"), sd), sd


def _official_lightning_dinov3_names(official):
    """The official tensors under the EoMT Lightning names: transformers 4.56 DINOv3ViTModel keys with the
    official transformers_to_timm renames (embeddings -> patch_embed, layer -> blocks)."""
    out = {}
    for k, v in official_to_hf(official).items():
        k = k.replace("model.layer.", "blocks.")
        out["patch_embed." + k[len("embeddings."):] if k.startswith("embeddings.") else k] = v
    return out


def test_official_lightning_dinov3_delta_checkpoint(dinov3_base, tmp_path):
    base_path, base = dinov3_base
    g = torch.Generator().manual_seed(12)
    trained = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() and "periods" not in k
               and "bias_mask" not in k else v for k, v in base.items()}
    b, t = _official_lightning_dinov3_names(base), _official_lightning_dinov3_names(trained)
    delta_vit = {k: t[k] - b[k] for k in t}
    heads = _random_heads("dinov3", 13, [0.0, 0.0, 0.0])
    delta_heads = dict(heads, attn_mask_probs=heads["attn_mask_probs"] - 1)  # final - initial (ones)
    path = str(tmp_path / "eomt_large_640_dinov3.bin")
    torch.save(_lightning(delta_vit, delta_heads)["state_dict"], path)

    model = _eomt("dinov3", weights=base_path, masked_attn_enabled=False)
    D2RegCheckpointer(model).load(path)
    assert model.attn_mask_probs.tolist() == [0.0, 0.0, 0.0]
    images = _images(96, 128)
    ref = eomt_reference_forward(dinov3_official_vit({k: v.double() for k, v in trained.items()}, 2), heads, images,
                                 DEPTH, NUM_BLOCKS, [0.0] * 3, masked_attn=False)
    _check(model, *ref, images)
    # without the base file the delta cannot be applied
    with pytest.raises(CheckpointError, match="delta over the DINOv3 weights"):
        D2RegCheckpointer(_eomt("dinov3")).load(path)


def test_eomt_checkpoint_errors(tmp_path):
    vit = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=128, patch_size=16,
                            num_classes=0, embed_dim=64, depth=DEPTH, num_heads=2)
    path = str(tmp_path / "eomt.ckpt")
    torch.save(_lightning(vit.state_dict(), _random_heads("dinov2", 1, [1.0] * 3)), path)
    with pytest.raises(CheckpointError, match=f"has {NUM_C} classes, the model 7: set MODEL.EOMT.NUM_CLASSES {NUM_C}"):
        D2RegCheckpointer(_eomt("dinov2", num_classes=7)).load(path)
    with pytest.raises(CheckpointError, match=f"has {NUM_Q} queries, the model 4: set MODEL.EOMT.NUM_QUERIES"):
        D2RegCheckpointer(_eomt("dinov2", num_queries=4)).load(path)
    with pytest.raises(CheckpointError, match="set MODEL.D2REG.FAMILY dinov2"):
        D2RegCheckpointer(_eomt("dinov3")).load(path)
    with pytest.raises(CheckpointError, match="not a d2reg EoMT"):
        D2RegCheckpointer(DINOv2Backbone(arch="vit_small", **V2)).load(path)
