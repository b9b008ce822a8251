"""Per-iteration counts of each data source, logged as EventStorage scalars."""

from collections import Counter
from typing import Iterable, Sequence

from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ..data.ratio_loader import SOURCE_KEY, SOURCES

__all__ = ["SourceCountingLoader"]


def _current_storage():
    """The active EventStorage, or None outside a ``with EventStorage()`` block."""
    try:
        return get_event_storage()
    except (AssertionError, IndexError):  # IndexError when asserts are stripped (python -O)
        return None


class SourceCountingLoader:
    """Wrap a train loader; put the realised per-source image counts of every batch in storage.

    For every batch it yields, inside a training loop (an active EventStorage), it writes:

    - ``dd/<source>_images`` for each source ("labeled", "generated"): the number of images of
      that source in the iteration's GLOBAL minibatch, counted from the records'
      ``dataset_source`` tags on every rank and summed over ranks;
    - ``dd/labeled_fraction``: labeled / all images of that global minibatch.

    They are scalars of the iteration (no smoothing), so detectron2's writers put them in
    metrics.json and TensorBoard. With more than one rank the counts are summed by one small
    ``comm.all_gather`` per iteration: every rank iterates its loader once per step, as
    SimpleTrainer does. Outside an EventStorage nothing is counted nor gathered.
    """

    def __init__(self, loader: Iterable[list], sources: Sequence[str] = SOURCES):
        """
        Args:
            loader: yields lists of records tagged with ``record["dataset_source"]``.
            sources: the tags to count; a record with another tag is an error.
        """
        self._loader = loader
        self._sources = tuple(sources)

    def __getattr__(self, name):
        # Expose the wrapped loader's attributes (e.g. the ratio loader's plan).
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._loader, name)

    def __iter__(self):
        for batch in self._loader:
            storage = _current_storage()
            if storage is not None:
                self._put_counts(storage, batch)
            yield batch

    def _put_counts(self, storage, batch: list) -> None:
        counts = Counter(record.get(SOURCE_KEY) for record in batch)
        unknown = set(counts) - set(self._sources)
        if unknown:
            raise ValueError(
                f"records tagged {sorted(map(str, unknown))} in a batch; expected {self._sources}"
            )
        local = [counts.get(source, 0) for source in self._sources]
        if comm.get_world_size() > 1:
            local = [sum(column) for column in zip(*comm.all_gather(local))]
        total = sum(local)
        for source, n in zip(self._sources, local):
            storage.put_scalar(f"dd/{source}_images", n, smoothing_hint=False)
        if "labeled" in self._sources and total > 0:
            labeled = local[self._sources.index("labeled")]
            storage.put_scalar("dd/labeled_fraction", labeled / total, smoothing_hint=False)
