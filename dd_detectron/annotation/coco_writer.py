"""
Hard labels -> one COCO JSON (instances; person_keypoints for keypoint models), written by
detectron2's own converter.

Every image's labels become a detectron2 dataset dict (the format ``load_coco_json`` produces),
and detectron2's ``convert_to_coco_dict`` turns blocks of them into COCO entries, so the file
follows detectron2's conventions exactly:

- keypoints: detectron2 keeps continuous coordinates (pixel ``i`` covers ``[i, i + 1)``), COCO
  stores pixel indices: the converter writes ``x - 0.5`` and ``load_coco_json`` adds the 0.5
  back, so a predicted keypoint is read back as the very same float;
- visibility: ``v = 2`` for a keypoint at or above the keypoint threshold, ``v = 0`` below it.
  A v = 0 keypoint keeps its predicted position (COCO files write (0, 0, 0) for unlabeled
  keypoints, but nothing reads positions with v = 0: detectron2's keypoint loss and
  ``transform_keypoint_annotations`` ignore or zero them, COCOeval skips them in ground truth).
  So the file holds every predicted point, and the labels can also be scored as predictions;
- bbox: XYWH, rounded to 3 decimals by the converter; area: the mask's pixel count for mask
  labels, else the box area;
- segmentation (mask models): the predicted hard mask at image resolution as COCO compressed RLE
  (``{"size": [h, w], "counts": str}``); ``pycocotools.mask.decode`` gives the mask back exactly.
  detectron2 trains on RLE masks with INPUT.MASK_FORMAT "bitmask" (its polygon format takes
  polygons only); labels without masks need neither;
- ids: images keep their dataset ids; annotation ids run 1, 2, ... in the order written.

Only what the teacher's heads predict is written: ``keypoints`` for keypoint models,
``segmentation`` for mask models. Added to what the converter writes: ``score`` (detection score)
on each annotation, and with keypoints ``keypoint_scores`` (every keypoint's score, visible or
not) on each annotation and ``keypoints`` / ``skeleton`` on each category. Blocks of images are
converted and streamed to disk one at a time, so memory does not grow with the number of images;
the file appears atomically when complete.
"""

import contextlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_dict
from detectron2.structures import BoxMode

from ..utils import atomic_write

