"""Unlabeled images from any folder as a detectron2 dataset: the paper's shifted-distribution
setting (frames of Sports-1M videos) and users' own images.

A folder dataset lists every JPEG/PNG file under its folder, recursively:

- files: extensions .jpg, .jpeg, .png in any case; names and folders starting with "." are
  skipped (e.g. macOS "._x.jpg" resource forks, which are not images); symlinked folders are
  followed (each real folder once).
- order: sorted by relative path ("/"-separated, by code point), the same on every machine and
  every rank.
- ids: ``image_id_for(relative_path)``, 53 bits of the SHA-1 of the relative path. An image keeps
  its id when files are added or removed and when the folder is moved or copied elsewhere, so
  labels made from one copy match another. Two relative paths with the same id (a chance of about
  5 in 10^5 for 10^6 images) are an error that names both files. Two folders listed together in
  DD.ANNOTATE.DATASETS that hold the same relative path collide too: the annotation stage says
  so; name their common parent folder instead. 53 bits: every JSON reader (also those that read
  numbers as doubles) gives the id back exactly.
- sizes: read from the file header (``PIL.Image.open`` does not decode the pixels), with the
  EXIF orientation applied as detectron2's ``read_image`` applies it (orientations 5 to 8 swap
  width and height). A PNG's EXIF is used only when it comes before the pixel data.
- unreadable files (no image header PIL knows) are left out with one warning that names them;
  files whose header reads but whose pixels do not are listed, and the annotation stage reports
  them in its statistics.

Three ways to name a folder dataset:

- ``register_image_folder(name, folder)`` in code;
- ``"folder:<path>"`` in a config (DD.ANNOTATE.DATASETS): registered under exactly that name
  by ``register_path_datasets(cfg)`` (catalog.py), which the tools' setup calls; a relative
  path is taken from the working directory, like any other path on the command line;
- the builtin names of ``BUILTIN_IMAGE_FOLDERS`` (folders under $DETECTRON2_DATASETS; the labels
  the annotation stage makes of them have builtin names in generated.py's BUILTIN_GENERATED).

Files are listed when the dataset is loaded, not when it is registered.
"""

import concurrent.futures
import functools
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
from PIL import Image

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderSplit",
    "BUILTIN_IMAGE_FOLDERS",
    "image_id_for",
    "list_image_files",
    "read_image_size",
    "load_image_folder",
    "register_image_folder",
    "register_builtin_image_folders",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# EXIF tag 274 (0x0112), "Orientation"; detectron2's read_image applies it.
_EXIF_ORIENTATION = 274
# Orientations 5..8 are transposes/rotations by 90 degrees: the decoded image is h x w.
_SWAPS_WIDTH_AND_HEIGHT = (5, 6, 7, 8)
# Header reads are I/O-bound (network file systems): this many run at once.
_READER_THREADS = 8
# The unreadable files named in the warning; the rest are counted.
_MAX_NAMED_FAILURES = 20


@dataclass(frozen=True)
class ImageFolderSplit:
    """A builtin folder dataset.

    Attributes:
        paper_name: the paper's name of the data.
        name: registered name.
        folder: the folder, relative to $DETECTRON2_DATASETS.
        role: what it is for.
    """

    paper_name: str
    name: str
    folder: str
    role: str


BUILTIN_IMAGE_FOLDERS: Tuple[ImageFolderSplit, ...] = (
    # The paper's s1m-180: 180k frames of Sports-1M videos (the paper does not publish which:
    # extract your own, see datasets/README.md).
    ImageFolderSplit(
        "s1m-180", "sports1m_frames", "sports1m_frames", "unlabeled, shifted distribution"
    ),
)


