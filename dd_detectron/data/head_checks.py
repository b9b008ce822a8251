"""
Training data against the model's heads: every annotation holds what the model's heads learn
from, in a form detectron2's mapper reads.

detectron2 finds out late and unclearly: a mask model on annotations without ``segmentation``
fails in the mask loss (no ``gt_masks``); RLE masks (the annotation stage's) under
INPUT.MASK_FORMAT "polygon" fail in ``annotations_to_instances`` at the first batch. These
checks run on the loaded records, before training, and name the config key and the file.
"""

from typing import Sequence

from detectron2.data import MetadataCatalog

from .datasets.generated import check_keypoint_length

__all__ = ["check_head_data"]


def _where(key: str, names: Sequence[str]) -> str:
    """'KEY=(names) (file a.json, b.json)': the config key and the files, for the errors."""
    files = [MetadataCatalog.get(n).get("json_file") for n in names]
    files = [f for f in files if f]
    return f"{key}={tuple(names)}" + (f" (file {', '.join(files)})" if files else "")


def check_head_data(
    cfg, dataset_dicts: Sequence[dict], key: str, names: Sequence[str], keypoints: bool = True
) -> None:
    """Check that training records carry what the model's heads need.

    Args:
        cfg: the training config (MODEL.MASK_ON, MODEL.KEYPOINT_ON, INPUT.MASK_FORMAT, and the
            keypoint count of DATASETS.TRAIN's metadata).
        dataset_dicts: the loaded records of ``names``.
        key: the config key that names the datasets ("DATASETS.TRAIN", ...).
        names: the registered datasets the records come from.
        keypoints: check keypoints too (generated labels; manual labels are read by detectron2
            as they always were).

    Raises:
        ValueError: a mask model and a non-crowd annotation without ``segmentation``; RLE masks
            with INPUT.MASK_FORMAT other than "bitmask"; a keypoint model and an annotation
            without keypoints of the labeled data's count. The message names the key and file.
    """
    if cfg.MODEL.MASK_ON:
        rle = False
        for record in dataset_dicts:
            for ann in record.get("annotations", ()):
                if ann.get("iscrowd", 0):
                    continue  # detectron2's mapper drops crowd annotations
                segmentation = ann.get("segmentation")
                if segmentation is None:
                    raise ValueError(
                        f"{_where(key, names)}: an annotation of image "
                        f"{record.get('image_id', record.get('file_name'))} has no "
                        "'segmentation', but the model has a mask head (MODEL.MASK_ON True): "
                        "train a mask model on data with masks, or set MODEL.MASK_ON False."
                    )
                rle = rle or isinstance(segmentation, dict)
        if rle and cfg.INPUT.MASK_FORMAT != "bitmask":
            raise ValueError(
                f"{_where(key, names)} holds RLE masks (the annotation stage writes its masks "
                f'as RLE), which detectron2 trains only with INPUT.MASK_FORMAT "bitmask"; got '
                f"{cfg.INPUT.MASK_FORMAT!r}. Set INPUT.MASK_FORMAT bitmask (polygons train as "
                "bitmasks too)."
            )
    if keypoints and cfg.MODEL.KEYPOINT_ON:
        train = tuple(cfg.DATASETS.TRAIN)
        keypoint_names = MetadataCatalog.get(train[0]).get("keypoint_names") if train else None
        check_keypoint_length(
            dataset_dicts, len(keypoint_names) if keypoint_names else None, _where(key, names)
        )
