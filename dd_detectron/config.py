"""
Config keys of dd-detectron. Everything new lives under a single ``DD`` node; what detectron2
already has is reused (test-time views: ``TEST.AUG.MIN_SIZES / MAX_SIZE / FLIP``; labeled data:
``DATASETS.TRAIN``).
"""

from detectron2.config import CfgNode as CN

__all__ = ["add_dd_config", "parse_threshold", "num_views"]


def add_dd_config(cfg: CN) -> None:
    """Add dd-detectron's keys to a detectron2 config, in place.

    Args:
        cfg: a config from ``detectron2.config.get_cfg()``.
    """
    _C = cfg
    _C.DD = CN()

    # ---------------------------------------------------------------------------------------
    # Multi-transform ensembling of boxes, masks and keypoints (views come from TEST.AUG)
    # ---------------------------------------------------------------------------------------
    _C.DD.TTA = CN()
    # How per-view keypoint heatmap logits are combined: "mean" (Detectron's HM_AVG) or "max"
    # (HM_MAX).
    _C.DD.TTA.KEYPOINT_REDUCE = "mean"
    # How per-view masks of a box are combined (as Detectron's TEST.MASK_AUG.HEUR): "mean_prob"
    # (SOFT_AVG: mean of the probabilities, as detectron2's GeneralizedRCNNWithTTA), "max_prob"
    # (SOFT_MAX) or "mean_logit" (LOGIT_AVG: mean of the logits, then the sigmoid).
    _C.DD.TTA.MASK_REDUCE = "mean_prob"
    # Box voting after NMS (Detectron's BBOX_VOTE): each kept box becomes the score-weighted mean
    # of the union boxes that overlap it with IoU >= BOX_VOTING_IOU. True or False.
    _C.DD.TTA.BOX_VOTING = False
    # IoU threshold of box voting, in (0, 1]; Detectron used 0.8 to 0.9.
    _C.DD.TTA.BOX_VOTING_IOU = 0.8
    # Size-dependent view selection of the mask and keypoint heads (Detectron's SCALE_SIZE_DEP,
    # one setting for both here): for a box smaller than AREA_TH (pixels^2, in the original
    # image), views that scale the image down more than plain inference does
    # (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST) are dropped; for a larger one, views that scale it
    # up more are dropped. True or False.
    _C.DD.TTA.SCALE_SIZE_DEP = False
    # Area threshold of SCALE_SIZE_DEP, a float; Detectron's keypoint TTA config used 150^2 on
    # COCO.
    _C.DD.TTA.AREA_TH = 150.0**2
    # True: keep each view's backbone features for the mask and keypoint heads (one backbone
    # pass per view). False: recompute them there (two passes per view, memory bounded by one
    # view).
    _C.DD.TTA.CACHE_FEATURES = True
    # Views of the same image size (a view and its flip) run through the model as one batch of
    # at most this many. An int >= 0; 0 = automatic: 2 on GPU (a view with its flip), 1 on CPU,
    # where a batch of two runs no faster than two single passes and needs more memory.
    _C.DD.TTA.VIEW_BATCH_SIZE = 0
    # Keypoints are decoded (detectron2: heatmaps resized to the box, peaks taken there) in a
    # frame of at most this many pixels a side: a larger box is decoded shrunk to fit and its
    # peaks scaled back (within side / this many image pixels of full-size decoding), so a box
    # of a 12-48 MP photo needs ~0.2 GB instead of several GB. An int >= 0; 0 = no bound
    # (detectron2's decoding for every box). Boxes up to this size decode exactly as detectron2
    # does. It changes the labels of images with larger boxes (part of the resume fingerprint).
    _C.DD.TTA.KEYPOINT_DECODE_MAX_SIZE = 1024

    # ---------------------------------------------------------------------------------------
    # Annotation of unlabeled data (tools/annotate_net.py)
    # ---------------------------------------------------------------------------------------
    _C.DD.ANNOTATE = CN()
    # Registered datasets to label; their annotations, if any, are ignored. "folder:<path>" names
    # a folder of JPEG/PNG images, searched recursively (data/datasets/image_folder.py; a
    # relative path is taken from the working directory; registered by register_path_datasets).
    _C.DD.ANNOTATE.DATASETS = ("synthetic_kp_unlabeled",)
    # Keep instances whose detection score is >= this: "auto" (the threshold at which the mean
    # number of kept instances per image equals the mean number of annotated instances per
    # labeled image, labeled = DATASETS.TRAIN) or a number in [0, 1] written as a string ("0.7").
    _C.DD.ANNOTATE.SCORE_THRESH = "auto"
    # How an "auto" SCORE_THRESH is calibrated: "global" (one threshold for every category, as
    # above; the default, the paper's) or "per_category" (category c with n_c labeled instances
    # over N labeled images gets the threshold at which its kept detections per unlabeled image
    # average n_c / N; a category with fewer than CATEGORY_MIN_INSTANCES labeled instances takes
    # the global threshold). "per_category" needs SCORE_THRESH "auto". An instance, here as
    # above: a non-crowd annotation with a labeled keypoint (keypoint models), with a mask (mask
    # models), or any non-crowd annotation (box-only models).
    _C.DD.ANNOTATE.SCORE_THRESH_MODE = "global"
    # "per_category": fewest labeled instances (DATASETS.TRAIN) a category needs for a threshold
    # of its own; rarer categories take the global one. An int >= 1.
    _C.DD.ANNOTATE.CATEGORY_MIN_INSTANCES = 10
    # Keypoint models: keypoints whose score is >= this get v = 2, the others v = 0 (ignored by
    # the loss): "auto" (matches the mean number of labeled keypoints per instance in
    # DATASETS.TRAIN) or a number written as a string. Keypoint scores are what detectron2's
    # decoding reports in pred_keypoints[..., 2] (detectron2 0.6: the softmax of the heatmap at
    # its peak, normalised over the pooled heatmap; older releases: the logit), so do not assume
    # they lie in [0, 1].
    _C.DD.ANNOTATE.KEYPOINT_THRESH = "auto"
    # Keypoint models: a kept instance needs at least this many keypoints with v = 2, else it is
    # dropped.
    _C.DD.ANNOTATE.MIN_KEYPOINTS = 1
    # Progress is saved (atomically) every this many images, so an interrupted run resumes.
    _C.DD.ANNOTATE.SAVE_PERIOD = 100
    # Where the views (TEST.AUG: resized, flipped copies of each image) are made: True = in the
    # DataLoader's workers (DATALOADER.NUM_WORKERS > 0), in parallel with the model; False = in
    # the main process, between model calls. True or False; the labels are the same either way.
    # True passes every image's views through shared memory: with several workers and many large
    # views, a container needs a /dev/shm of a few GB (docker run --shm-size).
    _C.DD.ANNOTATE.VIEWS_IN_WORKERS = True

    # ---------------------------------------------------------------------------------------
    # Student training on labeled + generated data
    # ---------------------------------------------------------------------------------------
    _C.DD.STUDENT = CN()
    # Generated labels: registered dataset names (see data/datasets/generated.py, or
    # register_generated) or paths ending in ".json" (registered under that name by
    # register_path_datasets, in the tools' setup); empty = ordinary training on DATASETS.TRAIN.
    # Non-empty = student training with the ratio loader.
    _C.DD.STUDENT.GENERATED_DATASETS = ()
    # Share of labeled (DATASETS.TRAIN) images in every global minibatch, in (0, 1): each global
    # minibatch of SOLVER.IMS_PER_BATCH = B images holds round(f * B) labeled images (halves up),
    # which must be neither 0 nor B. The paper used 6 labeled : 4 generated.
    _C.DD.STUDENT.LABELED_FRACTION = 0.6
    # Where the student starts: "weights" (MODEL.WEIGHTS: ImageNet or none, as the paper) or
    # "teacher" (fine-tune from TEACHER_WEIGHTS, the paper's ablation).
    _C.DD.STUDENT.INIT = "weights"
    # Teacher checkpoint for INIT = "teacher".
    _C.DD.STUDENT.TEACHER_WEIGHTS = ""

    # ---------------------------------------------------------------------------------------
    # The whole pipeline (tools/run_pipeline.py): teacher -> annotate -> student -> evaluate
    # ---------------------------------------------------------------------------------------
    _C.DD.PIPELINE = CN()
    # Stage configs, relative to the folder of the pipeline config file (as _BASE_ is), or
    # absolute. The teacher config also drives the annotation stage (same model; views from its
    # TEST.AUG).
    _C.DD.PIPELINE.TEACHER_CONFIG = ""
    _C.DD.PIPELINE.STUDENT_CONFIG = ""
    # Oracle: trained with the true labels of the unlabeled data (upper reference); "" = none.
    _C.DD.PIPELINE.ORACLE_CONFIG = ""
    # The unlabeled dataset to label, and the dataset of its true labels ("" = no label AP).
    _C.DD.PIPELINE.UNLABELED_DATASET = "synthetic_kp_unlabeled"
    _C.DD.PIPELINE.UNLABELED_TRUTH = "synthetic_kp_unlabeled_truth"
    # The shifted-distribution unlabeled dataset (the paper's Sports-1M analogue) and its truth,
    # for the "shifted" ablation.
    _C.DD.PIPELINE.SHIFTED_DATASET = "synthetic_kp_unlabeled_shifted"
    _C.DD.PIPELINE.SHIFTED_TRUTH = "synthetic_kp_unlabeled_shifted_truth"
    # One full teacher -> student run per seed (the SEED of every stage).
    _C.DD.PIPELINE.SEEDS = (1,)
    # Rounds of distillation per seed, an int >= 1: round r + 1 labels UNLABELED_DATASET again
    # with the teacher config's model and views and the weights of round r's student, and trains
    # a new student (STUDENT_CONFIG, from its usual init) on labeled + those labels. Round 1 is
    # teacher -> labels_multiview -> student; round r >= 2 writes round<r>_labels_multiview and
    # round<r>_student. Ablations run in round 1 only.
    _C.DD.PIPELINE.ROUNDS = 1
    # Extra rows, any of: "single_view" (single-view labels and a student on them),
    # "single_view_labels" (the single-view labels alone: their label AP against the multi-view
    # labels' at the cost of one labeling pass), "finetune" (student fine-tuned from the teacher),
    # "shifted" (student on labels of SHIFTED_DATASET), "oracle".
    _C.DD.PIPELINE.ABLATIONS = ()
    # The seeds that also run the ablations (each must be in SEEDS); empty = the first seed only,
    # so 3 seeds of the headline plus one set of ablations, not three.
    _C.DD.PIPELINE.ABLATION_SEEDS = ()
    # KEY VALUE pairs appended to every stage's command line (e.g. a shorter schedule).
    _C.DD.PIPELINE.STAGE_OPTS = []
    # Run each annotation stage as this many torchrun processes (gloo on CPUs, NCCL on GPUs),
    # sharding the images; 0 or 1 = one process. On CPUs, N one-thread processes label faster
    # than one N-thread process (small convolutions scale poorly across threads).
    _C.DD.PIPELINE.ANNOTATE_PROCESSES = 0
    # How many stages may run at once (a stage starts when the stages it reads are done). For
    # CPU-only machines: each gets cpu_count / N threads, as small models train faster as N
    # one-thread processes than as one N-thread process. Keep 1 on GPUs.
    _C.DD.PIPELINE.PARALLEL_STAGES = 1
    # How many unlabeled images to draw with the first seed's multi-view labels beside their true
    # labels (UNLABELED_TRUTH) once the pipeline is done, into OUTPUT_DIR/label_pictures; 0 = none.
    _C.DD.PIPELINE.LABEL_PICTURES = 0
    # Where every stage writes (one folder per seed and stage) and the report goes.
    _C.DD.PIPELINE.OUTPUT_DIR = "output/pipeline"


def parse_threshold(value, key: str):
    """Read a threshold key that holds "auto" or a number.

    Args:
        value: the config value (a string such as "auto" or "0.7", or a number).
        key: the full config key, named in the error.

    Returns:
        None for "auto", else the float.
    """
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be 'auto' or a number, got {value!r}") from None


def num_views(cfg) -> int:
    """The number of test-time views of ``cfg.TEST.AUG``: one per scale, twice with flips."""
    return len(cfg.TEST.AUG.MIN_SIZES) * (2 if cfg.TEST.AUG.FLIP else 1)
