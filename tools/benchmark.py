#!/usr/bin/env python
"""
Benchmarks of dd-detectron, one task per run, in the shape of detectron2's tools/benchmark.py.

    python tools/benchmark.py --task train_loader \\
        --config-file configs/Synthetic/student_nR18-FPN_4k_labeled-generated.yaml \\
        --output output/benchmark_train_loader.json DATALOADER.NUM_WORKERS 0

Tasks:

- ``train_loader``: batches/s of the student's ratio loader (as DDTrainer builds it, with its
  per-source counting) against detectron2's ``build_detection_train_loader`` over the union of
  the same labeled + generated dataset dicts, with the same DatasetMapper instance, batch size,
  aspect-ratio grouping and workers. Both run in one process, in alternating rounds (the order
  flips every round) so that drifts of the machine's load hit both alike; the overhead is the
  median of the per-round ratios. With DATALOADER.NUM_WORKERS > 0, one loader's workers keep
  prefetching while the other is timed: use 0 to compare the loaders' own cost.

- ``tta``: images/s and peak memory of the ensembler (one backbone pass per view for all heads)
  against (b) detectron2's own GeneralizedRCNNWithTTA on box and mask models (two backbone
  passes per view), or for keypoint models, which it refuses, the same views run its way
  (heatmaps decoded per view), and (c) N plain single-view inferences, on random images of
  --image-size; alternating rounds as above. Random weights (empty MODEL.WEIGHTS) are fine with
  a fixed number of detections per image; ``zoo:`` names a config of detectron2's model zoo:

      python tools/benchmark.py --task tta --config-file configs/Base-DD-Keypoint-RCNN-FPN.yaml \\
          --rounds 2 --num-iters 1 --warmup 0 MODEL.DEVICE cpu MODEL.RESNETS.DEPTH 50 \\
          MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.0 TEST.DETECTIONS_PER_IMAGE 20
      python tools/benchmark.py --task tta \\
          --config-file zoo:COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml \\
          --rounds 1 --num-iters 1 --warmup 0 MODEL.DEVICE cpu MODEL.WEIGHTS "" \\
          MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.0 TEST.DETECTIONS_PER_IMAGE 20

- ``annotate``: images/s of the whole annotation stage (tools/annotate_net.py's work: reading,
  views, labels, JSON) on the first --num-iters images of DD.ANNOTATE.DATASETS, and the split of
  its time that the stage reports itself (e.g. waiting for input, in the model), if it does.

Results are printed as a table and, with --output, written as JSON. What the COCO configs'
stages cost, in GPU hours, is estimated by dev/estimate_coco_costs.py.
"""

import argparse
import functools
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.data import build_detection_train_loader
from detectron2.data.detection_utils import read_image
from detectron2.utils.events import EventStorage
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

from dd_detectron import add_dd_config
from dd_detectron.annotation import annotate, views_config
from dd_detectron.annotation.inputs import images_to_label
from dd_detectron.config import num_views
from dd_detectron.data import build_ratio_train_loader, register_path_datasets
from dd_detectron.engine import SourceCountingLoader
from dd_detectron.utils.benchmark import PeakMemory, build_benchmark_model, save_result
from dd_detectron.utils.tta_baselines import tta_approaches

# --config-file zoo:<path> names a config of detectron2's model zoo, shipped in its package.
ZOO_PREFIX = "zoo:"


def setup(args):
    """Build the frozen config from --config-file and trailing KEY VALUE pairs."""
    cfg = get_cfg()
    add_dd_config(cfg)
    if args.config_file.startswith(ZOO_PREFIX):
        cfg.merge_from_file(model_zoo.get_config_file(args.config_file[len(ZOO_PREFIX) :]))
    elif args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    setup_logger(name="detectron2")
    setup_logger(name="dd_detectron")
    register_path_datasets(cfg)
    return cfg


def _alternating_rounds(timers: dict, rounds: int) -> dict:
    """Calls every timer once per round, in the given order in even rounds and reversed in odd
    ones, so that a drift of the machine's load hits all alike.

    Returns:
        name -> the seconds its timer returned, one per round.
    """
    names = list(timers)
    seconds = {name: [] for name in names}
    for round_index in range(rounds):
        for name in names if round_index % 2 == 0 else names[::-1]:
            seconds[name].append(timers[name]())
    return seconds


