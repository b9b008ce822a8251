#!/usr/bin/env python
"""How far apart two generated label files are: the same annotations, and by how much their
numbers differ.

Used to measure what a setting that should not change the labels (e.g. DD.TTA.VIEW_BATCH_SIZE)
does change: run the annotation stage twice into two --output folders, then

    python dev/compare_labels.py A/person_keypoints_generated.json B/person_keypoints_generated.json

It prints one JSON object: whether the files are byte-identical, the annotation counts, and for
annotations paired by id the largest absolute difference of box, keypoint coordinates and score,
how many keypoint visibilities and masks differ, and the smallest mask IoU of a pair.
"""

import argparse
import json
import sys

import numpy as np
import pycocotools.mask as mask_util


def _load(path: str) -> dict:
    with open(path, "rb") as f:
        data = f.read()
    try:
        coco = json.loads(data)
        return {"bytes": data, "images": coco["images"], "annotations": coco["annotations"]}
    except (ValueError, KeyError) as e:
        raise ValueError(f"{path} is not a COCO annotation file ({e!r}).") from None


def _max_abs(pairs, key, select=slice(None)) -> float:
    """Largest |a[key] - b[key]| (a number or a list) over the pairs that both have it."""
    diffs = []
    for a, b in pairs:
        if key in a and key in b:
            x, y = np.atleast_1d(a[key]), np.atleast_1d(b[key])
            if x.shape == y.shape:
                diffs.append(np.abs(x - y)[select].max(initial=0.0))
    return float(max(diffs, default=0.0))


def _masks(pairs):
    """Pairs with masks: how many differ, and the smallest IoU of a pair."""
    differ, min_iou = 0, 1.0
    for a, b in pairs:
        if "segmentation" in a and "segmentation" in b and a["segmentation"] != b["segmentation"]:
            differ += 1
            iou = mask_util.iou([a["segmentation"]], [b["segmentation"]], [0])[0, 0]
            min_iou = min(min_iou, float(iou))
    return differ, min_iou


def compare(path_a: str, path_b: str) -> dict:
    a, b = _load(path_a), _load(path_b)
    by_id = {ann["id"]: ann for ann in b["annotations"]}
    pairs = [(ann, by_id[ann["id"]]) for ann in a["annotations"] if ann["id"] in by_id]
    same_image = [p for p in pairs if p[0]["image_id"] == p[1]["image_id"]]
    masks_differ, min_mask_iou = _masks(same_image)
    return {
        "byte_identical": a["bytes"] == b["bytes"],
        "images": [len(a["images"]), len(b["images"])],
        "annotations": [len(a["annotations"]), len(b["annotations"])],
        "paired_on_the_same_image": len(same_image),
        "max_abs_bbox": _max_abs(same_image, "bbox"),
        "max_abs_keypoint_xy": max(
            _max_abs(same_image, "keypoints", slice(0, None, 3)),
            _max_abs(same_image, "keypoints", slice(1, None, 3)),
        ),
        "keypoint_visibility_differs": sum(
            a_["keypoints"][2::3] != b_["keypoints"][2::3]
            for a_, b_ in same_image
            if "keypoints" in a_ and "keypoints" in b_
        ),
        "max_abs_score": _max_abs(same_image, "score"),
        "masks_differ": masks_differ,
        "min_mask_iou": min_mask_iou,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("labels_a")
    parser.add_argument("labels_b")
    args = parser.parse_args(argv)
    print(json.dumps(compare(args.labels_a, args.labels_b), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
