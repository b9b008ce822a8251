"""
The annotation stage: a teacher labels unlabeled images with hard COCO labels: boxes, and masks
(RLE) and keypoints as the teacher's heads (MODEL.MASK_ON, MODEL.KEYPOINT_ON; heads.py) allow.

``annotate(cfg, model, output_dir, truth=...)`` writes every output into ``output_dir``, each
atomically:

- ``person_keypoints_generated.json`` (the name kept for every head): every readable image of
  DD.ANNOTATE.DATASETS, with or without labels, in the categories of the labeled data (see
  coco_writer.py for the conventions);
- ``annotation_stats.json``: thresholds chosen (per category too, in per-category mode),
  instances per image, keypoints per instance, score histograms, unreadable images (report.py);
- ``calibration.png``: the calibration curves;
- ``label_quality.json`` (with ``truth``): box, mask and keypoint AP, as the heads allow, of the
  labels against the true labels of the same images (quality.py);
- ``progress/``: the raw detections, saved every DD.ANNOTATE.SAVE_PERIOD images (progress.py).

Views: TEST.AUG (MIN_SIZES, MAX_SIZE, FLIP) through the multi-view ensembler when
TEST.AUG.ENABLED; otherwise the single view of plain inference (INPUT.MIN_SIZE_TEST /
MAX_SIZE_TEST, no flip): through the same ensembler for keypoint models (one view = plain
inference, see tests/test_tta.py), through detectron2's inference for the others (teacher.py).

Runs sharded over all processes of the job (detectron2's ``inference_on_dataset``). Rank 0 alone
reads the datasets (the list of images, the labeled statistics), checks the saved progress and
decides which images are left; every process gets that decision and labels its share. At the end
rank 0 gets the names of the chunks written (no directory listing, which can lag on a shared
filesystem) and writes the outputs. A rerun of the same command resumes: images with saved
detections are skipped, and the outputs are the same, byte for byte, as those of an uninterrupted
or single-process run (given the same detections: images are ordered by id, annotation ids
assigned in that order). Settings that change only memory or speed (MEMORY_ONLY_KEYS) may change
between the runs; VIEW_BATCH_SIZE then moves the detections of the images left by float rounding
(see MEMORY_ONLY_KEYS).
"""

import itertools
import json
import logging
import os
from dataclasses import dataclass
from typing import Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.evaluation import inference_on_dataset
from detectron2.utils import comm

from ..config import num_views, parse_threshold
from ..data.datasets import ensure_dataset_ready
from ..modeling.heads import Heads
from ..utils import write_atomic
from .coco_writer import LabelSpace, write_coco_json
from .evaluator import AnnotationEvaluator
from .inputs import SkipUnreadable, annotation_mapper, images_to_label, throughput
from .labels import LabelingRule, make_labels
from .progress import ProgressStore
from .quality import label_quality
from .report import labeling_report, plot_calibration
from .teacher import build_teacher
from .thresholds import LabeledStats, labeled_statistics

__all__ = [
    "AnnotationSettings",
    "annotate",
    "views_config",
    "OUTPUT_JSON",
    "STATS_JSON",
    "CALIBRATION_PNG",
    "LABEL_QUALITY_JSON",
    "MEMORY_ONLY_KEYS",
]

logger = logging.getLogger(__name__)

OUTPUT_JSON = "person_keypoints_generated.json"
STATS_JSON = "annotation_stats.json"
CALIBRATION_PNG = "calibration.png"
LABEL_QUALITY_JSON = "label_quality.json"
PROGRESS_DIR = "progress"

# DD.TTA keys that change memory and speed, not what is computed: left out of the resume
# fingerprint, so a run stopped by an out-of-memory resumes with lower-memory settings.
# CACHE_FEATURES recomputes the backbone instead of keeping it: the same detections, bit for
# bit. VIEW_BATCH_SIZE batches views of one size: the same computation, but convolution
# libraries (oneDNN, cuDNN) pick kernels by batch size and round differently, so boxes,
# keypoints and scores can move by float rounding (far below 1e-3 px). A resume that changes
# it says so in the log.
MEMORY_ONLY_KEYS = ("DD.TTA.CACHE_FEATURES", "DD.TTA.VIEW_BATCH_SIZE")
ROUNDING_KEYS = ("DD.TTA.VIEW_BATCH_SIZE",)
# Where fingerprint.json records the first run's MEMORY_ONLY_KEYS (not compared on resume).
_MEMORY_RECORD = "memory_settings"