def _median_ratio(numerators: list, denominators: list) -> float:
    """The median over rounds of the per-round ratio: a change of the machine's load between
    rounds cancels out, since each round times all contenders back to back."""
    return statistics.median(n / d for n, d in zip(numerators, denominators))


def _time_batches(iterator, num_batches: int) -> float:
    start = time.perf_counter()
    for _ in range(num_batches):
        next(iterator)
    return time.perf_counter() - start


def benchmark_train_loader(cfg, args) -> dict:
    """Batches/s of the ratio loader and of detectron2's train loader on the same data.

    Args:
        cfg: a student config (DATASETS.TRAIN + DD.STUDENT.GENERATED_DATASETS).
        args: --rounds, --num-iters (batches per loader per round), --warmup.

    Returns:
        the measurements: per-loader batches/s (median over rounds and pooled) and the
        overhead of the ratio loader in percent.
    """
    if not cfg.DD.STUDENT.GENERATED_DATASETS:
        raise ValueError(
            "--task train_loader needs a student config: DD.STUDENT.GENERATED_DATASETS is empty"
        )
    # The ratio loader's own arguments from the config (its datasets, filtered and checked as in
    # training, and its mapper); detectron2's loader gets the same dicts and mapper instance.
    ratio_args = build_ratio_train_loader.from_config(cfg)
    labeled, generated = ratio_args["labeled_dataset"], ratio_args["generated_dataset"]
    loaders = {
        "ratio (dd_detectron)": SourceCountingLoader(build_ratio_train_loader(**ratio_args)),
        "build_detection_train_loader": build_detection_train_loader(
            cfg, mapper=ratio_args["mapper"], dataset=labeled + generated
        ),
    }
    names = list(loaders)
    with EventStorage():  # the ratio loader logs its counts, as in training
        iterators = {name: iter(loader) for name, loader in loaders.items()}
        for name in names:
            _time_batches(iterators[name], args.warmup)
        timers = {
            name: functools.partial(_time_batches, iterators[name], args.num_iters)
            for name in names
        }
        seconds = _alternating_rounds(timers, args.rounds)
    rates = {name: [args.num_iters / s for s in seconds[name]] for name in names}
    mixed, base = names
    per_round = [100.0 * (1.0 - m / b) for m, b in zip(rates[mixed], rates[base])]
    result = {
        "task": "train_loader",
        "images_per_batch": cfg.SOLVER.IMS_PER_BATCH,
        "labeled_fraction": cfg.DD.STUDENT.LABELED_FRACTION,
        "num_workers": cfg.DATALOADER.NUM_WORKERS,
        "labeled_images": len(labeled),
        "generated_images": len(generated),
        "rounds": args.rounds,
        "batches_per_round": args.num_iters,
        "batches_per_s": {
            name: {
                "median": statistics.median(rates[name]),
                "pooled": args.num_iters * args.rounds / sum(seconds[name]),
            }
            for name in names
        },
        # Median over rounds of 1 - ratio_rate / baseline_rate: positive = the ratio loader is
        # slower.
        "overhead_percent": statistics.median(per_round),
        "overhead_percent_per_round": per_round,
    }
    table = [
        [name, f"{r['median']:.3f}", f"{r['pooled']:.3f}"]
        for name, r in result["batches_per_s"].items()
    ]
    overhead = f"{result['overhead_percent']:+.2f}% (median of rounds)"
    table.append(["overhead of ratio loader", overhead, ""])
    headers = ["loader", "batches/s (median)", "batches/s (pooled)"]
    print(tabulate(table, headers=headers, tablefmt="pipe"))
    return result


