"""dd-detectron: Data Distillation for human keypoint detection on detectron2."""

# Importing these registers what they define: data registers the builtin datasets in
# DatasetCatalog (data/datasets/builtin.py), modeling the narrow backbone in BACKBONE_REGISTRY.
from . import data, modeling  # noqa: F401
from .config import add_dd_config

__all__ = ["add_dd_config"]

__version__ = "0.1.0"
