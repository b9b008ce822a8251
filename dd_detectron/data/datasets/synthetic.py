"""Registration of the embedded synthetic splits (dd_detectron/data/synthetic) as datasets.

A registered split is generated the first time its DatasetCatalog entry is called (see
``dd_detectron.data.synthetic.splits``); registering writes nothing.
"""

import functools
from typing import List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import (
    COCO_PERSON_KEYPOINT_FLIP_MAP,
    COCO_PERSON_KEYPOINT_NAMES,
    KEYPOINT_CONNECTION_RULES,
)
from detectron2.data.datasets.coco import load_coco_json

from ..synthetic.splits import TRUTH_SUFFIX, SyntheticSplit, ensure_split, split_files

__all__ = ["register_synthetic_keypoints"]


def _load(name: str, spec: SyntheticSplit, root: str, truth: bool) -> List[dict]:
    files = ensure_split(spec, root)
    json_file = files.truth_json_file if truth else files.json_file
    return load_coco_json(json_file, files.image_root, name)


def register_synthetic_keypoints(root: str, splits: Sequence[SyntheticSplit]) -> List[str]:
    """Registers synthetic splits in DatasetCatalog and MetadataCatalog (no file is written).

    Each split is generated the first time its DatasetCatalog entry is called. Unlabeled
    splits also register "<name>_truth" with their true labels.

    Args:
        root: datasets root.
        splits: specs to register (builtin.py registers SYNTHETIC_SPLITS and
            TINY_SYNTHETIC_SPLITS).

    Returns:
        the registered dataset names.
    """
    names = []
    for spec in splits:
        files = split_files(spec, root)
        entries = [(spec.name, False, files.json_file)]
        if not spec.with_annotations:
            entries.append((spec.name + TRUTH_SUFFIX, True, files.truth_json_file))
        for name, truth, json_file in entries:
            DatasetCatalog.register(name, functools.partial(_load, name, spec, root, truth))
            MetadataCatalog.get(name).set(
                json_file=json_file,
                image_root=files.image_root,
                evaluator_type="coco",
                thing_classes=["person"],
                thing_dataset_id_to_contiguous_id={1: 0},
                keypoint_names=COCO_PERSON_KEYPOINT_NAMES,
                keypoint_flip_map=COCO_PERSON_KEYPOINT_FLIP_MAP,
                keypoint_connection_rules=KEYPOINT_CONNECTION_RULES,
            )
            names.append(name)
    return names
