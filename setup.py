#!/usr/bin/env python
"""dd-detectron: Data Distillation for human keypoint detection, as a detectron2 extension."""

from setuptools import find_packages, setup

setup(
    name="dd-detectron",
    version="0.1.0",
    description=(
        "Data Distillation (Radosavovic et al., CVPR 2018) for keypoint detection on detectron2"
    ),
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["dd_detectron", "dd_detectron.*"]),
    python_requires=">=3.8",
    install_requires=[
        # detectron2 is not on PyPI: dev/setup_env.py provides it (the user's own, or a
        # fallback build). Declared so that pip checks it is there.
        "detectron2>=0.6",
        "torch",
        "torchvision",
        "pycocotools>=2.0.2",
        "opencv-python-headless",
        "matplotlib",
        "numpy",
    ],
    # Tests and make lint.
    extras_require={"dev": ["pytest>=7", "black", "isort", "flake8"]},
)
