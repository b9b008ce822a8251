# Importing datasets registers the builtin datasets (see datasets/builtin.py).
from . import datasets  # noqa: F401
from .datasets import (
    datasets_root,
    ensure_dataset_ready,
    register_generated,
    register_path_datasets,
)
from .ratio_loader import build_ratio_train_loader

__all__ = [
    "build_ratio_train_loader",
    "datasets_root",
    "ensure_dataset_ready",
    "register_generated",
    "register_path_datasets",
]
