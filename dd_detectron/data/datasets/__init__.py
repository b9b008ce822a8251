# Importing this package registers the builtin datasets: the embedded synthetic_kp_* splits and
# their tiny synthetic_kp_tiny_* copies, made on first use under $DETECTRON2_DATASETS (default
# "datasets").
from .synthetic import (  # noqa: F401
    SYNTHETIC_SPLITS,
    TINY_SYNTHETIC_SPLITS,
    ensure_synthetic_split,
    register_synthetic_keypoints,
)

register_synthetic_keypoints(splits=SYNTHETIC_SPLITS + TINY_SYNTHETIC_SPLITS)

# Importing these registers the paper's unlabeled COCO splits that detectron2 lacks
# (coco_2017_unlabeled = un-120, coco_2014_train_unlabeled = co-80 without labels) and the
# builtin image folders (sports1m_frames, and dd_sports1m_frames_generated for the labels the
# annotation stage makes of it), all under $DETECTRON2_DATASETS. Dataset names
# "folder:<path>" are registered when a config names them (see image_folder.py).
from .coco import register_coco_unlabeled  # noqa: E402
from .image_folder import (  # noqa: E402,F401
    register_builtin_image_folders,
    register_folder_datasets_in_cfg,
    register_image_folder,
)

register_coco_unlabeled()
register_builtin_image_folders()
