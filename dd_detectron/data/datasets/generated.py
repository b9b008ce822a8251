"""
Generated labels (the annotation stage's COCO-format JSON) as detectron2 datasets.

A generated file is an ordinary COCO JSON: ``images``, ``categories`` and ``annotations`` with
a box each, and, as the teacher's heads gave them, a ``segmentation`` (RLE) and ``keypoints``
(x, y, v per keypoint). Which heads the student trains is checked against its model where the
records are used (data/head_checks.py); the file itself is checked for what holds whatever the
model: images, annotations, and keypoints of one length on all annotations or on none. Its image
``file_name`` entries are joined to an image root with ``os.path.join``; detectron2's
``convert_to_coco_dict`` writes the dataset dicts' ``file_name`` as they are (already joined
with their own root), so the generated files use an empty image root: file names are absolute or
relative to the working directory, as in the dataset that was annotated.

Three ways to name generated data in ``DD.STUDENT.GENERATED_DATASETS``:

- the builtin names of ``BUILTIN_GENERATED`` below, whose files lie under
  ``$DETECTRON2_DATASETS/dd_generated/`` (registered by builtin.py);
- any name registered with :func:`register_generated`;
- a path ending in ``.json``: registered under exactly that name by
  ``register_path_datasets(cfg)`` (catalog.py), which the tools' setup calls.

Files are read lazily (when the dataset is loaded) and checked then: the error names the file.
"""

import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
from detectron2.utils.file_io import PathManager

__all__ = [
    "GeneratedSplit",
    "BUILTIN_GENERATED",
    "register_generated",
    "register_builtin_generated",
    "load_generated",
    "check_keypoint_length",
]

logger = logging.getLogger(__name__)

# Keypoint metadata a builtin generated dataset copies from COCO's person category.
_KEYPOINT_METADATA_KEYS = ("keypoint_names", "keypoint_flip_map", "keypoint_connection_rules")


@dataclass(frozen=True)
class GeneratedSplit:
    """A builtin generated-label dataset.

    Attributes:
        name: registered name.
        json_file: path of the generated JSON, relative to $DETECTRON2_DATASETS.
        coco_person_keypoints: the labels are of COCO's 17 person keypoints, so the dataset gets
            COCO's keypoint names, flip map and connection rules, as detectron2's
            keypoints_coco_* datasets have (a student mixes the two).
    """

    name: str
    json_file: str
    coco_person_keypoints: bool = False


# The one table of builtin generated-label names. Write (or link) the annotation stage's output
# to these paths to use them.
BUILTIN_GENERATED: Tuple[GeneratedSplit, ...] = (
    # un-120: COCO 2017 unlabeled images, labeled by a teacher trained on co-115.
    GeneratedSplit("dd_coco_un120_generated", "dd_generated/coco_un120_keypoints.json", True),
    # co-80: COCO 2014 train images, labeled by a teacher trained on co-35.
    GeneratedSplit("dd_coco_co80_generated", "dd_generated/coco_co80_keypoints.json", True),
    # s1m-180: the builtin image folder sports1m_frames (image_folder.py), labeled by a teacher
    # trained on co-115.
    GeneratedSplit(
        "dd_sports1m_frames_generated", "dd_generated/sports1m_frames_keypoints.json", True
    ),
    # The embedded synthetic unlabeled split, labeled by the synthetic teacher.
    GeneratedSplit("dd_synthetic_kp_generated", "dd_generated/synthetic_kp_keypoints.json"),
    # The demo profile's unlabeled split (synthetic_kp_demo_unlabeled), labeled by its teacher.
    GeneratedSplit(
        "dd_synthetic_kp_demo_generated", "dd_generated/synthetic_kp_demo_keypoints.json"
    ),
)


