#!/usr/bin/env python
"""
What each stage of the COCO configs costs on this machine's CPU, and the GPU hours it would take
on 8 GPUs: ESTIMATES, scaled by detectron2's published speeds of the same model (see
coco_gpu_estimates).

The figures of docs/COCO.md's "GPU hours (estimates)" come from:

    python dev/estimate_coco_costs.py --num-iters 2 --warmup 1 --output costs.json

Without --config-file: every config of configs/COCO-Keypoints. Training configs: --num-iters
timed iterations of ONE image (after --warmup): forward, backward and SGD step at the config's
training sizes, on random images of --image-size with COCO_COST_PEOPLE labeled people. Annotate
configs: --num-iters images through the keypoint ensembler over the config's views, and plain
inference (the reference). Random weights (the COCO_COST_DETECTIONS boxes per image fixed);
configs with the same model, sizes and views are measured once.

Results are printed as a table and, with --output, written as JSON.
"""

import argparse
import copy
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetMapper
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.structures import BoxMode
from detectron2.utils.events import EventStorage
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

from dd_detectron import add_dd_config
from dd_detectron.annotation import views_config
from dd_detectron.annotation.inputs import ReadImageOrError
from dd_detectron.config import num_views
from dd_detectron.modeling import RCNNWithTTA
from dd_detectron.utils.benchmark import build_benchmark_model, save_result

logger = logging.getLogger("dd_detectron.estimate_coco_costs")

COCO_CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "COCO-Keypoints"
# The order of the table: the pipeline's (teachers, annotation, students), then any other.
STAGE_ORDER = ("teacher", "annotate", "student")

# detectron2 model zoo table, keypoint_rcnn_R_50_FPN_3x (the teachers' and students' model, input
# sizes and batch): 0.316 s per training iteration of 16 images on 8 V100s (2 per GPU), i.e.
# 0.158 GPU-seconds per training image; 0.066 s per image of plain inference (batch 1, one V100).
ZOO_TRAIN_S_PER_ITER = 0.316
ZOO_TRAIN_GPUS = 8
ZOO_TRAIN_IMS_PER_BATCH = 16
ZOO_INFERENCE_S_PER_IMAGE = 0.066
ESTIMATE_GPUS = 8
# People per image of COCO's keypoint training images (about 150k people on 57k images).
COCO_COST_PEOPLE = 3
# Boxes per image the keypoint head sees at inference: a trained teacher keeps a few tens of
# boxes at the default MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05 (random weights keep the
# maximum, TEST.DETECTIONS_PER_IMAGE = 100, which would overstate the keypoint head's share).
COCO_COST_DETECTIONS = 20
# Images each annotate config labels: COCO's split sizes, and the paper's 180k Sports-1M frames
# for the image-folder setting.
UNLABELED_IMAGES = {
    "coco_2014_train_unlabeled": 82783,
    "coco_2017_unlabeled": 123403,
    "sports1m_frames": 180000,
}


def load_config(config_file: str, opts: list):
    """The config of a file, with the command line's KEY VALUE pairs."""
    cfg = get_cfg()
    add_dd_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    return cfg


def _stage_order(path: Path):
    prefix = path.name.split("_")[0]
    return (STAGE_ORDER.index(prefix) if prefix in STAGE_ORDER else len(STAGE_ORDER), path.name)


def _coco_cost_records(directory: str, count: int, image_size) -> list:
    """Random JPEGs of image_size (H, W) with COCO_COST_PEOPLE keypoint-labeled people each."""
    rng = np.random.default_rng(0)
    h, w = image_size
    records = []
    for i in range(count):
        path = os.path.join(directory, f"{i:06d}.jpg")
        cv2.imwrite(path, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        annotations = []
        for _ in range(COCO_COST_PEOPLE):
            bw, bh = float(rng.uniform(0.1, 0.3) * w), float(rng.uniform(0.25, 0.8) * h)
            x, y = float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh))
            keypoints = []
            for _k in range(17):
                keypoints += [x + float(rng.uniform(0, bw)), y + float(rng.uniform(0, bh)), 2]
            annotations.append(
                {
                    "bbox": [x, y, bw, bh],
                    "bbox_mode": BoxMode.XYWH_ABS,
                    "category_id": 0,
                    "iscrowd": 0,
                    "keypoints": keypoints,
                }
            )
        records.append(
            {"file_name": path, "height": h, "width": w, "image_id": i, "annotations": annotations}
        )
    return records


