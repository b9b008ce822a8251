"""The embedded synthetic person-keypoint datasets: split table, COCO files, registration.

Every split is a deterministic function of its ``SyntheticSplit`` spec: image ``i`` is drawn from
``np.random.default_rng([seed, i])``, so the same spec gives byte-identical images and JSON, and
splits with different seeds share no image. Files live under ``<root>/synthetic_kp/``:

    <short>/000001.jpg ...          the images (short = name without "synthetic_kp_")
    annotations/<name>.json         COCO person_keypoints JSON; for unlabeled splits it holds
                                    images and categories only, like COCO's unlabeled2017 file
    annotations/<name>_truth.json   unlabeled splits only: the true labels of the same images,
                                    registered as "<name>_truth" (label quality, oracle training)

Splits are generated on first use. The main JSON is written last (atomically) and carries a
fingerprint of the spec, so a split whose generation was interrupted, or whose spec changed
since, is generated again; an existing JSON file therefore always describes finished images.
"""
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import (
    COCO_PERSON_KEYPOINT_FLIP_MAP,
    COCO_PERSON_KEYPOINT_NAMES,
    KEYPOINT_CONNECTION_RULES,
)
from detectron2.data.datasets.coco import load_coco_json

from ...utils import write_atomic
from .synthetic_render import RenderConfig, render_image

try:  # POSIX only; without it concurrent first uses just regenerate the same bytes
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = [
    "COCO_PERSON_SKELETON",
    "SyntheticSplit",
    "SplitFiles",
    "SYNTHETIC_SPLITS",
    "SHIFTED_RENDER",
    "default_root",
    "get_synthetic_split",
    "split_files",
    "render_synthetic_image",
    "generate_split",
    "is_split_complete",
    "ensure_split",
    "ensure_synthetic_split",
    "register_synthetic_keypoints",
]

logger = logging.getLogger(__name__)

# The skeleton of COCO's person category: 19 limbs as 1-based indices into the keypoint names.
COCO_PERSON_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)  # fmt: skip

SYNTHETIC_SUBDIR = "synthetic_kp"
# Part of every fingerprint: bump it when the drawing code changes, so old files are redone.
GENERATOR_VERSION = "1"
TRUTH_SUFFIX = "_truth"
_NAME_PREFIX = "synthetic_kp_"


@dataclass(frozen=True)
class SyntheticSplit:
    """One split of the synthetic data.

    Attributes:
        name: dataset name in DatasetCatalog.
        num_images: number of images.
        seed: base seed; image i uses ``default_rng([seed, i])``. Distinct per split.
        with_annotations: False writes a JSON without annotations and a separate truth JSON.
        render: the image generator's knobs (image sizes, background style, person scales,
            number of people, distractors, ...).
        image_format: "jpg" or "png".
        jpeg_quality: fixed JPEG quality (part of the byte-identical guarantee).
    """

    name: str
    num_images: int
    seed: int
    with_annotations: bool = True
    render: RenderConfig = RenderConfig()
    image_format: str = "jpg"
    jpeg_quality: int = 90


# Unlabeled, shifted distribution (the analogue of Sports-1M frames): wide low frames of sports
# grounds with a crowd band, team shirts, motion blur, more and smaller people in sports poses.
SHIFTED_RENDER = RenderConfig(
    width_range=(208, 256),
    height_range=(128, 176),
    background="field",
    num_people_weights=(0.04, 0.12, 0.18, 0.2, 0.16, 0.12, 0.1, 0.08),
    person_height_mix=((0.5, 24.0, 90.0), (0.4, 90.0, 200.0), (0.1, 200.0, 360.0)),
    pose_weights=(
        ("standing", 0.15),
        ("walking", 0.25),
        ("gesturing", 0.15),
        ("crouching", 0.1),
        ("sitting", 0.02),
        ("one_leg", 0.13),
        ("random", 0.2),
    ),
    num_distractors=(2, 7),
    distractor_kinds=(("blob", 0.15), ("stick", 0.35), ("limb", 0.25), ("disc", 0.25)),
    team_colors=True,
    noise_sigma=4.0,
    motion_blur=(1, 7),
)

