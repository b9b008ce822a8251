#!/usr/bin/env python
"""dd-detectron: Data Distillation (Radosavovic et al., CVPR 2018) as a detectron2 extension."""

from pathlib import Path

from setuptools import find_packages, setup

README = Path(__file__).resolve().parent / "README.md"

setup(
    name="dd-detectron",
    version="0.1.0",
    description=(
        "Data Distillation for detectron2: multi-view teacher labels (keypoints, boxes, masks) "
        "for unlabeled images and students trained on a fixed labeled:generated ratio"
    ),
    long_description=README.read_text() if README.exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["dd_detectron", "dd_detectron.*"]),
    python_requires=">=3.10",
    install_requires=[
        # detectron2 is not on PyPI: dev/setup_env.py provides it (the user's own, or a
        # fallback build). Declared so that pip checks it is there.
        "detectron2>=0.6",
        "torch",
        "torchvision",
        "pycocotools>=2.0.2",
        # Releases 4.8 to 4.12 draw the embedded synthetic data alike (data/synthetic/splits.py);
        # 4.12 caps numpy below 2.3, so the newest allowed is 4.11, which leaves numpy alone.
        "opencv-python-headless>=4.8,<4.12",
        "matplotlib",
        "numpy",
    ],
    # Tests and make lint.
    extras_require={"dev": ["pytest>=7", "black", "isort", "flake8"]},
)
