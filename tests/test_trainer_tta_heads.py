"""The multi-view ensembler for every R-CNN head outside the ensembler itself: DDTrainer's
evaluation (test_with_TTA, build_evaluator) and the annotation stage's teacher (build_teacher)."""

import json
import os
import uuid

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.data.datasets.builtin_meta import (
    COCO_PERSON_KEYPOINT_FLIP_MAP,
    COCO_PERSON_KEYPOINT_NAMES,
)
from support import HEADS, H, W, heads_cfg, heads_model

from dd_detectron.annotation.teacher import SingleViewRCNN, build_teacher
from dd_detectron.data.synthetic.scene import encode_mask
from dd_detectron.engine import DDTrainer
from dd_detectron.modeling import Heads, RCNNWithTTA

TASKS = {
    "box": {"bbox"},
    "mask": {"bbox", "segm"},
    "keypoint": {"bbox", "keypoints"},
    "mask_keypoint": {"bbox", "segm", "keypoints"},
}


@pytest.fixture(scope="module")
def person_dataset(tmp_path_factory):
    """Two random images, one person each with a box, an RLE mask and 17 keypoints."""
    root = tmp_path_factory.mktemp("tta_heads_eval")
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(2):
        cv2.imwrite(str(root / f"{i}.jpg"), rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "height": H, "width": W})
        mask = np.zeros((H, W), bool)
        mask[10:70, 10:60] = True
        anns.append(
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 1,
                "bbox": [10.0, 10.0, 50.0, 60.0],
                "area": float(mask.sum()),
                "iscrowd": 0,
                "segmentation": encode_mask(mask),
                "keypoints": [v for k in range(17) for v in (20.0 + k, 30.0 + k, 2)],
                "num_keypoints": 17,
            }
        )
    json_file = root / "gt.json"
    categories = [{"id": 1, "name": "person"}]
    json_file.write_text(
        json.dumps({"images": images, "annotations": anns, "categories": categories})
    )
    name = f"dd_test_tta_heads_eval_{uuid.uuid4().hex[:8]}"
    meta = dict(
        keypoint_names=COCO_PERSON_KEYPOINT_NAMES, keypoint_flip_map=COCO_PERSON_KEYPOINT_FLIP_MAP
    )
    register_coco_instances(name, meta, str(json_file), str(root))
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _cfg(heads, *opts):
    return heads_cfg(heads, "MODEL.ROI_HEADS.NUM_CLASSES", 1, *opts)  # the person category


@pytest.mark.parametrize("heads", ["box", "mask", "mask_keypoint"])
def test_trainer_evaluates_every_head_with_tta(heads, person_dataset, tmp_path):
    cfg = _cfg(
        heads,
        "TEST.AUG.MIN_SIZES",
        (64, H),
        "TEST.AUG.FLIP",
        True,
        "DATASETS.TEST",
        (person_dataset,),
        "OUTPUT_DIR",
        str(tmp_path),
        "DATALOADER.NUM_WORKERS",
        0,
    )
    results = DDTrainer.test_with_TTA(cfg, heads_model(cfg))
    assert set(results) == {task + "_TTA" for task in TASKS[heads]}
    assert all("AP" in r for r in results.values())
    folder = tmp_path / "inference_TTA" / person_dataset
    with open(folder / "coco_instances_results.json") as f:
        predictions = json.load(f)
    assert predictions and all(
        ("segmentation" in p) == ("segm" in TASKS[heads]) for p in predictions
    )


@pytest.mark.parametrize("heads", list(HEADS))
@pytest.mark.parametrize("multiview", [False, True])
def test_teacher_is_the_ensembler_of_the_heads(heads, multiview):
    cfg = _cfg(heads, "TEST.AUG.MIN_SIZES", (H,), "TEST.AUG.FLIP", False)
    cfg.TEST.AUG.ENABLED = multiview
    teacher = build_teacher(cfg, heads_model(cfg), Heads.from_cfg(cfg))
    if cfg.MODEL.KEYPOINT_ON or multiview:
        # Keypoint labels always come from the ensembler; so do several views of any model.
        assert type(teacher) is RCNNWithTTA
    else:
        assert type(teacher) is SingleViewRCNN


def test_trainer_evaluator_tasks(person_dataset):
    evaluator = DDTrainer.build_evaluator(_cfg("mask"), person_dataset, output_folder=None)
    assert set(evaluator._tasks) == {"bbox", "segm"}
    assert os.path.isfile(MetadataCatalog.get(person_dataset).json_file)
