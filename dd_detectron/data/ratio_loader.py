"""
The student's train loader: labeled and generated images at a fixed count in every minibatch.

Data Distillation retrains on the union of manually labeled and generated (pseudo-labeled) data,
with a fixed share of ground truth in every minibatch (the paper: 6 labeled : 4 generated).
detectron2's ``build_detection_train_loader`` draws from one pooled dataset, so the mix of a
batch is random; this module keeps one sampler per source and deals both sources' images to the
ranks from one plan that every rank computes identically. The exact semantics are in the
docstring of :func:`build_ratio_train_loader`.
"""

import itertools
import logging
import math
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.data import (
    DatasetCatalog,
    DatasetFromList,
    DatasetMapper,
    MapDataset,
    build_batch_data_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.build import filter_images_with_few_keypoints
from detectron2.utils import comm
from torch.utils.data.sampler import Sampler

from .head_checks import check_head_data

__all__ = [
    "SOURCE_KEY",
    "LABELED",
    "GENERATED",
    "RatioPlan",
    "SourceSlotSampler",
    "RatioTrainLoader",
    "build_ratio_train_loader",
]

logger = logging.getLogger(__name__)

# Every record of the student loader says where it comes from under this key (Detic's name).
SOURCE_KEY = "dataset_source"
LABELED = "labeled"
GENERATED = "generated"
SOURCES = (LABELED, GENERATED)


@dataclass(frozen=True)
class RatioPlan:
    """Who draws how many images of each source, per iteration; the same on every rank.

    The plan depends only on its three arguments, so every rank computes it without
    communication. See :func:`build_ratio_train_loader` for the rules.

    Attributes:
        total_batch_size: images per global minibatch (SOLVER.IMS_PER_BATCH), B.
        labeled_fraction: requested labeled share f (DD.STUDENT.LABELED_FRACTION), in (0, 1).
        world_size: number of ranks W; B must be divisible by W.
    """

    total_batch_size: int
    labeled_fraction: float
    world_size: int = 1

    def __post_init__(self):
        B, f, W = self.total_batch_size, self.labeled_fraction, self.world_size
        if not (isinstance(B, int) and B > 0):
            raise ValueError(f"SOLVER.IMS_PER_BATCH must be a positive integer, got {B!r}")
        if not (isinstance(W, int) and W > 0) or B % W != 0:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH={B} must be divisible by the number of ranks ({W})"
            )
        if not (isinstance(f, (int, float)) and 0.0 < f < 1.0):
            raise ValueError(
                f"DD.STUDENT.LABELED_FRACTION must be in the open interval (0, 1), got {f!r}"
            )
        L = self.num_labeled
        if L == 0 or L == B:
            source = "labeled" if L == 0 else "generated"
            raise ValueError(
                f"DD.STUDENT.LABELED_FRACTION={f} with SOLVER.IMS_PER_BATCH={B} gives "
                f"round({f} * {B}) = {L} labeled images per global minibatch, so no "
                f"{source} image would ever be drawn. Use a fraction in "
                f"[{0.5 / B:.4g}, {(B - 0.5) / B:.4g}) or a larger batch."
            )

    @property
    def num_labeled(self) -> int:
        """L = f * B rounded half up (f * B is first rounded to 9 decimals to drop float noise,
        so that 0.6 * 16 = 9.600000000000001 counts as 9.6)."""
        return int(math.floor(round(self.labeled_fraction * self.total_batch_size, 9) + 0.5))

    @property
    def num_generated(self) -> int:
        """G = B - L."""
        return self.total_batch_size - self.num_labeled

    @property
    def realised_fraction(self) -> float:
        """L / B: the labeled share of every global minibatch, hence of any run."""
        return self.num_labeled / self.total_batch_size

    @property
    def images_per_rank(self) -> int:
        """b = B / W."""
        return self.total_batch_size // self.world_size

    def global_count(self, source: str) -> int:
        """Images of ``source`` ("labeled" or "generated") in every global minibatch."""
        return self.num_labeled if source == LABELED else self.num_generated

    def counts(self, source: str) -> Tuple[int, ...]:
        """Per-rank images of ``source`` in every minibatch, indexed by rank.

        Labeled slots are dealt as evenly as possible, the remainder to the lowest ranks; each
        rank fills the rest of its b slots with generated images.
        """
        L, W, b = self.num_labeled, self.world_size, self.images_per_rank
        labeled = tuple(L // W + (1 if r < L % W else 0) for r in range(W))
        if source == LABELED:
            return labeled
        return tuple(b - n for n in labeled)

    def offset(self, source: str, rank: int) -> int:
        """Where ``rank``'s slots start inside the source's K slots of an iteration."""
        return sum(self.counts(source)[:rank])


class SourceSlotSampler(Sampler):
    """One source's infinite shuffled index stream, of which this rank takes its slots.

    The global stream is ``randperm(size) + randperm(size) + ...`` from a generator seeded
    with ``seed`` (so identical on every rank; one permutation is one pass). It is cut into
    consecutive blocks of ``per_batch`` positions, one block per iteration; this rank yields
    positions ``[offset, offset + count)`` of every block. With the offsets of a
    :class:`RatioPlan`, every stream position, hence every image of a pass, goes to exactly
    one rank.

    Like detectron2's TrainingSampler, it does not shard by DataLoader worker:
    detectron2's ToIterableDataset does that.
    """

    def __init__(self, size: int, per_batch: int, offset: int, count: int, *, seed: int):
        """
        Args:
            size: number of images of the source.
            per_batch: K, images of the source in every global minibatch (all ranks).
            offset: first of this rank's slots within a block, in [0, K).
            count: this rank's number of slots per block; offset + count <= K.
            seed: seed of the shuffle; must be the same on every rank.
        """
        if size <= 0:
            raise ValueError(f"SourceSlotSampler needs a non-empty source, got size={size}")
        if not (0 <= offset and 0 < count and offset + count <= per_batch):
            raise ValueError(
                f"slots [{offset}, {offset + count}) do not fit in {per_batch} per batch"
            )
        self._size = size
        self._per_batch = per_batch
        self._offset = offset
        self._count = count
        self._seed = int(seed)

    def _global_stream(self) -> Iterable[int]:
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            yield from torch.randperm(self._size, generator=g).tolist()

    def __iter__(self):
        stream = self._global_stream()
        start, stop = self._offset, self._offset + self._count
        while True:
            block = list(itertools.islice(stream, self._per_batch))
            yield from block[start:stop]


class RatioTrainLoader:
    """Iterable of this rank's student batches: its labeled images, then its generated ones.

    Attributes:
        plan: the :class:`RatioPlan` every rank follows.
        rank: the rank whose share this loader yields.
    """

    def __init__(
        self, plan: RatioPlan, rank: int, source_batches: Sequence[Tuple[str, Iterable[list]]]
    ):
        """
        Args:
            plan: the shared plan.
            rank: this rank.
            source_batches: (source name, iterable of per-rank source batches), for the
                sources this rank draws from, labeled first.
        """
        self.plan = plan
        self.rank = rank
        self._source_batches = list(source_batches)

    def __iter__(self):
        iterators = [iter(batches) for _, batches in self._source_batches]
        while True:
            batch = []
            for it in iterators:
                batch.extend(next(it))
            yield batch


def _tag(dataset_dicts: List[dict], source: str) -> List[dict]:
    # Shallow copies: the caller's dicts stay untouched, and no annotation is copied.
    return [dict(d, **{SOURCE_KEY: source}) for d in dataset_dicts]


def _split_workers(num_workers: int, counts: Sequence[int]) -> List[int]:
    """DataLoader workers per source, in proportion to its per-rank image count.

    Each source with images gets at least one worker when ``num_workers`` > 0 (so with one
    worker and two sources, two worker processes run).
    """
    active = [i for i, c in enumerate(counts) if c > 0]
    workers = [0] * len(counts)
    if num_workers <= 0:
        return workers
    if len(active) == 1:
        workers[active[0]] = num_workers
        return workers
    first, second = active
    if num_workers == 1:
        workers[first] = workers[second] = 1
        return workers
    share = round(num_workers * counts[first] / (counts[first] + counts[second]))
    workers[first] = min(num_workers - 1, max(1, share))
    workers[second] = num_workers - workers[first]
    return workers


def _generated_names(cfg) -> Tuple[str, ...]:
    """DD.STUDENT.GENERATED_DATASETS, checked to be registered names."""
    names = tuple(cfg.DD.STUDENT.GENERATED_DATASETS)
    if len(names) == 0:
        raise ValueError("DD.STUDENT.GENERATED_DATASETS is empty: a student needs generated data.")
    registered = set(DatasetCatalog.list())
    for name in names:
        if name not in registered:
            raise KeyError(
                f"DD.STUDENT.GENERATED_DATASETS: {name!r} is not a registered dataset. Paths "
                "(.json files, folder:<path>) are registered by "
                "dd_detectron.data.register_path_datasets(cfg), which the tools' setup calls."
            )
    return names


def _ratio_loader_from_config(cfg, mapper=None, *, labeled_dataset=None, generated_dataset=None):
    # Fail on a bad fraction before any dataset is read.
    RatioPlan(cfg.SOLVER.IMS_PER_BATCH, cfg.DD.STUDENT.LABELED_FRACTION, comm.get_world_size())
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(
            "The student's ratio loader samples each source like TrainingSampler; "
            f"DATALOADER.SAMPLER_TRAIN={cfg.DATALOADER.SAMPLER_TRAIN!r} is not supported."
        )
    min_keypoints = (
        cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
    )
    filter_empty = cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    if labeled_dataset is None:
        labeled_dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=filter_empty, min_keypoints=min_keypoints
        )
    if generated_dataset is None:
        names = _generated_names(cfg)
        try:
            # Keypoints filtered after the head checks: labels without keypoints for a keypoint
            # student get an error that says so, not detectron2's "no valid data".
            generated_dataset = get_detection_dataset_dicts(names, filter_empty=filter_empty)
        except AssertionError as e:  # detectron2's "empty" / "no valid data" checks
            raise ValueError(f"DD.STUDENT.GENERATED_DATASETS={tuple(names)}: {e}") from e
        check_head_data(cfg, generated_dataset, "DD.STUDENT.GENERATED_DATASETS", names)
        if min_keypoints > 0:
            generated_dataset = filter_images_with_few_keypoints(generated_dataset, min_keypoints)
    if cfg.MODEL.MASK_ON:
        # Only masks: detectron2 reads the labeled keypoints itself.
        check_head_data(
            cfg, labeled_dataset, "DATASETS.TRAIN", tuple(cfg.DATASETS.TRAIN), keypoints=False
        )
    if mapper is None:
        # Sets keypoint_hflip_indices from DATASETS.TRAIN's metadata, used for both sources.
        mapper = DatasetMapper(cfg, True)
    return {
        "labeled_dataset": labeled_dataset,
        "generated_dataset": generated_dataset,
        "mapper": mapper,
        "total_batch_size": cfg.SOLVER.IMS_PER_BATCH,
        "labeled_fraction": cfg.DD.STUDENT.LABELED_FRACTION,
        "aspect_ratio_grouping": cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        "num_workers": cfg.DATALOADER.NUM_WORKERS,
    }


