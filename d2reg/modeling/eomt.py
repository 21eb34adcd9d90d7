"""``EoMT``: the Encoder-only Mask Transformer ("Your ViT is Secretly an Image Segmentation Model",
Kerssies et al., CVPR 2025) as a detectron2 meta-architecture over d2reg's family backbones.

No adapter, pixel decoder or transformer decoder: ``num_queries`` learned queries join the token
sequence ``[queries, CLS, registers, patches]`` for the last ``num_blocks`` ViT blocks. Before each of
those blocks and after the last, the final norm, a linear class head (C + 1 logits) and a 3-layer MLP
mask head read the queries; mask logits are their dot products with the patch tokens upscaled to
stride 4 by :class:`ScaleBlock` s. During training the masks of one block restrict the next block's
query->patch attention (nothing else is masked); the keep probability per block
(``attn_mask_probs``) is annealed to 0 by :class:`d2reg.engine.MaskAnnealingHook`, after which the
model runs as a plain ViT, as at inference.

The forward is the official ``models/eomt.py`` (tue-mps/eomt) on timm's blocks: the DINOv2 models
are timm ``VisionTransformer`` s, the DINOv3 models timm ``Eva`` s, whose blocks take a boolean
``attn_mask`` (True: attend) and, for DINOv3, the RoPE of the patch grid; the query blocks' attention
counts the queries among the prefix tokens, so RoPE still rotates the patches only. Post-processing
lives in :mod:`d2reg.modeling.eomt_inference`.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList
from timm.layers import LayerNorm2d
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import resolve_recipe
from ..recipes import default_num_blocks
from ..vit.dinov3 import DINOv3WindowedAttention
from .dinov3_backbone import DINOv3Backbone
from .eomt_inference import (
    instance_inference,
    panoptic_inference,
    resize_and_pad,
    semantic_inference,
    semantic_windows,
    unpad_and_resize,
)
from .eomt_loss import EoMTCriterion
from .families import vit_backbone_from_config
from .vit_backbone import ViTBackbone
from .window import WindowedAttention

__all__ = ["EOMT_TASKS", "EoMT", "ScaleBlock", "default_num_blocks", "panoptic_thing_ids"]

EOMT_TASKS = ("panoptic", "instance", "semantic")


class ScaleBlock(nn.Module):
    """2x upsampling of a ``(N, C, h, w)`` map: ConvTranspose 2x2 stride 2, GELU, depthwise 3x3 (no
    bias), LayerNorm2d -> ``(N, C, 2h, 2w)``. The state-dict names (``conv1``, ``conv2``, ``norm``) are
    those of the official checkpoints."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.conv1 = nn.ConvTranspose2d(embed_dim, embed_dim, kernel_size=2, stride=2)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(embed_dim, embed_dim, kernel_size=3, padding=1, groups=embed_dim, bias=False)
        self.norm = LayerNorm2d(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv2(self.act(self.conv1(x))))


def _check_backbone(backbone: ViTBackbone, num_blocks: int) -> None:
    vit = backbone.vit
    if not isinstance(backbone, ViTBackbone):
        raise TypeError(f"EoMT wraps a d2reg family backbone (DINOv2Backbone, DINOv3Backbone), got {type(backbone)}.")
    if not backbone.final_norm:
        raise ValueError("EoMT's heads read the ViT's final norm: build the backbone with final_norm=True "
                         "(MODEL.D2REG.FINAL_NORM True; the YACS builder sets it).")
    if len(backbone._take) != 1 or backbone._take[-1] != len(vit.blocks) - 1:
        raise ValueError(f"EoMT runs every ViT block: build the backbone with out_indices=(-1,), got "
                         f"blocks {list(backbone._take)}.")
    if backbone.frozen or backbone.lora:
        raise ValueError("EoMT fine-tunes the whole ViT (the queries pass through its last blocks): "
                         "freeze_at='all' and LoRA are not supported; leave freeze_at at 0 and lora off.")
    windowed = [i for i, b in enumerate(vit.blocks) if isinstance(b.attn, (WindowedAttention, DINOv3WindowedAttention))]
    if windowed:
        raise ValueError(f"EoMT uses global attention; blocks {windowed} are windowed: set window_size=0.")
    if not 1 <= num_blocks <= len(vit.blocks):
        raise ValueError(f"num_blocks must be 1..{len(vit.blocks)} (the ViT's depth), got {num_blocks}.")


def panoptic_thing_ids(dataset_name: str) -> Optional[List[int]]:
    """The contiguous ids of the thing classes of a registered panoptic data set (its
    ``thing_dataset_id_to_contiguous_id``), the ``thing_ids`` of :class:`EoMT`; None for a data set without
    stuff classes (every class a thing)."""
    meta = MetadataCatalog.get(dataset_name)
    if not hasattr(meta, "stuff_dataset_id_to_contiguous_id"):
        return None
    return sorted(meta.thing_dataset_id_to_contiguous_id.values())


