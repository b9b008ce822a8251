"""The embedded synthetic person-keypoint splits: the split table, their files, their generation.

Every split is a deterministic function of its ``SyntheticSplit`` spec: image ``i`` is drawn from
``np.random.default_rng([seed, i])``, so the same spec gives byte-identical images and JSON, and
splits with different seeds share no image. Files live under ``<root>/synthetic_kp/``:

    <short>/000001.jpg ...          the images (short = name without "synthetic_kp_")
    annotations/<name>.json         COCO person_keypoints JSON, every person also with the RLE
                                    mask of its visible pixels (``segmentation``); for unlabeled
                                    splits it holds images and categories only, like COCO's
                                    unlabeled2017 file
    annotations/<name>_truth.json   unlabeled splits only: the true labels of the same images,
                                    registered as "<name>_truth" (label quality, oracle training)

Splits are generated on first use (dd_detectron/data/datasets/synthetic.py registers them so).
The main JSON is written last (atomically) and carries a fingerprint of the spec, so a split
whose generation was interrupted, or whose spec changed since, is generated again; an existing
JSON file therefore always describes finished images.

``root`` is the datasets root everywhere here; dd_detectron.data.datasets.datasets_root() gives
$DETECTRON2_DATASETS.
"""

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import cv2
import numpy as np
from detectron2.data.datasets.builtin_meta import COCO_PERSON_KEYPOINT_NAMES

from ...utils import write_atomic
from .render_config import RenderConfig
from .scene import render_image

try:  # POSIX only; without it concurrent first uses just regenerate the same bytes
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = [
    "COCO_PERSON_SKELETON",
    "SyntheticSplit",
    "SplitFiles",
    "SYNTHETIC_SPLITS",
    "TINY_SYNTHETIC_SPLITS",
    "DEMO_SYNTHETIC_SPLITS",
    "SHIFTED_RENDER",
    "DEMO_RENDER",
    "TRUTH_SUFFIX",
    "split_files",
    "render_synthetic_image",
    "generate_split",
    "is_split_complete",
    "ensure_split",
]

logger = logging.getLogger(__name__)

# The skeleton of COCO's person category: 19 limbs as 1-based indices into the keypoint names.
COCO_PERSON_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)  # fmt: skip

SYNTHETIC_SUBDIR = "synthetic_kp"
# Part of every fingerprint: bump it when the drawing code or the JSON's content changes, so old
# files are redone. "2": every annotation has a mask (``segmentation``); pixels, keypoints, boxes
# and ids are those of "1", so a version 1 split is rewritten with the same images. "3": the
# resampling and blur filters are numpy's (raster.py), so every OpenCV release gives the same
# pixels; the demo profile's images are those of "2", the default profile's differ from them in
# about 3 of every million pixel values, by one grey level.
GENERATOR_VERSION = "3"
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


# The demo profile (`make demo`): a distribution a from-scratch model learns in a few hundred
# iterations, so that a short schedule shows data distillation above the noise. Against the
# default: smaller images; one or two large people (OKS tolerates more pixels on larger people);
# simple poses, mostly facing the camera, little tilt; plain backgrounds, at most one blob or
# disc and none forced in front of the people; "fixed" left/right colours (the demo's configs
# then train and label without horizontal flips, as a flip would show warm limbs labeled right).
DEMO_RENDER = RenderConfig(
    width_range=(128, 160),
    height_range=(128, 160),
    background="plain",
    num_people_weights=(0.0, 0.6, 0.4),
    person_height_mix=((1.0, 100.0, 150.0),),
    pose_weights=(("standing", 0.4), ("walking", 0.35), ("gesturing", 0.25)),
    yaw_weights=(("front", 0.7), ("three_quarter", 0.3)),
    max_tilt_deg=5.0,
    truncation=0.1,
    cluster_prob=0.1,
    num_distractors=(0, 1),
    distractor_kinds=(("blob", 0.5), ("disc", 0.5)),
    occluder_front_prob=0.0,
    lr_color_mode="fixed",
    noise_sigma=3.0,
)

# The demo's own splits (DEMO_RENDER, seeds of their own). The labeled split is small so that the
# teacher is limited by its data, not by the demo's short schedule (see docs/SYNTHETIC_DATA.md,
# "Why the demo's numbers are higher"); the unlabeled split is 50x the labeled one.
DEMO_SYNTHETIC_SPLITS: Tuple[SyntheticSplit, ...] = (
    SyntheticSplit("synthetic_kp_demo_labeled", num_images=12, seed=5005, render=DEMO_RENDER),
    SyntheticSplit(
        "synthetic_kp_demo_unlabeled",
        num_images=600,
        seed=6006,
        with_annotations=False,
        render=DEMO_RENDER,
    ),
    SyntheticSplit("synthetic_kp_demo_val", num_images=200, seed=7007, render=DEMO_RENDER),
)