def _cost_setup_key(cfg, stage: str) -> str:
    """What decides a stage's arithmetic: configs with the same key cost the same."""
    keys = {"stage": stage, "MODEL": cfg.MODEL, "INPUT": cfg.INPUT}
    if stage == "annotate":
        keys.update({"TEST.AUG": cfg.TEST.AUG, "DD.TTA": cfg.DD.TTA})
    keys = json.loads(json.dumps(keys))
    keys["MODEL"].pop("WEIGHTS", None)
    return json.dumps(keys, sort_keys=True)


def _time_training(cfg, records, num_iters: int, warmup: int) -> dict:
    """CPU seconds per training image: forward, backward and SGD step, one image at a time, at the
    config's training sizes (its DatasetMapper)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = ""
    cfg.SOLVER.BASE_LR = 0.0  # the same arithmetic, and random weights cannot diverge while timed
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = build_optimizer(cfg, model)
    mapper = DatasetMapper(cfg, True)
    seconds, sizes = [], []
    with EventStorage(0):
        for i in range(warmup + num_iters):
            batch = [mapper(copy.deepcopy(records[i % len(records)]))]
            start = time.perf_counter()
            loss = sum(model(batch).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if i >= warmup:
                seconds.append(time.perf_counter() - start)
                sizes.append(list(batch[0]["image"].shape[1:]))
    return {
        "cpu_s_per_image": statistics.mean(seconds),
        "cpu_s_per_image_each": seconds,
        "input_sizes_hw": sizes,
        "torch_threads": torch.get_num_threads(),
    }


def _time_annotation(cfg, records, num_iters: int, warmup: int) -> dict:
    """CPU seconds per image of the annotation stage's inference (every view, through the keypoint
    ensembler, from the image at its own size) and of plain inference (INPUT.MIN_SIZE_TEST)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # exactly COCO_COST_DETECTIONS boxes per image
    cfg.TEST.DETECTIONS_PER_IMAGE = COCO_COST_DETECTIONS
    cfg.freeze()
    plain_mapper = DatasetMapper(cfg, False)

    def plain_input(record):
        return plain_mapper({k: record[k] for k in ("file_name", "height", "width", "image_id")})

    model = build_benchmark_model(cfg, plain_input(records[0])["image"])
    views_cfg = views_config(cfg)
    ensembler = RCNNWithTTA(views_cfg, model)
    read = ReadImageOrError(cfg.INPUT.FORMAT)
    plain, views, boxes = [], [], []
    with torch.no_grad():
        for i in range(warmup + num_iters):
            record = records[i % len(records)]
            inputs = [plain_input(record)]
            start = time.perf_counter()
            model(inputs)
            middle = time.perf_counter()
            out = ensembler([read(dict(record, dd_index=i))])
            end = time.perf_counter()
            if i >= warmup:
                plain.append(middle - start)
                views.append(end - middle)
                boxes.append(len(out[0]["instances"]))
    return {
        "cpu_s_per_image": statistics.mean(views),
        "cpu_s_per_image_each": views,
        "cpu_plain_s_per_image": statistics.mean(plain),
        "cpu_plain_s_per_image_each": plain,
        "views": num_views(views_cfg),
        "boxes_per_image": boxes,
        "torch_threads": torch.get_num_threads(),
    }


