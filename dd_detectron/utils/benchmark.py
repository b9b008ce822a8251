"""Measuring helpers for the benchmarks (tools/benchmark.py, dev/estimate_coco_costs.py): peak
memory of a block of code, and a model to time when no trained weights are at hand."""

import ctypes
import json
import logging
import os
import threading

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from ..modeling.heads import Heads
from .file_io import write_atomic

__all__ = ["PeakMemory", "tame_random_weights", "build_benchmark_model", "save_result"]

logger = logging.getLogger(__name__)


class PeakMemory:
    """Context manager: the peak memory above the level at entry, in MiB (``peak_mib``).

    On GPU, the CUDA allocator's peak. On CPU, the process's resident set sampled every 5 ms by
    a thread; freed heap is handed back to the OS at entry (glibc's malloc_trim), so that an
    earlier measurement's leftovers do not hide this one's growth. Entered several times, it
    keeps the largest peak.
    """

    def __init__(self, device: str):
        """
        Args:
            device: the model's device (MODEL.DEVICE); "cuda..." measures the CUDA allocator.
        """
        self.cuda = device.startswith("cuda")
        self.peak_mib = 0.0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, self._rss())

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
        self._thread = threading.Thread(target=self._sample, daemon=True)
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
        self.peak_mib = max(self.peak_mib, (peak - self._base) / 2**20)


def _head_logits(model, image: torch.Tensor) -> None:
    """Boxes of one image, and the mask and keypoint heads' logits on them, without turning
    them into masks or keypoints (random keypoint logits may not decode yet)."""
    roi_heads = model.roi_heads
    images = model.preprocess_image([{"image": image}])
    features = model.backbone(images.tensor)
    proposals, _ = model.proposal_generator(images, features)
    heads = Heads.of_model(model).roi_head_names
    for head in heads:
        setattr(roi_heads, f"{head}_on", False)
    try:
        instances, _ = roi_heads(images, features, proposals)
    finally:  # the model must come out with its heads on, whatever happened
        for head in heads:
            setattr(roi_heads, f"{head}_on", True)
    for head in heads:
        pooler = getattr(roi_heads, f"{head}_pooler")
        in_features = getattr(roi_heads, f"{head}_in_features")
        pooled = pooler([features[f] for f in in_features], [x.pred_boxes for x in instances])
        getattr(roi_heads, f"{head}_head").layers(pooled)


def tame_random_weights(model, image: torch.Tensor) -> None:
    """Random weights without their saturation, for timing an R-CNN (boxes, masks, keypoints).

    Rescales the output layers of the RPN, the box head, the mask head and the keypoint head to
    a fixed spread on ``image`` (logits 1, box deltas 0.1), one head after the other. Saturated
    scores (exactly 0 or 1) would drop detections below any score threshold, wild box deltas
    collapse every box into one after clipping and NMS, and huge heatmap logits overflow the
    keypoint decoding. The amount of computation is unchanged.

    Args:
        model: a GeneralizedRCNN with StandardROIHeads in eval mode; changed in place.
        image: a (C, H, W) uint8 tensor in the model's input format.
    """
    rpn_head, roi_heads = model.proposal_generator.rpn_head, model.roi_heads
    stages = [
        {rpn_head.objectness_logits: 1.0, rpn_head.anchor_deltas: 0.1},
        {roi_heads.box_predictor.cls_score: 1.0, roi_heads.box_predictor.bbox_pred: 0.1},
    ]
    mask_head = getattr(roi_heads, "mask_head", None)
    if getattr(roi_heads, "mask_on", False) and hasattr(mask_head, "predictor"):
        stages.append({mask_head.predictor: 1.0})  # MaskRCNNConvUpsampleHead
    keypoint_head = getattr(roi_heads, "keypoint_head", None)
    if getattr(roi_heads, "keypoint_on", False) and hasattr(keypoint_head, "score_lowres"):
        stages.append({keypoint_head.score_lowres: 1.0})  # KRCNNConvDeconvUpsampleHead
    with torch.no_grad():
        for stage in stages:
            spreads = {}

            def record(module, inputs, output):
                spreads.setdefault(module, float(output.std()))  # returns None: output unchanged

            hooks = [layer.register_forward_hook(record) for layer in stage]
            _head_logits(model, image)
            for h in hooks:
                h.remove()
            for layer, target in stage.items():
                if spreads.get(layer, 0.0) > 0:
                    layer.weight.mul_(target / spreads[layer])
                    if layer.bias is not None:
                        layer.bias.mul_(target / spreads[layer])


def build_benchmark_model(cfg, image: torch.Tensor):
    """The config's model in eval mode, to time: with MODEL.WEIGHTS loaded, or with random
    weights (seed 0) tamed on ``image`` (see :func:`tame_random_weights`) when it is empty.

    Args:
        cfg: an R-CNN config (boxes, masks, keypoints).
        image: a (C, H, W) uint8 tensor in the model's input format.

    Returns:
        the model.
    """
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        logger.info("MODEL.WEIGHTS is empty: random weights (seeded, with tamed output layers).")
        tame_random_weights(model, image)
    return model


def save_result(result: dict, path: str) -> None:
    """Write a benchmark's result as JSON to ``path`` (atomically; its folder made if needed)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomic(path, json.dumps(result, indent=2))
    logger.info("Results written to %s", path)
