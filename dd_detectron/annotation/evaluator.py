"""
The annotation stage as "an evaluator that writes a file", run by detectron2's
``inference_on_dataset`` (which brings progress with ETA and sharding across ranks).
"""
import logging
from typing import Callable

from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from .progress import PredictionChunk, ProgressStore

__all__ = ["AnnotationEvaluator"]

logger = logging.getLogger(__name__)


class AnnotationEvaluator(DatasetEvaluator):
    """Collects every image's detections compactly and saves them every ``save_period`` images
    (per process), so an interrupted run loses at most that many; at the end, rank 0 turns all
    saved detections into the labels.

    Memory is bounded by ``save_period`` images of detections (no heatmaps, no images).
    """

    def __init__(self, store: ProgressStore, num_keypoints: int, save_period: int, finalize: Callable[[], dict]):
        """
        Args:
            store: the run's progress directory.
            num_keypoints: K.
            save_period: images per saved chunk, >= 1.
            finalize: called on rank 0 once every process has saved its last chunk; returns
                the results dict.
        """
        self._store = store
        self._num_keypoints = num_keypoints
        self._save_period = save_period
        self._finalize = finalize
        self.reset()

    def reset(self):
        self._chunk = PredictionChunk()
        self._num_done = 0
        self._num_failed = 0

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            if "error" in out:
                logger.warning("Skipping image %s (id %s): %s", inp["file_name"], inp["image_id"], out["error"])
                self._chunk.add_failure(inp["dd_index"], inp["image_id"], inp["file_name"], out["error"])
                self._num_failed += 1
            else:
                self._chunk.add(inp["dd_index"], inp["image_id"], inp["height"], inp["width"], out["instances"])
            self._num_done += 1
            if len(self._chunk) >= self._save_period:
                self._save()

    def _save(self):
        if len(self._chunk):
            self._store.write(self._chunk, self._num_keypoints)
            self._chunk = PredictionChunk()

    def evaluate(self):
        self._save()
        # Every process's chunks are on disk before rank 0 reads them; the counts travel to
        # rank 0 for the log.
        comm.synchronize()
        counts = comm.gather((self._num_done, self._num_failed), dst=0)
        if not comm.is_main_process():
            return {}
        logger.info(
            "Labeled %d images in this run (%d unreadable), by process: %s",
            sum(c[0] for c in counts), sum(c[1] for c in counts), [c[0] for c in counts],
        )
        return self._finalize()
