"""Generated labels of box and mask teachers named by path (generated_instances.py, chosen by
register_path_datasets for a model without a keypoint head)."""

import dataclasses
import json
import re
import uuid

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.structures import BitMasks

from dd_detectron import add_dd_config
from dd_detectron.data.datasets import register_path_datasets
from dd_detectron.data.datasets.generated_instances import load_generated_instances
from dd_detectron.data.synthetic import DEMO_SYNTHETIC_SPLITS, generate_split


@pytest.fixture(scope="module")
def mask_labels(tmp_path_factory):
    """A mask teacher's labels as the annotation stage writes them: the demo profile's true
    people with boxes and masks but no keypoints, image paths as written (image root "")."""
    root = tmp_path_factory.mktemp("generated_instances")
    spec = dataclasses.replace(DEMO_SYNTHETIC_SPLITS[1], num_images=3)
    files = generate_split(spec, str(root))
    with open(files.truth_json_file) as f:
        data = json.load(f)
    for image in data["images"]:
        image["file_name"] = f"{files.image_root}/{image['file_name']}"
    for ann in data["annotations"]:
        for key in ("keypoints", "num_keypoints"):
            del ann[key]
    with_masks = root / "masks.json"
    with_masks.write_text(json.dumps(data))
    for ann in data["annotations"]:
        del ann["segmentation"]
    boxes_only = root / "boxes.json"
    boxes_only.write_text(json.dumps(data))
    return str(with_masks), str(boxes_only)


def _cfg(mask, keypoint, generated):
    cfg = get_cfg()
    add_dd_config(cfg)
    cfg.MODEL.MASK_ON, cfg.MODEL.KEYPOINT_ON = mask, keypoint
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.DD.STUDENT.GENERATED_DATASETS = (generated,)
    return cfg


def _registered(cfg):
    (name,) = register_path_datasets(cfg)
    return name


@pytest.fixture
def names():
    registered = []
    yield registered
    for name in registered:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _copy(path, tmp_path):
    # A name of its own per test: the catalog is global to the test process.
    out = tmp_path / f"{uuid.uuid4().hex[:8]}.json"
    out.write_text(open(path).read())
    return str(out)


def test_mask_student_reads_a_mask_teachers_labels(mask_labels, names, tmp_path):
    cfg = _cfg(True, False, _copy(mask_labels[0], tmp_path))
    name = _registered(cfg)
    names.append(name)
    records = DatasetCatalog.get(name)
    assert len(records) == 3 and all(r["annotations"] for r in records)
    assert MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id == {1: 0}
    instances = DatasetMapper(cfg, is_train=True)(records[0])["instances"]
    assert isinstance(instances.gt_masks, BitMasks)
    assert len(instances) == len(records[0]["annotations"])


def test_box_student_reads_labels_without_masks(mask_labels, names, tmp_path):
    name = _registered(_cfg(False, False, _copy(mask_labels[1], tmp_path)))
    names.append(name)
    assert sum(len(r["annotations"]) for r in DatasetCatalog.get(name)) > 0


def test_wrong_labels_for_the_student_name_the_file(mask_labels, names, tmp_path):
    boxes = _copy(mask_labels[1], tmp_path)
    name = _registered(_cfg(True, False, boxes))
    names.append(name)
    with pytest.raises(ValueError, match=re.escape(boxes) + r".*no 'segmentation'.*MODEL.MASK_ON"):
        DatasetCatalog.get(name)
    # A keypoint student still goes through the keypoint loader, which wants keypoints.
    masks = _copy(mask_labels[0], tmp_path)
    name = _registered(_cfg(False, True, masks))
    names.append(name)
    with pytest.raises(ValueError, match="has no 'keypoints'"):
        DatasetCatalog.get(name)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "absent.json"))):
        load_generated_instances(str(tmp_path / "absent.json"))
