#!/usr/bin/env python
"""
Train or evaluate a Keypoint R-CNN with dd-detectron (teacher, student or oracle).

Same interface as detectron2's tools/train_net.py:

    python tools/train_net.py --config-file configs/Synthetic/teacher_nR18-FPN_3k_labeled.yaml
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file CFG --num-gpus 8 SOLVER.IMS_PER_BATCH 16

Keypoint AP comes from detectron2's COCOEvaluator on DATASETS.TEST.
"""
import logging

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from dd_detectron import add_dd_config
from dd_detectron.engine import DDTrainer

logger = logging.getLogger("dd_detectron.train_net")


def setup(args):
    """Build the frozen config from --config-file and trailing KEY VALUE pairs."""
    cfg = get_cfg()
    add_dd_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = DDTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = DDTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results

    trainer = DDTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
