#!/usr/bin/env python
"""
Benchmarks of dd-detectron, one task per run, in the shape of detectron2's tools/benchmark.py.

    python tools/benchmark.py --task train_loader \\
        --config-file configs/Synthetic/student_nR18-FPN_4k_labeled-generated.yaml \\
        --output output/benchmark_train_loader.json DATALOADER.NUM_WORKERS 0

Tasks (the TASKS table at the end):

- ``train_loader``: batches/s of the student's ratio loader (as DDTrainer builds it, with its
  per-source counting) against detectron2's ``build_detection_train_loader`` over the union of
  the same labeled + generated dataset dicts, with the same DatasetMapper instance, batch size,
  aspect-ratio grouping and workers. Both run in one process, in alternating rounds (the order
  flips every round) so that drifts of the machine's load hit both alike; the overhead is the
  median of the per-round ratios. With DATALOADER.NUM_WORKERS > 0, one loader's workers keep
  prefetching while the other is timed: use 0 to compare the loaders' own cost.

- ``tta``: images/s and peak memory of the keypoint ensembler (one backbone pass per view)
  against (b) the same views run the way detectron2's GeneralizedRCNNWithTTA runs a second head
  (two backbone passes per view, heatmaps decoded per view) and (c) N plain single-view
  inferences, on random images of --image-size; alternating rounds as above. Random weights
  (empty MODEL.WEIGHTS) are fine with a fixed number of detections per image:

      python tools/benchmark.py --task tta --config-file configs/Base-DD-Keypoint-RCNN-FPN.yaml \\
          --rounds 2 --num-iters 1 --warmup 0 MODEL.DEVICE cpu MODEL.RESNETS.DEPTH 50 \\
          MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.0 TEST.DETECTIONS_PER_IMAGE 20

- ``annotate``: images/s of the whole annotation stage (tools/annotate_net.py's work: reading,
  views, labels, JSON) on the first --num-iters images of DD.ANNOTATE.DATASETS.

- ``coco_costs``: what each stage of the COCO configs costs on this machine, and the GPU hours
  it would take on 8 GPUs: ESTIMATES, scaled by detectron2's published speeds of the same model
  (see coco_gpu_estimates). Without --config-file: every config of configs/COCO-Keypoints.
  Training configs: --num-iters timed iterations of ONE image (after --warmup): forward,
  backward and SGD step at the config's training sizes, on random images of --image-size with 3
  labeled people. Annotate configs: --num-iters images through the keypoint ensembler over the
  config's views, and plain inference (the reference). Random weights (the COCO_COST_DETECTIONS
  boxes per image fixed); configs with the same model, sizes and views are measured once:

      python tools/benchmark.py --task coco_costs --num-iters 2 --warmup 1 --output costs.json

Results are printed as a table and, with --output, written as JSON.
"""
import argparse
import json
import logging
import os
import statistics
import time

from tabulate import tabulate

from detectron2.config import get_cfg
from detectron2.data import DatasetMapper, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.utils.events import EventStorage
from detectron2.utils.logger import setup_logger

from dd_detectron import add_dd_config
from dd_detectron.data import build_ratio_train_loader, register_path_datasets
from dd_detectron.engine import SourceCountingLoader

# --task tta / annotate
import ctypes
import tempfile
import threading

import numpy as np
import torch
from fvcore.transforms import HFlipTransform
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data.detection_utils import read_image
from detectron2.modeling import GeneralizedRCNNWithTTA, build_model
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.modeling.roi_heads.keypoint_head import keypoint_rcnn_inference
from detectron2.structures import Boxes

from dd_detectron.annotation import annotate, views_config
from dd_detectron.annotation.inputs import images_to_label
from dd_detectron.modeling import KeypointRCNNWithTTA
from dd_detectron.modeling.test_time_augmentation import unflip_keypoint_logits

logger = logging.getLogger("dd_detectron.benchmark")