# The default splits. Sizes follow the paper's ratios loosely: the unlabeled sets are 10x the
# labeled one.
SYNTHETIC_SPLITS: Tuple[SyntheticSplit, ...] = (
    SyntheticSplit("synthetic_kp_labeled", num_images=150, seed=1001),
    SyntheticSplit("synthetic_kp_unlabeled", num_images=1500, seed=2002, with_annotations=False),
    SyntheticSplit("synthetic_kp_val", num_images=300, seed=3003),
    SyntheticSplit(
        "synthetic_kp_unlabeled_shifted",
        num_images=1500,
        seed=4004,
        with_annotations=False,
        render=SHIFTED_RENDER,
    ),
)

# Tiny copies of the default splits (same renderers, other seeds), for the quick_schedules
# configs that tests and smoke runs use: the whole pipeline runs on them in a few minutes.
TINY_SYNTHETIC_SPLITS: Tuple[SyntheticSplit, ...] = tuple(
    dataclasses.replace(
        spec,
        name=spec.name.replace("synthetic_kp_", "synthetic_kp_tiny_"),
        num_images=num_images,
        seed=spec.seed + 10,
    )
    for spec, num_images in zip(SYNTHETIC_SPLITS, (16, 24, 12, 24))
)


@dataclass(frozen=True)
class SplitFiles:
    """Where a split's files are. ``truth_json_file`` is None for annotated splits."""

    image_root: str
    json_file: str
    truth_json_file: Optional[str]


# name -> (spec, is_truth, root) of everything register_synthetic_keypoints registered
_REGISTERED: Dict[str, Tuple[SyntheticSplit, bool, str]] = {}


