"""The COCO splits of the Data Distillation paper: which registered dataset each one is, where its
files lie under $DETECTRON2_DATASETS, and the registration of the two that detectron2 lacks.

The paper's names and detectron2's (``PAPER_SPLITS`` below is the single source of truth; it is
also what ``datasets/prepare_coco.py --check`` verifies):

    co-115        keypoints_coco_2017_train            detectron2 builtin
    minival       keypoints_coco_2017_val              detectron2 builtin
    co-35         keypoints_coco_2014_valminusminival  detectron2 builtin; its JSON is written by
                                                       datasets/prepare_coco.py
    co-80 (truth) keypoints_coco_2014_train            detectron2 builtin
    co-80         coco_2014_train_unlabeled            registered here; images only, JSON written
                                                       by datasets/prepare_coco.py
    un-120        coco_2017_unlabeled                  registered here; COCO's image-info file

Where detectron2 already registers a split with the right files, its name is reused. The two
unlabeled splits are registered here with ``load_image_info_json``: images only, no annotation is
ever read, so a teacher labeling co-80 cannot see co-80's true labels.
"""

import functools
import json
import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
from detectron2.utils.file_io import PathManager

__all__ = [
    "CocoSplit",
    "PAPER_SPLITS",
    "get_paper_split",
    "load_image_info_json",
    "register_coco_unlabeled",
]

logger = logging.getLogger(__name__)

# Who registers a split: detectron2's builtin.py, or register_coco_unlabeled below.
DETECTRON2 = "detectron2"
DD_DETECTRON = "dd_detectron"
# Where a JSON file comes from: COCO's own downloads, or datasets/prepare_coco.py.
FROM_COCO = "coco"
FROM_PREPARE = "prepare_coco"


@dataclass(frozen=True)
class CocoSplit:
    """One split of the paper, as a registered dataset.

    Attributes:
        paper_name: the paper's name (co-115, co-35, ...); "co-80 (truth)" for the true labels of
            co-80.
        dataset_name: the name in DatasetCatalog.
        image_root: image folder, relative to $DETECTRON2_DATASETS.
        json_file: COCO JSON file, relative to $DETECTRON2_DATASETS.
        labeled: True for person_keypoints files, False for image-info files (no annotations).
        registered_by: DETECTRON2 (builtin name, reused) or DD_DETECTRON (register_coco_unlabeled).
        json_from: FROM_COCO (in COCO's download named by ``download``) or FROM_PREPARE.
        download: the COCO archives holding the images and (for FROM_COCO) the JSON file.
        num_images: images in the full split (COCO's published sizes; checks and estimates).
        role: what the split is for in the paper.
    """

    paper_name: str
    dataset_name: str
    image_root: str
    json_file: str
    labeled: bool
    registered_by: str
    json_from: str
    download: Tuple[str, ...]
    num_images: int
    role: str


# Image counts are COCO's: 2014 train 82,783, 2014 val 40,504 of which the 5,000 of minival
# (= 2017 val) are held out, so co-35 = 35,504 and co-35 + co-80 = 118,287 = 2017 train.
PAPER_SPLITS: Tuple[CocoSplit, ...] = (
    CocoSplit("co-115", "keypoints_coco_2017_train", "coco/train2017",
              "coco/annotations/person_keypoints_train2017.json", True, DETECTRON2, FROM_COCO,
              ("train2017.zip", "annotations_trainval2017.zip"), 118287,
              "labeled, large-scale setting (= co-35 + co-80)"),
    CocoSplit("minival", "keypoints_coco_2017_val", "coco/val2017",
              "coco/annotations/person_keypoints_val2017.json", True, DETECTRON2, FROM_COCO,
              ("val2017.zip", "annotations_trainval2017.zip"), 5000,
              "evaluation (= COCO 2014 minival)"),
    CocoSplit("un-120", "coco_2017_unlabeled", "coco/unlabeled2017",
              "coco/annotations/image_info_unlabeled2017.json", False, DD_DETECTRON, FROM_COCO,
              ("unlabeled2017.zip", "image_info_unlabeled2017.zip"), 123403,
              "unlabeled, large-scale setting"),
    CocoSplit("co-35", "keypoints_coco_2014_valminusminival", "coco/val2014",
              "coco/annotations/person_keypoints_valminusminival2014.json", True, DETECTRON2,
              FROM_PREPARE, ("val2014.zip", "annotations_trainval2014.zip"), 35504,
              "labeled, small-scale setting (COCO 2014 val minus minival)"),
    CocoSplit("co-80", "coco_2014_train_unlabeled", "coco/train2014",
              "coco/annotations/image_info_train2014.json", False, DD_DETECTRON, FROM_PREPARE,
              ("train2014.zip", "annotations_trainval2014.zip"), 82783,
              "unlabeled, small-scale setting (COCO 2014 train, labels withheld)"),
    CocoSplit("co-80 (truth)", "keypoints_coco_2014_train", "coco/train2014",
              "coco/annotations/person_keypoints_train2014.json", True, DETECTRON2, FROM_COCO,
              ("train2014.zip", "annotations_trainval2014.zip"), 82783,
              "true labels of co-80: label quality, oracle training"),
)  # fmt: skip


