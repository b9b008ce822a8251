"""A tiny Keypoint R-CNN (narrow R-18-FPN, random weights) shared by the ensembler and the
annotation tests, and tiny Faster / Mask R-CNNs (detectron2's model zoo configs, the same tiny
sizes) for the labels of other heads; each test module adds its data, sizes and views as KEY
VALUE options."""

import os

import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from dd_detectron import add_dd_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The tiny sizes, on top of any R-CNN FPN config.
_TINY = [
    "MODEL.DEVICE",
    "cpu",
    "MODEL.BACKBONE.NAME",
    "build_narrow_resnet_fpn_backbone",
    "MODEL.RESNETS.DEPTH",
    18,
    "MODEL.RESNETS.STEM_OUT_CHANNELS",
    8,
    "MODEL.RESNETS.RES2_OUT_CHANNELS",
    8,
    "MODEL.FPN.OUT_CHANNELS",
    16,
    "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS",
    (16, 16),
    "MODEL.ROI_BOX_HEAD.FC_DIM",
    32,
    # Unit-variance inputs keep random-weight heatmap logits finite after exp().
    "MODEL.PIXEL_STD",
    [57.0, 57.0, 57.0],
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    50,
    # Random weights: keep every detection (TEST.DETECTIONS_PER_IMAGE of them).
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    0.0,
    "DATASETS.TEST",
    (),
    "INPUT.MAX_SIZE_TEST",
    1000,
    "TEST.AUG.MAX_SIZE",
    1000,
]


def tiny_keypoint_rcnn_cfg(*opts):
    cfg = get_cfg()
    add_dd_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "Base-DD-Keypoint-RCNN-FPN.yaml"))
    cfg.merge_from_list(list(_TINY))
    cfg.merge_from_list(list(opts))
    return cfg


def tiny_rcnn_cfg(mask, num_classes, *opts):
    """A tiny Mask R-CNN (mask True) or Faster R-CNN (False) of ``num_classes`` classes, from
    detectron2's model zoo R50-FPN configs."""
    cfg = get_cfg()
    add_dd_config(cfg)
    zoo = (
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
        if mask
        else "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
    )
    cfg.merge_from_file(model_zoo.get_config_file(zoo))
    cfg.merge_from_list(list(_TINY))
    cfg.merge_from_list(
        ["MODEL.ROI_HEADS.NUM_CLASSES", num_classes, "MODEL.ROI_MASK_HEAD.CONV_DIM", 16]
    )
    cfg.merge_from_list(list(opts))
    return cfg


def tiny_model(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg).eval()