def image_id_for(relative_path: str) -> int:
    """The image id of a file of a folder dataset (see the module docstring).

    Args:
        relative_path: path under the folder, "/"-separated.

    Returns:
        an int in [0, 2**53).
    """
    digest = hashlib.sha1(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 11


def list_image_files(folder: str) -> List[str]:
    """The image files under a folder (see the module docstring for which, and their order).

    Args:
        folder: the folder.

    Returns:
        sorted relative paths, "/"-separated.

    Raises:
        FileNotFoundError: ``folder`` is not a folder.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Image folder {folder} does not exist or is not a folder.")
    found = []
    seen_real = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_real:  # a symlink back up the tree, or two links to one folder
            dirnames[:] = []
            continue
        seen_real.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = os.path.relpath(dirpath, folder)
        for filename in filenames:
            if filename.startswith(".") or not filename.lower().endswith(IMAGE_EXTENSIONS):
                continue
            rel = filename if rel_dir == "." else os.path.join(rel_dir, filename)
            found.append(rel.replace(os.sep, "/"))
    return sorted(found)


def read_image_size(path: str) -> Tuple[int, int]:
    """Height and width of an image as detectron2's ``read_image`` returns it, from its header.

    Args:
        path: the image file.

    Returns:
        (height, width), after the EXIF orientation.

    Raises:
        OSError: PIL cannot read an image header from the file (PIL.UnidentifiedImageError is
            one).
    """
    with Image.open(path) as image:
        width, height = image.size
        orientation = 1
        # PNG: getexif() would decode the whole image to look for an eXIf chunk after the pixel
        # data; only a chunk before it (already in .info) is used.
        if image.format != "PNG" or "exif" in image.info:
            try:
                orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
            except Exception:  # broken EXIF: read_image ignores it too
                orientation = 1
    if orientation in _SWAPS_WIDTH_AND_HEIGHT:
        width, height = height, width
    return int(height), int(width)


def _size_or_error(path: str):
    try:
        return read_image_size(path)
    except Exception as e:  # any unreadable file: not an image, truncated header, no access
        return f"{type(e).__name__}: {e}".replace("\n", " ")


def load_image_folder(folder: str, dataset_name: Optional[str] = None) -> List[dict]:
    """Lists a folder's images as detectron2 dataset dicts (no annotations).

    Args:
        folder: the folder.
        dataset_name: registered name, for messages.

    Returns:
        one dict per readable image, in sorted relative-path order: file_name (absolute),
        height, width, image_id.

    Raises:
        FileNotFoundError: ``folder`` is not a folder.
        ValueError: no readable image, or two relative paths with the same id.
    """
    folder = os.path.abspath(os.path.expanduser(folder))
    start = time.perf_counter()
    relative_paths = list_image_files(folder)
    paths = [os.path.join(folder, *rel.split("/")) for rel in relative_paths]
    with concurrent.futures.ThreadPoolExecutor(_READER_THREADS) as pool:
        sizes = list(pool.map(_size_or_error, paths))
    records, failures = [], []
    owner: Dict[int, str] = {}
    for rel, path, size in zip(relative_paths, paths, sizes):
        if isinstance(size, str):
            failures.append((rel, size))
            continue
        image_id = image_id_for(rel)
        if image_id in owner:
            raise ValueError(
                f"Image folder {folder}: {owner[image_id]!r} and {rel!r} have the same image id "
                f"{image_id} (a hash collision); rename one of them."
            )
        owner[image_id] = rel
        records.append(
            {"file_name": path, "height": size[0], "width": size[1], "image_id": image_id}
        )
    if failures:
        named = "; ".join(f"{rel} ({reason})" for rel, reason in failures[:_MAX_NAMED_FAILURES])
        more = len(failures) - _MAX_NAMED_FAILURES
        logger.warning(
            "Image folder %s (dataset %r): %d of %d files are not readable images "
            "and are left out: %s%s",
            folder,
            dataset_name,
            len(failures),
            len(relative_paths),
            named,
            f"; and {more} more" if more > 0 else "",
        )
    if not records:
        raise ValueError(
            f"Image folder {folder} (dataset {dataset_name!r}) has no readable image "
            f"({', '.join(IMAGE_EXTENSIONS)}, searched recursively; "
            f"{len(relative_paths)} candidates)."
        )
    logger.info(
        "Image folder %s: %d images listed in %.1f s.",
        folder,
        len(records),
        time.perf_counter() - start,
    )
    return records


def register_image_folder(name: str, folder: str, metadata: Optional[dict] = None) -> None:
    """Registers a folder of unlabeled images as a dataset (listed when it is loaded).

    Args:
        name: the dataset name.
        folder: the folder; a relative path is taken from the current working directory now.
        metadata: extra metadata; the default is COCO's person metadata (thing_classes, keypoint
            names and flip map), the label space of the teachers here.
    """
    folder = os.path.abspath(os.path.expanduser(folder))
    DatasetCatalog.register(name, functools.partial(load_image_folder, folder, name))
    meta = dict(_get_builtin_metadata("coco_person"))
    meta.update(metadata or {})
    MetadataCatalog.get(name).set(image_root=folder, evaluator_type="coco", **meta)


def register_builtin_image_folders(
    root: str, splits: Sequence[ImageFolderSplit] = BUILTIN_IMAGE_FOLDERS
) -> List[str]:
    """Registers builtin folder datasets (nothing is read now).

    Args:
        root: datasets root ($DETECTRON2_DATASETS, see builtin.py).
        splits: the folders to register.

    Returns:
        the registered dataset names.
    """
    for split in splits:
        register_image_folder(split.name, os.path.join(root, split.folder))
    return [split.name for split in splits]
