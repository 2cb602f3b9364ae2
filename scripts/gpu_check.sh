#!/usr/bin/env bash
# The one command to run when a GPU is lent: six stages, each under its own time budget (480 s in
# all, so that a rerun still fits in 15 minutes of device time), each writing its exit code and
# seconds to $OUT/summary.txt and its output to $OUT/<stage>.txt.  Eight files come back at most:
# summary.txt, env.txt, tests.txt, kernels.txt, agreement.txt, throughput.txt, train.txt, grid.png.
#
#   env         nvidia-smi, CuPy, NVRTC, cuBLAS (scripts/gpu_environment.py; one line if one is missing)
#   tests       every test marked gpu (kernels and GPU paths against their NumPy references), with
#               MINISDIT_REQUIRE_GPU=1 so that a GPU test cannot skip, and no -x: every failure is listed
#   kernels     GB/s and % of the HBM peak (4.8 TB/s on an H200) of LIF, WKV and the DDPM loss
#               (benchmarks/*_benchmark.py over minisdit/kernel_checks' benchmark functions)
#   agreement   one SDiT forward + backward on the GPU and on the CPU from the same weights: the
#               relative difference of the loss and gradients (benchmarks/gpu_agreement.py)
#   throughput  images/s and peak GPU memory of `small` and `paper` at batch 256, warmed up until a
#               step compiles nothing (benchmarks/gpu_memory.py)
#   train       `small` on MNIST for a fixed time (cut by SIGTERM, which saves a checkpoint), then a
#               grid of 64 samples and FID_LeNet from that checkpoint, so a cut run still gives both
#
# It runs from the checkout with PYTHONPATH (no pip install: the machine's own CuPy) and reads MNIST
# from a folder copied along with the checkout, the four IDX files as the mirrors publish them
# (*.gz, about 11 MB), by default .data/mnist (.data/ is in .gitignore).  Once, in the repository root:
#     mkdir -p .data/mnist && for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte \
#         t10k-labels-idx1-ubyte; do gzip -c ~/.cache/minisdit/mnist/$f > .data/mnist/$f.gz; done
# then on the lent machine (with the device tool: carry [".data"]):
#     bash scripts/gpu_check.sh [--data .data/mnist] [--out DIR]    (default --out: $OUT, else gpu-check-out)
#
# The dry run, in CI and on any machine without a GPU, runs every stage through the same code on
# tiny sizes on the CPU (CPU kernels in place of CuPy; MNIST from $MINISDIT_DATA or ~/.cache/minisdit):
#     bash scripts/gpu_check.sh --cpu [--out DIR]
# The exit code is the number of stages that failed (0: all passed).
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=gpu
OUT_DIR=${OUT:-gpu-check-out}
DATA=""
STAGE=""
STAGES="env tests kernels agreement throughput train"
PRINT_BUDGETS=0
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) MODE=cpu ;;
        --out) OUT_DIR=$2; shift ;;
        --data) DATA=$2; shift ;;
        --stages) STAGES=${2//,/ }; shift ;;  # a comma list: run only these (tests/scripts/test_gpu_check.py)
        --budgets) PRINT_BUDGETS=1 ;;  # print each stage's budget and the train stage's parts, run nothing
        --stage) STAGE=$2; shift ;;  # internal: run one stage (the runner below calls this)
        *) echo "error: unknown argument $1; use: bash scripts/gpu_check.sh [--cpu] [--data DIR] [--out DIR]" \
                "[--stages LIST] [--budgets]" >&2
           exit 2 ;;
    esac
    shift
done
if [ -z "$DATA" ]; then
    if [ "$MODE" = gpu ]; then DATA=.data/mnist; else DATA=${MINISDIT_DATA:-$HOME/.cache/minisdit}/mnist; fi
fi
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

# stage budgets in seconds (GPU: 20 + 110 + 50 + 60 + 100 + 140 = 480; the agreement stage compiles
# every kernel in float64 too); the dry run's are generous ceilings for tiny sizes on a shared CPU
if [ "$MODE" = gpu ]; then
    BUDGET_env=20 BUDGET_tests=110 BUDGET_kernels=50 BUDGET_agreement=60 BUDGET_throughput=100 BUDGET_train=140
    TRAIN_S=65 SAMPLE_S=25 EVALUATE_S=35  # inside the train stage: 65 (+ 10 to save) + 25 + 35 + the data copy