__all__ = [
    "LabelSpace",
    "ImageLabels",
    "image_labels_to_dataset_dict",
    "write_coco_json",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelSpace:
    """The categories and keypoints the labels are written in.

    Attributes:
        thing_classes: category names, indexed by the model's class id.
        dataset_ids: the dataset's category id of each class id (COCO person: 1).
        keypoint_names: K names, in the model's keypoint order; empty for labels without
            keypoints.
        skeleton: limbs as 1-based keypoint index pairs (COCO's convention); empty likewise.
    """

    thing_classes: Tuple[str, ...]
    dataset_ids: Tuple[int, ...]
    keypoint_names: Tuple[str, ...]
    skeleton: Tuple[Tuple[int, int], ...]

    @classmethod
    def from_metadata(cls, metadata, where: str, keypoints: bool = True) -> "LabelSpace":
        """Read a dataset's detectron2 metadata.

        Args:
            metadata: a detectron2 Metadata with thing_classes (and keypoint_names for keypoint
                labels); optional thing_dataset_id_to_contiguous_id, keypoint_skeleton (1-based
                pairs) or else keypoint_connection_rules (name pairs) for the skeleton.
            where: the dataset / config key named in errors.
            keypoints: the labels hold keypoints (a keypoint model); False: the keypoint
                metadata is not read.
        """
        thing_classes = metadata.get("thing_classes")
        keypoint_names = metadata.get("keypoint_names") if keypoints else ()
        if not thing_classes or (keypoints and not keypoint_names):
            raise ValueError(
                f"{where}: its metadata needs thing_classes"
                f"{' and keypoint_names' if keypoints else ''} to write COCO "
                f"categories (has thing_classes={thing_classes!r}"
                + (f", keypoint_names={keypoint_names!r})." if keypoints else ").")
            )
        if not keypoints:
            return cls(tuple(thing_classes), _dataset_ids(metadata, thing_classes), (), ())
        dataset_ids = _dataset_ids(metadata, thing_classes)
        skeleton = metadata.get("keypoint_skeleton")
        if skeleton is None:
            index = {name: i + 1 for i, name in enumerate(keypoint_names)}
            skeleton = [
                (index[a], index[b])
                for a, b, *_ in metadata.get("keypoint_connection_rules", ())
                if a in index and b in index
            ]
        return cls(
            tuple(thing_classes),
            dataset_ids,
            tuple(keypoint_names),
            tuple((int(a), int(b)) for a, b in skeleton),
        )

    def contiguous_mapping(self) -> Optional[Dict[int, int]]:
        if self.dataset_ids == tuple(range(len(self.thing_classes))):
            return None
        return {d: i for i, d in enumerate(self.dataset_ids)}


def _dataset_ids(metadata, thing_classes: Sequence[str]) -> Tuple[int, ...]:
    """The dataset's category id of each contiguous class id."""
    mapping = metadata.get("thing_dataset_id_to_contiguous_id")
    if not mapping:
        return tuple(range(len(thing_classes)))
    reverse = {v: k for k, v in mapping.items()}
    return tuple(int(reverse[i]) for i in range(len(thing_classes)))


@dataclass
class ImageLabels:
    """The hard labels of one image.

    Attributes:
        image_id, file_name, height, width: the image, as in its dataset.
        boxes: (n, 4) XYXY in image coordinates; scores: (n,); classes: (n,) model class ids.
        keypoints: (n, K, 3) predicted x, y, score (detectron2's continuous coordinates);
            None without a keypoint head.
        visible: (n, K) bool, the keypoints labeled v = 2; None without a keypoint head.
        masks: n COCO RLE dicts (size [height, width], counts str) of the hard masks; None
            without a mask head.
    """

    image_id: object
    file_name: str
    height: int
    width: int
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    keypoints: Optional[np.ndarray]
    visible: Optional[np.ndarray]
    masks: Optional[List[dict]] = None


def image_labels_to_dataset_dict(labels: ImageLabels) -> dict:
    """The detectron2 dataset dict of one image's labels (what ``load_coco_json`` gives back).

    Returns:
        dict with file_name, image_id, height, width, annotations (bbox XYXY_ABS, category_id
        = class id, iscrowd 0, score; with keypoints: keypoints as a flat [x, y, v] * K list
        (v = 2 visible, 0 not), num_keypoints and keypoint_scores; with masks: segmentation,
        a COCO RLE dict).
    """
    annotations = []
    for i in range(len(labels.boxes)):
        annotation = {
            "bbox": labels.boxes[i].tolist(),
            "bbox_mode": BoxMode.XYXY_ABS,
            "category_id": int(labels.classes[i]),
            "iscrowd": 0,
        }
        if labels.keypoints is not None:
            annotation.update(_keypoint_fields(labels.keypoints[i], labels.visible[i]))
        if labels.masks is not None:
            annotation["segmentation"] = dict(labels.masks[i])  # the converter edits it
        annotation["score"] = float(labels.scores[i])
        if labels.keypoints is not None:
            annotation["keypoint_scores"] = labels.keypoints[i, :, 2].tolist()
        annotations.append(annotation)
    return {
        "file_name": labels.file_name,
        "image_id": labels.image_id,
        "height": int(labels.height),
        "width": int(labels.width),
        "annotations": annotations,
    }


def _keypoint_fields(keypoints: np.ndarray, visible: np.ndarray) -> dict:
    """One instance's keypoints and num_keypoints, in detectron2's dataset-dict form."""
    flat = []
    for (x, y, _), v in zip(keypoints.tolist(), visible.tolist()):
        # v = 0: ignored in training; the position is kept (see the module docstring).
        flat.extend((x, y, 2 if v else 0))
    return {"keypoints": flat, "num_keypoints": int(visible.sum())}


@contextlib.contextmanager
def _as_registered_dataset(dataset_dicts: List[dict], label_space: LabelSpace):
    """Register a block of dataset dicts under a throwaway name, for convert_to_coco_dict."""
    name = f"dd_annotation_block_{uuid.uuid4().hex}"  # never written anywhere
    DatasetCatalog.register(name, lambda: dataset_dicts)
    metadata = {"thing_classes": list(label_space.thing_classes)}
    if label_space.contiguous_mapping() is not None:
        metadata["thing_dataset_id_to_contiguous_id"] = label_space.contiguous_mapping()
    MetadataCatalog.get(name).set(**metadata)
    converter_logger = logging.getLogger("detectron2.data.datasets.coco")
    level = converter_logger.level
    converter_logger.setLevel(logging.WARNING)  # it logs twice per block
    try:
        yield name
    finally:
        converter_logger.setLevel(level)
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


# Annotation fields the converter does not write, added back after it.
_EXTRA_KEYS = ("score", "keypoint_scores")


def _convert_block(block: List[ImageLabels], label_space: LabelSpace) -> dict:
    dataset_dicts = [image_labels_to_dataset_dict(x) for x in block]
    extras = [
        {k: ann[k] for k in _EXTRA_KEYS if k in ann}
        for record in dataset_dicts
        for ann in record["annotations"]
    ]
    with _as_registered_dataset(dataset_dicts, label_space) as name:
        coco = convert_to_coco_dict(name)
    annotations = coco.get("annotations", [])
    # The converter keeps the order of images and of their annotations.
    assert len(annotations) == len(extras)
    for ann, extra in zip(annotations, extras):
        ann.update(extra)
    coco["annotations"] = annotations
    return coco


def write_coco_json(
    path: str,
    images: Iterable[ImageLabels],
    label_space: LabelSpace,
    info: dict,
    block_size: int = 500,
) -> Tuple[int, int]:
    """Write one COCO JSON (instances, with keypoints when the labels have them), atomically, in
    blocks of images.

    Args:
        path: the file to write.
        images: every image's labels, in the order to write (images without labels included).
        label_space: categories, and keypoints for keypoint labels.
        info: the file's "info" entry (keep it free of timestamps for reproducible files).
        block_size: images converted at a time.

    Returns:
        (number of images, number of annotations) written.
    """
    num_images = num_annotations = 0
    categories = None
    # Annotations wait in an anonymous temporary file (unique, removed on close) until the
    # images are written.
    with (
        atomic_write(path) as out,
        tempfile.TemporaryFile("w+", dir=os.path.dirname(path) or ".") as side,
    ):
        out.write('{"info": ' + json.dumps(info) + ', "images": [')

        def flush(block):
            nonlocal num_images, num_annotations, categories
            coco = _convert_block(block, label_space)
            categories = coco["categories"]
            for entry in coco["images"]:
                out.write((", " if num_images else "") + json.dumps(entry))
                num_images += 1
            for entry in coco["annotations"]:
                num_annotations += 1
                entry["id"] = num_annotations  # global, in writing order
                side.write((", " if num_annotations > 1 else "") + json.dumps(entry))

        block = []
        for labels in images:
            block.append(labels)
            if len(block) == block_size:
                flush(block)
                block = []
        if block or categories is None:
            flush(block)  # an empty block still yields the categories
        out.write('], "annotations": [')
        side.seek(0)
        shutil.copyfileobj(side, out)
        if label_space.keypoint_names:
            for category in categories:
                category["keypoints"] = list(label_space.keypoint_names)
                category["skeleton"] = [list(pair) for pair in label_space.skeleton]
        out.write('], "categories": ' + json.dumps(categories) + "}\n")
    return num_images, num_annotations
