"""
The resumable record of an annotation run: raw detections, a few hundred bytes per instance.

``<output>/progress/`` holds

- ``fingerprint.json``: what produced the records (model, views, datasets); a rerun with another
  setting refuses to mix its records with these;
- ``chunk-<index>.npz``: the detections of a group of images, written atomically
  (``atomic_write``), named after the position of its first image in the list of images to
  label; a rerun skips every image that is in a chunk. An image is in one chunk when the run
  went as planned; should one be in several (e.g. two jobs labeling into one folder), the
  first chunk in name order counts and the others are ignored (labels.py).

Per chunk: ``meta`` (JSON: image ids with their size, and images that could not be read with the
reason), ``num_instances`` (per image), ``boxes`` (N, 4) XYXY, ``scores`` (N,), ``classes`` (N,),
``keypoints`` (N, K, 3) x, y, score (keypoint models), all in image coordinates, as the model
returned them (float32). Thresholds are applied later, so they can change without running the
model again.

Mask models also store their hard masks (``pred_masks``, image size), compactly: each instance's
mask as COCO's compressed RLE string (``pycocotools.mask.encode``; its size is the image's),
``mask_rle`` (uint8) holding every instance's string one after another and ``mask_rle_lengths``
(N,) their lengths. A keypoint-only model's chunks are as they always were.
"""

import copy
import json
import logging
import os
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set

import numpy as np
import pycocotools.mask as mask_util

from ..utils import atomic_write, write_atomic

__all__ = ["PredictionChunk", "ProgressStore", "encode_masks", "split_rles"]

logger = logging.getLogger(__name__)


def encode_masks(masks: np.ndarray) -> List[bytes]:
    """COCO compressed RLE strings of hard masks.

    Args:
        masks: (n, H, W) bool or {0, 1} array.

    Returns:
        n ASCII strings (bytes), each decodable with the size (H, W) by ``pycocotools.mask``.
    """
    if len(masks) == 0:
        return []
    fortran = np.asfortranarray(np.moveaxis(np.asarray(masks, dtype=np.uint8), 0, -1))
    return [rle["counts"] for rle in mask_util.encode(fortran)]


def split_rles(rle: np.ndarray, lengths: np.ndarray) -> List[str]:
    """A chunk's stored masks as one RLE string per instance, in order.

    Args:
        rle, lengths: a chunk's ``mask_rle`` and ``mask_rle_lengths``.

    Returns:
        the ``counts`` of each instance's COCO RLE (its size is its image's).
    """
    data = rle.tobytes()
    ends = np.cumsum(lengths, dtype=np.int64)
    return [data[int(e - n) : int(e)].decode("ascii") for n, e in zip(lengths, ends)]


class PredictionChunk:
    """The detections of a group of images, collected one image at a time."""

    def __init__(self, keypoints: bool = True, masks: bool = False):
        """
        Args:
            keypoints: store pred_keypoints (a keypoint model).
            masks: store pred_masks, as RLE (a mask model).
        """
        self.images: List[list] = []  # [image_id, height, width]
        self.failed: List[list] = []  # [image_id, file_name, reason]
        self.first_index: Optional[int] = None
        self.keypoints, self.masks = keypoints, masks
        self._arrays: Dict[str, list] = {"boxes": [], "scores": [], "classes": []}
        if keypoints:
            self._arrays["keypoints"] = []
        if masks:
            self._mask_rles: List[bytes] = []
        self._num_instances: List[int] = []

    def __len__(self) -> int:
        return len(self.images) + len(self.failed)

    def _note_index(self, index: int) -> None:
        self.first_index = index if self.first_index is None else min(self.first_index, index)

    def add(self, index: int, image_id, height: int, width: int, instances) -> None:
        """Add an image's detections.

        Args:
            index: the image's position in the list of images to label (names the chunk).
            image_id: its id.
            height, width: its size.
            instances: detectron2 Instances with pred_boxes, scores, pred_classes, and
                pred_keypoints / pred_masks (hard masks of the image's size) as the chunk keeps.
        """
        self._note_index(index)
        self.images.append([image_id, int(height), int(width)])
        instances = instances.to("cpu")
        self._arrays["boxes"].append(
            instances.pred_boxes.tensor.numpy().astype(np.float32, copy=False)
        )
        self._arrays["scores"].append(instances.scores.numpy().astype(np.float32, copy=False))
        self._arrays["classes"].append(instances.pred_classes.numpy().astype(np.int32, copy=False))
        if self.keypoints:
            self._arrays["keypoints"].append(
                instances.pred_keypoints.numpy().astype(np.float32, copy=False)
            )
        if self.masks:
            self._mask_rles.extend(encode_masks(self._hard_masks(instances, height, width)))
        self._num_instances.append(len(instances))

    @staticmethod
    def _hard_masks(instances, height: int, width: int) -> np.ndarray:
        if not instances.has("pred_masks"):
            raise ValueError(
                "MODEL.MASK_ON is True, but the model's output has no pred_masks to label with."
            )
        masks = instances.pred_masks.numpy()
        if masks.shape[1:] != (int(height), int(width)):
            raise ValueError(
                f"pred_masks of shape {tuple(masks.shape)}: expected hard masks of the image's "
                f"size {int(height)} x {int(width)} (detectron2's postprocessed output)."
            )
        return masks

    def add_failure(self, index: int, image_id, file_name: str, reason: str) -> None:
        """Record an image that could not be read (it gets no labels and is reported)."""
        self._note_index(index)
        self.failed.append([image_id, file_name, reason])

    def arrays(self, num_keypoints: int) -> Dict[str, np.ndarray]:
        """
        Args:
            num_keypoints: K, for the shape of an empty keypoint array (keypoint chunks).

        Returns:
            the chunk's arrays, as stored (see the module docstring).
        """

        def cat(name, empty_shape, dtype):
            parts = self._arrays[name]
            return np.concatenate(parts) if parts else np.zeros(empty_shape, dtype)

        meta = {"images": self.images, "failed": self.failed}
        arrays = {
            "meta": np.array(json.dumps(meta)),
            "num_instances": np.asarray(self._num_instances, dtype=np.int32),
            "boxes": cat("boxes", (0, 4), np.float32),
            "scores": cat("scores", (0,), np.float32),
            "classes": cat("classes", (0,), np.int32),
        }
        if self.keypoints:
            arrays["keypoints"] = cat("keypoints", (0, num_keypoints, 3), np.float32)
        if self.masks:
            arrays["mask_rle"] = np.frombuffer(b"".join(self._mask_rles), dtype=np.uint8)
            arrays["mask_rle_lengths"] = np.asarray(
                [len(r) for r in self._mask_rles], dtype=np.int64
            )
        return arrays