def benchmark_tta(cfg, args) -> dict:
    """Images/s and peak memory of the ensembler against the two-pass way (detectron2's own
    GeneralizedRCNNWithTTA for box and mask models) and N single-view inferences, on the
    config's TEST.AUG views.

    Args:
        cfg: an R-CNN config (boxes, masks, keypoints); TEST.AUG holds the views. With empty
            MODEL.WEIGHTS the weights are random: hold the detections per image fixed with
            MODEL.ROI_HEADS.SCORE_THRESH_TEST 0 and TEST.DETECTIONS_PER_IMAGE N.
        args: --rounds, --num-iters (images per approach per round), --warmup (images),
            --image-size (random images of that size).

    Returns:
        per approach images/s (median over rounds, and pooled), seconds per image, peak memory
        above the loaded model (MiB), detections per image; the ensembler's speedup over the
        two-pass way and its time relative to the N single views.
    """
    height, width = args.image_size
    generator = torch.Generator().manual_seed(0)
    images = [
        torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
        for _ in range(max(args.num_iters, 1))
    ]
    model = build_benchmark_model(cfg, images[0])
    approaches = tta_approaches(cfg, model)
    names = list(approaches)
    ensembler = approaches[names[0]]
    inputs = [[{"image": im, "height": height, "width": width}] for im in images]
    detections = {name: [] for name in names}
    memory = {name: PeakMemory(cfg.MODEL.DEVICE) for name in names}

    def time_approach(name: str) -> float:
        with memory[name]:
            start = time.perf_counter()
            for x in inputs[: args.num_iters]:
                detections[name].append(len(approaches[name](x)[0]["instances"]))
            if cfg.MODEL.DEVICE.startswith("cuda"):
                torch.cuda.synchronize()
            return time.perf_counter() - start

    with torch.no_grad():
        for name in names:
            for x in inputs[: args.warmup]:
                approaches[name](x)
        timers = {name: functools.partial(time_approach, name) for name in names}
        seconds = _alternating_rounds(timers, args.rounds)
    rates = {name: [args.num_iters / s for s in seconds[name]] for name in names}
    pooled = {name: args.num_iters * args.rounds / sum(seconds[name]) for name in names}
    ens, two_pass, single, backbone = names
    result = {
        "task": "tta",
        "device": cfg.MODEL.DEVICE,
        "mask_on": cfg.MODEL.MASK_ON,
        "keypoint_on": cfg.MODEL.KEYPOINT_ON,
        "ensembler_view_batch_size": ensembler.batch_size,
        "torch_threads": torch.get_num_threads(),
        "weights": cfg.MODEL.WEIGHTS or "random",
        "views": num_views(cfg),
        "image_size": [height, width],
        "rounds": args.rounds,
        "images_per_round": args.num_iters,
        "approaches": {
            name: {
                "images_per_s_median": statistics.median(rates[name]),
                "images_per_s_pooled": pooled[name],
                "images_per_s_per_round": rates[name],
                "seconds_per_image": 1.0 / pooled[name],
                "peak_memory_mib": memory[name].peak_mib,
                "detections_per_image": statistics.mean(detections[name]),
            }
            for name in names
        },
        # > 1: the ensembler is faster than the two-pass way.
        "speedup_over_two_pass": _median_ratio(rates[ens], rates[two_pass]),
        # < 1: the ensembler takes less time than the N single-view inferences.
        "time_relative_to_single_views": _median_ratio(rates[single], rates[ens]),
        "speedup_over_two_pass_pooled": pooled[ens] / pooled[two_pass],
        "time_relative_to_single_views_pooled": pooled[single] / pooled[ens],
        # The two-pass way is the ensembler plus one more backbone pass per view, so its time is
        # at most (1 + this share) times the ensembler's: the largest speedup sharing can give.
        "backbone_share_of_ensembler": _median_ratio(rates[ens], rates[backbone]),
    }
    result["speedup_over_two_pass_bound"] = 1.0 + result["backbone_share_of_ensembler"]
    table = [
        [
            name,
            f"{r['images_per_s_median']:.4f}",
            f"{r['images_per_s_pooled']:.4f}",
            f"{r['seconds_per_image']:.2f}",
            f"{r['peak_memory_mib']:.0f}",
            f"{r['detections_per_image']:.1f}",
        ]
        for name, r in result["approaches"].items()
    ]
    ratios = [
        (
            "ensembler speedup over two-pass",
            f"{result['speedup_over_two_pass']:.3f}x (median of rounds)",
            f"{result['speedup_over_two_pass_pooled']:.3f}x",
        ),
        (
            "ensembler time / N single views",
            f"{result['time_relative_to_single_views']:.3f} (median of rounds)",
            f"{result['time_relative_to_single_views_pooled']:.3f}",
        ),
        (
            "backbone share of the ensembler's time",
            f"{result['backbone_share_of_ensembler']:.3f} "
            f"(speedup bound {result['speedup_over_two_pass_bound']:.3f}x)",
        ),
    ]
    table += [list(row) + [""] * (6 - len(row)) for row in ratios]
    headers = [
        "approach",
        "images/s (median)",
        "images/s (pooled)",
        "s/image",
        "peak MiB",
        "dets/image",
    ]
    print(tabulate(table, headers=headers, tablefmt="pipe"))
    return result


