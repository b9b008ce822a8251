"""dev/compare_labels.py: what two label files share and how far apart their numbers are."""

import copy
import json

import numpy as np
import pycocotools.mask as mask_util
import pytest


def _labels():
    mask = np.zeros((8, 8), dtype=np.uint8, order="F")
    mask[2:6, 2:6] = 1
    rle = mask_util.encode(mask)
    rle["counts"] = rle["counts"].decode("ascii")
    ann = {"id": 1, "image_id": 7, "category_id": 1, "bbox": [2.0, 2.0, 4.0, 4.0]}
    ann.update(score=0.9, keypoints=[3.0, 3.0, 2, 4.0, 4.0, 2], segmentation=rle)
    return {
        "images": [{"id": 7}],
        "annotations": [ann, dict(copy.deepcopy(ann), id=2)],
        "categories": [],
    }


def _write(path, coco):
    path.write_text(json.dumps(coco))
    return str(path)


def test_identical_files(tmp_path, load_tool):
    compare = load_tool("compare_labels", "dev").compare
    a = _write(tmp_path / "a.json", _labels())
    report = compare(a, _write(tmp_path / "b.json", _labels()))
    assert report["byte_identical"] and report["annotations"] == [2, 2]
    assert report["max_abs_keypoint_xy"] == report["max_abs_score"] == 0.0
    assert report["masks_differ"] == 0 and report["min_mask_iou"] == 1.0


def test_differences_are_measured(tmp_path, load_tool):
    compare = load_tool("compare_labels", "dev").compare
    coco = _labels()
    other = copy.deepcopy(coco)
    ann = other["annotations"][1]
    ann["keypoints"][4] += 0.25  # y of the second keypoint
    ann["keypoints"][5] = 1  # its visibility
    ann["score"] -= 0.125
    ann["bbox"][2] += 0.5
    mask = np.zeros((8, 8), dtype=np.uint8, order="F")
    mask[2:6, 2:4] = 1  # half the first mask
    ann["segmentation"] = mask_util.encode(mask)
    ann["segmentation"]["counts"] = ann["segmentation"]["counts"].decode("ascii")
    report = compare(_write(tmp_path / "a.json", coco), _write(tmp_path / "b.json", other))
    assert not report["byte_identical"] and report["paired_on_the_same_image"] == 2
    assert report["max_abs_keypoint_xy"] == 0.25 and report["max_abs_score"] == 0.125
    assert report["max_abs_bbox"] == 0.5 and report["keypoint_visibility_differs"] == 1
    assert report["masks_differ"] == 1 and report["min_mask_iou"] == pytest.approx(0.5)


def test_a_file_that_is_not_coco_is_named(tmp_path, load_tool):
    compare = load_tool("compare_labels", "dev").compare
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": []}')
    with pytest.raises(ValueError, match="bad.json is not a COCO annotation file"):
        compare(str(bad), str(bad))