class ProgressStore:
    """The ``progress/`` directory of an annotation run."""

    FINGERPRINT = "fingerprint.json"

    def __init__(self, root: str):
        """
        Args:
            root: the directory (created when missing).
        """
        self.root = root
        os.makedirs(root, exist_ok=True)

    def _fingerprint_path(self) -> str:
        return os.path.join(self.root, self.FINGERPRINT)

    def write_fingerprint_if_missing(self, fingerprint: dict) -> None:
        """Record what produces this run's detections (only the first run of a directory)."""
        if not os.path.exists(self._fingerprint_path()):
            write_atomic(
                self._fingerprint_path(), json.dumps(fingerprint, indent=1, sort_keys=True)
            )

    def check_fingerprint(
        self, fingerprint: dict, normalize: Callable[[dict], dict] = lambda fp: fp
    ) -> dict:
        """
        Args:
            fingerprint: what produces this run's detections.
            normalize: applied to the saved fingerprint first (e.g. to drop keys that an
                earlier version recorded, or records that are not compared).

        Returns:
            the saved fingerprint, as read (before ``normalize``).

        Raises:
            ValueError: the directory holds detections made with another setting; the message
                names the differing keys.
        """
        with open(self._fingerprint_path()) as f:
            raw = json.load(f)
        saved = normalize(copy.deepcopy(raw))
        if saved != fingerprint:
            keys = sorted(
                k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k)
            )
            raise ValueError(
                f"{self.root} holds detections of an annotation run with different settings "
                f"({', '.join(keys)}). Rerun with the same settings to resume, or use another "
                "--output (or delete that progress directory) to start over."
            )
        return raw

    def chunk_names(self) -> List[str]:
        """The finished chunk files in the directory listing, in name order.

        On a shared filesystem a listing can lag behind what other machines wrote (NFS clients
        cache directory listings): list once, on one process, at the start of a run, and pass
        on the names of the chunks written since (see ``AnnotationEvaluator``).
        """
        names = os.listdir(self.root)
        return sorted(n for n in names if n.startswith("chunk-") and n.endswith(".npz"))

    def chunk_paths(self, names: Optional[Sequence[str]] = None) -> List[str]:
        """Paths of the chunks ``names`` (default: the listing), in name order."""
        names = self.chunk_names() if names is None else sorted(set(names))
        return [os.path.join(self.root, n) for n in names]

    def write(self, chunk: PredictionChunk, num_keypoints: int) -> str:
        """Write a chunk atomically.

        Returns:
            its path.
        """
        path = os.path.join(self.root, f"chunk-{chunk.first_index:09d}.npz")
        with atomic_write(path, "wb") as f:
            np.savez(f, **chunk.arrays(num_keypoints))
        return path

    @staticmethod
    def read_meta(path: str) -> dict:
        with np.load(path) as data:
            return json.loads(str(data["meta"]))

    def finished_image_ids(self, names: Optional[Sequence[str]] = None) -> Set:
        """Ids of every image in the chunks ``names`` (default: the listing), labeled or failed."""
        done = set()
        for path in self.chunk_paths(names):
            meta = self.read_meta(path)
            done.update(i for i, _, _ in meta["images"])
            done.update(i for i, _, _ in meta["failed"])
        return done

    def iter_chunks(
        self, keys=("num_instances", "scores"), names: Optional[Sequence[str]] = None
    ) -> Iterator[dict]:
        """Yield each chunk's meta and the arrays in ``keys`` (others are not read), in name order.

        Args:
            keys: the arrays to read.
            names: the chunk file names (default: the listing).
        """
        for path in self.chunk_paths(names):
            with np.load(path) as data:
                out = {k: data[k] for k in keys}
                out["meta"] = json.loads(str(data["meta"]))
            yield out