def benchmark_annotate(cfg, args) -> dict:
    """Images/s of the whole annotation stage (reading, views, labels, JSON) on the first
    --num-iters images of DD.ANNOTATE.DATASETS, in a temporary output directory.

    Args:
        cfg: an annotation config (views: TEST.AUG when TEST.AUG.ENABLED). With empty
            MODEL.WEIGHTS the weights are random (tamed), so the labels are meaningless.
        args: --num-iters (images), --warmup (images annotated before, untimed).

    Returns:
        images/s, seconds, peak memory above the loaded model (MiB), labels written; and the
        stage's own "timing" (e.g. time waiting for input, time in the model) when its summary
        reports one.
    """
    images = images_to_label(cfg.DD.ANNOTATE.DATASETS)
    first = read_image(images[0]["file_name"], format=cfg.INPUT.FORMAT)
    first = torch.as_tensor(np.ascontiguousarray(first.transpose(2, 0, 1)))
    model = build_benchmark_model(cfg, first)
    with tempfile.TemporaryDirectory() as tmp:
        if args.warmup:
            annotate(cfg, model, os.path.join(tmp, "warmup"), images=images[: args.warmup])
        timed = images[args.warmup : args.warmup + args.num_iters]
        memory = PeakMemory(cfg.MODEL.DEVICE)
        with memory:
            start = time.perf_counter()
            summary = annotate(cfg, model, os.path.join(tmp, "timed"), images=timed)["annotation"]
            seconds = time.perf_counter() - start
    result = {
        "task": "annotate",
        "device": cfg.MODEL.DEVICE,
        "torch_threads": torch.get_num_threads(),
        "datasets": list(cfg.DD.ANNOTATE.DATASETS),
        "weights": cfg.MODEL.WEIGHTS or "random",
        "views": num_views(views_config(cfg)),
        "images": len(timed),
        "seconds": seconds,
        "images_per_s": len(timed) / seconds,
        "peak_memory_mib": memory.peak_mib,
        "annotations": summary["annotations"],
    }
    row = [
        len(timed),
        result["views"],
        f"{seconds:.1f}",
        f"{result['images_per_s']:.3f}",
        f"{memory.peak_mib:.0f}",
        summary["annotations"],
    ]
    headers = ["images", "views", "seconds", "images/s", "peak MiB", "annotations"]
    print(tabulate([row], headers=headers, tablefmt="pipe"))
    if "timing" in summary:  # the stage's own split of its time, as annotate() reports it
        result["timing"] = summary["timing"]
        rows = [
            [key, f"{value:.3f}" if isinstance(value, float) else value]
            for key, value in summary["timing"].items()
        ]
        print(tabulate(rows, headers=["annotation timing", "value"], tablefmt="pipe"))
    return result


# Task name -> function(cfg, args) returning a JSON-serialisable dict of results.
TASKS = {
    "train_loader": benchmark_train_loader,
    "tta": benchmark_tta,
    "annotate": benchmark_annotate,
}


def main(args):
    cfg = setup(args)
    result = TASKS[args.task](cfg, args)
    if args.output:
        save_result(result, args.output)
    return result


def argument_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--task", required=True, choices=sorted(TASKS), help="what to benchmark")
    parser.add_argument(
        "--config-file",
        default="",
        metavar="FILE",
        help=f"path to config file, or {ZOO_PREFIX}<path> of detectron2's model zoo",
    )
    parser.add_argument("--output", default="", help="write the results to this JSON file")
    parser.add_argument("--rounds", type=int, default=10, help="alternating measurement rounds")
    parser.add_argument(
        "--num-iters", type=int, default=20, help="items timed per round (train_loader: batches)"
    )
    parser.add_argument(
        "--warmup", type=int, default=5, help="untimed items before the first round"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        default=[480, 640],
        metavar=("H", "W"),
        help="tta: size of the random test images (views are resized from it)",
    )
    parser.add_argument(
        "opts", default=None, nargs=argparse.REMAINDER, help="config KEY VALUE pairs"
    )
    return parser


if __name__ == "__main__":
    main(argument_parser().parse_args())
