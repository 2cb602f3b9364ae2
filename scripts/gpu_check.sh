#!/usr/bin/env bash
# The one script to run when a GPU is lent (about 10 minutes): GPU tests, kernel benchmarks and a
# timed training run of the `small` preset on MNIST with samples.  Everything goes under $OUT.
#
# On the lent machine (no network): carry the wheels (.whl/) and the MNIST cache (.data/) with the
# working tree, e.g.  MINISDIT_DATA=.data bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export MINISDIT_REQUIRE_GPU=1  # a GPU test that cannot reach the GPU fails here instead of skipping
export MINISDIT_DATA=${MINISDIT_DATA:-.data}
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
{
    echo "== device"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    python3 -c "import cupy; print('cupy', cupy.__version__, cupy.cuda.runtime.getDeviceCount(), 'device(s)')"
} 2>&1 | tee "$OUT/device.txt"

echo "== GPU tests" | tee "$OUT/tests.txt"
timeout 240 python3 -m pytest -q -x -m "not slow" tests/ -k "gpu or cuda or kernel" 2>&1 | tee -a "$OUT/tests.txt"

echo "== kernel benchmarks" | tee "$OUT/benchmarks.txt"
for bench in benchmarks/lif_benchmark.py benchmarks/wkv_benchmark.py; do
    [ -f "$bench" ] && timeout 90 python3 "$bench" --device gpu 2>&1 | tee -a "$OUT/benchmarks.txt"
done
[ -f benchmarks/train_throughput.py ] && timeout 120 python3 benchmarks/train_throughput.py --device gpu 2>&1 | tee -a "$OUT/benchmarks.txt"

echo "== training: small preset on MNIST" | tee "$OUT/train.txt"
timeout 300 python3 -m minisdit.train --dataset mnist --device gpu --preset small --batch-size 256 --lr 3e-4 \
    --steps 1500 --sample-every 1500 --sample-steps 100 --ckpt-every 500 --no-progress --out /tmp/gpu-check-run 2>&1 | tee -a "$OUT/train.txt"
cp /tmp/gpu-check-run/samples_final.png /tmp/gpu-check-run/loss.png "$OUT" 2>/dev/null || true
tail -n 3 /tmp/gpu-check-run/log.jsonl 2>/dev/null | tee -a "$OUT/train.txt"