@dataclass(frozen=True)
class SplitFiles:
    """Where a split's files are. ``truth_json_file`` is None for annotated splits."""

    image_root: str
    json_file: str
    truth_json_file: Optional[str]


def split_files(spec: SyntheticSplit, root: str) -> SplitFiles:
    """Paths of a split's files.

    Args:
        spec: the split.
        root: datasets root.

    Returns:
        SplitFiles under ``<root>/synthetic_kp/``.
    """
    base = os.path.join(root, SYNTHETIC_SUBDIR)
    short = spec.name[len(_NAME_PREFIX) :] if spec.name.startswith(_NAME_PREFIX) else spec.name
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


# The OpenCV releases whose anti-aliased lines, circles and polygons draw these images alike
# (4.8, 4.10, 4.11 and 4.12 were compared); 4.13 changed them. setup.py installs one of them.
DRAWING_OPENCV = ((4, 8), (4, 13))


def check_drawing_library(version: str = cv2.__version__) -> None:
    """Refuse to draw with an OpenCV outside DRAWING_OPENCV, whose images would differ.

    Raises:
        RuntimeError: naming the version and the range.
    """
    lowest, above = DRAWING_OPENCV
    numbers = tuple(int(v) for v in version.split(".")[:2])
    if not lowest <= numbers < above:
        raise RuntimeError(
            f"OpenCV {version} draws the synthetic images differently from the releases "
            f"{lowest[0]}.{lowest[1]} to {above[0]}.{above[1] - 1} that the embedded data is "
            f"defined with; install one of them (make setup installs 4.11)"
        )


def render_synthetic_image(spec: SyntheticSplit, index: int) -> Tuple[np.ndarray, List[dict]]:
    """Draws image ``index`` of a split (independent of every other image).

    Args:
        spec: the split.
        index: 0-based image index.

    Returns:
        (image, annotations): BGR uint8 image and per-person dicts (see
        ``scene.render_scene``).
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


def _write_unless_same(path: str, data: bytes) -> None:
    # A split redone for a new GENERATOR_VERSION mostly has the same images: their files are left
    # alone, and a changed one is replaced whole, so a process reading them meanwhile (an older
    # run) never sees one half written.
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return
    except FileNotFoundError:
        pass
    write_atomic(path, data)


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


def generate_split(spec: SyntheticSplit, root: str) -> SplitFiles:
    """Writes all images and JSON files of a split (overwriting what is there).

    Args:
        spec: the split; e.g. ``dataclasses.replace(spec, num_images=4)`` for a tiny one.
        root: datasets root.

    Returns:
        the SplitFiles written.
    """
    check_drawing_library()
    files = split_files(spec, root)
    os.makedirs(files.image_root, exist_ok=True)
    os.makedirs(os.path.dirname(files.json_file), exist_ok=True)
    logger.info(
        "Generating synthetic split %s (%d images) in %s",
        spec.name,
        spec.num_images,
        files.image_root,
    )
    start = time.perf_counter()
    images: List[dict] = []
    annotations: List[dict] = []
    for index in range(spec.num_images):
        img, anns = render_synthetic_image(spec, index)
        image_id = index + 1
        file_name = f"{image_id:06d}.{spec.image_format}"
        _write_unless_same(os.path.join(files.image_root, file_name), _encode(spec, img))
        images.append(
            {"id": image_id, "file_name": file_name, "width": img.shape[1], "height": img.shape[0]}
        )
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
                    "segmentation": ann["segmentation"],
                }
            )
    if files.truth_json_file is not None:
        write_atomic(files.truth_json_file, _coco_json(spec, images, annotations))
    # Written last: its presence (with the right fingerprint) marks the split as complete.
    main_annotations = annotations if spec.with_annotations else None
    write_atomic(files.json_file, _coco_json(spec, images, main_annotations))
    elapsed = time.perf_counter() - start
    logger.info(
        "Generated %s: %d images, %d people in %.1f s (%.1f ms/image)",
        spec.name,
        len(images),
        len(annotations),
        elapsed,
        1000.0 * elapsed / max(len(images), 1),
    )
    return files


def is_split_complete(spec: SyntheticSplit, root: str) -> bool:
    """True when the split's files exist and were made from this exact spec.

    Args:
        spec: the split.
        root: datasets root.

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


def ensure_split(spec: SyntheticSplit, root: str) -> SplitFiles:
    """Generates a split unless it is complete and up to date (safe across processes).

    Args:
        spec: the split.
        root: datasets root.

    Returns:
        the split's SplitFiles.
    """
    files = split_files(spec, root)
    if is_split_complete(spec, root):
        return files
    with _split_lock(files):
        if not is_split_complete(spec, root):  # another process may have just finished it
            generate_split(spec, root)
    return files