else
    BUDGET_env=30 BUDGET_tests=60 BUDGET_kernels=60 BUDGET_agreement=60 BUDGET_throughput=60 BUDGET_train=90
    TRAIN_S=12 SAMPLE_S=25 EVALUATE_S=40  # 12 s: the tiny run is cut by SIGTERM too, as on the GPU
fi
for name in $STAGES; do
    case " env tests kernels agreement throughput train " in
        *" $name "*) ;;
        *) echo "error: unknown stage $name; choose from env, tests, kernels, agreement, throughput, train" >&2; exit 2 ;;
    esac
done
if [ $PRINT_BUDGETS = 1 ]; then
    for name in $STAGES; do budget_var=BUDGET_$name; echo "$name ${!budget_var}"; done
    echo "train-parts $TRAIN_S $SAMPLE_S $EVALUATE_S"
    exit 0
fi

stage_env() {
    if [ "$MODE" = gpu ]; then
        if ! command -v nvidia-smi > /dev/null; then
            echo "error: nvidia-smi not found: no NVIDIA driver on this machine"; return 1
        fi
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || return 1
        "$PY" scripts/gpu_environment.py
    else
        "$PY" scripts/gpu_environment.py --cpu
    fi
}

stage_tests() {
    if [ "$MODE" = gpu ]; then export MINISDIT_REQUIRE_GPU=1; fi  # in the dry run they skip, with the reason
    # -m gpu: the tests that run on the GPU only (the CPU kernel tests ran in CI already)
    "$PY" -m pytest -q -p no:cacheprovider -m "gpu and (slow or not slow)" -rfEs --durations=10 tests
}

stage_kernels() {
    local rc=0
    if [ "$MODE" = gpu ]; then
        # the CPU rows on small sizes (they are not what this stage is for), the GPU rows at full size
        "$PY" benchmarks/lif_benchmark.py --cpu-neurons 4096 --gpu-neurons 4194304 || rc=1
        "$PY" benchmarks/wkv_benchmark.py --batch 256 --numpy-batch 1 || rc=1
        "$PY" benchmarks/ddpm_loss_benchmark.py --batch 64 --gpu-batch 16384 || rc=1
    else
        "$PY" benchmarks/lif_benchmark.py --cpu-neurons 1024 --repeats 5 || rc=1
        "$PY" benchmarks/wkv_benchmark.py --batch 2 --length 16 --channels 32 || rc=1
        "$PY" benchmarks/ddpm_loss_benchmark.py --batch 8 --repeats 3 || rc=1
    fi
    return $rc
}

stage_agreement() {
    if [ "$MODE" = gpu ]; then
        "$PY" benchmarks/gpu_agreement.py --device gpu --preset small --batch 8
    else
        "$PY" benchmarks/gpu_agreement.py --device cpu --preset tiny --batch 2
    fi
}

stage_throughput() {
    if [ "$MODE" = gpu ]; then
        "$PY" benchmarks/gpu_memory.py --device gpu --presets small,paper --batch-size 256 --steps 10 --max-warmup 5
    else
        "$PY" benchmarks/gpu_memory.py --device cpu --presets tiny --batch-size 4 --steps 1 --max-warmup 3
    fi
}

