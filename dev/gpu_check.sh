#!/usr/bin/env bash
# The GPU machine's check, in one go from a fresh clone, for a machine with a CUDA GPU, a torch
# already installed and perhaps no network (`make gpu-check [WHEELHOUSE=DIR]`):
#
#   PYTHON=python3 bash dev/gpu_check.sh [--wheelhouse DIR] [OUT_DIR]    # OUT_DIR: output/gpu_check
#
# 0. versions: the interpreter and what it has (torch, CUDA, numpy, pip, setuptools, make);
# 1. set-up: dev/setup_env.py itself (no make needed) into WORK/venv, a folder the check owns. The
#    venv sees the interpreter's torch and uses it; nothing is written to the interpreter's
#    site-packages. With --wheelhouse, pip installs from that folder alone;
# 2. CPU: the fast tests (pytest -m "not slow");
# 3. CUDA, each step saying "no CUDA" and passing over when torch sees no GPU: nvidia-smi; the
#    CUDA tests (tests/test_cuda.py, tests/test_memory_throughput.py); R-50-FPN annotation
#    throughput with the COCO annotate config's 18 views (views in workers and in the main
#    process); the ensembler alone (benchmark --task tta); 100 iterations of an R-50-FPN student
#    with the ratio loader, without and with SOLVER.AMP.ENABLED.
#
# At most 8 minutes in all (GPU_CHECK_BUDGET_S): each step has its own timeout, cut to the time
# left. Figures go to OUT_DIR/summary.txt (well under 1 MiB), each step's log (its last 2000
# lines) to OUT_DIR/logs.tar.gz: two files to bring back. The exit status is that of the last
# step that failed.
set -u
cd "$(dirname "$0")/.."
WHEELHOUSE=""
if [ "${1:-}" = "--wheelhouse" ]; then
    WHEELHOUSE=$(cd "$2" && pwd) || { echo "no wheelhouse folder $2" >&2; exit 2; }
    shift 2
fi
OUT=${1:-output/gpu_check}
PYTHON=${PYTHON:-python3}
WORK=${GPU_CHECK_WORK:-build/gpu_check}
BUDGET=${GPU_CHECK_BUDGET_S:-480}
mkdir -p "$OUT" "$WORK/logs"
OUT=$(cd "$OUT" && pwd)
WORK=$(cd "$WORK" && pwd)
PY=$WORK/venv/bin/python
# A datasets root of the check's own: the synthetic splits are generated there on first use, and
# the random images of the throughput step stand in for the builtin folder dataset sports1m_frames.
export DETECTRON2_DATASETS=$WORK/datasets
STATUS=0
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
START=$SECONDS
CUDA=no

note() { echo "$*" | tee -a "$SUMMARY"; }

step() {  # step NAME TIMEOUT_S COMMAND...: run under min(TIMEOUT_S, time left), log, record
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - (SECONDS - START) - 10))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 15 ]; then
        note "== $name: not run, the check's $BUDGET s are spent"
        STATUS=124
        return 124
    fi
    local begin=$SECONDS
    note "== $name (limit $limit s): $*"
    timeout "$limit" "$@" > "$WORK/logs/$name.log" 2>&1
    local rc=$?
    note "   rc=$rc, $((SECONDS - begin)) s"
    if [ $rc -ne 0 ]; then
        STATUS=$rc
        tail -n 5 "$WORK/logs/$name.log" | sed 's/^/   | /' | tee -a "$SUMMARY"
    fi
    return $rc
}

cuda_step() {  # like step, for a step that needs a CUDA GPU
    if [ "$CUDA" != yes ]; then
        note "== $1: no CUDA (torch.cuda.is_available() is False): not run"
        return 0
    fi
    step "$@"
}

