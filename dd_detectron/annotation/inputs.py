"""
Inputs of the annotation stage: the images to label, read at their own size (and, optionally,
made into their views in the DataLoader's workers), and images that cannot be read or labeled
(out of memory) passed on as errors instead of stopping the run.
"""

import logging
import time
from typing import List, Optional, Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import check_image_size, read_image
from detectron2.modeling import DatasetMapperTTA
from detectron2.structures import Instances
from torch import nn

__all__ = [
    "images_to_label",
    "ReadImageOrError",
    "SkipUnreadable",
    "annotation_mapper",
    "is_out_of_memory",
    "throughput",
]

# The fields of the model's output that the annotation stage keeps (progress.py stores these, the
# masks as RLE); the rest (pred_keypoint_heatmaps: R x K x 56 x 56 floats, ~21 MB per image)
# stays on the device.
KEPT_FIELDS = ("pred_boxes", "scores", "pred_classes", "pred_keypoints", "pred_masks")

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
        ValueError: no image at all (also for an empty list, which AnnotationSettings refuses
            first), an image without image_id, or an image_id in two places.
    """
    images, where = [], {}
    for name in dataset_names:
        if name not in DatasetCatalog.list():
            raise KeyError(f"DD.ANNOTATE.DATASETS: dataset {name!r} is not registered.")
        for record in DatasetCatalog.get(name):
            image_id = record.get("image_id")
            if not isinstance(image_id, (int, str)) or isinstance(image_id, bool):
                raise ValueError(
                    f"DD.ANNOTATE.DATASETS: image {record.get('file_name')} of {name!r} "
                    "has image_id "
                    f"{image_id!r}; the generated labels need an int or str id per image."
                )
            if image_id in where:
                raise ValueError(
                    f"DD.ANNOTATE.DATASETS: image_id {image_id!r} is in {where[image_id]!r} "
                    "and again in "
                    f"{name!r}; one JSON needs unique image ids."
                )
            where[image_id] = name
            entry = {
                "image_id": image_id,
                "file_name": record["file_name"],
                "dd_index": len(images),
            }
            for key in ("height", "width"):
                if key in record:
                    entry[key] = int(record[key])
            images.append(entry)
    if not images:
        raise ValueError(f"DD.ANNOTATE.DATASETS={tuple(dataset_names)} has no images to label.")
    return images


class ReadImageOrError:
    """Dataset mapper of the annotation stage: the image at its own size (the views are made
    from the original, not from a resized copy), or its views, or the reason it cannot be used."""

    def __init__(self, image_format: str, tta_mapper: Optional[DatasetMapperTTA] = None):
        """
        Args:
            image_format: INPUT.FORMAT, the channel order the model expects.
            tta_mapper: when given, the views are made here (in the DataLoader's workers) with
                it, the same mapper the keypoint ensembler would call, so the same views.
        """
        self.image_format = image_format
        self.tta_mapper = tta_mapper

    def __call__(self, record: dict) -> dict:
        """
        Returns:
            {image_id, file_name, dd_index} plus height, width and either image (CHW uint8
            tensor) or, with a tta_mapper, views (dicts with image, height, width) and
            transforms (one per view); or error (a one-line reason).
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
        if self.tta_mapper is not None:
            # The original is not passed on: only its views are used.
            size = {"height": out["height"], "width": out["width"]}
            views = self.tta_mapper(dict(size, image=out.pop("image")))
            out["transforms"] = [v.pop("transforms") for v in views]
            out["views"] = views
        return out


def annotation_mapper(cfg) -> ReadImageOrError:
    """The annotation loader's mapper: views in the workers when DD.ANNOTATE.VIEWS_IN_WORKERS.

    Args:
        cfg: the config whose TEST.AUG holds the views used (``views_config``), INPUT.FORMAT.
    """
    tta_mapper = DatasetMapperTTA(cfg) if cfg.DD.ANNOTATE.VIEWS_IN_WORKERS else None
    return ReadImageOrError(cfg.INPUT.FORMAT, tta_mapper)


def is_out_of_memory(error: BaseException) -> bool:
    """An allocation failure: CUDA (torch.cuda.OutOfMemoryError, or a RuntimeError saying "out
    of memory", as older torch and cuDNN raise it) or host memory (MemoryError, or torch's CPU
    allocator's "can't allocate memory")."""
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and (
        "out of memory" in message or "can't allocate memory" in message
    )


def throughput(timing: dict) -> dict:
    """Images/s and the share of time the model waited for its input.

    Args:
        timing: ``SkipUnreadable.timing``: data_wait_s, model_s, images.

    Returns:
        the timing plus images_per_s (images over wait + model time) and wait_share (the
        share of that time spent waiting; near 0: the model is the bottleneck).
    """
    total = timing["data_wait_s"] + timing["model_s"]
    return dict(
        timing,
        images_per_s=timing["images"] / total if total > 0 else 0.0,
        wait_share=timing["data_wait_s"] / total if total > 0 else 0.0,
    )


class SkipUnreadable(nn.Module):
    """Runs a model one image at a time; an image that could not be read, or that the model runs
    out of memory on, gets {"error": reason} (the evaluator records and reports it, and the run
    goes on). Any other exception stops the run, as it would stop it on every image.

    The outputs keep only ``KEPT_FIELDS`` and are moved to the CPU (what the progress store
    keeps; the heatmaps are never copied off the device).

    ``timing``: seconds spent in the model (outputs on the CPU, so a GPU's queued work is
    included) and waiting between model calls (for the loader, mostly; also the evaluator's
    bookkeeping; from the first batch on), and the number of images the model ran on.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.timing = {"data_wait_s": 0.0, "model_s": 0.0, "images": 0}
        self._last_end: Optional[float] = None

    def forward(self, inputs: List[dict]) -> List[dict]:
        start = time.perf_counter()
        if self._last_end is not None:
            self.timing["data_wait_s"] += start - self._last_end
        outputs = [{"error": x["error"]} if "error" in x else self._run_one(x) for x in inputs]
        self._last_end = time.perf_counter()
        self.timing["model_s"] += self._last_end - start
        return outputs

    def _run_one(self, x: dict) -> dict:
        self.timing["images"] += 1
        try:
            output = self.model([x])[0]
            instances = output["instances"]
            kept = {k: instances.get(k) for k in KEPT_FIELDS if instances.has(k)}
            return {"instances": Instances(instances.image_size, **kept).to("cpu")}
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            # The first line: CUDA's message goes on with the allocator's statistics.
            error = "out of memory: " + f"{type(e).__name__}: {e}".split("\n")[0][:300]
        # Outside the except block: the exception (and the tensors its frames hold) is gone.
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        logger.warning(
            "Out of memory on %s (id %s): recorded as failed, skipped.",
            x["file_name"],
            x["image_id"],
        )
        return {"error": error}
