#!/usr/bin/env python
r"""
Train or evaluate an R-CNN (keypoint, mask or box) with dd-detectron (teacher, student or oracle).

Same interface as detectron2's tools/train_net.py:

    python tools/train_net.py --config-file configs/Synthetic/teacher_nR18-FPN_2k_labeled.yaml
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file CFG --num-gpus 8 SOLVER.IMS_PER_BATCH 16
    torchrun --nproc_per_node 8 tools/train_net.py --config-file CFG SOLVER.IMS_PER_BATCH 16

The AP of every head (boxes, masks, keypoints) comes from detectron2's COCOEvaluator on
DATASETS.TEST. With TEST.AUG.ENABLED True, the same evaluation runs once more through the
multi-view ensembler (TEST.AUG views, DD.TTA settings), reported under "<task>_TTA":

    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS w.pth \
        TEST.AUG.ENABLED True
"""

import logging

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, hooks
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from dd_detectron import add_dd_config
from dd_detectron.data import register_path_datasets
from dd_detectron.engine import DDTrainer, apply_student_init, launch_or_join

logger = logging.getLogger("dd_detectron.train_net")


def merged_config(args):
    """The config of --config-file and trailing KEY VALUE pairs, not frozen, not set up."""
    cfg = get_cfg()
    add_dd_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    return cfg


def setup(args):
    """Build the frozen config from --config-file and trailing KEY VALUE pairs."""
    cfg = merged_config(args)
    # Before freezing: INIT="teacher" rewrites MODEL.WEIGHTS, so config.yaml says what is loaded.
    # Not with --eval-only, where MODEL.WEIGHTS names the model to evaluate.
    student_init = None if args.eval_only else apply_student_init(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    # default_setup configures only detectron2's logger; dd_detectron's goes to the same log.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="dd_detectron")
    register_path_datasets(cfg)
    if student_init:
        logger.info(student_init)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = DDTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = DDTrainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            results.update(DDTrainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, results)
        return results

    trainer = DDTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    if cfg.TEST.AUG.ENABLED:
        # As detectron2's train_net: evaluate with TTA once more after training.
        trainer.register_hooks(
            [hooks.EvalHook(0, lambda: trainer.test_with_TTA(cfg, trainer.model))]
        )
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    # Spawns the processes (--num-gpus, --num-machines), or joins those torchrun started.
    launch_or_join(main, args, device=merged_config(args).MODEL.DEVICE)
