"""Diagnostics for DINOv2(-reg) and DINOv3 ViTs: high-norm tokens, CLS/register (DINOv3: storage token)
attention maps, PCA feature maps. The model family is read from the checkpoint (:func:`load_model`).

The command-line tools are ``tools/token_norms.py``, ``tools/attention_maps.py`` and
``tools/pca_features.py``; they share :func:`common_parser` (model and input arguments),
:func:`load_model` and :func:`load_images`. Everything here also works from Python.
"""
from .attention import AttentionMaps, attention_maps, attention_probs, attention_qkv, last_block_attention
from .common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AnalysisModel,
    InputImage,
    common_parser,
    load_images,
    load_model,
    load_model_from_args,
    output_dir,
    peek_checkpoint,
    to_tensor,
)
from .norms import (
    ImageNorms,
    block_stats,
    block_thresholds,
    block_tokens,
    find_outliers,
    neighbour_cosine,
    outlier_neighbour_similarity,
    reference_block,
    token_norms,
)
from .norms_report import format_norm_report, heatmap_blocks, norms_meta
from .pca import PCAResult, block_features, fit_pca, pca_rgb

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AnalysisModel",
    "AttentionMaps",
    "ImageNorms",
    "InputImage",
    "PCAResult",
    "attention_maps",
    "attention_probs",
    "attention_qkv",
    "block_features",
    "block_stats",
    "block_thresholds",
    "block_tokens",
    "common_parser",
    "find_outliers",
    "fit_pca",
    "format_norm_report",
    "heatmap_blocks",
    "last_block_attention",
    "load_images",
    "load_model",
    "load_model_from_args",
    "neighbour_cosine",
    "norms_meta",
    "outlier_neighbour_similarity",
    "output_dir",
    "pca_rgb",
    "peek_checkpoint",
    "reference_block",
    "to_tensor",
    "token_norms",
]
