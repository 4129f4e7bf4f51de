#!/bin/bash
# All GPU figures in one prepared run (under 5 minutes on an H100/H200):
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# 1. HRNN update vs optax.adam at 1e4, 1e6 and 2.5e7 params, both layouts
#    (the pure-JAX pass: the CPU kernel does not apply on GPU), state and
#    peak bytes per parameter.
# 2. ResNet-50 V2 (224, bf16, batch 256) and Inception V3 (299) training
#    steps, Adam vs the HRNN, 30 steps each: step times, ratio, peak memory.
# Smoke test on a CPU: SMOKE=1 bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-/tmp/lopt-gpu-check}}
mkdir -p "$OUT"
python -c "import jax; print('devices:', jax.devices())" | tee "$OUT/devices.txt"
if [[ "${SMOKE:-0}" == 1 ]]; then
  SIZES=1e4; STEPS="--batch 2 --steps 2 --size 75"; LAYOUTS=resnet
else
  SIZES=1e4,1e6,2.5e7; STEPS="--steps 30 --batch 256"; LAYOUTS=resnet,flat
fi
python benchmarks/optimizer_overhead.py --sizes "$SIZES" --layouts "$LAYOUTS" \
  --opts adam,hrnn-jax 2>&1 | tee "$OUT/optimizer_overhead.txt"
python benchmarks/imagenet_step.py $STEPS 2>&1 | tee "$OUT/imagenet_step.txt"
echo "figures in $OUT"
