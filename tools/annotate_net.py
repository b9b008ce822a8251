#!/usr/bin/env python
"""
Label unlabeled images with a teacher: multi-view inference, then ONE COCO person_keypoints JSON
of hard labels (plus a statistics report and a calibration plot), for training a student.

    python tools/annotate_net.py --config-file CFG --output DIR MODEL.WEIGHTS teacher.pth
    python tools/annotate_net.py --config-file CFG --output DIR MODEL.WEIGHTS teacher.pth \\
        TEST.AUG.ENABLED True DD.ANNOTATE.DATASETS '("synthetic_kp_unlabeled",)'
    torchrun --nproc_per_node 2 tools/annotate_net.py --config-file CFG --output DIR ...  # CPUs
    python tools/annotate_net.py --num-gpus 8 --config-file CFG --output DIR ...          # GPUs
    torchrun --nproc_per_node 8 tools/annotate_net.py --config-file CFG --output DIR ...  # GPUs

Which images: DD.ANNOTATE.DATASETS. Labels: boxes, with masks (RLE) and keypoints as the model's
heads (MODEL.MASK_ON, MODEL.KEYPOINT_ON) allow. Views: TEST.AUG when TEST.AUG.ENABLED, else plain
inference. Selection: DD.ANNOTATE.SCORE_THRESH (SCORE_THRESH_MODE: one threshold, or one per
category) / KEYPOINT_THRESH ("auto" calibrates against DATASETS.TRAIN) and MIN_KEYPOINTS.
Rerunning the same command resumes an interrupted run. Outputs in DIR:
person_keypoints_generated.json, annotation_stats.json, calibration.png (see
dd_detectron/annotation/engine.py); with --truth DATASET also label_quality.json, the labels'
box, mask and keypoint AP (as the heads allow) against that dataset's true labels (all written by
dd_detectron.annotation.annotate).
"""

import logging

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from dd_detectron import add_dd_config
from dd_detectron.annotation import annotate
from dd_detectron.data import register_path_datasets
from dd_detectron.engine import launch_or_join

logger = logging.getLogger("dd_detectron.annotate_net")


# Keys that hold "auto" or a number: their command-line values stay strings (see quote_thresholds).
THRESHOLD_KEYS = ("DD.ANNOTATE.SCORE_THRESH", "DD.ANNOTATE.KEYPOINT_THRESH")


def quote_thresholds(opts):
    """Let ``DD.ANNOTATE.SCORE_THRESH 0.7`` be written as such on the command line.

    yacs evaluates the value "0.7" to a float and then refuses it for a key whose value is a
    string ("auto"); quoted, it stays the string "0.7", which parse_threshold reads.
    """
    opts = list(opts)
    for i in range(0, len(opts) - 1, 2):
        if opts[i] in THRESHOLD_KEYS:
            opts[i + 1] = repr(str(opts[i + 1]))
    return opts


def merged_config(args):
    """The config of --config-file, --output and trailing KEY VALUE pairs, not frozen, not set
    up."""
    cfg = get_cfg()
    add_dd_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(quote_thresholds(args.opts))
    cfg.OUTPUT_DIR = args.output
    return cfg


def setup(args):
    """Build the frozen config from --config-file, --output and trailing KEY VALUE pairs."""
    cfg = merged_config(args)
    cfg.freeze()
    default_setup(cfg, args)
    # default_setup configures only detectron2's logger; dd_detectron's goes to the same log.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="dd_detectron")
    register_path_datasets(cfg)
    return cfg


def main(args):
    cfg = setup(args)
    if not cfg.MODEL.WEIGHTS:
        raise ValueError(
            "MODEL.WEIGHTS is empty: give the teacher's checkpoint "
            "(MODEL.WEIGHTS path/to/model.pth)."
        )
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    results = annotate(cfg, model, args.output, truth=args.truth or None)
    if comm.is_main_process():
        logger.info("Annotation results: %s", results)
    return results


def argument_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--output",
        required=True,
        metavar="DIR",
        help="directory of the labels, report and progress",
    )
    parser.add_argument(
        "--truth",
        default="",
        metavar="DATASET",
        help="registered dataset with the true labels of the same images "
        "(e.g. synthetic_kp_unlabeled_truth): "
        "also score the labels against it (box, mask and keypoint AP as the model's heads allow, "
        "DIR/label_quality.json)",
    )
    return parser


if __name__ == "__main__":
    args = argument_parser().parse_args()
    # Spawns the processes (--num-gpus, --num-machines), or joins those torchrun started.
    launch_or_join(main, args, device=merged_config(args).MODEL.DEVICE)
