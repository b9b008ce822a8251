"""
Pictures of generated labels: unlabeled images with the teacher's hard labels (left) beside
their true labels (right), drawn by detectron2's Visualizer, so that what the student trains on
can be seen, not only scored.
"""

import os
from typing import List

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.data.detection_utils import read_image
from detectron2.utils.visualizer import Visualizer

from ..annotation import OUTPUT_JSON
from ..utils import write_atomic
from .plan import LABELS_MULTIVIEW

__all__ = ["draw_labels_beside_truth", "draw_pipeline_label_pictures", "PICTURES_DIR"]

# The pictures' folder in DD.PIPELINE.OUTPUT_DIR.
PICTURES_DIR = "label_pictures"

# White gap between the two halves, and the caption strip above each, in pixels of the drawing.
_GAP = 8
_CAPTION = 22


def _captioned(image: np.ndarray, text: str) -> np.ndarray:
    strip = np.full((_CAPTION, image.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(
        strip, text, (4, _CAPTION - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA
    )
    return np.concatenate([strip, image])


def _without(record: dict, fields) -> dict:
    annotations = [{k: v for k, v in a.items() if k not in fields} for a in record["annotations"]]
    return dict(record, annotations=annotations)


def draw_labels_beside_truth(
    generated_json: str, truth_dataset: str, output_dir: str, num_images: int, scale: float = 2.0
) -> List[str]:
    """Draw the first ``num_images`` images (by id) that have a generated or a true person.

    Args:
        generated_json: the annotation stage's COCO JSON.
        truth_dataset: a registered dataset with the true labels of the same images; its
            metadata (keypoint names, skeleton) is used for drawing.
        output_dir: where the JPEG files go (``labels_<image id>.jpg``).
        num_images: how many to draw.
        scale: drawing scale of the Visualizer.

    Returns:
        the paths written.
    """
    truth = {r["image_id"]: r for r in DatasetCatalog.get(truth_dataset)}
    # A metadata name of its own: load_coco_json records the file's category ids there.
    generated = load_coco_json(
        generated_json, "", f"dd_label_pictures:{os.path.abspath(generated_json)}"
    )
    metadata = MetadataCatalog.get(truth_dataset)
    # The true half shows what the labels could have shown: no true masks beside keypoint-only
    # labels, no true keypoints beside mask labels.
    absent = {
        field
        for field in ("segmentation", "keypoints")
        if not any(field in a for r in generated for a in r.get("annotations", ()))
    }
    chosen = [
        r
        for r in sorted(generated, key=lambda r: str(r["image_id"]))
        if r["image_id"] in truth
        and (r.get("annotations") or truth[r["image_id"]].get("annotations"))
    ][:num_images]
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    for record in chosen:
        image = read_image(record["file_name"], format="RGB")
        halves = [
            _captioned(
                Visualizer(image, metadata, scale=scale).draw_dataset_dict(r).get_image(), text
            )
            for r, text in (
                (record, "generated labels"),
                (_without(truth[record["image_id"]], absent), "true labels"),
            )
        ]
        gap = np.full((halves[0].shape[0], _GAP, 3), 255, dtype=np.uint8)
        picture = np.concatenate([halves[0], gap, halves[1]], axis=1)
        path = os.path.join(output_dir, f"labels_{record['image_id']}.jpg")
        write_atomic(path, cv2.imencode(".jpg", picture[:, :, ::-1])[1].tobytes())
        paths.append(path)
    return paths


def draw_pipeline_label_pictures(cfg) -> List[str]:
    """DD.PIPELINE.LABEL_PICTURES images of the first seed's multi-view labels beside their true
    labels (DD.PIPELINE.UNLABELED_TRUTH), into ``<DD.PIPELINE.OUTPUT_DIR>/label_pictures``.

    Returns:
        the paths written; none when LABEL_PICTURES is 0 or there is no truth to compare with.
    """
    p = cfg.DD.PIPELINE
    if p.LABEL_PICTURES <= 0 or not p.UNLABELED_TRUTH:
        return []
    labels = os.path.join(p.OUTPUT_DIR, f"seed{p.SEEDS[0]}", LABELS_MULTIVIEW, OUTPUT_JSON)
    output_dir = os.path.join(p.OUTPUT_DIR, PICTURES_DIR)
    return draw_labels_beside_truth(labels, p.UNLABELED_TRUTH, output_dir, p.LABEL_PICTURES)