def default_root() -> str:
    """Returns $DETECTRON2_DATASETS (default "datasets"), as detectron2's builtin datasets do."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def get_synthetic_split(name: str) -> SyntheticSplit:
    """Looks up a split spec by name.

    Args:
        name: a split name (a registered custom split, or one of SYNTHETIC_SPLITS).

    Returns:
        the SyntheticSplit.
    """
    if name in _REGISTERED:
        return _REGISTERED[name][0]
    for spec in SYNTHETIC_SPLITS + TINY_SYNTHETIC_SPLITS:
        if spec.name == name:
            return spec
    known = [s.name for s in SYNTHETIC_SPLITS + TINY_SYNTHETIC_SPLITS]
    raise KeyError(f"Unknown synthetic split {name!r}; known: {known}")


def split_files(spec: SyntheticSplit, root: Optional[str] = None) -> SplitFiles:
    """Paths of a split's files.

    Args:
        spec: the split.
        root: datasets root; None uses ``default_root()``.

    Returns:
        SplitFiles under ``<root>/synthetic_kp/``.
    """
    base = os.path.join(default_root() if root is None else root, SYNTHETIC_SUBDIR)
    short = spec.name[len(_NAME_PREFIX):] if spec.name.startswith(_NAME_PREFIX) else spec.name
    ann_dir = os.path.join(base, "annotations")
    truth = os.path.join(ann_dir, spec.name + TRUTH_SUFFIX + ".json")
    if spec.with_annotations:
        truth = None
    return SplitFiles(os.path.join(base, short), os.path.join(ann_dir, spec.name + ".json"), truth)


def _fingerprint(spec: SyntheticSplit) -> str:
    blob = json.dumps(
        {"version": GENERATOR_VERSION, "spec": dataclasses.asdict(spec)}, sort_keys=True
    )
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()


def render_synthetic_image(spec: SyntheticSplit, index: int) -> Tuple[np.ndarray, List[dict]]:
    """Draws image ``index`` of a split (independent of every other image).

    Args:
        spec: the split.
        index: 0-based image index.

    Returns:
        (image, annotations): BGR uint8 image and per-person dicts (see
        ``synthetic_render.render_scene``).
    """
    rng = np.random.default_rng([spec.seed, index])
    return render_image(rng, spec.render)


def _encode(spec: SyntheticSplit, img: np.ndarray) -> bytes:
    if spec.image_format == "jpg":
        ok, buf = cv2.imencode(".jpg", img, [int(cv2.IMWRITE_JPEG_QUALITY), int(spec.jpeg_quality)])
    elif spec.image_format == "png":
        ok, buf = cv2.imencode(".png", img, [int(cv2.IMWRITE_PNG_COMPRESSION), 3])
    else:
        raise ValueError(f"image_format must be 'jpg' or 'png', got {spec.image_format!r}")
    if not ok:
        raise RuntimeError("cv2.imencode failed")
    return buf.tobytes()


def _coco_json(
    spec: SyntheticSplit, images: List[dict], annotations: Optional[List[dict]]
) -> bytes:
    data = {
        "info": {
            "description": "dd_detectron synthetic person keypoints",
            "split": spec.name,
            "version": GENERATOR_VERSION,
            "fingerprint": _fingerprint(spec),
        },
        "licenses": [],
        "images": images,
        "categories": [
            {
                "id": 1,
                "name": "person",
                "supercategory": "person",
                "keypoints": list(COCO_PERSON_KEYPOINT_NAMES),
                "skeleton": [list(pair) for pair in COCO_PERSON_SKELETON],
            }
        ],
    }
    if annotations is not None:
        data["annotations"] = annotations
    return json.dumps(data, separators=(",", ":")).encode("utf-8")


def generate_split(spec: SyntheticSplit, root: Optional[str] = None) -> SplitFiles:
    """Writes all images and JSON files of a split (overwriting what is there).

    Args:
        spec: the split; e.g. ``dataclasses.replace(spec, num_images=4)`` for a tiny one.
        root: datasets root; None uses ``default_root()``.

    Returns:
        the SplitFiles written.
    """
    files = split_files(spec, root)
    os.makedirs(files.image_root, exist_ok=True)
    os.makedirs(os.path.dirname(files.json_file), exist_ok=True)
    logger.info("Generating synthetic split %s (%d images) in %s", spec.name, spec.num_images,
                files.image_root)
    start = time.perf_counter()
    images: List[dict] = []
    annotations: List[dict] = []
    for index in range(spec.num_images):
        img, anns = render_synthetic_image(spec, index)
        image_id = index + 1
        file_name = f"{image_id:06d}.{spec.image_format}"
        with open(os.path.join(files.image_root, file_name), "wb") as f:
            f.write(_encode(spec, img))
        images.append({"id": image_id, "file_name": file_name, "width": img.shape[1],
                       "height": img.shape[0]})
        for ann in anns:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "iscrowd": 0,
                    "area": ann["area"],
                    "bbox": ann["bbox"],
                    "num_keypoints": ann["num_keypoints"],
                    "keypoints": ann["keypoints"],
                }
            )
    if files.truth_json_file is not None:
        write_atomic(files.truth_json_file, _coco_json(spec, images, annotations))
    # Written last: its presence (with the right fingerprint) marks the split as complete.
    main_annotations = annotations if spec.with_annotations else None
    write_atomic(files.json_file, _coco_json(spec, images, main_annotations))
    elapsed = time.perf_counter() - start
    logger.info("Generated %s: %d images, %d people in %.1f s (%.1f ms/image)", spec.name,
                len(images), len(annotations), elapsed, 1000.0 * elapsed / max(len(images), 1))
    return files


def is_split_complete(spec: SyntheticSplit, root: Optional[str] = None) -> bool:
    """True when the split's files exist and were made from this exact spec.

    Args:
        spec: the split.
        root: datasets root; None uses ``default_root()``.

    Returns:
        whether ``generate_split`` can be skipped.
    """
    files = split_files(spec, root)
    if files.truth_json_file is not None and not os.path.isfile(files.truth_json_file):
        return False
    try:
        with open(files.json_file, "rb") as f:
            info = json.load(f).get("info", {})
    except (OSError, ValueError):
        return False
    return info.get("fingerprint") == _fingerprint(spec)


@contextlib.contextmanager
def _split_lock(files: SplitFiles) -> Iterator[None]:
    # Serialises first use across processes (e.g. several training ranks on one machine).
    os.makedirs(files.image_root, exist_ok=True)
    if fcntl is None:
        yield
        return
    fd = os.open(files.image_root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def ensure_split(spec: SyntheticSplit, root: Optional[str] = None) -> SplitFiles:
    """Generates a split unless it is complete and up to date (safe across processes).

    Args:
        spec: the split.
        root: datasets root; None uses ``default_root()``.

    Returns:
        the split's SplitFiles.
    """
    root = default_root() if root is None else root
    files = split_files(spec, root)
    if is_split_complete(spec, root):
        return files
    with _split_lock(files):
        if not is_split_complete(spec, root):  # another process may have just finished it
            generate_split(spec, root)
    return files


def ensure_synthetic_split(name: str, root: Optional[str] = None) -> str:
    """Generates a split if it is missing or outdated, and returns its JSON path.

    Args:
        name: a split name, or "<name>_truth" for the true labels of an unlabeled split.
        root: datasets root; None uses the root the name was registered with, else
            ``default_root()``.

    Returns:
        path of the COCO JSON file registered under ``name`` (metadata ``json_file``).
    """
    if root is None and name in _REGISTERED:
        spec, truth, root = _REGISTERED[name]
    else:
        truth = name.endswith(TRUTH_SUFFIX)
        spec = get_synthetic_split(name[: -len(TRUTH_SUFFIX)] if truth else name)
        if truth and spec.with_annotations:
            raise KeyError(f"{spec.name} is annotated; it has no {name}")
        root = default_root() if root is None else root
    files = ensure_split(spec, root)
    return files.truth_json_file if truth else files.json_file


def _load(name: str, spec: SyntheticSplit, root: str, truth: bool) -> List[dict]:
    files = ensure_split(spec, root)
    json_file = files.truth_json_file if truth else files.json_file
    return load_coco_json(json_file, files.image_root, name)


def register_synthetic_keypoints(
    root: Optional[str] = None, splits: Optional[Sequence[SyntheticSplit]] = None
) -> List[str]:
    """Registers synthetic splits in DatasetCatalog and MetadataCatalog (no file is written).

    Each split is generated the first time its DatasetCatalog entry is called. Unlabeled
    splits also register "<name>_truth" with their true labels.

    Args:
        root: datasets root; None uses ``default_root()`` (read now, like detectron2's builtins).
        splits: specs to register; None registers SYNTHETIC_SPLITS.

    Returns:
        the registered dataset names.
    """
    root = default_root() if root is None else root
    names = []
    for spec in SYNTHETIC_SPLITS if splits is None else splits:
        files = split_files(spec, root)
        entries = [(spec.name, False, files.json_file)]
        if not spec.with_annotations:
            entries.append((spec.name + TRUTH_SUFFIX, True, files.truth_json_file))
        for name, truth, json_file in entries:
            DatasetCatalog.register(name, functools.partial(_load, name, spec, root, truth))
            MetadataCatalog.get(name).set(
                json_file=json_file,
                image_root=files.image_root,
                evaluator_type="coco",
                thing_classes=["person"],
                thing_dataset_id_to_contiguous_id={1: 0},
                keypoint_names=COCO_PERSON_KEYPOINT_NAMES,
                keypoint_flip_map=COCO_PERSON_KEYPOINT_FLIP_MAP,
                keypoint_connection_rules=KEYPOINT_CONNECTION_RULES,
            )
            _REGISTERED[name] = (spec, truth, root)
            names.append(name)
    return names
