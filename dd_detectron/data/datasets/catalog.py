"""Dataset names that are paths, and datasets made ready before they are used.

A config names datasets by registered name, or by path:

    "folder:<path>"   a folder of unlabeled images (image_folder.py), e.g. in DD.ANNOTATE.DATASETS
    "<path>.json"     a COCO file as the annotation stage writes it, e.g. in
                      DD.STUDENT.GENERATED_DATASETS: keypoint labels (generated.py) for a
                      keypoint model, box / mask labels (generated_instances.py) for others

``register_path_datasets(cfg)`` registers every such entry under exactly the name written; every
tool's ``setup`` calls it (tools/train_net.py, tools/annotate_net.py, tools/benchmark.py), so a
config names the same data in every tool, and code after setup sees registered names only.
"""

import functools
import logging
import os
from typing import List

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.file_io import PathManager

from .generated import register_generated_keypoints
from .generated_instances import register_generated_instances
from .image_folder import register_image_folder

__all__ = [
    "FOLDER_PREFIX",
    "DATASET_KEYS",
    "register_path_datasets",
    "ensure_dataset_ready",
]

logger = logging.getLogger(__name__)

# "folder:<path>" names the folder <path>; names ending in JSON_SUFFIX name a file.
FOLDER_PREFIX = "folder:"
JSON_SUFFIX = ".json"
# The config keys whose entries are dataset names.
DATASET_KEYS = (
    "DATASETS.TRAIN",
    "DATASETS.TEST",
    "DD.ANNOTATE.DATASETS",
    "DD.STUDENT.GENERATED_DATASETS",
)


def register_path_datasets(cfg) -> List[str]:
    """Registers every dataset name of a config that is a path, under exactly the name written.

    Reads the names of ``DATASET_KEYS``. A relative path is taken from the working directory at
    this call, like any other path on the command line. A name registered before, for the same
    folder or file, is left alone, so calling this twice is harmless.

    Args:
        cfg: a config with add_dd_config's keys.

    Returns:
        the names registered by this call.

    Raises:
        FileNotFoundError: a "folder:" entry names no folder, or a ".json" entry no file; the
            message names the config key and the path.
        ValueError: the name is already registered for another folder or file (a relative path
            read from another working directory).
    """
    new = []
    for key in DATASET_KEYS:
        for name in functools.reduce(getattr, key.split("."), cfg):
            if name.startswith(FOLDER_PREFIX):
                path = os.path.abspath(os.path.expanduser(name[len(FOLDER_PREFIX) :]))
                kind, exists, path_key = "folder", os.path.isdir(path), "image_root"
            elif name.endswith(JSON_SUFFIX):
                path = os.path.abspath(os.path.expanduser(name))
                kind, exists, path_key = "file", PathManager.isfile(path), "json_file"
            else:
                continue
            if name in DatasetCatalog.list():
                registered_path = MetadataCatalog.get(name).get(path_key)
                if registered_path != path:
                    raise ValueError(
                        f"{key}: {name!r} names the {kind} {path}, but is already registered "
                        f"for {registered_path}."
                    )
                continue
            if not exists:
                raise FileNotFoundError(
                    f"{key}: {name!r} names the {kind} {path}, which does not exist."
                )
            if kind == "folder":
                register_image_folder(name, path)
            elif cfg.MODEL.KEYPOINT_ON:
                register_generated_keypoints(name, path)
            else:  # a box or mask model learns from (and is checked against) its own kind
                register_generated_instances(name, path, mask=bool(cfg.MODEL.MASK_ON))
            new.append(name)
    if new:
        logger.info("Registered the datasets named by path: %s", new)
    return new


def ensure_dataset_ready(name: str, *, category_ids: bool = True):
    """Makes a registered dataset's files and metadata complete, for code that reads them
    rather than the dataset's records (evaluators, label-quality checks, label spaces).

    Two kinds of dataset are complete only once loaded: the embedded synthetic splits write
    their images and JSON on first load, and COCO-style datasets learn
    ``thing_dataset_id_to_contiguous_id`` when ``load_coco_json`` reads them. So the dataset is
    loaded (its records are dropped) when its metadata's ``json_file`` does not exist yet, or,
    with ``category_ids``, when the id map is missing; otherwise nothing is read.

    Args:
        name: a registered dataset.
        category_ids: whether the caller needs thing_dataset_id_to_contiguous_id. False for
            callers that read the JSON file themselves, so that a large COCO file is not loaded
            only for its category ids.

    Returns:
        the dataset's metadata.
    """
    metadata = MetadataCatalog.get(name)
    json_file = metadata.get("json_file")
    files_missing = json_file is not None and not PathManager.exists(json_file)
    ids_missing = category_ids and metadata.get("thing_dataset_id_to_contiguous_id") is None
    if files_missing or ids_missing:
        DatasetCatalog.get(name)
    return metadata
