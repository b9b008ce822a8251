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
``keypoints`` (N, K, 3) x, y, score, all in image coordinates, as the model returned them
(float32). Thresholds are applied later, so they can change without running the model again.
"""

import json
import logging
import os
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set

import numpy as np

from ..utils import atomic_write, write_atomic

__all__ = ["PredictionChunk", "ProgressStore"]

logger = logging.getLogger(__name__)


class PredictionChunk:
    """The detections of a group of images, collected one image at a time."""

    def __init__(self):
        self.images: List[list] = []  # [image_id, height, width]
        self.failed: List[list] = []  # [image_id, file_name, reason]
        self.first_index: Optional[int] = None
        self._arrays: Dict[str, list] = {"boxes": [], "scores": [], "classes": [], "keypoints": []}
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
            instances: detectron2 Instances with pred_boxes, scores, pred_classes, pred_keypoints.
        """
        self._note_index(index)
        self.images.append([image_id, int(height), int(width)])
        instances = instances.to("cpu")
        self._arrays["boxes"].append(
            instances.pred_boxes.tensor.numpy().astype(np.float32, copy=False)
        )
        self._arrays["scores"].append(instances.scores.numpy().astype(np.float32, copy=False))
        self._arrays["classes"].append(instances.pred_classes.numpy().astype(np.int32, copy=False))
        self._arrays["keypoints"].append(
            instances.pred_keypoints.numpy().astype(np.float32, copy=False)
        )
        self._num_instances.append(len(instances))

    def add_failure(self, index: int, image_id, file_name: str, reason: str) -> None:
        """Record an image that could not be read (it gets no labels and is reported)."""
        self._note_index(index)
        self.failed.append([image_id, file_name, reason])

    def arrays(self, num_keypoints: int) -> Dict[str, np.ndarray]:
        """
        Args:
            num_keypoints: K, for the shape of an empty keypoint array.

        Returns:
            the chunk's arrays, as stored (see the module docstring).
        """

        def cat(name, empty_shape, dtype):
            parts = self._arrays[name]
            return np.concatenate(parts) if parts else np.zeros(empty_shape, dtype)

        meta = {"images": self.images, "failed": self.failed}
        return {
            "meta": np.array(json.dumps(meta)),
            "num_instances": np.asarray(self._num_instances, dtype=np.int32),
            "boxes": cat("boxes", (0, 4), np.float32),
            "scores": cat("scores", (0,), np.float32),
            "classes": cat("classes", (0,), np.int32),
            "keypoints": cat("keypoints", (0, num_keypoints, 3), np.float32),
        }


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
    ) -> None:
        """
        Args:
            fingerprint: what produces this run's detections.
            normalize: applied to the saved fingerprint first (e.g. to drop keys that an
                earlier version recorded).

        Raises:
            ValueError: the directory holds detections made with another setting; the message
                names the differing keys.
        """
        with open(self._fingerprint_path()) as f:
            saved = normalize(json.load(f))
        if saved != fingerprint:
            keys = sorted(
                k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k)
            )
            raise ValueError(
                f"{self.root} holds detections of an annotation run with different settings "
                f"({', '.join(keys)}). Rerun with the same settings to resume, or use another "
                "--output (or delete that progress directory) to start over."
            )

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