def setup(args):
    """Build the frozen config from --config-file and trailing KEY VALUE pairs."""
    cfg = get_cfg()
    add_dd_config(cfg)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    setup_logger(name="detectron2")
    setup_logger(name="dd_detectron")
    register_path_datasets(cfg)
    return cfg


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
        raise ValueError("--task train_loader needs a student config: DD.STUDENT.GENERATED_DATASETS is empty")
    min_keypoints = cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
    filters = dict(filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS, min_keypoints=min_keypoints)
    labeled = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, **filters)
    generated = get_detection_dataset_dicts(cfg.DD.STUDENT.GENERATED_DATASETS, **filters)
    mapper = DatasetMapper(cfg, True)
    loaders = {
        "ratio (dd_detectron)": SourceCountingLoader(
            build_ratio_train_loader(cfg, mapper=mapper, labeled_dataset=labeled, generated_dataset=generated)
        ),
        "build_detection_train_loader": build_detection_train_loader(cfg, mapper=mapper, dataset=labeled + generated),
    }
    names = list(loaders)
    seconds = {name: [] for name in names}
    with EventStorage():  # the ratio loader logs its counts, as in training
        iterators = {name: iter(loader) for name, loader in loaders.items()}
        for name in names:
            _time_batches(iterators[name], args.warmup)
        for round_index in range(args.rounds):
            for name in names if round_index % 2 == 0 else reversed(names):
                seconds[name].append(_time_batches(iterators[name], args.num_iters))
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
        # Median over rounds of 1 - ratio_rate / baseline_rate: positive = the ratio loader is slower.
        "overhead_percent": statistics.median(per_round),
        "overhead_percent_per_round": per_round,
    }
    table = [[name, f"{r['median']:.3f}", f"{r['pooled']:.3f}"] for name, r in result["batches_per_s"].items()]
    table.append(["overhead of ratio loader", f"{result['overhead_percent']:+.2f}% (median of rounds)", ""])
    print(tabulate(table, headers=["loader", "batches/s (median)", "batches/s (pooled)"], tablefmt="pipe"))
    return result


# ------------------------------------------------------------------------------------------
# Keypoint multi-view inference (--task tta) and the annotation stage (--task annotate)
# ------------------------------------------------------------------------------------------
class _PeakMemory:
    """Peak memory above the level at entry: CUDA allocator peak on GPU; on CPU, the process's
    resident set sampled every 5 ms (freed heap is handed back to the OS at entry, so that an
    earlier measurement's leftovers do not hide this one's growth)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.peak_mib = 0.0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc: the measurement is only less exact
            pass
        self._base = self._peak = self._rss()
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(0.005):
                self._peak = max(self._peak, self._rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, self._rss())
        self.peak_mib = max(self.peak_mib, (peak - self._base) / 2 ** 20)


def _tame_random_weights(model, image) -> None:
    """Random weights without their saturation: rescale the output layers of the RPN, the box
    head and the keypoint head to a fixed spread on an image (logits 1, box deltas 0.1), one
    head after the other. Saturated scores (exact 0 or 1) would drop detections below any score
    threshold, wild box deltas collapse every box into one after clipping and NMS, and huge
    heatmap logits overflow the keypoint decoding. The amount of computation is unchanged."""
    rpn_head, roi_heads = model.proposal_generator.rpn_head, model.roi_heads

    def keypoint_logits():
        # Boxes and heatmap logits without decoding: random logits may not decode yet.
        images = model.preprocess_image([{"image": image}])
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features)
        roi_heads.keypoint_on = False
        instances, _ = roi_heads(images, features, proposals)
        roi_heads.keypoint_on = True
        pooled = roi_heads.keypoint_pooler(
            [features[f] for f in roi_heads.keypoint_in_features], [x.pred_boxes for x in instances]
        )
        roi_heads.keypoint_head.layers(pooled)

    stages = [
        {rpn_head.objectness_logits: 1.0, rpn_head.anchor_deltas: 0.1},
        {roi_heads.box_predictor.cls_score: 1.0, roi_heads.box_predictor.bbox_pred: 0.1},
    ]
    if hasattr(roi_heads.keypoint_head, "score_lowres"):  # KRCNNConvDeconvUpsampleHead
        stages.append({roi_heads.keypoint_head.score_lowres: 1.0})
    with torch.no_grad():
        for stage in stages:
            spreads = {}

            def record(module, inputs, output):
                spreads.setdefault(module, float(output.std()))  # returns None: output unchanged

            hooks = [layer.register_forward_hook(record) for layer in stage]
            keypoint_logits()
            for h in hooks:
                h.remove()
            for layer, target in stage.items():
                if spreads.get(layer, 0.0) > 0:
                    layer.weight.mul_(target / spreads[layer])
                    if layer.bias is not None:
                        layer.bias.mul_(target / spreads[layer])


def _benchmark_model(cfg, image):
    """The config's model: MODEL.WEIGHTS, or random (seeded, tamed) weights when it is empty."""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        logger.info("MODEL.WEIGHTS is empty: random weights (seeded, with tamed output layers).")
        _tame_random_weights(model, image)
    return model