# DD.ANNOTATE.SCORE_THRESH_MODE values (config.py).
SCORE_THRESH_MODES = ("global", "per_category")


@dataclass(frozen=True)
class AnnotationSettings:
    """DD.ANNOTATE, read and checked.

    Attributes:
        datasets: the datasets to label.
        rule: thresholds, their mode and the keypoint minimum.
        save_period: images per saved progress chunk.
        heads: the teacher's heads (MODEL.MASK_ON, MODEL.KEYPOINT_ON).
    """

    datasets: tuple
    rule: LabelingRule
    save_period: int
    heads: Heads

    @classmethod
    def from_cfg(cls, cfg) -> "AnnotationSettings":
        a = cfg.DD.ANNOTATE
        score = parse_threshold(a.SCORE_THRESH, "DD.ANNOTATE.SCORE_THRESH")
        if score is not None and not 0.0 <= score <= 1.0:
            raise ValueError(
                f"DD.ANNOTATE.SCORE_THRESH must be 'auto' or in [0, 1], got {a.SCORE_THRESH!r}"
            )
        keypoint = parse_threshold(a.KEYPOINT_THRESH, "DD.ANNOTATE.KEYPOINT_THRESH")
        num_keypoints = cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS
        if not 0 <= a.MIN_KEYPOINTS <= num_keypoints:
            raise ValueError(
                f"DD.ANNOTATE.MIN_KEYPOINTS must be in [0, {num_keypoints}], got {a.MIN_KEYPOINTS}"
            )
        if a.SAVE_PERIOD < 1:
            raise ValueError(f"DD.ANNOTATE.SAVE_PERIOD must be >= 1, got {a.SAVE_PERIOD}")
        if len(a.DATASETS) == 0:
            raise ValueError("DD.ANNOTATE.DATASETS is empty: name the unlabeled datasets to label.")
        per_category = _per_category(a.SCORE_THRESH_MODE, score)
        if a.CATEGORY_MIN_INSTANCES < 1:
            raise ValueError(
                f"DD.ANNOTATE.CATEGORY_MIN_INSTANCES must be >= 1, got {a.CATEGORY_MIN_INSTANCES}"
            )
        rule = LabelingRule(
            score, keypoint, int(a.MIN_KEYPOINTS), per_category, int(a.CATEGORY_MIN_INSTANCES)
        )
        return cls(tuple(a.DATASETS), rule, int(a.SAVE_PERIOD), Heads.from_cfg(cfg))


def _per_category(mode, score_thresh: Optional[float]) -> bool:
    """Read DD.ANNOTATE.SCORE_THRESH_MODE: True for "per_category"."""
    if mode not in SCORE_THRESH_MODES:
        raise ValueError(
            f"DD.ANNOTATE.SCORE_THRESH_MODE must be one of {SCORE_THRESH_MODES}, got {mode!r}"
        )
    if mode == "per_category" and score_thresh is not None:
        raise ValueError(
            "DD.ANNOTATE.SCORE_THRESH_MODE 'per_category' calibrates an 'auto' "
            f"DD.ANNOTATE.SCORE_THRESH, got {score_thresh!r}: use 'auto', or mode 'global'."
        )
    return mode == "per_category"


def views_config(cfg):
    """The config whose TEST.AUG holds the views actually used (see the module docstring)."""
    if cfg.TEST.AUG.ENABLED:
        return cfg
    single = cfg.clone()
    single.defrost()
    single.TEST.AUG.MIN_SIZES = (cfg.INPUT.MIN_SIZE_TEST,)
    single.TEST.AUG.MAX_SIZE = cfg.INPUT.MAX_SIZE_TEST
    single.TEST.AUG.FLIP = False
    single.freeze()
    return single


