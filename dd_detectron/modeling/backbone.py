"""
A narrow ResNet-FPN for CPU-sized experiments on the embedded synthetic data.

detectron2's ``build_resnet_backbone`` fixes the width of R-18/R-34 at 64 channels in res2.
This builder uses the same BasicBlock stages with the width taken from
``MODEL.RESNETS.RES2_OUT_CHANNELS`` (doubling per stage), so a CPU teacher can be a quarter or
less of R-18's width while keeping detectron2's ResNet, FPN and all of its heads.
"""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, ResNet

__all__ = ["build_narrow_resnet_backbone", "build_narrow_resnet_fpn_backbone"]

# BasicBlock counts of res2..res5, as in detectron2's ResNet table.
_BLOCKS_PER_STAGE = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}


def build_narrow_resnet_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """Build an R-18/R-34 whose res2 width is ``MODEL.RESNETS.RES2_OUT_CHANNELS``.

    Args:
        cfg: a detectron2 config; reads MODEL.RESNETS.{DEPTH, NORM, STEM_OUT_CHANNELS,
            RES2_OUT_CHANNELS, OUT_FEATURES} and MODEL.BACKBONE.FREEZE_AT.
        input_shape: shape of the input image tensor.

    Returns:
        a detectron2 ResNet.
    """
    depth = cfg.MODEL.RESNETS.DEPTH
    if depth not in _BLOCKS_PER_STAGE:
        raise ValueError(f"MODEL.RESNETS.DEPTH must be 18 or 34 for the narrow ResNet, got {depth}")
    norm = cfg.MODEL.RESNETS.NORM
    in_channels = cfg.MODEL.RESNETS.STEM_OUT_CHANNELS
    out_channels = cfg.MODEL.RESNETS.RES2_OUT_CHANNELS
    stem = BasicStem(in_channels=input_shape.channels, out_channels=in_channels, norm=norm)
    stages = []
    for idx, num_blocks in enumerate(_BLOCKS_PER_STAGE[depth]):
        first_stride = 1 if idx == 0 else 2
        stages.append(
            ResNet.make_stage(
                block_class=BasicBlock,
                num_blocks=num_blocks,
                stride_per_block=[first_stride] + [1] * (num_blocks - 1),
                in_channels=in_channels,
                out_channels=out_channels,
                norm=norm,
            )
        )
        in_channels, out_channels = out_channels, out_channels * 2
    return ResNet(
        stem,
        stages,
        out_features=cfg.MODEL.RESNETS.OUT_FEATURES,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )


@BACKBONE_REGISTRY.register()
def build_narrow_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """detectron2's ResNet-FPN over :func:`build_narrow_resnet_backbone`.

    Args:
        cfg: a detectron2 config (MODEL.FPN.* as for build_resnet_fpn_backbone).
        input_shape: shape of the input image tensor.

    Returns:
        an FPN backbone with levels p2..p6.
    """
    return FPN(
        bottom_up=build_narrow_resnet_backbone(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
