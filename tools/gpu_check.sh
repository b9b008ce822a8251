#!/usr/bin/env bash
# The GPU check of issue 10: what a machine with a CUDA GPU runs once, from a fresh clone, in at
# most 8 minutes (about 6 on one current GPU, set-up aside):
#
#   bash tools/gpu_check.sh [OUT_DIR]        # default OUT_DIR: output/gpu_check
#
# 1. set-up (`make setup`: .venv with torch, detectron2 and this project);
# 2. the CUDA-relevant tests: tests/test_cuda.py (the ensembler on CUDA = CPU on the same tiny
#    model and image; a real CUDA out-of-memory recorded and skipped; a 12 MP photo decoded in
#    bounded memory) and tests/test_memory_throughput.py;
# 3. R-50-FPN annotation throughput with the 18 views of the COCO annotate configs (9 sizes x
#    flip), random weights, COCO-sized (480 x 640) images: images/s and peak GPU memory, views
#    made in the DataLoader's workers and in the main process; and the ensembler alone
#    (tools/benchmark.py --task tta);
# 4. 100 iterations of an R-50-FPN student with the ratio loader on the synthetic data, without
#    and with SOLVER.AMP.ENABLED: seconds per iteration and peak memory.
#
# Every step's output goes to OUT_DIR/<step>.log; the figures are collected in OUT_DIR/summary.txt.
# A failing step is reported and the next one runs; the exit status is that of the last failure.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-output/gpu_check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=.venv/bin/python
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# A datasets root of the check's own: the synthetic splits are generated there on first use, and
# the random images of step 3 stand in for the builtin folder dataset sports1m_frames.
export DETECTRON2_DATASETS=$OUT/datasets
STATUS=0
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"

step() {  # step NAME TIMEOUT_S COMMAND...: run, log, time, record pass/fail
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    echo "== $name: $*" | tee -a "$SUMMARY"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "   rc=$rc, $((SECONDS - start)) s (log: $OUT/$name.log)" | tee -a "$SUMMARY"
    if [ $rc -ne 0 ]; then
        STATUS=$rc
        tail -n 20 "$OUT/$name.log"
    fi
    return $rc
}

step setup 240 make setup || exit $STATUS
step nvidia_smi 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PY" -c "import torch; assert torch.cuda.is_available(), 'CUDA is not available to torch'" \
    || { echo "torch sees no CUDA GPU: nothing to check" | tee -a "$SUMMARY"; exit 1; }

# 2. Tests (skips are listed with their reason: none is expected here).
step tests 180 "$PY" -m pytest -q -rs tests/test_cuda.py tests/test_memory_throughput.py
grep -E "passed|failed|SKIPPED" "$OUT/tests.log" | tail -n 5 >> "$SUMMARY"

# 3. Annotation throughput: 32 COCO-sized images (after 4 untimed), R-50-FPN, 18 views, random
# weights (tamed by tools/benchmark.py), fixed thresholds; the label space and flip map come from
# the synthetic labeled split (no COCO files needed).
IMAGES=$DETECTRON2_DATASETS/sports1m_frames
"$PY" - "$IMAGES" <<'EOF'
import os, sys
import cv2
import numpy as np

folder = sys.argv[1]
os.makedirs(folder, exist_ok=True)
rng = np.random.default_rng(0)
for i in range(36):
    path = os.path.join(folder, f"{i:03d}.jpg")
    if not os.path.exists(path):
        cv2.imwrite(path, rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
EOF
ANNOTATE_OPTS=(
    --config-file configs/COCO-Keypoints/annotate_R50-FPN_130k_co115-un120.yaml
    --num-iters 32 --warmup 4
    MODEL.WEIGHTS "" MODEL.DEVICE cuda MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.0
    TEST.DETECTIONS_PER_IMAGE 20 DD.ANNOTATE.DATASETS "('sports1m_frames',)"
    DATASETS.TRAIN "('synthetic_kp_labeled',)"
    DD.ANNOTATE.SCORE_THRESH "'0.5'" DD.ANNOTATE.KEYPOINT_THRESH "'0.5'" DATALOADER.NUM_WORKERS 4
)
for where in workers main; do
    flag=$([ "$where" = workers ] && echo True || echo False)
    step "annotate_views_in_$where" 150 "$PY" tools/benchmark.py --task annotate \
        --output "$OUT/annotate_views_in_$where.json" "${ANNOTATE_OPTS[@]}" \
        DD.ANNOTATE.VIEWS_IN_WORKERS "$flag"
    # images/s, peak MiB; detectron2's own split of the time (total vs pure compute).
    grep -E "^\||Total inference" "$OUT/annotate_views_in_$where.log" | tail -n 4 >> "$SUMMARY"
done
step tta 120 "$PY" tools/benchmark.py --task tta \
    --config-file configs/COCO-Keypoints/annotate_R50-FPN_130k_co115-un120.yaml \
    --rounds 2 --num-iters 4 --warmup 2 --image-size 480 640 --output "$OUT/tta.json" \
    MODEL.WEIGHTS "" MODEL.DEVICE cuda MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.0 \
    TEST.DETECTIONS_PER_IMAGE 20
grep -E "^\|" "$OUT/tta.log" | tail -n 6 >> "$SUMMARY"

# 4. Student: R-50-FPN (random init, BN as the synthetic configs) with the ratio loader (labeled
# synthetic split + the unlabeled split's true labels standing in for generated ones), COCO's
# training sizes, 4 images per batch, 100 iterations, without and with AMP.
for amp in False True; do
    step "student_amp_$amp" 150 "$PY" tools/train_net.py \
        --config-file configs/Synthetic/student_nR18-FPN_2k_labeled-generated.yaml \
        MODEL.DEVICE cuda MODEL.BACKBONE.NAME build_resnet_fpn_backbone MODEL.RESNETS.DEPTH 50 \
        MODEL.RESNETS.STEM_OUT_CHANNELS 64 MODEL.RESNETS.RES2_OUT_CHANNELS 256 \
        MODEL.FPN.OUT_CHANNELS 256 MODEL.ROI_BOX_HEAD.FC_DIM 1024 \
        MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS "(512, 512, 512, 512, 512, 512, 512, 512)" \
        MODEL.ANCHOR_GENERATOR.SIZES "[[32], [64], [128], [256], [512]]" \
        INPUT.MIN_SIZE_TRAIN "(640, 672, 704, 736, 768, 800)" INPUT.MAX_SIZE_TRAIN 1333 \
        DD.STUDENT.GENERATED_DATASETS "('synthetic_kp_unlabeled_truth',)" \
        SOLVER.IMS_PER_BATCH 4 SOLVER.MAX_ITER 100 SOLVER.AMP.ENABLED "$amp" \
        DATASETS.TEST "()" TEST.EVAL_PERIOD 0 DATALOADER.NUM_WORKERS 4 \
        OUTPUT_DIR "$OUT/student_amp_$amp"
    # The last logged iteration: time per iteration, data time, max_mem.
    grep -E "iter: [0-9]+ " "$OUT/student_amp_$amp.log" | tail -n 1 >> "$SUMMARY"
done

echo "== summary ($SUMMARY)"
cat "$SUMMARY"
exit $STATUS
