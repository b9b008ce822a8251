#!/usr/bin/env python
"""
Run data distillation end to end from one config: teacher -> annotate -> student -> evaluate,
for DD.PIPELINE.ROUNDS rounds (each round's student is the next round's teacher).

    python tools/run_pipeline.py --config-file configs/Synthetic/pipeline_nR18-FPN_demo.yaml
    python tools/run_pipeline.py --config-file CFG --num-gpus 8 DD.PIPELINE.SEEDS "(1, 2, 3)"

The config's DD.PIPELINE node names the stage configs, the datasets, the seeds and the
ablations (dd_detectron/config.py). Each stage runs the stand-alone tool (tools/train_net.py,
tools/annotate_net.py) as a child process, with the launch arguments given here. Finished
stages are skipped when their inputs have not changed, and an interrupted stage resumes, so
rerunning the same command after an interruption picks up where it stopped. On several machines,
run the same command on each (--num-machines N --machine-rank R --dist-url tcp://MACHINE0:PORT)
over a shared output folder; machine 0 writes the stage records and the report (report.md,
report.json, report.png, in DD.PIPELINE.OUTPUT_DIR).
"""

import os
import sys

from detectron2.engine import default_argument_parser
from detectron2.utils.logger import setup_logger

from dd_detectron.modeling import Heads
from dd_detectron.pipeline import StageRunner, build_report, build_stages, write_report
from dd_detectron.pipeline.pictures import draw_pipeline_label_pictures
from dd_detectron.pipeline.plan import load_stage_config, resolve_config_path


def setup(args):
    """The frozen pipeline config from --config-file and trailing KEY VALUE pairs."""
    cfg = load_stage_config(args.config_file, args.opts)
    cfg.freeze()
    return cfg


def launch_args(args):
    """detectron2's launch arguments, passed on to every stage."""
    return [
        "--num-gpus",
        str(args.num_gpus),
        "--num-machines",
        str(args.num_machines),
        "--machine-rank",
        str(args.machine_rank),
        "--dist-url",
        args.dist_url,
    ]


def main(args):
    cfg = setup(args)
    setup_logger(cfg.DD.PIPELINE.OUTPUT_DIR, name="dd_detectron", abbrev_name="dd")
    config_dir = os.path.dirname(args.config_file)
    stages = build_stages(
        cfg, config_dir, args.num_gpus, args.num_machines, args.machine_rank, args.dist_url
    )
    runner = StageRunner(
        stages,
        # The other tools lie beside this one.
        tools_dir=os.path.dirname(os.path.abspath(__file__)),
        launch_args=launch_args(args),
        python=sys.executable,
        parallel=cfg.DD.PIPELINE.PARALLEL_STAGES,
        machine_rank=args.machine_rank,
    )
    wall_times = runner.run()
    if args.machine_rank != 0:
        sys.stdout.write("Every stage is done; machine 0 writes the report.\n")
        return None
    teacher_config = resolve_config_path(cfg.DD.PIPELINE.TEACHER_CONFIG, config_dir)
    teacher_cfg = load_stage_config(teacher_config, cfg.DD.PIPELINE.STAGE_OPTS)
    report = build_report(
        cfg.DD.PIPELINE.OUTPUT_DIR,
        cfg.DD.PIPELINE.SEEDS,
        wall_times,
        ", ".join(teacher_cfg.DATASETS.TEST),
        # The AP of every head the model has.
        iou_types=Heads.from_cfg(teacher_cfg).iou_types,
        rounds=cfg.DD.PIPELINE.ROUNDS,
    )
    paths = write_report(report, cfg.DD.PIPELINE.OUTPUT_DIR)
    pictures = draw_pipeline_label_pictures(cfg)
    with open(paths["md"]) as f:
        sys.stdout.write(f.read())
    sys.stdout.write(f"\nReport: {', '.join(paths.values())}\n")
    if pictures:
        sys.stdout.write(f"Generated labels beside the true ones: {os.path.dirname(pictures[0])}/ ")
        sys.stdout.write(f"({len(pictures)} pictures)\n")
    return report


if __name__ == "__main__":
    # Stages start their own processes (detectron2 launch or torchrun), so the pipeline itself
    # runs in one process.
    main(default_argument_parser().parse_args())
