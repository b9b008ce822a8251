"""
The annotation stage as "an evaluator that writes a file", run by detectron2's
``inference_on_dataset`` (which brings progress with ETA and sharding across ranks).
"""

import logging
import os

from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..modeling.heads import Heads
from .progress import PredictionChunk, ProgressStore

__all__ = ["AnnotationEvaluator"]

logger = logging.getLogger(__name__)


class AnnotationEvaluator(DatasetEvaluator):
    """Collects every image's detections compactly and saves them every ``save_period`` images
    (per process), so an interrupted run loses at most that many; at the end, gathers to rank 0
    the names of the chunks every process wrote, and counts.

    Memory is bounded by ``save_period`` images of detections (no heatmaps, no images; masks
    as RLE, each image's dense masks encoded as soon as it is processed).
    """

    def __init__(self, store: ProgressStore, heads: Heads, save_period: int):
        """
        Args:
            store: the run's progress directory.
            heads: the teacher's heads (what a chunk keeps).
            save_period: images per saved chunk, >= 1.
        """
        self._store = store
        self._heads = heads
        self._save_period = save_period
        self.reset()

    def reset(self):
        self._chunk = self._new_chunk()
        self._written = []
        self._num_done = 0
        self._num_failed = 0

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            if "error" in out:
                logger.warning(
                    "Skipping image %s (id %s): %s", inp["file_name"], inp["image_id"], out["error"]
                )
                self._chunk.add_failure(
                    inp["dd_index"], inp["image_id"], inp["file_name"], out["error"]
                )
                self._num_failed += 1
            else:
                self._chunk.add(
                    inp["dd_index"], inp["image_id"], inp["height"], inp["width"], out["instances"]
                )
            self._num_done += 1
            if len(self._chunk) >= self._save_period:
                self._save()

    def _save(self):
        if len(self._chunk):
            path = self._store.write(self._chunk, self._heads.num_keypoints)
            self._written.append(os.path.basename(path))
            self._chunk = self._new_chunk()

    def _new_chunk(self) -> PredictionChunk:
        return PredictionChunk(keypoints=self._heads.keypoint, masks=self._heads.mask)

    def evaluate(self):
        """
        Returns:
            on rank 0, {"chunks": names of the chunks written by every process in this run,
            "images": images done, "failed": images that could not be read}; {} elsewhere.
            Every process's chunks are on disk when rank 0 gets their names (a rank sends them
            after its last write), so rank 0 opens them by name, never by a directory listing
            that may lag on a shared filesystem.
        """
        self._save()
        gathered = comm.gather((self._written, self._num_done, self._num_failed), dst=0)
        if not comm.is_main_process():
            return {}
        logger.info(
            "Labeled %d images in this run (%d unreadable), by process: %s",
            sum(g[1] for g in gathered),
            sum(g[2] for g in gathered),
            [g[1] for g in gathered],
        )
        return {
            "chunks": sorted(name for g in gathered for name in g[0]),
            "images": sum(g[1] for g in gathered),
            "failed": sum(g[2] for g in gathered),
        }
