# Importing backbone registers build_narrow_resnet_fpn_backbone in BACKBONE_REGISTRY.
from . import backbone  # noqa: F401
from .test_time_augmentation import KeypointRCNNWithTTA, RCNNWithTTA

__all__ = ["RCNNWithTTA", "KeypointRCNNWithTTA"]
