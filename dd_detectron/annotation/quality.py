"""
How good generated labels are: COCO AP of the labels, read as detections (score = the detection
score kept in the file, every keypoint at its predicted position), against the true labels of the
same images (e.g. ``synthetic_kp_unlabeled_truth``).
"""

import contextlib
import io
import json
import logging
from typing import Optional, Sequence

import numpy as np
from detectron2.data import MetadataCatalog
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..data.datasets import ensure_dataset_ready

__all__ = ["label_quality"]

logger = logging.getLogger(__name__)

# COCOeval's summary, in order: the first 5 entries of `stats` for keypoints, 6 for boxes.
_KEYS = {
    "keypoints": ("AP", "AP50", "AP75", "APm", "APl"),
    "bbox": ("AP", "AP50", "AP75", "APs", "APm", "APl"),
}


def label_quality(
    json_file: str, truth_dataset: str, kpt_oks_sigmas: Optional[Sequence[float]] = None
) -> dict:
    """Box and keypoint AP (in %) of a generated label file against a dataset's true labels.

    Args:
        json_file: the annotation stage's COCO JSON.
        truth_dataset: a registered COCO-format dataset of the same images with their true labels
            (its metadata ``json_file``).
        kpt_oks_sigmas: per-keypoint OKS sigmas (TEST.KEYPOINT_OKS_SIGMAS); None or empty: COCO's.

    Returns:
        {"bbox": {"AP": ..., ...}, "keypoints": {"AP": ..., ...}, "images": n, "labels": n}, over
        the images of ``json_file``.
    """
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
    detections = [
        {k: ann[k] for k in ("image_id", "category_id", "bbox", "keypoints", "score")}
        for ann in generated.get("annotations", [])
    ]
    results = {"images": len(image_ids), "labels": len(detections)}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO(truth_json)
        for iou_type, keys in _KEYS.items():
            if not detections:
                results[iou_type] = {k: 0.0 for k in keys}
                continue
            # loadRes adds fields to what it is given: a copy per evaluation.
            evaluation = COCOeval(truth, truth.loadRes([dict(d) for d in detections]), iou_type)
            evaluation.params.imgIds = image_ids
            if iou_type == "keypoints" and kpt_oks_sigmas:
                evaluation.params.kpt_oks_sigmas = np.asarray(kpt_oks_sigmas, dtype=np.float64)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            results[iou_type] = {k: float(v) * 100 for k, v in zip(keys, evaluation.stats)}
    logger.info(
        "Label quality of %s against %s: keypoint AP %.2f, box AP %.2f (%d labels on %d images).",
        json_file,
        truth_dataset,
        results["keypoints"]["AP"],
        results["bbox"]["AP"],
        len(detections),
        len(image_ids),
    )
    return results