def coco_gpu_estimates(results: list) -> dict:
    """GPU-hour ESTIMATES from the CPU measurements, scaled by detectron2's published speeds.

    The CPU -> GPU factor of a kind of work is the CPU cost of the model zoo's own workload over
    its published V100 cost: training, the co-115 teacher's CPU s/image (the zoo's config) over
    ZOO_TRAIN_S_PER_ITER * ZOO_TRAIN_GPUS / ZOO_TRAIN_IMS_PER_BATCH GPU-s/image; inference, plain
    inference at INPUT.MIN_SIZE_TEST over ZOO_INFERENCE_S_PER_IMAGE. Then:

        training   GPU-h = MAX_ITER * IMS_PER_BATCH * cpu_s_per_image / factor_train / 3600
        annotation GPU-h = images * cpu_s_per_image (all views) / factor_inference / 3600
        hours on 8 GPUs  = GPU-h / 8    (data-parallel; the zoo's 8-GPU speed for training)

    Args:
        results: the per-config dicts of estimate_coco_costs (completed in place).

    Returns:
        the factors and the zoo's speeds they come from.
    """
    train = [r for r in results if r["stage"] == "train"]
    reference = [r for r in train if r["config"].startswith("teacher") and "co115" in r["config"]]
    reference = reference or train
    annotate = [r for r in results if r["stage"] == "annotate"]
    zoo_train_gpu_s_per_image = ZOO_TRAIN_S_PER_ITER * ZOO_TRAIN_GPUS / ZOO_TRAIN_IMS_PER_BATCH
    factors = {}
    if reference:
        factors["train"] = reference[0]["cpu_s_per_image"] / zoo_train_gpu_s_per_image
    if annotate:
        plain = statistics.mean(r["cpu_plain_s_per_image"] for r in annotate)
        factors["inference"] = plain / ZOO_INFERENCE_S_PER_IMAGE
    for r in results:
        factor = factors["train" if r["stage"] == "train" else "inference"]
        r["gpu_s_per_image"] = r["cpu_s_per_image"] / factor
        if r["stage"] == "train":
            images = r["max_iter"] * r["ims_per_batch"]
            r["work"] = f"{r['max_iter']} iter x {r['ims_per_batch']}"
            r["gpu_s_per_iter_8gpus"] = r["gpu_s_per_image"] * r["ims_per_batch"] / ESTIMATE_GPUS
        else:
            images = r["images"]
            r["work"] = f"{images} images x {r['views']} views"
        r["gpu_hours"] = images * r["gpu_s_per_image"] / 3600.0
        r["wall_hours_8gpus"] = r["gpu_hours"] / ESTIMATE_GPUS
    return {
        "cpu_to_gpu_factor": factors,
        "zoo_train_gpu_s_per_image": zoo_train_gpu_s_per_image,
        "zoo_inference_gpu_s_per_image": ZOO_INFERENCE_S_PER_IMAGE,
        "gpus": ESTIMATE_GPUS,
    }


def _print_table(results: list, reference: dict, load_before: float) -> None:
    table = []
    for r in results:
        if r["stage"] == "train":
            cpu = (
                f"{r['cpu_s_per_image']:.1f} s/image = {r['cpu_s_per_iter']:.0f} s/iter of "
                f"{r['ims_per_batch']}"
            )
            gpu = f"{r['gpu_s_per_iter_8gpus']:.3f} s/iter"
        else:
            cpu = (
                f"{r['cpu_s_per_image']:.1f} s/image ({r['views']} views; plain: "
                f"{r['cpu_plain_s_per_image']:.2f})"
            )
            gpu = f"{r['gpu_s_per_image']:.2f} GPU-s/image"
        timing = "measured" if r["measured_with"] == r["config"] else f"= {r['measured_with']}"
        table.append(
            [
                r["config"],
                cpu,
                timing,
                r["work"],
                gpu,
                f"{r['gpu_hours']:.0f}",
                f"{r['wall_hours_8gpus']:.1f}",
            ]
        )
    headers = [
        "config",
        "CPU cost",
        "timing",
        "work",
        "GPU estimate",
        "GPU-h",
        f"hours on {ESTIMATE_GPUS} GPUs",
    ]
    print(tabulate(table, headers=headers, tablefmt="pipe"))
    factors = ", ".join(f"{k} {v:.0f}x" for k, v in reference["cpu_to_gpu_factor"].items())
    print(
        f"ESTIMATES. CPU -> GPU factors: {factors} (this CPU's time for the detectron2 model "
        "zoo's keypoint_rcnn_R_50_FPN workload over its published V100 time: "
        f"{reference['zoo_train_gpu_s_per_image']:.3f} GPU-s per training image, "
        f"{ZOO_INFERENCE_S_PER_IMAGE} s per plain inference)."
    )
    print(
        f"Load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads."
    )