def _fingerprint(cfg, settings: AnnotationSettings, num_images: int) -> dict:
    """What determines the saved detections (thresholds are not part of it: they apply later;
    nor are MODEL.DEVICE and MEMORY_ONLY_KEYS)."""
    model = json.loads(json.dumps(cfg.MODEL))
    model.pop("DEVICE", None)
    fp = {
        "MODEL": model,
        "INPUT.FORMAT": cfg.INPUT.FORMAT,
        "TEST.AUG": cfg.TEST.AUG,
        "TEST.DETECTIONS_PER_IMAGE": cfg.TEST.DETECTIONS_PER_IMAGE,
        "DD.TTA": cfg.DD.TTA,
        "DD.ANNOTATE.DATASETS": settings.datasets,
        "num_images": num_images,
    }
    # tuples -> lists: compares equal to the saved copy
    return _without_memory_keys(json.loads(json.dumps(fp)))


def _memory_settings(cfg) -> dict:
    return {key: cfg.DD.TTA[key[len("DD.TTA.") :]] for key in MEMORY_ONLY_KEYS}


def _without_memory_keys(fingerprint: dict) -> dict:
    """The fingerprint without MEMORY_ONLY_KEYS (also those saved by earlier versions)."""
    fingerprint.pop(_MEMORY_RECORD, None)
    tta = fingerprint.get("DD.TTA")
    for key in MEMORY_ONLY_KEYS:
        if isinstance(tta, dict):
            tta.pop(key[len("DD.TTA.") :], None)
    return fingerprint


def _label_space(cfg, settings: AnnotationSettings) -> LabelSpace:
    """Categories (and keypoints, for keypoint models) from the labeled data's metadata, else the
    unlabeled data's; as many categories as the model has classes."""
    keypoints = settings.heads.keypoint
    needed = "thing_classes and keypoint_names" if keypoints else "thing_classes"
    tried = []
    for key, names in (
        ("DATASETS.TRAIN", cfg.DATASETS.TRAIN),
        ("DD.ANNOTATE.DATASETS", settings.datasets),
    ):
        for name in names:
            metadata = MetadataCatalog.get(name)
            if name in DatasetCatalog.list():
                ensure_dataset_ready(name)  # COCO-style datasets learn category ids on load
            if metadata.get("thing_classes") and (not keypoints or metadata.get("keypoint_names")):
                space = LabelSpace.from_metadata(metadata, f"{key} {name!r}", keypoints)
                _check_num_classes(cfg, space, f"{key} {name!r}")
                return space
            tried.append(name)
    raise ValueError(
        f"No dataset of DATASETS.TRAIN or DD.ANNOTATE.DATASETS ({tried}) has {needed} in its "
        "metadata: the generated JSON needs its categories"
        f"{' and keypoint names' if keypoints else ''}."
    )


def _check_num_classes(cfg, space: LabelSpace, where: str) -> None:
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if len(space.thing_classes) != num_classes:
        raise ValueError(
            f"{where} has {len(space.thing_classes)} categories {list(space.thing_classes)}, "
            f"the model MODEL.ROI_HEADS.NUM_CLASSES = {num_classes}: the labels are written in "
            "the labeled data's categories, one per class of the model."
        )


# What "auto" calibrates on, by instance kind (thresholds.py), for errors.
_CALIBRATED_ON = {
    "keypoints": ("labeled keypoints", "non-crowd annotation with a labeled keypoint", "keypoint"),
    "masks": ("labeled masks", "non-crowd annotation with a segmentation (mask)", "mask"),
    "boxes": ("labeled boxes", "non-crowd annotation", "box"),
}