stage_train() {
    local run=$WORK/run data_dir=$WORK/data rc
    if [ ! -d "$DATA" ]; then  # else fetch would go on to the mirrors: 10 s each to fail without a network
        echo "error: no MNIST folder $DATA; make it as the header of scripts/gpu_check.sh says, or pass --data DIR"
        return 1
    fi
    # MD5-checked copy of the carried files into a cache folder of this run (fetch tries a local copy first)
    "$PY" -m minisdit.data fetch mnist --file "$DATA" --data-dir "$data_dir" || return 1
    if [ "$MODE" = gpu ]; then
        local train=(--device gpu --preset small --batch-size 256 --lr 3e-4 --steps 20000)
        local sample=(--device gpu --num 64 --steps 50) evaluate=(--device gpu --num-samples 1000 --steps 50)
    else
        local train=(--device cpu --preset tiny --batch-size 4 --num-train 64 --workers 1 --steps 100000)
        local sample=(--device cpu --num 4 --steps 2 --batch-size 4)
        local evaluate=(--device cpu --num-samples 8 --steps 2 --batch-size 8 --num-reference 64)
    fi
    # more steps than fit: `timeout` ends the run with SIGTERM, on which the trainer saves a checkpoint
    # (and one every 100 steps in case it cannot); the end-of-run grid is kept small so it never costs
    echo "== train for ${TRAIN_S} s"
    timeout -k 10 "$TRAIN_S" "$PY" -m minisdit.train --dataset mnist "${train[@]}" --data-dir "$data_dir" \
        --out "$run" --ckpt-every 100 --log-every 50 --sample-every 1000000 --sample-num 4 --sample-steps 2 \
        --no-progress
    rc=$?
    # 124: cut by SIGTERM, as planned; 137: still saving 10 s later, killed (the last --ckpt-every one stays)
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then echo "(cut by the ${TRAIN_S} s budget, as planned: exit $rc)"
    elif [ $rc -ne 0 ]; then return $rc; fi
    [ -f "$run/checkpoint.safetensors" ] || { echo "error: the run left no checkpoint in $run"; return 1; }
    tail -n 2 "$run/log.jsonl" 2>/dev/null
    echo "== sample a grid"
    timeout -k 5 "$SAMPLE_S" "$PY" -m minisdit.sample --ckpt "$run/checkpoint.safetensors" "${sample[@]}" \
        --no-progress --out "$OUT_DIR/grid.png" || return 1
    echo "== FID_LeNet"
    timeout -k 5 "$EVALUATE_S" "$PY" -m minisdit.evaluate --ckpt "$run/checkpoint.safetensors" --metric fid-lenet \
        "${evaluate[@]}" --data-dir "$data_dir" --json "$WORK/eval.json"
}

if [ -n "$STAGE" ]; then  # one stage, in the process the runner started under `timeout`
    "stage_$STAGE"
    exit $?
fi

# the runner: every stage, each in its own process under its budget, whatever the others did
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
export WORK
trap 'rm -rf "$WORK"' EXIT
MODE_FLAG=""; [ "$MODE" = cpu ] && MODE_FLAG=--cpu
echo "mode $MODE, data $DATA, output $OUT_DIR, $(date -u +%FT%TZ)" | tee "$OUT_DIR/summary.txt"
[ -d "$DATA" ] || echo "warning: no MNIST folder $DATA: the train stage will fail (see the header for --data)"
printf '%-11s %4s %8s %7s\n' stage rc seconds budget | tee -a "$OUT_DIR/summary.txt"
failed=0
began=$SECONDS
for name in $STAGES; do
    budget_var=BUDGET_$name
    budget=${!budget_var}
    echo "== $name (budget ${budget} s)"
    start=$(date +%s%N)
    timeout -k 10 "$budget" bash "$0" $MODE_FLAG --data "$DATA" --out "$OUT_DIR" --stage "$name" \
        > "$OUT_DIR/$name.txt" 2>&1
    rc=$?
    tenths=$((($(date +%s%N) - start) / 100000000))
    [ $rc -eq 0 ] || failed=$((failed + 1))
    [ $rc -eq 124 ] && echo "(stage cut at its ${budget} s budget)" >> "$OUT_DIR/$name.txt"
    tail -n 12 "$OUT_DIR/$name.txt"
    printf '%-11s %4d %6d.%d %7d\n' "$name" "$rc" $((tenths / 10)) $((tenths % 10)) "$budget" | tee -a "$OUT_DIR/summary.txt" | sed 's/^/summary: /'
done
echo "total $((SECONDS - began)) s, $failed of $(echo $STAGES | wc -w) stages failed" | tee -a "$OUT_DIR/summary.txt"
# summary.txt is the record (CI reads the exit code of this check): every stage has its line, with rc 0
not_passed=0
for name in $STAGES; do
    if ! awk -v stage="$name" '$1 == stage && $2 == "0" { found = 1 } END { exit !found }' "$OUT_DIR/summary.txt"; then
        echo "error: stage $name failed or is missing in $OUT_DIR/summary.txt; see $OUT_DIR/$name.txt" >&2
        not_passed=$((not_passed + 1))
    fi
done
exit $not_passed