class _TwoPassKeypointTTA(KeypointRCNNWithTTA):
    """The same views and keypoint reduction, run the way detectron2's GeneralizedRCNNWithTTA
    runs a second head (its mask branch): the whole model once per view for boxes, then once
    more per view, backbone included, on the merged boxes, heatmaps decoded in every view."""

    def _inference_one_image(self, input):
        orig_shape = (input["height"], input["width"])
        augmented_inputs, tfms = self._get_augmented_inputs(input)
        with self._turn_off_roi_heads(["mask_on", "keypoint_on"]):
            all_boxes, all_scores, all_classes = self._get_augmented_boxes(augmented_inputs, tfms)
        merged = GeneralizedRCNNWithTTA._merge_detections(self, all_boxes, all_scores, all_classes, orig_shape)
        augmented_instances = self._rescale_detected_boxes(augmented_inputs, merged, tfms)
        outputs = self._batch_inference(augmented_inputs, augmented_instances)
        del augmented_inputs, augmented_instances
        heatmaps = [
            unflip_keypoint_logits(o.pred_keypoint_heatmaps, self.keypoint_flip_indices)
            if any(isinstance(t, HFlipTransform) for t in tfm.transforms) else o.pred_keypoint_heatmaps
            for o, tfm in zip(outputs, tfms)
        ]
        keypoint_rcnn_inference(torch.stack(heatmaps).mean(dim=0), [merged])
        return {"instances": detector_postprocess(merged, *orig_shape)}


def _single_views(ensembler):
    """N plain inferences: the model on each of the ensembler's views, one at a time."""

    def run(inputs):
        outputs = []
        for x in inputs:
            views, _ = ensembler._get_augmented_inputs(x)
            per_view = [ensembler.model([v])[0] for v in views]
            outputs.append(per_view[-1])  # one of them, for the detections count
        return outputs

    return run


def _backbones_only(ensembler):
    """The ensembler's backbone passes alone (every view, its view batches), to measure the share
    of its time that a second backbone pass per view adds to the two-pass way."""

    def run(inputs):
        for x in inputs:
            views, _ = ensembler._get_augmented_inputs(x)
            for batch in ensembler._view_batches(views):
                ensembler._backbone([views[i] for i in batch])
        return [{"instances": []} for _ in inputs]

    return run