def _labeled_stats(cfg, settings: AnnotationSettings) -> Optional[LabeledStats]:
    """Statistics of DATASETS.TRAIN, when a threshold is "auto"."""
    thresholds = [("DD.ANNOTATE.SCORE_THRESH", settings.rule.score_thresh)]
    if settings.heads.keypoint:
        thresholds.append(("DD.ANNOTATE.KEYPOINT_THRESH", settings.rule.keypoint_thresh))
    auto_keys = [key for key, value in thresholds if value is None]
    if not auto_keys:
        return None
    if len(cfg.DATASETS.TRAIN) == 0:
        raise ValueError(
            f"{' and '.join(auto_keys)} = 'auto' calibrates on labeled data: "
            "DATASETS.TRAIN is empty."
        )
    kind = settings.heads.instance_kind
    stats = labeled_statistics(
        itertools.chain.from_iterable(DatasetCatalog.get(n) for n in cfg.DATASETS.TRAIN),
        tuple(cfg.DATASETS.TRAIN),
        kind,
        cfg.MODEL.ROI_HEADS.NUM_CLASSES if settings.rule.per_category else None,
    )
    if stats.num_instances == 0:
        on, instance, dataset = _CALIBRATED_ON[kind]
        raise ValueError(
            f"{' and '.join(auto_keys)} = 'auto' calibrates on {on}, "
            "but DATASETS.TRAIN="
            f"{tuple(cfg.DATASETS.TRAIN)} ({_json_files(cfg.DATASETS.TRAIN)}) has no {instance} "
            f"({stats.num_images} images). Give a labeled {dataset} dataset or numeric "
            "thresholds."
        )
    per_instance = (
        f", {stats.keypoints_per_instance:.4f} labeled keypoints per instance"
        if settings.heads.keypoint
        else ""
    )
    by_category = (
        f"; instances by category {list(stats.category_instances)}"
        if stats.category_instances
        else ""
    )
    logger.info(
        "Labeled data %s: %.4f instances (%s) per image%s%s.",
        stats.datasets,
        stats.instances_per_image,
        kind,
        per_instance,
        by_category,
    )
    return stats


def _json_files(names) -> str:
    files = [MetadataCatalog.get(n).get("json_file") for n in names]
    return ", ".join(str(f) for f in files if f) or "no json_file in their metadata"


def _on_main_process_then_share(fn):
    """Run fn on rank 0 only (e.g. reading a large labeled dataset) and give every rank its
    result, or make every rank raise its error (no rank waits forever at a barrier)."""
    result, error = None, None
    if comm.is_main_process():
        try:
            result = fn()
        except Exception as e:
            error = e
    shared_result, shared_error = comm.all_gather((result, None if error is None else repr(error)))[
        0
    ]
    if error is not None:
        raise error
    if shared_error is not None:
        raise RuntimeError(f"The annotation stage failed on rank 0: {shared_error}")
    return shared_result


@dataclass
class _Plan:
    """What rank 0 decides at the start of a run."""

    images: list  # every image to label
    todo: list  # the images without saved detections
    earlier_chunks: list  # the chunks of earlier runs
    labeled: Optional[LabeledStats]
    label_space: LabelSpace


def _plan(
    cfg, settings: AnnotationSettings, store: ProgressStore, images: Optional[Sequence[dict]]
) -> _Plan:
    """Rank 0's part of the start: the images, the progress check, what is left to label."""
    if images is None:
        images = images_to_label(settings.datasets)
    labeled, label_space = _labeled_stats(cfg, settings), _label_space(cfg, settings)
    fingerprint = _fingerprint(cfg, settings, len(images))
    memory = _memory_settings(cfg)
    store.write_fingerprint_if_missing(dict(fingerprint, **{_MEMORY_RECORD: memory}))
    saved = store.check_fingerprint(fingerprint, normalize=_without_memory_keys)
    _warn_if_rounding_changes(saved.get(_MEMORY_RECORD, {}), memory, store.root)
    earlier = store.chunk_names()  # the one listing of a run
    done = store.finished_image_ids(earlier)
    todo = [r for r in images if r["image_id"] not in done]
    return _Plan(images, todo, earlier, labeled, label_space)


