# Importing datasets registers the builtin datasets (see datasets/__init__.py).
from . import datasets  # noqa: F401

# Importing generated registers the builtin generated-label datasets (dd_coco_un120_generated, ...).
from .datasets.generated import register_generated_keypoints
from .ratio_loader import build_ratio_train_loader