@META_ARCH_REGISTRY.register()
class EoMT(nn.Module):
    """EoMT for panoptic, instance or semantic segmentation.

    ``forward(batched_inputs)`` follows detectron2's contract. Training: each dict has ``"image"``
    ``(3, H, W)`` (0-255, ``INPUT.FORMAT``) and ``"instances"`` with ``gt_classes`` ``(K,)`` and
    ``gt_masks`` ``(K, H, W)``; returns the set losses of every prediction (``loss_ce``, ``loss_mask``,
    ``loss_dice`` for the final one, ``..._block{k}`` for the prediction before query block ``k``).
    Inference: resizes each image to fit ``input_size`` (longer side) and pads it square (panoptic,
    instance) or slides ``input_size`` windows along its longer side after resizing the shorter side to
    ``input_size`` (semantic), as the official evaluation does, and returns
    ``{"panoptic_seg": (seg (H, W) int32, segments_info)}``, ``{"instances": Instances}`` or
    ``{"sem_seg": (C, H, W)}`` at the input dict's ``height`` x ``width`` (default: the image's).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: ViTBackbone,
        num_classes: int,
        num_queries: int = 200,
        num_blocks: int = 4,
        task: str = "panoptic",
        criterion: Optional[nn.Module] = None,
        pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
        pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
        input_size: int = 640,
        masked_attn_enabled: bool = True,
        object_mask_threshold: float = 0.8,
        overlap_threshold: float = 0.8,
        test_topk: int = 100,
        thing_ids: Optional[Sequence[int]] = None,
    ):
        """
        Args:
            backbone: a :class:`d2reg.DINOv2Backbone` (patch 16) or :class:`d2reg.DINOv3Backbone` built with
                ``final_norm=True`` and ``out_indices=(-1,)``, global attention, not frozen.
            num_classes: C, the classes without "no object" (133 COCO panoptic, 80 instance, 150 ADE20k).
            num_queries: learned queries (200 panoptic / instance, 100 semantic in the official configs).
            num_blocks: the last blocks the queries pass through ("L2": 3 for S/B, 4 for L, 5 for g).
            task: "panoptic" | "instance" | "semantic" (what inference returns).
            criterion: the training loss (:class:`d2reg.modeling.eomt_loss.EoMTCriterion`); None: inference only.
            pixel_mean, pixel_std: per-channel normalisation of 0-255 images (ImageNet's, in the input's
                channel order).
            input_size: side of the square the images are resized + padded into (panoptic / instance) or
                of the sliding windows (semantic), in pixels; a multiple of the patch size.
            masked_attn_enabled: False: no intermediate predictions and plain attention (a model trained
                with masked attention and annealing runs like this once ``attn_mask_probs`` reach 0).
            object_mask_threshold: panoptic: queries whose class score is at most this are dropped.
            overlap_threshold: panoptic: a query's segment is kept if at least this fraction of its mask
                survives the per-pixel argmax.
            test_topk: instance: the top-k (query, class) pairs returned per image.
            thing_ids: panoptic: contiguous ids of the thing classes (the others are stuff, merged into
                one segment per class); None: every class is a thing.
        """
        super().__init__()
        if task not in EOMT_TASKS:
            raise ValueError(f"task must be one of {EOMT_TASKS}, got {task!r}.")
        if num_classes < 1 or num_queries < 1:
            raise ValueError(f"num_classes and num_queries must be >= 1, got {num_classes}, {num_queries}.")
        _check_backbone(backbone, num_blocks)
        patch = backbone.patch_size
        if input_size % patch:
            raise ValueError(f"input_size {input_size} must be a multiple of the patch size {patch}.")
        self.backbone = backbone
        self.num_classes, self.num_queries, self.num_blocks, self.task = num_classes, num_queries, num_blocks, task
        self.criterion = criterion
        self.input_size = input_size
        self.masked_attn_enabled = masked_attn_enabled
        self.object_mask_threshold, self.overlap_threshold = object_mask_threshold, overlap_threshold
        self.test_topk = test_topk
        self.thing_ids = set(range(num_classes) if thing_ids is None else thing_ids)
        dim = backbone.vit.embed_dim
        self.register_buffer("attn_mask_probs", torch.ones(num_blocks))
        self.q = nn.Embedding(num_queries, dim)
        self.class_head = nn.Linear(dim, num_classes + 1)
        self.mask_head = nn.Sequential(
            nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.upscale = nn.Sequential(*[ScaleBlock(dim) for _ in range(max(1, int(math.log2(patch)) - 2))])
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
        self._rope = isinstance(backbone, DINOv3Backbone)
        self._num_prefix = backbone.vit.num_prefix_tokens
        if self._rope:  # the queries are prefix tokens to RoPE too: it rotates the patch tokens only
            for blk in backbone.vit.blocks[self.first_query_block:]:
                blk.attn.num_prefix_tokens = self._num_prefix + num_queries

    @classmethod
    def from_config(cls, cfg) -> dict:
        cfg = resolve_recipe(cfg)
        c = cfg.MODEL.EOMT
        if not cfg.MODEL.D2REG.FINAL_NORM or list(cfg.MODEL.D2REG.OUT_INDICES) != [-1]:
            cfg = cfg.clone()
            cfg.defrost()
            cfg.MODEL.D2REG.FINAL_NORM, cfg.MODEL.D2REG.OUT_INDICES = True, [-1]
        loss = c.LOSS
        criterion = EoMTCriterion(
            c.NUM_CLASSES, class_weight=loss.CLASS_WEIGHT, mask_weight=loss.MASK_WEIGHT, dice_weight=loss.DICE_WEIGHT,
            no_object_weight=loss.NO_OBJECT_WEIGHT, num_points=loss.NUM_POINTS,
            oversample_ratio=loss.OVERSAMPLE_RATIO, importance_sample_ratio=loss.IMPORTANCE_SAMPLE_RATIO,
        )
        thing_ids = panoptic_thing_ids(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST and c.TASK == "panoptic" else None
        return dict(
            backbone=vit_backbone_from_config(cfg),
            num_classes=c.NUM_CLASSES,
            num_queries=c.NUM_QUERIES,
            num_blocks=c.NUM_BLOCKS if c.NUM_BLOCKS > 0 else default_num_blocks(cfg.MODEL.D2REG.ARCH),
            task=c.TASK,
            criterion=criterion,
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
            input_size=c.INPUT_SIZE,
            masked_attn_enabled=c.MASKED_ATTN,
            object_mask_threshold=c.TEST.OBJECT_MASK_THRESHOLD,
            overlap_threshold=c.TEST.OVERLAP_THRESHOLD,
            test_topk=c.TEST.TOPK,
            thing_ids=thing_ids,
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def first_query_block(self) -> int:
        """Index of the first ViT block the queries pass through (``depth - num_blocks``)."""
        return len(self.backbone.vit.blocks) - self.num_blocks

    # ------------------------------------------------------------------ the network
    def _predict(self, x: torch.Tensor, grid: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Normalised tokens ``(N, Q + prefix + h*w, D)`` -> mask logits ``(N, Q, 4h', 4w')`` (stride 4 for
        patch 16) and class logits ``(N, Q, C + 1)``."""
        q = x[:, : self.num_queries]
        patches = x[:, self.num_queries + self._num_prefix:].transpose(1, 2).reshape(x.shape[0], -1, *grid)
        mask_logits = torch.einsum("bqc,bchw->bqhw", self.mask_head(q), self.upscale(patches))
        return mask_logits, self.class_head(q)

    def _attn_mask(self, mask_logits: torch.Tensor, block: int, num_tokens: int, grid: Tuple[int, int]) -> torch.Tensor:
        """Boolean ``(N, 1, T, T)`` attention mask (True: attend) in which each query sees only the patches
        its mask covers (logits > 0 at the patch grid); with probability ``1 - attn_mask_probs[block]``
        a query sees all patches. Every other pair attends freely."""
        n, q, start = mask_logits.shape[0], self.num_queries, self.num_queries + self._num_prefix
        mask = torch.ones(n, num_tokens, num_tokens, dtype=torch.bool, device=mask_logits.device)
        covered = F.interpolate(mask_logits, grid, mode="bilinear").flatten(2) > 0
        prob = self.attn_mask_probs[block]
        if prob < 1:
            covered = covered | (torch.rand(n, q, 1, device=covered.device) > prob)
        mask[:, :q, start:] = covered
        return mask[:, None]

    def forward_logits(self, images: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Normalised images ``(N, 3, H, W)`` (H, W multiples of the patch size) -> ``(mask_logits, class_logits)``,
        lists of ``(N, Q, 4H/p, 4W/p)`` and ``(N, Q, C + 1)``: one entry per query block (the prediction that
        masks it) and the final prediction last; only the final one when masked attention is off."""
        vit, p = self.backbone.vit, self.backbone.patch_size
        if images.dim() != 4 or images.shape[-2] % p or images.shape[-1] % p:
            raise ValueError(f"EoMT.forward_logits expects (N, 3, H, W) with H, W multiples of {p}, got "
                             f"{tuple(images.shape)}; forward() resizes and pads images itself.")
        x = vit.patch_embed(images)  # (N, h, w, D)
        grid = (x.shape[1], x.shape[2])
        x, rope = vit._pos_embed(x) if self._rope else (vit._pos_embed(x), None)
        x = vit.norm_pre(x)
        masks, classes = [], []
        start = self.first_query_block
        for i, blk in enumerate(vit.blocks):
            attn_mask = None
            if i == start:
                x = torch.cat([self.q.weight[None].expand(x.shape[0], -1, -1), x], dim=1)
            if self.masked_attn_enabled and i >= start:
                mask_logits, class_logits = self._predict(vit.norm(x), grid)
                masks.append(mask_logits)
                classes.append(class_logits)
                attn_mask = self._attn_mask(mask_logits, i - start, x.shape[1], grid)
            kwargs = {"attn_mask": attn_mask, **({"rope": rope} if self._rope else {})}
            if vit.grad_checkpointing and self.training:
                x = checkpoint(blk, x, use_reentrant=False, **kwargs)
            else:
                x = blk(x, **kwargs)
        mask_logits, class_logits = self._predict(vit.norm(x), grid)
        return masks + [mask_logits], classes + [class_logits]

    # ------------------------------------------------------------------ detectron2 contract
    def _normalize(self, image: torch.Tensor) -> torch.Tensor:
        return (image.to(self.device).float() - self.pixel_mean) / self.pixel_std

    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        if self.training:
            return self.losses(batched_inputs)
        return self.inference(batched_inputs)

    def losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        """The set losses of every prediction of :meth:`forward_logits` (see the class docstring)."""
        if self.criterion is None:
            raise ValueError("EoMT was built without a criterion: pass criterion=EoMTCriterion(...) to train.")
        images = ImageList.from_tensors([self._normalize(x["image"]) for x in batched_inputs], self.backbone.patch_size)
        h, w = images.tensor.shape[-2:]
        targets = []
        for x in batched_inputs:
            inst = x["instances"].to(self.device)
            gt = inst.gt_masks.tensor if hasattr(inst.gt_masks, "tensor") else inst.gt_masks
            padded = gt.new_zeros((gt.shape[0], h, w), dtype=torch.float32)
            padded[:, : gt.shape[1], : gt.shape[2]] = gt
            targets.append({"labels": inst.gt_classes, "masks": padded})
        masks, classes = self.forward_logits(images.tensor)
        losses = {}
        for k, (m, c) in enumerate(zip(masks, classes)):
            suffix = "" if k == len(masks) - 1 else f"_block{k}"
            losses.update({f"{name}{suffix}": v for name, v in self.criterion(m, c, targets).items()})
        return losses

    @torch.no_grad()
    def _final_logits(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The final prediction; the intermediate ones are computed only while they still mask something."""
        enabled = self.masked_attn_enabled
        self.masked_attn_enabled = enabled and bool((self.attn_mask_probs > 0).any())
        try:
            masks, classes = self.forward_logits(images)
        finally:
            self.masked_attn_enabled = enabled
        return masks[-1], classes[-1]

    def inference(self, batched_inputs: List[Dict]) -> List[Dict]:
        """detectron2 outputs at each input's ``height`` x ``width`` (see the class docstring)."""
        if self.task == "semantic":
            return self._semantic(batched_inputs)
        sizes = [tuple(x["image"].shape[-2:]) for x in batched_inputs]
        batch = torch.stack([resize_and_pad(x["image"].to(self.device).float(), self.input_size)
                             for x in batched_inputs])
        mask_logits, class_logits = self._final_logits((batch - self.pixel_mean) / self.pixel_std)
        mask_logits = F.interpolate(mask_logits, (self.input_size, self.input_size), mode="bilinear")
        results = []
        for i, x in enumerate(batched_inputs):
            out_size = (x.get("height", sizes[i][0]), x.get("width", sizes[i][1]))
            logits = unpad_and_resize(mask_logits[i], sizes[i], self.input_size, out_size)
            if self.task == "panoptic":
                results.append({"panoptic_seg": panoptic_inference(
                    logits, class_logits[i], self.thing_ids, self.object_mask_threshold, self.overlap_threshold)})
            else:
                results.append({"instances": instance_inference(logits, class_logits[i], self.test_topk)})
        return results

    def _semantic(self, batched_inputs: List[Dict]) -> List[Dict]:
        results = []
        for x in batched_inputs:
            image = x["image"].to(self.device).float()
            crops, origins, scaled = semantic_windows(image, self.input_size)
            mask_logits, class_logits = self._final_logits((crops - self.pixel_mean) / self.pixel_std)
            mask_logits = F.interpolate(mask_logits, crops.shape[-2:], mode="bilinear")
            out_size = (x.get("height", image.shape[-2]), x.get("width", image.shape[-1]))
            results.append({"sem_seg": semantic_inference(mask_logits, class_logits, origins, scaled, out_size)})
        return results
