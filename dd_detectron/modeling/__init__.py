# Importing backbone registers build_narrow_resnet_fpn_backbone in BACKBONE_REGISTRY.
from . import backbone  # noqa: F401
from .test_time_augmentation import KeypointRCNNWithTTA, RCNNWithTTA, build_rcnn_tta

__all__ = ["RCNNWithTTA", "KeypointRCNNWithTTA", "build_rcnn_tta"]