@configurable(from_config=_ratio_loader_from_config)
def build_ratio_train_loader(
    labeled_dataset: List[dict],
    generated_dataset: List[dict],
    *,
    mapper,
    total_batch_size: int,
    labeled_fraction: float = 0.6,
    aspect_ratio_grouping: bool = True,
    num_workers: int = 0,
    seed: Optional[int] = None,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
) -> RatioTrainLoader:
    """Build the student's train loader over labeled + generated data.

    Called with a config, like detectron2's ``build_detection_train_loader(cfg)``: labeled =
    ``DATASETS.TRAIN``, generated = ``DD.STUDENT.GENERATED_DATASETS`` (registered names; .json
    paths are registered by ``register_path_datasets(cfg)``), both filtered as detectron2
    filters training data, mapper = ``DatasetMapper(cfg, is_train=True)`` (keypoint flip
    indices from DATASETS.TRAIN), B = ``SOLVER.IMS_PER_BATCH``, f =
    ``DD.STUDENT.LABELED_FRACTION``; keyword arguments override.

    Semantics (B global batch, f labeled fraction, W world size, b = B / W):

    1. Counts. Every global minibatch holds exactly L = round(f * B) labeled images (halves
       round up: L = floor(f * B + 1/2)) and G = B - L generated images, at every iteration.
       The realised labeled share is therefore exactly L / B in every minibatch and over any
       number of iterations. When f * B is not an integer, L / B differs from f by at most
       1 / (2B) and does not converge to f (the rounding is fixed, not dithered); e.g.
       B = 16, f = 0.6 gives L = 10, a share of 0.625. Pick B with f * B integral (B = 5,
       10, 20 for 0.6) to get f exactly. f must lie in (0, 1) and give 0 < L < B.
    2. Split across ranks. B must be divisible by W; every rank gets b images per iteration.
       The L labeled slots are dealt as evenly as possible, the remainder to the lowest ranks:
       rank r gets l_r = L // W + (1 if r < L % W else 0) labeled and g_r = b - l_r generated
       images, at every iteration (a rank may get only one source when L < W or l_r = b).
       The plan (:class:`RatioPlan`) depends only on (B, f, W), so all ranks agree on it
       without communication.
    3. Sampling. Each source has its own infinite stream: random permutations of its images
       (one permutation = one pass), concatenated, from a torch generator seeded with a seed
       shared by all ranks (``seed``, or ``comm.shared_random_seed()``) plus the source's index
       (0 labeled, 1 generated). Iteration t uses the stream positions [t*K, (t+1)*K) of a
       source with K = L or G images per global minibatch; rank r takes the l_r (or g_r)
       positions after those of ranks 0..r-1. So every position is drawn by exactly one rank:
       within one pass over a source, every image is drawn exactly once across all ranks, and
       ranks never draw the same image within a pass. The passes of the two sources run
       independently: a source with few images for its K starts new passes more often (its
       images repeat more), and neither starves since they give exactly L and G per batch.
    4. Aspect-ratio grouping (``aspect_ratio_grouping``): detectron2's AspectRatioGroupedDataset,
       per rank and per source: a rank's l_r labeled images are all landscape or all portrait,
       likewise its g_r generated images; the two groups may differ. Grouping changes the
       iteration in which an image is used (it waits in its bucket), never which rank uses it
       nor the counts of 1 and 2.
    5. Records. Each rank gets a list of b dicts produced by ``mapper``: its labeled images,
       then its generated images; every record has ``record["dataset_source"]`` set to
       "labeled" or "generated" (set before mapping; DatasetMapper keeps unknown keys).
    6. Workers. ``num_workers`` DataLoader workers are split between the two sources in
       proportion to l_r and g_r, at least one per source drawn (so 1 worker gives 2).

    Args:
        labeled_dataset: dataset dicts with manual labels (DATASETS.TRAIN).
        generated_dataset: dataset dicts with generated labels.
        mapper: callable mapping a dataset dict to the model's input, used for both sources.
        total_batch_size: B, images per global minibatch.
        labeled_fraction: f, in (0, 1).
        aspect_ratio_grouping: group by orientation within each source (point 4).
        num_workers: DataLoader workers in all (point 6).
        seed: the shared seed; None draws one with ``comm.shared_random_seed()`` (every rank
            must then call this function, as for detectron2's TrainingSampler).
        rank, world_size: the rank whose share to build and the number of ranks; None takes
            them from ``detectron2.utils.comm`` (tests pass them to simulate ranks).

    Returns:
        a :class:`RatioTrainLoader`: an infinite iterable of this rank's batches (lists of b
        mapped dicts), with the shared plan as ``.plan``.
    """
    rank = comm.get_rank() if rank is None else rank
    world_size = comm.get_world_size() if world_size is None else world_size
    plan = RatioPlan(total_batch_size, labeled_fraction, world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    if seed is None:
        seed = comm.shared_random_seed()
    if plan.realised_fraction != labeled_fraction:
        logger.warning(
            "Labeled fraction %s of %d images is rounded to %d/%d = %.4f in every minibatch.",
            labeled_fraction,
            total_batch_size,
            plan.num_labeled,
            total_batch_size,
            plan.realised_fraction,
        )
    datasets = {LABELED: labeled_dataset, GENERATED: generated_dataset}
    for source, dicts in datasets.items():
        if len(dicts) == 0:
            raise ValueError(f"the {source} dataset of the student loader has no images")
    my_counts = [plan.counts(source)[rank] for source in SOURCES]
    workers = _split_workers(num_workers, my_counts)
    logger.info(
        "Ratio loader, rank %d/%d: %d labeled (%d images) + %d generated (%d images) of %d per "
        "global minibatch (%d labeled + %d generated); workers %s.",
        rank,
        world_size,
        my_counts[0],
        len(labeled_dataset),
        my_counts[1],
        len(generated_dataset),
        total_batch_size,
        plan.num_labeled,
        plan.num_generated,
        workers,
    )
    source_batches = []
    for index, source in enumerate(SOURCES):
        count = my_counts[index]
        if count == 0:
            continue
        dataset = MapDataset(DatasetFromList(_tag(datasets[source], source), copy=False), mapper)
        sampler = SourceSlotSampler(
            len(dataset),
            plan.global_count(source),
            plan.offset(source, rank),
            count,
            seed=seed + index,
        )
        # build_batch_data_loader divides its total by the *process group's* world size, so
        # this rank's count goes in multiplied by it (detectron2 0.6 and later alike).
        batches = build_batch_data_loader(
            dataset,
            sampler,
            count * comm.get_world_size(),
            aspect_ratio_grouping=aspect_ratio_grouping,
            num_workers=workers[index],
        )
        source_batches.append((source, batches))
    return RatioTrainLoader(plan, rank, source_batches)