def estimate_coco_costs(args) -> dict:
    """CPU cost of each COCO config's stage and the GPU hours it gives (see coco_gpu_estimates).

    Args:
        args: --config-file (without one, every config of configs/COCO-Keypoints is measured)
            and the KEY VALUE pairs, --num-iters (timed images per measurement), --warmup
            (untimed ones before), --image-size (of the random COCO-like images).

    Returns:
        per config: its stage, CPU seconds measured (or the config measured with the same
        model, sizes and views), the estimate; and the factors used.
    """
    if args.config_file:
        paths = [args.config_file]
    else:
        paths = [str(p) for p in sorted(COCO_CONFIGS.glob("*.yaml"), key=_stage_order)]
    measured, results = {}, []
    load_before = os.getloadavg()[0]  # other work on the machine slows every measurement alike
    with tempfile.TemporaryDirectory() as tmp:
        records = _coco_cost_records(tmp, max(args.num_iters + args.warmup, 1), args.image_size)
        for path in paths:
            cfg = load_config(path, args.opts)
            name = os.path.basename(path)
            stage = "annotate" if name.startswith("annotate") else "train"
            key = _cost_setup_key(cfg, stage)
            if key not in measured:
                logger.info(
                    "Measuring %s (%s stage), %d timed images ...", name, stage, args.num_iters
                )
                time_stage = _time_annotation if stage == "annotate" else _time_training
                timing = time_stage(cfg, records, args.num_iters, args.warmup)
                measured[key] = dict(timing, measured_with=name)
            r = dict(measured[key], config=name, stage=stage)
            if stage == "train":
                r.update(
                    max_iter=cfg.SOLVER.MAX_ITER,
                    ims_per_batch=cfg.SOLVER.IMS_PER_BATCH,
                    cpu_s_per_iter=r["cpu_s_per_image"] * cfg.SOLVER.IMS_PER_BATCH,
                )
            else:
                dataset = cfg.DD.ANNOTATE.DATASETS[0]
                r.update(dataset=dataset, images=UNLABELED_IMAGES.get(dataset, 0))
            results.append(r)
    reference = coco_gpu_estimates(results)
    _print_table(results, reference, load_before)
    return {
        "task": "coco_costs",
        "num_iters": args.num_iters,
        "warmup": args.warmup,
        "image_size": list(args.image_size),
        "detections_per_image": COCO_COST_DETECTIONS,
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "cpus": os.cpu_count(),
        "reference": reference,
        "configs": results,
    }


def main(args):
    setup_logger(name="detectron2")
    setup_logger(name="dd_detectron")
    result = estimate_coco_costs(args)
    if args.output:
        save_result(result, args.output)
    return result


def argument_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config-file",
        default="",
        metavar="FILE",
        help="one config to measure (default: every config of COCO-Keypoints)",
    )
    parser.add_argument("--output", default="", help="write the results to this JSON file")
    parser.add_argument("--num-iters", type=int, default=20, help="timed images per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed images before them")
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        default=[480, 640],
        metavar=("H", "W"),
        help="size of the random COCO-like images",
    )
    parser.add_argument(
        "opts",
        default=None,
        nargs=argparse.REMAINDER,
        help="config KEY VALUE pairs, applied to every config",
    )
    return parser


if __name__ == "__main__":
    main(argument_parser().parse_args())