def check_keypoint_length(
    dataset_dicts: Sequence[dict], num_keypoints: Optional[int], where: str
) -> int:
    """Check that every annotation carries ``keypoints`` of one length, 3 * num_keypoints.

    Args:
        dataset_dicts: detectron2 dataset dicts.
        num_keypoints: the expected number of keypoints K; None takes the first annotation's.
        where: the file or config key named in the error.

    Returns:
        the number of keypoints K (0 when there is no annotation at all).
    """
    for record in dataset_dicts:
        for ann in record.get("annotations", ()):
            keypoints = ann.get("keypoints")
            if keypoints is None:
                raise ValueError(
                    f"{where}: an annotation of image "
                    f"{record.get('image_id', record.get('file_name'))} "
                    "has no 'keypoints'; generated labels for a keypoint student need keypoints "
                    "(x, y, v) on every annotation."
                )
            if num_keypoints is None:
                if len(keypoints) == 0 or len(keypoints) % 3 != 0:
                    raise ValueError(f"{where}: 'keypoints' of length {len(keypoints)}, not 3 * K")
                num_keypoints = len(keypoints) // 3
            if len(keypoints) != 3 * num_keypoints:
                raise ValueError(
                    f"{where}: an annotation of image "
                    f"{record.get('image_id', record.get('file_name'))} "
                    f"has {len(keypoints)} keypoint values, expected 3 * {num_keypoints} = "
                    f"{3 * num_keypoints} (the labeled data's keypoints)."
                )
    return num_keypoints or 0


def load_generated(
    json_file: str, image_root: str = "", dataset_name: Optional[str] = None
) -> List[dict]:
    """Load and check a generated COCO JSON, of any heads.

    Args:
        json_file: the COCO-format file written by the annotation stage.
        image_root: joined to every image ``file_name`` ("" keeps them as written).
        dataset_name: registered name; its metadata gets thing_classes as for COCO.

    Returns:
        detectron2 dataset dicts.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not readable as COCO, has no images or no annotations, or some
            annotations have keypoints and others none or another count; the message names the
            file.
    """
    if not PathManager.isfile(json_file):
        raise FileNotFoundError(
            f"Generated label file {json_file} (dataset {dataset_name!r}) does not exist; write "
            "it with the annotation stage (tools/annotate_net.py) or fix "
            "DD.STUDENT.GENERATED_DATASETS."
        )
    try:
        dataset_dicts = load_coco_json(json_file, image_root, dataset_name)
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(
            f"{json_file}: not a COCO file detectron2 can read ({type(e).__name__}: {e})"
        ) from e
    if len(dataset_dicts) == 0:
        raise ValueError(f"{json_file}: the generated dataset {dataset_name!r} has no images.")
    if not any(record.get("annotations") for record in dataset_dicts):
        raise ValueError(
            f"{json_file}: the generated dataset {dataset_name!r} has {len(dataset_dicts)} images "
            "but no annotations."
        )
    # Keypoint labels: on every annotation, of one length (a keypoint teacher's file).
    if any("keypoints" in ann for record in dataset_dicts for ann in record.get("annotations", ())):
        check_keypoint_length(dataset_dicts, None, json_file)
    return dataset_dicts


def register_generated(
    name: str, json_file: str, image_root: str = "", metadata: Optional[dict] = None
) -> None:
    """Register a generated COCO JSON as a detectron2 dataset (read lazily, checked then).

    Args:
        name: the dataset name to register.
        json_file: path of the COCO-format file.
        image_root: joined to every image ``file_name``; "" (default) for files written by
            detectron2's ``convert_to_coco_dict`` (see the module docstring).
        metadata: extra metadata (e.g. keypoint_names, keypoint_flip_map).
    """
    DatasetCatalog.register(name, lambda: load_generated(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **(metadata or {})
    )


def register_builtin_generated(
    root: str, splits: Sequence[GeneratedSplit] = BUILTIN_GENERATED
) -> List[str]:
    """Registers builtin generated-label datasets (nothing is read now).

    Args:
        root: the datasets root ($DETECTRON2_DATASETS, see builtin.py).
        splits: the datasets to register.

    Returns:
        the registered names.
    """
    coco_person = _get_builtin_metadata("coco_person")
    names = []
    for split in splits:
        metadata = {}
        if split.coco_person_keypoints:
            metadata = {key: coco_person[key] for key in _KEYPOINT_METADATA_KEYS}
        register_generated(split.name, os.path.join(root, split.json_file), "", metadata)
        names.append(split.name)
    return names
