from setuptools import find_packages, setup

setup(
    name="d2reg",
    version="0.1.0",
    description="DINOv2-with-registers ViT backbones for detectron2 (ViTDet-style simple feature pyramid)",
    packages=find_packages(include=["d2reg", "d2reg.*"]),
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "timm>=1.0.15",
        "safetensors",
        "fvcore",
        "tqdm",
        "matplotlib",
        "pycocotools",
        "Pillow",
        "shapely",  # detectron2 crops polygon annotations with it (LSJ / INPUT.CROP)
    ],
    extras_require={"test": ["pytest", "transformers>=4.48", "ruff"]},
)