def benchmark_tta(cfg, args) -> dict:
    """Images/s and peak memory of the keypoint ensembler against the two-pass way and N
    single-view inferences, on the config's TEST.AUG views.

    Args:
        cfg: a Keypoint R-CNN config; TEST.AUG holds the views. With empty MODEL.WEIGHTS the
            weights are random: hold the detections per image fixed with
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
    model = _benchmark_model(cfg, images[0])
    ensembler = KeypointRCNNWithTTA(cfg, model)
    approaches = {
        "ensembler (dd_detectron)": ensembler,
        # detectron2's GeneralizedRCNNWithTTA batches 3 views of any sizes.
        "two backbone passes per view (detectron2 TTA style)": _TwoPassKeypointTTA(cfg, model, batch_size=3),
        "N single-view inferences": _single_views(ensembler),
        "backbone passes alone (part of the ensembler)": _backbones_only(ensembler),
    }
    names = list(approaches)
    inputs = [[{"image": im, "height": height, "width": width}] for im in images]
    seconds = {name: [] for name in names}
    detections = {name: [] for name in names}
    memory = {name: _PeakMemory(cfg.MODEL.DEVICE) for name in names}
    with torch.no_grad():
        for name in names:
            for x in inputs[: args.warmup]:
                approaches[name](x)
        for round_index in range(args.rounds):
            for name in names if round_index % 2 == 0 else reversed(names):
                with memory[name]:
                    start = time.perf_counter()
                    for x in inputs[: args.num_iters]:
                        detections[name].append(len(approaches[name](x)[0]["instances"]))
                    if cfg.MODEL.DEVICE.startswith("cuda"):
                        torch.cuda.synchronize()
                    seconds[name].append(time.perf_counter() - start)
    rates = {name: [args.num_iters / s for s in seconds[name]] for name in names}
    pooled = {name: args.num_iters * args.rounds / sum(seconds[name]) for name in names}
    ens, two_pass, single, backbone = names
    num_views = len(cfg.TEST.AUG.MIN_SIZES) * (2 if cfg.TEST.AUG.FLIP else 1)
    result = {
        "task": "tta",
        "device": cfg.MODEL.DEVICE,
        "ensembler_view_batch_size": ensembler.batch_size,
        "torch_threads": torch.get_num_threads(),
        "weights": cfg.MODEL.WEIGHTS or "random",
        "views": num_views,
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
        # > 1: the ensembler is faster than the two-pass way. The median over rounds of the
        # per-round ratio: each round times all approaches back to back, so a change of the
        # machine's load between rounds cancels out.
        "speedup_over_two_pass": statistics.median(e / t for e, t in zip(rates[ens], rates[two_pass])),
        # < 1: the ensembler takes less time than the N single-view inferences (same median).
        "time_relative_to_single_views": statistics.median(s / e for e, s in zip(rates[ens], rates[single])),
        "speedup_over_two_pass_pooled": pooled[ens] / pooled[two_pass],
        "time_relative_to_single_views_pooled": pooled[single] / pooled[ens],
        # The two-pass way is the ensembler plus one more backbone pass per view, so its time is
        # at most (1 + this share) times the ensembler's: the largest speedup sharing can give.
        "backbone_share_of_ensembler": statistics.median(e / b for e, b in zip(rates[ens], rates[backbone])),
    }
    result["speedup_over_two_pass_bound"] = 1.0 + result["backbone_share_of_ensembler"]
    table = [
        [name, f"{r['images_per_s_median']:.4f}", f"{r['images_per_s_pooled']:.4f}", f"{r['seconds_per_image']:.2f}",
         f"{r['peak_memory_mib']:.0f}", f"{r['detections_per_image']:.1f}"]
        for name, r in result["approaches"].items()
    ]
    table.append(["ensembler speedup over two-pass", f"{result['speedup_over_two_pass']:.3f}x (median of rounds)",
                  f"{result['speedup_over_two_pass_pooled']:.3f}x", "", "", ""])
    table.append(["ensembler time / N single views", f"{result['time_relative_to_single_views']:.3f} (median of rounds)",
                  f"{result['time_relative_to_single_views_pooled']:.3f}", "", "", ""])
    table.append(["backbone share of the ensembler's time", f"{result['backbone_share_of_ensembler']:.3f} "
                  f"(speedup bound {result['speedup_over_two_pass_bound']:.3f}x)", "", "", "", ""])
    print(tabulate(table, headers=["approach", "images/s (median)", "images/s (pooled)", "s/image",
                                   "peak MiB", "dets/image"], tablefmt="pipe"))
    return result


def benchmark_annotate(cfg, args) -> dict:
    """Images/s of the whole annotation stage (reading, views, labels, JSON) on the first
    --num-iters images of DD.ANNOTATE.DATASETS, in a temporary output directory.

    Args:
        cfg: an annotation config (views: TEST.AUG when TEST.AUG.ENABLED). With empty
            MODEL.WEIGHTS the weights are random (tamed), so the labels are meaningless.
        args: --num-iters (images), --warmup (images annotated before, untimed).

    Returns:
        images/s, seconds, peak memory above the loaded model (MiB), labels written.
    """
    images = images_to_label(cfg.DD.ANNOTATE.DATASETS)
    first = read_image(images[0]["file_name"], format=cfg.INPUT.FORMAT)
    model = _benchmark_model(cfg, torch.as_tensor(np.ascontiguousarray(first.transpose(2, 0, 1))))
    with tempfile.TemporaryDirectory() as tmp:
        if args.warmup:
            annotate(cfg, model, os.path.join(tmp, "warmup"), images=images[: args.warmup])
        timed = images[args.warmup: args.warmup + args.num_iters]
        memory = _PeakMemory(cfg.MODEL.DEVICE)
        with memory:
            start = time.perf_counter()
            summary = annotate(cfg, model, os.path.join(tmp, "timed"), images=timed)["annotation"]
            seconds = time.perf_counter() - start
    num_views = len(views_config(cfg).TEST.AUG.MIN_SIZES) * (2 if views_config(cfg).TEST.AUG.FLIP else 1)
    result = {
        "task": "annotate",
        "device": cfg.MODEL.DEVICE,
        "torch_threads": torch.get_num_threads(),
        "datasets": list(cfg.DD.ANNOTATE.DATASETS),
        "weights": cfg.MODEL.WEIGHTS or "random",
        "views": num_views,
        "images": len(timed),
        "seconds": seconds,
        "images_per_s": len(timed) / seconds,
        "peak_memory_mib": memory.peak_mib,
        "annotations": summary["annotations"],
    }
    print(tabulate([[len(timed), num_views, f"{seconds:.1f}", f"{result['images_per_s']:.3f}", f"{memory.peak_mib:.0f}",
                     summary["annotations"]]],
                   headers=["images", "views", "seconds", "images/s", "peak MiB", "annotations"], tablefmt="pipe"))
    return result


# ------------------------------------------------------------------------------------------
# --task coco_costs
# ------------------------------------------------------------------------------------------
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
UNLABELED_IMAGES = {"coco_2014_train_unlabeled": 82783, "coco_2017_unlabeled": 123403, "sports1m_frames": 180000}


def _coco_cost_records(directory: str, count: int, image_size) -> list:
    """Random JPEGs of image_size (H, W) with COCO_COST_PEOPLE keypoint-labeled people each."""
    import cv2
    from detectron2.structures import BoxMode

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
            annotations.append({"bbox": [x, y, bw, bh], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0,
                                "iscrowd": 0, "keypoints": keypoints})
        records.append({"file_name": path, "height": h, "width": w, "image_id": i, "annotations": annotations})
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
    import copy

    from detectron2.solver import build_optimizer

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
    return {"cpu_s_per_image": statistics.mean(seconds), "cpu_s_per_image_each": seconds,
            "input_sizes_hw": sizes, "torch_threads": torch.get_num_threads()}


def _time_annotation(cfg, records, num_iters: int, warmup: int) -> dict:
    """CPU seconds per image of the annotation stage's inference (every view, through the keypoint
    ensembler, from the image at its own size) and of plain inference (INPUT.MIN_SIZE_TEST)."""
    from dd_detectron.annotation.inputs import ReadImageOrError

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # exactly COCO_COST_DETECTIONS boxes per image
    cfg.TEST.DETECTIONS_PER_IMAGE = COCO_COST_DETECTIONS
    cfg.freeze()
    plain_mapper = DatasetMapper(cfg, False)
    plain_input = lambda record: plain_mapper({k: record[k] for k in ("file_name", "height", "width", "image_id")})
    model = _benchmark_model(cfg, plain_input(records[0])["image"])
    views_cfg = views_config(cfg)
    ensembler = KeypointRCNNWithTTA(views_cfg, model)
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
    aug = views_cfg.TEST.AUG
    return {"cpu_s_per_image": statistics.mean(views), "cpu_s_per_image_each": views,
            "cpu_plain_s_per_image": statistics.mean(plain), "cpu_plain_s_per_image_each": plain,
            "views": len(aug.MIN_SIZES) * (2 if aug.FLIP else 1), "boxes_per_image": boxes,
            "torch_threads": torch.get_num_threads()}


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
        results: the per-config dicts of benchmark_coco_costs (completed in place).

    Returns:
        the factors and the zoo's speeds they come from.
    """
    train = [r for r in results if r["stage"] == "train"]
    reference = [r for r in train if r["config"].startswith("teacher") and "co115" in r["config"]] or train
    annotate = [r for r in results if r["stage"] == "annotate"]
    zoo_train_gpu_s_per_image = ZOO_TRAIN_S_PER_ITER * ZOO_TRAIN_GPUS / ZOO_TRAIN_IMS_PER_BATCH
    factors = {}
    if reference:
        factors["train"] = reference[0]["cpu_s_per_image"] / zoo_train_gpu_s_per_image
    if annotate:
        factors["inference"] = statistics.mean(r["cpu_plain_s_per_image"] for r in annotate) / ZOO_INFERENCE_S_PER_IMAGE
    for r in results:
        r["gpu_s_per_image"] = r["cpu_s_per_image"] / factors["train" if r["stage"] == "train" else "inference"]
        if r["stage"] == "train":
            images = r["max_iter"] * r["ims_per_batch"]
            r["work"] = f"{r['max_iter']} iter x {r['ims_per_batch']}"
            r["gpu_s_per_iter_8gpus"] = r["gpu_s_per_image"] * r["ims_per_batch"] / ESTIMATE_GPUS
        else:
            images = r["images"]
            r["work"] = f"{images} images x {r['views']} views"
        r["gpu_hours"] = images * r["gpu_s_per_image"] / 3600.0
        r["wall_hours_8gpus"] = r["gpu_hours"] / ESTIMATE_GPUS
    return {"cpu_to_gpu_factor": factors, "zoo_train_gpu_s_per_image": zoo_train_gpu_s_per_image,
            "zoo_inference_gpu_s_per_image": ZOO_INFERENCE_S_PER_IMAGE, "gpus": ESTIMATE_GPUS}