finish() {
    local packed=$WORK/logs-tail
    rm -rf "$packed" && mkdir -p "$packed"
    for log in "$WORK"/logs/*.log; do
        [ -e "$log" ] && tail -n 2000 "$log" > "$packed/$(basename "$log")"
    done
    tar czf "$OUT/logs.tar.gz" -C "$packed" .
    note "== done in $((SECONDS - START)) s, exit status $STATUS (summary: $SUMMARY, logs: $OUT/logs.tar.gz)"
    exit $STATUS
}

cat > "$WORK/versions.py" <<'EOF'
import importlib, platform, shutil, sys
print("python", platform.python_version(), sys.executable, "(in a virtual environment)" if sys.prefix != sys.base_prefix else "")
for name in ("torch", "torchvision", "numpy", "cv2", "PIL", "setuptools", "pip", "detectron2", "pycocotools"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as e:
        print(name, "not importable:", type(e).__name__)
try:
    import torch
    print("cuda", torch.version.cuda, "available:", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception:
    pass
print("make", shutil.which("make") or "absent", "| nvidia-smi", shutil.which("nvidia-smi") or "absent")
EOF

# 0-1. What the machine has, the set-up, what the venv has.
step versions_interpreter 60 "$PYTHON" "$WORK/versions.py"
sed 's/^/   /' "$WORK/logs/versions_interpreter.log" >> "$SUMMARY"
step setup 240 "$PYTHON" dev/setup_env.py --venv "$WORK/venv" ${WHEELHOUSE:+--wheelhouse "$WHEELHOUSE"} \
    || finish
step versions_venv 60 "$PY" "$WORK/versions.py"
sed 's/^/   /' "$WORK/logs/versions_venv.log" >> "$SUMMARY"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null && CUDA=yes
note "== CUDA: $CUDA"

# 2. CPU: the fast tests.
step tests_fast 150 "$PY" -m pytest -q -p no:cacheprovider -m "not slow" tests
grep -E "passed|failed" "$WORK/logs/tests_fast.log" | tail -n 1 | sed 's/^/   /' >> "$SUMMARY"

# 3. CUDA.
cuda_step nvidia_smi 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
cuda_step tests_cuda 120 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py \
    tests/test_memory_throughput.py
[ -e "$WORK/logs/tests_cuda.log" ] && grep -E "passed|failed|SKIPPED" "$WORK/logs/tests_cuda.log" \
    | tail -n 5 | sed 's/^/   /' >> "$SUMMARY"

# Annotation throughput: 32 COCO-sized images (after 4 untimed), R-50-FPN, 18 views, random
# weights (tamed by tools/benchmark.py), fixed thresholds; the label space and flip map come from
# the synthetic labeled split (no COCO files needed).
if [ "$CUDA" = yes ]; then
    "$PY" - "$DETECTRON2_DATASETS/sports1m_frames" <<'EOF'
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
fi
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
    cuda_step "annotate_views_in_$where" 100 "$PY" tools/benchmark.py --task annotate \
        --output "$WORK/annotate_views_in_$where.json" "${ANNOTATE_OPTS[@]}" \
        DD.ANNOTATE.VIEWS_IN_WORKERS "$flag"
    # images/s, peak MiB; detectron2's own split of the time (total vs pure compute).
    [ -e "$WORK/logs/annotate_views_in_$where.log" ] && grep -E "^\||Total inference" \
        "$WORK/logs/annotate_views_in_$where.log" | tail -n 4 | sed 's/^/   /' >> "$SUMMARY"
done
cuda_step tta 80 "$PY" tools/benchmark.py --task tta \
    --config-file configs/COCO-Keypoints/annotate_R50-FPN_130k_co115-un120.yaml \
    --rounds 2 --num-iters 4 --warmup 2 --image-size 480 640 --output "$WORK/tta.json" \
    MODEL.WEIGHTS "" MODEL.DEVICE cuda MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.0 \
    TEST.DETECTIONS_PER_IMAGE 20
[ -e "$WORK/logs/tta.log" ] && grep -E "^\|" "$WORK/logs/tta.log" | tail -n 6 \
    | sed 's/^/   /' >> "$SUMMARY"

# Student: R-50-FPN (random init, BN as the synthetic configs) with the ratio loader (labeled
# synthetic split + the unlabeled split's true labels standing in for generated ones), COCO's
# training sizes, 4 images per batch, 100 iterations, without and with AMP.
for amp in False True; do
    cuda_step "student_amp_$amp" 100 "$PY" tools/train_net.py \
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
        OUTPUT_DIR "$WORK/student_amp_$amp"
    # The last logged iteration: time per iteration, data time, max_mem.
    [ -e "$WORK/logs/student_amp_$amp.log" ] && grep -E "iter: [0-9]+ " \
        "$WORK/logs/student_amp_$amp.log" | tail -n 1 | sed 's/^/   /' >> "$SUMMARY"
done

finish