def _warn_if_rounding_changes(saved: dict, current: dict, progress_dir: str) -> None:
    changed = [k for k in ROUNDING_KEYS if k in saved and saved[k] != current[k]]
    if changed:
        logger.warning(
            f"Resuming {progress_dir} with "
            + ", ".join(f"{k} {current[k]} (its first run: {saved[k]})" for k in changed)
            + ": accepted, but the images left may differ from an uninterrupted run by float "
            "rounding (a batched convolution rounds differently). DD.TTA.CACHE_FEATURES changes "
            "nothing."
        )


def _given_images(images: Sequence[dict]) -> list:
    images = [dict(r, dd_index=i) for i, r in enumerate(images)]
    if not images:
        raise ValueError("annotate: the list of images to label is empty.")
    if len({r["image_id"] for r in images}) != len(images):
        raise ValueError("annotate: the images to label have duplicate image_id values.")
    return images


def _description(heads: Heads) -> str:
    """The JSON's info.description (a keypoint-only model's is what it always was)."""
    if heads.keypoint and not heads.mask:
        return "Hard keypoint labels generated by dd-detectron (Data Distillation)."
    return f"Hard labels ({heads.describe()}) generated by dd-detectron (Data Distillation)."


def _info(cfg, settings: AnnotationSettings, labeling, label_space: LabelSpace) -> dict:
    """The JSON's info entry: the teacher, the views and the thresholds (no timestamps)."""
    info = {
        "description": _description(settings.heads),
        "teacher_weights": cfg.MODEL.WEIGHTS,
        "views": {
            "min_sizes": list(cfg.TEST.AUG.MIN_SIZES),
            "max_size": cfg.TEST.AUG.MAX_SIZE,
            "flip": cfg.TEST.AUG.FLIP,
        },
        "score_threshold": labeling.score.value,
    }
    if labeling.keypoint is not None:
        info["keypoint_threshold"] = labeling.keypoint.value
        info["min_keypoints"] = settings.rule.min_keypoints
    if labeling.category_scores is not None:
        info["score_threshold_per_category"] = {
            label_space.thing_classes[c.class_id]: c.choice.value for c in labeling.category_scores
        }
    return info


def _summary(json_path, num_images, num_annotations, labeling, report) -> dict:
    """annotate()'s "annotation" result and its log line."""
    summary = {
        "json_file": json_path,
        "images": num_images,
        "annotations": num_annotations,
        "failed_images": len(labeling.failed),
        "score_threshold": labeling.score.value,
    }
    if labeling.keypoint is not None:
        summary["keypoint_threshold"] = labeling.keypoint.value
    summary["instances_per_image"] = report["instances_per_image"]["mean"]
    if labeling.keypoint is not None:
        summary["keypoints_per_instance"] = report["keypoints_per_instance"]["mean"]
    if labeling.category_scores is not None:
        summary["score_threshold_per_category"] = [c.choice.value for c in labeling.category_scores]
    keypoints = (
        ", %.2f visible keypoints each; keypoint threshold %.4g (%s)"
        % (
            summary["keypoints_per_instance"],
            labeling.keypoint.value,
            "auto" if labeling.keypoint.auto else "fixed",
        )
        if labeling.keypoint is not None
        else ""
    )
    logger.info(
        "Wrote %s: %d images, %d annotations (%.3f per image%s); score threshold %.4g (%s%s); "
        "%d unreadable images.",
        json_path,
        num_images,
        num_annotations,
        summary["instances_per_image"],
        keypoints,
        labeling.score.value,
        "auto" if labeling.score.auto else "fixed",
        (
            ", per category %s" % summary["score_threshold_per_category"]
            if labeling.category_scores is not None
            else ""
        ),
        len(labeling.failed),
    )
    return summary


