"""The trainer of dd-detectron: detectron2's DefaultTrainer, changed only through its hooks."""

import logging
import os
from collections import OrderedDict

from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer

from ..data import build_ratio_train_loader
from ..data.head_checks import check_head_data
from ..evaluation import build_coco_evaluator
from ..modeling.test_time_augmentation import build_rcnn_tta
from .source_counting import SourceCountingLoader

__all__ = ["DDTrainer"]

logger = logging.getLogger(__name__)


def _folder_name(dataset_name: str) -> str:
    """A dataset's folder under OUTPUT_DIR: a dataset named by its path ("/data/x.json",
    "folder:/data/x") would otherwise be joined as an absolute path, outside OUTPUT_DIR."""
    return dataset_name.replace(":", "_").replace(os.sep, "_").lstrip("_")


class DDTrainer(DefaultTrainer):
    """DefaultTrainer with COCO evaluation of every head of the model (boxes, masks, keypoints;
    compiled evaluator only where it exists).

    With DD.STUDENT.GENERATED_DATASETS set it trains a student: labeled and generated images
    in every minibatch at DD.STUDENT.LABELED_FRACTION (see build_ratio_train_loader), and the
    realised per-source counts logged every iteration (see SourceCountingLoader).
    """

    @classmethod
    def build_train_loader(cls, cfg):
        if not cfg.DD.STUDENT.GENERATED_DATASETS:
            if not cfg.MODEL.MASK_ON:
                return super().build_train_loader(cfg)
            # A mask model on data without masks fails deep inside its loss: check the records
            # first (read as detectron2's loader reads them) and name the file at fault.
            dataset = get_detection_dataset_dicts(
                cfg.DATASETS.TRAIN,
                filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
                min_keypoints=(
                    cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
                    if cfg.MODEL.KEYPOINT_ON
                    else 0
                ),
                proposal_files=(
                    cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None
                ),
            )
            check_head_data(cfg, dataset, "DATASETS.TRAIN", cfg.DATASETS.TRAIN, keypoints=False)
            return build_detection_train_loader(cfg, dataset=dataset)
        logger.info(
            "Student training: %s labeled + %s generated.",
            cfg.DATASETS.TRAIN,
            cfg.DD.STUDENT.GENERATED_DATASETS,
        )
        return SourceCountingLoader(build_ratio_train_loader(cfg))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", _folder_name(dataset_name))
        return build_coco_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """Evaluate the multi-view ensembler over TEST.AUG's views, every head of the model (as
        detectron2's tools/train_net.py does with GeneralizedRCNNWithTTA, which refuses keypoint
        models): ``build_rcnn_tta``'s RCNNWithTTA.

        Args:
            cfg: the run's config.
            model: the R-CNN (boxes, masks and/or keypoints) to ensemble.

        Returns:
            OrderedDict: the evaluation results, each dataset's key suffixed with "_TTA".
        """
        logger.info("Running inference with test-time augmentation ...")
        tta_model = build_rcnn_tta(cfg, model)
        evaluators = [
            cls.build_evaluator(
                cfg,
                name,
                output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA", _folder_name(name)),
            )
            for name in cfg.DATASETS.TEST
        ]
        res = cls.test(cfg, tta_model, evaluators)
        return OrderedDict((k + "_TTA", v) for k, v in res.items())