def get_paper_split(name: str) -> CocoSplit:
    """Looks a split up by its paper name or its dataset name.

    Args:
        name: e.g. "co-35" or "keypoints_coco_2014_valminusminival".

    Returns:
        the CocoSplit.
    """
    for split in PAPER_SPLITS:
        if name in (split.paper_name, split.dataset_name):
            return split
    raise KeyError(f"Unknown COCO split {name!r}; known: {[s.paper_name for s in PAPER_SPLITS]}")


def load_image_info_json(
    json_file: str, image_root: str, dataset_name: Optional[str] = None, missing_hint: str = ""
) -> List[dict]:
    """Reads the images of a COCO image-info file (such as image_info_unlabeled2017.json).

    Only the ``images`` list is read; ``annotations``, if the file has any, are ignored, so an
    unlabeled split never carries labels into the annotation stage.

    Args:
        json_file: the COCO JSON file.
        image_root: folder the images' ``file_name`` entries are relative to.
        dataset_name: registered name, for messages.
        missing_hint: appended to the error when the file does not exist (how to get it).

    Returns:
        one dict per image: file_name (joined with image_root), height, width, image_id; in the
        file's order.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not JSON, has no ``images`` list, or an image lacks id,
            file_name, height or width.
    """
    if not PathManager.isfile(json_file):
        raise FileNotFoundError(
            f"Image-info file {json_file} of dataset {dataset_name!r} does not exist.{missing_hint}"
        )
    with PathManager.open(json_file, "r") as f:
        try:
            data = json.load(f)
        except ValueError as e:
            raise ValueError(f"{json_file}: not a JSON file ({e})") from e
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise ValueError(f"{json_file}: no 'images' list; not a COCO image-info file.")
    records = []
    for index, image in enumerate(images):
        missing = [k for k in ("id", "file_name", "height", "width") if k not in image]
        if missing:
            raise ValueError(f"{json_file}: images[{index}] has no {', '.join(missing)}.")
        records.append(
            {
                "file_name": os.path.join(image_root, image["file_name"]),
                "height": int(image["height"]),
                "width": int(image["width"]),
                "image_id": image["id"],
            }
        )
    logger.info("Loaded %d images (no annotations) from %s", len(records), json_file)
    return records


def _missing_hint(split: CocoSplit) -> str:
    if split.json_from == FROM_PREPARE:
        return " Write it with: python datasets/prepare_coco.py (see datasets/README.md)."
    return f" It is in COCO's {split.download[-1]} (see datasets/README.md)."


def register_coco_unlabeled(root: str, splits: Optional[Sequence[CocoSplit]] = None) -> List[str]:
    """Registers the unlabeled COCO splits detectron2 lacks (nothing is read until loaded).

    Args:
        root: datasets root ($DETECTRON2_DATASETS, see builtin.py).
        splits: the splits to register; None registers those of PAPER_SPLITS registered by
            DD_DETECTRON.

    Returns:
        the dataset names registered by this call (a name registered before is left alone).
    """
    if splits is None:
        splits = [s for s in PAPER_SPLITS if s.registered_by == DD_DETECTRON]
    names = []
    for split in splits:
        if split.dataset_name in DatasetCatalog.list():
            # Semi-supervised projects (e.g. unbiased-teacher) register coco_2017_unlabeled from the
            # same file; importing both must not fail.
            logger.info("%s is already registered; keeping that registration.", split.dataset_name)
            continue
        json_file = os.path.join(root, split.json_file)
        image_root = os.path.join(root, split.image_root)
        DatasetCatalog.register(
            split.dataset_name,
            functools.partial(
                load_image_info_json,
                json_file,
                image_root,
                split.dataset_name,
                _missing_hint(split),
            ),
        )
        # COCO person metadata (thing_classes, keypoint names, flip map), as detectron2 gives its
        # keypoints_coco_* datasets: the generated labels share that label space.
        MetadataCatalog.get(split.dataset_name).set(
            json_file=json_file,
            image_root=image_root,
            evaluator_type="coco",
            **_get_builtin_metadata("coco_person"),
        )
        names.append(split.dataset_name)
    return names
