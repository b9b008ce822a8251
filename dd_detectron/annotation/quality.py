"""
How good generated labels are: COCO AP of the labels, read as detections (score = the detection
score kept in the file, every keypoint at its predicted position, the mask as written), against
the true labels of the same images (e.g. ``synthetic_kp_unlabeled_truth``): box AP, and mask
(segm) and keypoint AP as the teacher's heads allow.
"""

import contextlib
import io
import json
import logging
from typing import Optional, Sequence, Tuple

import numpy as np
from detectron2.data import MetadataCatalog
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..data.datasets import ensure_dataset_ready

__all__ = ["label_quality"]

logger = logging.getLogger(__name__)

# COCOeval's summary, in order: the first 5 entries of `stats` for keypoints, 6 for boxes and
# masks. The order of the report's entries.
_KEYS = {
    "keypoints": ("AP", "AP50", "AP75", "APm", "APl"),
    "bbox": ("AP", "AP50", "AP75", "APs", "APm", "APl"),
    "segm": ("AP", "AP50", "AP75", "APs", "APm", "APl"),
}

# The label fields each evaluation reads. The keypoint evaluation also gets the box: with a bbox,
# pycocotools takes a detection's area (OKS scale) from it, not from the keypoints' extent. The
# mask evaluation gets no box: its area is then the mask's.
_FIELDS = {
    "keypoints": ("image_id", "category_id", "bbox", "keypoints", "score"),
    "bbox": ("image_id", "category_id", "bbox", "score"),
    "segm": ("image_id", "category_id", "segmentation", "score"),
}


def _check_truth_has_masks(truth: COCO, truth_json: str) -> None:
    """pycocotools fails deep inside on a true label without a mask; say which file instead."""
    if not all(ann.get("segmentation") for ann in truth.dataset.get("annotations", [])):
        raise ValueError(
            f"Label quality: mask (segm) AP needs a 'segmentation' on every annotation of the "
            f"true labels {truth_json}, and some have none."
        )


def label_quality(
    json_file: str,
    truth_dataset: str,
    kpt_oks_sigmas: Optional[Sequence[float]] = None,
    iou_types: Tuple[str, ...] = ("bbox", "keypoints"),
) -> dict:
    """Box, mask and keypoint AP (in %) of a generated label file against a dataset's true labels.

    Args:
        json_file: the annotation stage's COCO JSON.
        truth_dataset: a registered COCO-format dataset of the same images with their true labels
            (its metadata ``json_file``).
        kpt_oks_sigmas: per-keypoint OKS sigmas (TEST.KEYPOINT_OKS_SIGMAS); None or empty: COCO's.
        iou_types: the evaluations, of "bbox", "segm", "keypoints" (``Heads.iou_types``).

    Returns:
        {"images": n, "labels": n} and, per evaluation, e.g. "bbox": {"AP": ..., ...}, over the
        images of ``json_file``.

    Raises:
        ValueError: no json_file for the truth, an unknown iou type, or true labels without the
            masks mask AP needs (the message names the file).
    """
    unknown = set(iou_types) - set(_KEYS)
    if unknown:
        raise ValueError(f"Label quality: unknown iou types {sorted(unknown)}; use {list(_KEYS)}.")
    truth_json = MetadataCatalog.get(truth_dataset).get("json_file")
    if truth_json is None:
        raise ValueError(
            f"Label quality: dataset {truth_dataset!r} has no json_file in its metadata."
        )
    # The truth file is read here, by pycocotools: its category id map is not needed.
    ensure_dataset_ready(truth_dataset, category_ids=False)
    with open(json_file) as f:
        generated = json.load(f)
    image_ids = [image["id"] for image in generated["images"]]
    annotations = generated.get("annotations", [])
    results = {"images": len(image_ids), "labels": len(annotations)}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO(truth_json)
        for iou_type, keys in _KEYS.items():
            if iou_type not in iou_types:
                continue
            if not annotations:
                results[iou_type] = {k: 0.0 for k in keys}
                continue
            if iou_type == "segm":
                _check_truth_has_masks(truth, truth_json)
            # loadRes adds fields to what it is given: a fresh copy per evaluation.
            detections = [{k: ann[k] for k in _FIELDS[iou_type]} for ann in annotations]
            evaluation = COCOeval(truth, truth.loadRes(detections), iou_type)
            evaluation.params.imgIds = image_ids
            if iou_type == "keypoints" and kpt_oks_sigmas:
                evaluation.params.kpt_oks_sigmas = np.asarray(kpt_oks_sigmas, dtype=np.float64)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            results[iou_type] = {k: float(v) * 100 for k, v in zip(keys, evaluation.stats)}
    logger.info(
        "Label quality of %s against %s: %s (%d labels on %d images).",
        json_file,
        truth_dataset,
        ", ".join(f"{t} AP {results[t]['AP']:.2f}" for t in _KEYS if t in results),
        len(annotations),
        len(image_ids),
    )
    return results
