# Importing backbone registers build_narrow_resnet_fpn_backbone in BACKBONE_REGISTRY.
from . import backbone  # noqa: F401
from .heads import Heads
from .test_time_augmentation import RCNNWithTTA, build_rcnn_tta

__all__ = ["Heads", "RCNNWithTTA", "build_rcnn_tta"]