def _write_outputs(cfg, settings, plan: _Plan, store, chunk_names, output_dir, truth) -> dict:
    heads, labeled, label_space = settings.heads, plan.labeled, plan.label_space
    labeling = make_labels(
        store,
        {r["image_id"]: r for r in plan.images},
        settings.rule,
        labeled,
        heads.num_keypoints,
        chunk_names,
        masks=heads.mask,
    )
    json_path = os.path.join(output_dir, OUTPUT_JSON)
    num_images, num_annotations = write_coco_json(
        json_path, labeling.labels, label_space, _info(cfg, settings, labeling, label_space)
    )
    report = labeling_report(
        labeling, labeled, settings.rule, settings.datasets, OUTPUT_JSON, label_space.thing_classes
    )
    stats_path = os.path.join(output_dir, STATS_JSON)
    write_atomic(stats_path, json.dumps(report, indent=1))
    plot_calibration(labeling, os.path.join(output_dir, CALIBRATION_PNG), label_space.thing_classes)
    results = {"annotation": _summary(json_path, num_images, num_annotations, labeling, report)}
    if truth:
        quality = label_quality(json_path, truth, cfg.TEST.KEYPOINT_OKS_SIGMAS, heads.iou_types)
        write_atomic(os.path.join(output_dir, LABEL_QUALITY_JSON), json.dumps(quality, indent=1))
        results["label_quality"] = quality
    return results


def annotate(
    cfg,
    model,
    output_dir: str,
    *,
    images: Optional[Sequence[dict]] = None,
    truth: Optional[str] = None,
) -> dict:
    """Label the images of DD.ANNOTATE.DATASETS with ``model`` (see the module docstring).

    Call it in every process of a job; it shards the images over them.

    Args:
        cfg: the config (views: TEST.AUG / DD.TTA; selection: DD.ANNOTATE; labeled data:
            DATASETS.TRAIN).
        model: the teacher, an R-CNN (GeneralizedRCNN: boxes, with masks and / or keypoints as
            MODEL.MASK_ON / MODEL.KEYPOINT_ON say) with its weights loaded.
        output_dir: where the outputs and the progress go.
        images: the images to label instead of DD.ANNOTATE.DATASETS' (dicts with image_id,
            file_name and optionally height, width), e.g. a subset.
        truth: a registered dataset with the true labels of the same images: also write
            LABEL_QUALITY_JSON, the labels' box, mask and keypoint AP (as the heads allow)
            against it.

    Returns:
        on rank 0, {"annotation": {...summary...}} (and "label_quality" with ``truth``); on
        other ranks, {}.
    """
    settings = AnnotationSettings.from_cfg(cfg)
    cfg = views_config(cfg)
    teacher = build_teacher(cfg, model, settings.heads)  # checks the model and the views first
    if images is not None:
        images = _given_images(images)
    os.makedirs(output_dir, exist_ok=True)
    store = ProgressStore(os.path.join(output_dir, PROGRESS_DIR))

    # Rank 0 decides; every rank shards the same list of images left to label.
    plan = None

    def decide():
        nonlocal plan
        plan = _plan(cfg, settings, store, images)
        return plan.todo, len(plan.images)

    todo, num_images = _on_main_process_then_share(decide)
    logger.info(
        "Annotating %d images of %s (%d done in an earlier run), %d views, %d processes.",
        len(todo),
        settings.datasets,
        num_images - len(todo),
        num_views(cfg),
        comm.get_world_size(),
    )
    # Nothing left (a rerun of a finished run): no loader, only the outputs are rewritten.
    loader = (
        build_detection_test_loader(
            todo, mapper=annotation_mapper(cfg), num_workers=cfg.DATALOADER.NUM_WORKERS
        )
        if todo
        else []
    )
    evaluator = AnnotationEvaluator(store, settings.heads, settings.save_period)
    # inference_on_dataset puts the runner back in its own mode at the end, recursively: in the
    # teacher's mode, so that the caller's model is left as it was given.
    model_runner = SkipUnreadable(teacher).train(model.training)
    written = inference_on_dataset(model_runner, loader, evaluator)
    if not comm.is_main_process():
        return {}
    chunks = plan.earlier_chunks + written["chunks"]
    results = _write_outputs(cfg, settings, plan, store, chunks, output_dir, truth)
    results["annotation"]["timing"] = throughput(model_runner.timing)  # rank 0's own images
    return results
