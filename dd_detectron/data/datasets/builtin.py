"""Registers every builtin dataset of dd_detectron, from the tables of its dataset families, under
one datasets root (as detectron2's and DensePose's data/datasets/builtin.py do):

    synthetic_kp_*, synthetic_kp_tiny_*,  data/synthetic/splits.py   SYNTHETIC_SPLITS,
    synthetic_kp_demo_*                                              TINY_SYNTHETIC_SPLITS,
                                                                     DEMO_SYNTHETIC_SPLITS
    coco_2017_unlabeled,                  coco.py                    PAPER_SPLITS (the splits
    coco_2014_train_unlabeled                                        detectron2 lacks)
    sports1m_frames                       image_folder.py            BUILTIN_IMAGE_FOLDERS
    dd_*_generated                        generated.py               BUILTIN_GENERATED

Registering reads and writes nothing: COCO files are read, folders listed and synthetic splits
generated when a dataset is first loaded. Dataset names that are paths ("folder:<path>",
"<path>.json") are not builtin: ``register_path_datasets(cfg)`` (catalog.py) registers them when
a config names them.
"""

import os
from typing import List

from ..synthetic.splits import DEMO_SYNTHETIC_SPLITS, SYNTHETIC_SPLITS, TINY_SYNTHETIC_SPLITS
from .coco import register_coco_unlabeled
from .generated import register_builtin_generated
from .image_folder import register_builtin_image_folders
from .synthetic import register_synthetic_keypoints

__all__ = ["datasets_root", "register_all_builtin"]


def datasets_root() -> str:
    """The datasets root every builtin dataset lies under, as detectron2's builtin datasets read it.

    Returns:
        $DETECTRON2_DATASETS with "~" expanded; "datasets" (relative to the working directory)
        when it is not set.
    """
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def register_all_builtin(root: str) -> List[str]:
    """Registers the builtin datasets of every family under ``root``.

    Args:
        root: the datasets root, normally ``datasets_root()``.

    Returns:
        the names registered (the unlabeled COCO splits are left alone when another project
        registered them first, see coco.py).
    """
    names = register_synthetic_keypoints(
        root, SYNTHETIC_SPLITS + TINY_SYNTHETIC_SPLITS + DEMO_SYNTHETIC_SPLITS
    )
    names += register_coco_unlabeled(root)
    names += register_builtin_image_folders(root)
    names += register_builtin_generated(root)
    return names


# Registered at import, with the root as it is then, like detectron2's builtin datasets.
register_all_builtin(datasets_root())
