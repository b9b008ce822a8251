"""
Inputs of the annotation stage: the images to label, read at their own size, and bad files
passed on as errors instead of stopping the run.
"""
import logging
from typing import List, Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import check_image_size, read_image
from torch import nn

__all__ = ["images_to_label", "ReadImageOrError", "SkipUnreadable"]

logger = logging.getLogger(__name__)


def images_to_label(dataset_names: Sequence[str]) -> List[dict]:
    """The images of the datasets to label, annotations dropped.

    Args:
        dataset_names: registered datasets (DD.ANNOTATE.DATASETS).

    Returns:
        one dict per image: image_id, file_name, height, width (when the dataset has them),
        and dd_index, its position in this list.

    Raises:
        KeyError: a name is not registered.
        ValueError: no image at all, an image without image_id, or an image_id in two places.
    """
    if len(dataset_names) == 0:
        raise ValueError("DD.ANNOTATE.DATASETS is empty: name the unlabeled datasets to label.")
    images, where = [], {}
    for name in dataset_names:
        if name not in DatasetCatalog.list():
            raise KeyError(f"DD.ANNOTATE.DATASETS: dataset {name!r} is not registered.")
        for record in DatasetCatalog.get(name):
            image_id = record.get("image_id")
            if not isinstance(image_id, (int, str)) or isinstance(image_id, bool):
                raise ValueError(
                    f"DD.ANNOTATE.DATASETS: image {record.get('file_name')} of {name!r} has image_id "
                    f"{image_id!r}; the generated labels need an int or str id per image."
                )
            if image_id in where:
                raise ValueError(
                    f"DD.ANNOTATE.DATASETS: image_id {image_id!r} is in {where[image_id]!r} and again in "
                    f"{name!r}; one JSON needs unique image ids."
                )
            where[image_id] = name
            entry = {"image_id": image_id, "file_name": record["file_name"], "dd_index": len(images)}
            for key in ("height", "width"):
                if key in record:
                    entry[key] = int(record[key])
            images.append(entry)
    if not images:
        raise ValueError(f"DD.ANNOTATE.DATASETS={tuple(dataset_names)} has no images to label.")
    return images


class ReadImageOrError:
    """Dataset mapper of the annotation stage: the image at its own size (the views are made
    from the original, not from a resized copy), or the reason it cannot be used."""

    def __init__(self, image_format: str):
        """
        Args:
            image_format: INPUT.FORMAT, the channel order the model expects.
        """
        self.image_format = image_format

    def __call__(self, record: dict) -> dict:
        """
        Returns:
            {image_id, file_name, dd_index} plus either image (CHW uint8 tensor), height, width,
            or error (a one-line reason).
        """
        out = {k: record[k] for k in ("image_id", "file_name", "dd_index")}
        try:
            image = read_image(record["file_name"], format=self.image_format)
            # The dataset's recorded size must match: the labels are written in that size.
            check_image_size(dict(record), image)
        except Exception as e:  # any unreadable file: missing, truncated, not an image, ...
            out["error"] = f"{type(e).__name__}: {e}".replace("\n", " ")
            return out
        out["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        out["height"], out["width"] = image.shape[:2]
        return out


class SkipUnreadable(nn.Module):
    """Runs a model on the readable inputs of a batch; an unreadable one gets {"error": ...}."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: List[dict]) -> List[dict]:
        readable = [x for x in inputs if "error" not in x]
        outputs = iter(self.model(readable) if readable else ())
        return [{"error": x["error"]} if "error" in x else next(outputs) for x in inputs]
