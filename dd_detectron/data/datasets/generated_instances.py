"""
Generated labels of a box or mask teacher (the annotation stage's COCO JSON of a model without a
keypoint head) as detectron2 datasets: the counterpart of generated.py, whose keypoint files
need keypoints on every annotation.

The file is an ordinary COCO instances JSON: ``images``, ``categories`` (the labeled data's) and
``annotations`` with boxes, and with a mask model a ``segmentation`` (RLE) on every one. Image
file names are used as written (image root ""), as in generated.py.
"""

from typing import List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.utils.file_io import PathManager

__all__ = ["load_generated_instances", "register_generated_instances"]


def load_generated_instances(
    json_file: str, image_root: str = "", dataset_name: Optional[str] = None, mask: bool = False
) -> List[dict]:
    """Load and check a generated box / mask JSON.

    Args:
        json_file: the COCO-format file written by the annotation stage.
        image_root: joined to every image ``file_name`` ("" keeps them as written).
        dataset_name: registered name; its metadata gets the file's categories (load_coco_json).
        mask: the student has a mask head, so every annotation needs a ``segmentation``.

    Returns:
        detectron2 dataset dicts.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not readable as COCO, has no images or no annotations, or (mask)
            an annotation lacks its mask; the message names the file.
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
            f"{json_file}: not a COCO instances file detectron2 can read ({type(e).__name__}: {e})"
        ) from e
    if len(dataset_dicts) == 0:
        raise ValueError(f"{json_file}: the generated dataset {dataset_name!r} has no images.")
    if not any(record.get("annotations") for record in dataset_dicts):
        raise ValueError(
            f"{json_file}: the generated dataset {dataset_name!r} has {len(dataset_dicts)} images "
            "but no annotations."
        )
    if mask:
        for record in dataset_dicts:
            for ann in record.get("annotations", ()):
                if not ann.get("segmentation"):
                    raise ValueError(
                        f"{json_file}: an annotation of image {record.get('image_id')} has no "
                        "'segmentation'; a mask student (MODEL.MASK_ON) needs the labels of a "
                        "mask teacher."
                    )
    return dataset_dicts


def register_generated_instances(
    name: str, json_file: str, image_root: str = "", mask: bool = False
) -> None:
    """Register a generated box / mask JSON as a detectron2 dataset (read lazily, checked then).

    Args:
        name: the dataset name to register.
        json_file: path of the COCO-format file.
        image_root: joined to every image ``file_name``; "" for the annotation stage's files.
        mask: whether every annotation must carry a mask (a mask student).
    """
    DatasetCatalog.register(
        name, lambda: load_generated_instances(json_file, image_root, name, mask)
    )
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco")
