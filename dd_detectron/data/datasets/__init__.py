# Importing this package registers the builtin datasets: the embedded synthetic_kp_* splits,
# made on first use under $DETECTRON2_DATASETS (default "datasets").
from .synthetic import ensure_synthetic_split, register_synthetic_keypoints  # noqa: F401

register_synthetic_keypoints()