def benchmark_coco_costs(cfg, args) -> dict:
    """CPU cost of each COCO config's stage and the GPU hours it gives (see coco_gpu_estimates).

    Args:
        cfg: the config of --config-file; without one, every config of configs/COCO-Keypoints
            is measured (with the command line's KEY VALUE pairs).
        args: --num-iters (timed images per measurement), --warmup (untimed ones before),
            --image-size (of the random COCO-like images).

    Returns:
        per config: its stage, CPU seconds measured (or the config measured with the same
        model, sizes and views), the estimate; and the factors used.
    """
    from pathlib import Path

    if args.config_file:
        configs = [(args.config_file, cfg)]
    else:
        configs = []
        # In pipeline order: teachers, annotation, students.
        order = lambda p: (["teacher", "annotate", "student"].index(p.name.split("_")[0]) if p.name.split("_")[0]
                           in ("teacher", "annotate", "student") else 3, p.name)
        for path in sorted((Path(__file__).resolve().parent.parent / "configs" / "COCO-Keypoints").glob("*.yaml"), key=order):
            c = get_cfg()
            add_dd_config(c)
            c.merge_from_file(str(path))
            c.merge_from_list(args.opts)
            configs.append((str(path), c))
    measured, results = {}, []
    load_before = os.getloadavg()[0]  # other work on the machine slows every measurement alike
    with tempfile.TemporaryDirectory() as tmp:
        records = _coco_cost_records(tmp, max(args.num_iters + args.warmup, 1), args.image_size)
        for path, c in configs:
            name = os.path.basename(path)
            stage = "annotate" if name.startswith("annotate") else "train"
            key = _cost_setup_key(c, stage)
            if key not in measured:
                logger.info("Measuring %s (%s stage), %d timed images ...", name, stage, args.num_iters)
                timing = (_time_annotation if stage == "annotate" else _time_training)(c, records, args.num_iters, args.warmup)
                measured[key] = dict(timing, measured_with=name)
            r = dict(measured[key], config=name, stage=stage)
            if stage == "train":
                r.update(max_iter=c.SOLVER.MAX_ITER, ims_per_batch=c.SOLVER.IMS_PER_BATCH,
                         cpu_s_per_iter=r["cpu_s_per_image"] * c.SOLVER.IMS_PER_BATCH)
            else:
                dataset = c.DD.ANNOTATE.DATASETS[0]
                r.update(dataset=dataset, images=UNLABELED_IMAGES.get(dataset, 0))
            results.append(r)
    reference = coco_gpu_estimates(results)
    table = []
    for r in results:
        if r["stage"] == "train":
            cpu = f"{r['cpu_s_per_image']:.1f} s/image = {r['cpu_s_per_iter']:.0f} s/iter of {r['ims_per_batch']}"
            gpu = f"{r['gpu_s_per_iter_8gpus']:.3f} s/iter"
        else:
            cpu = f"{r['cpu_s_per_image']:.1f} s/image ({r['views']} views; plain: {r['cpu_plain_s_per_image']:.2f})"
            gpu = f"{r['gpu_s_per_image']:.2f} GPU-s/image"
        timing = "measured" if r["measured_with"] == r["config"] else f"= {r['measured_with']}"
        table.append([r["config"], cpu, timing, r["work"], gpu, f"{r['gpu_hours']:.0f}", f"{r['wall_hours_8gpus']:.1f}"])
    print(tabulate(table, headers=["config", "CPU cost", "timing", "work", "GPU estimate", "GPU-h",
                                   f"hours on {ESTIMATE_GPUS} GPUs"], tablefmt="pipe"))
    print("ESTIMATES. CPU -> GPU factors: " + ", ".join(f"{k} {v:.0f}x" for k, v in reference["cpu_to_gpu_factor"].items())
          + f" (this CPU's time for the detectron2 model zoo's keypoint_rcnn_R_50_FPN workload over its published "
          f"V100 time: {reference['zoo_train_gpu_s_per_image']:.3f} GPU-s per training image, "
          f"{ZOO_INFERENCE_S_PER_IMAGE} s per plain inference).")
    print(f"Load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch threads.")
    return {"task": "coco_costs", "num_iters": args.num_iters, "warmup": args.warmup,
            "image_size": list(args.image_size), "detections_per_image": COCO_COST_DETECTIONS,
            "load_average_1min": [load_before, os.getloadavg()[0]], "cpus": os.cpu_count(),
            "reference": reference, "configs": results}


# Task name -> function(cfg, args) returning a JSON-serialisable dict of results.
TASKS = {
    "train_loader": benchmark_train_loader,
    "tta": benchmark_tta,
    "annotate": benchmark_annotate,
    "coco_costs": benchmark_coco_costs,
}


def main(args):
    cfg = setup(args)
    result = TASKS[args.task](cfg, args)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
        logger.info("Results written to %s", args.output)
    return result


def argument_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=sorted(TASKS), help="what to benchmark")
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to config file")
    parser.add_argument("--output", default="", help="write the results to this JSON file")
    parser.add_argument("--rounds", type=int, default=10, help="alternating measurement rounds")
    parser.add_argument("--num-iters", type=int, default=20, help="items timed per round (train_loader: batches)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed items before the first round")
    parser.add_argument("--image-size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"),
                        help="tta: size of the random test images (views are resized from it)")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    return parser


if __name__ == "__main__":
    main(argument_parser().parse_args())
