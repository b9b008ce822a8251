"""What the ensembler is measured against (tools/benchmark.py --task tta): the same views run the
detectron2 way (its own GeneralizedRCNNWithTTA for box and mask models, the same two-pass way
for keypoints, which it refuses), one plain inference per view, and the ensembler's backbone
passes alone.

Each is called like the ensembler, on a list of input dicts, and returns one dict per input with
its "instances".
"""

from typing import Callable, Dict, List

import torch
from detectron2.modeling import GeneralizedRCNNWithTTA
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.modeling.roi_heads.keypoint_head import keypoint_rcnn_inference
from fvcore.transforms import HFlipTransform

from ..modeling.test_time_augmentation import RCNNWithTTA, unflip_keypoint_logits

__all__ = ["TwoPassKeypointTTA", "SingleViewInference", "BackbonePasses", "tta_approaches"]


class TwoPassKeypointTTA(RCNNWithTTA):
    """The ensembler's views and keypoint reduction, run the way detectron2's
    GeneralizedRCNNWithTTA runs a second head (its mask branch): the whole model once per view
    for boxes, then once more per view, backbone included, on the merged boxes, heatmaps decoded
    in every view. Build it with ``batch_size=3``, detectron2's batch of views of any sizes."""

    def _inference_one_image(self, input):
        orig_shape = (input["height"], input["width"])
        augmented_inputs, tfms = self._get_augmented_inputs(input)
        with self._turn_off_roi_heads(["mask_on", "keypoint_on"]):
            all_boxes, all_scores, all_classes = self._get_augmented_boxes(augmented_inputs, tfms)
        # detectron2's merge, not the ensembler's (which may add box voting).
        merged = GeneralizedRCNNWithTTA._merge_detections(
            self, all_boxes, all_scores, all_classes, orig_shape
        )
        augmented_instances = self._rescale_detected_boxes(augmented_inputs, merged, tfms)
        outputs = self._batch_inference(augmented_inputs, augmented_instances)
        del augmented_inputs, augmented_instances
        heatmaps = [
            (
                unflip_keypoint_logits(o.pred_keypoint_heatmaps, self.keypoint_flip_indices)
                if any(isinstance(t, HFlipTransform) for t in tfm.transforms)
                else o.pred_keypoint_heatmaps
            )
            for o, tfm in zip(outputs, tfms)
        ]
        keypoint_rcnn_inference(torch.stack(heatmaps).mean(dim=0), [merged])
        return {"instances": detector_postprocess(merged, *orig_shape)}


class SingleViewInference:
    """N plain inferences: the model on each of the ensembler's views, one at a time. Returns,
    per input, the output of its last view (for a count of detections)."""

    def __init__(self, ensembler: RCNNWithTTA):
        self.ensembler = ensembler

    def __call__(self, inputs: List[dict]) -> List[dict]:
        outputs = []
        for x in inputs:
            views, _ = self.ensembler._get_augmented_inputs(x)
            per_view = [self.ensembler.model([v])[0] for v in views]
            outputs.append(per_view[-1])
        return outputs


class BackbonePasses:
    """The ensembler's backbone passes alone (every view, in its view batches): the share of its
    time that a second backbone pass per view adds to the two-pass way. Returns no instances."""

    def __init__(self, ensembler: RCNNWithTTA):
        self.ensembler = ensembler

    def __call__(self, inputs: List[dict]) -> List[dict]:
        for x in inputs:
            views, _ = self.ensembler._get_augmented_inputs(x)
            for batch in self.ensembler._view_batches(views):
                self.ensembler._backbone([views[i] for i in batch])
        return [{"instances": []} for _ in inputs]


def tta_approaches(cfg, model) -> Dict[str, Callable[[List[dict]], List[dict]]]:
    """The approaches that tools/benchmark.py --task tta times, in its table's order.

    Args:
        cfg: the model's config; TEST.AUG holds the views.
        model: a GeneralizedRCNN in eval mode.

    Returns:
        name -> approach: the ensembler (``RCNNWithTTA``); the detectron2 way (its own
        ``GeneralizedRCNNWithTTA`` with its default batch of 3 views, or for keypoint models
        ``TwoPassKeypointTTA``); N single-view inferences; the ensembler's backbone passes.
    """
    ensembler = RCNNWithTTA(cfg, model)
    if cfg.MODEL.KEYPOINT_ON:
        name = "two backbone passes per view (detectron2 TTA style)"
        baseline = TwoPassKeypointTTA(cfg, model, batch_size=3)
    else:
        name = "detectron2 GeneralizedRCNNWithTTA (two backbone passes per view)"
        baseline = GeneralizedRCNNWithTTA(cfg, model)
    return {
        "ensembler (dd_detectron)": ensembler,
        name: baseline,
        "N single-view inferences": SingleViewInference(ensembler),
        "backbone passes alone (part of the ensembler)": BackbonePasses(ensembler),
    }
