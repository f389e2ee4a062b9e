#!/usr/bin/env bash
# GPU check on a fresh GPU machine, in <= 8 minutes: the GPU config's training (baseline and optimized) and
# generation through the pure-PyTorch core, no Ray, no pydantic, no network. Needs python3 with torch, numpy,
# pandas, pyyaml, safetensors and tokenizers (what the lent GPU machines have). Prints tokens/s, speedup, MFU
# against the measured and the datasheet bf16 peak, in-process TTFT and CUDA peak memory, then one JSON line.
#   benchmarks/gpu_check.sh [extra args for gpu_check.py, e.g. --steps 300]
# Writes the full output to ${OUT:-.}/gpu_check.log as well.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
out=${OUT:-.}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
# 470 s: the 8-minute budget minus a margin for start-up; figures are printed as they are measured, so a run
# cut short still shows what it finished.
timeout --signal=INT 470 "$PYTHON" -u benchmarks/gpu_check.py "$@" 2>&1 | tee "$out/gpu_check.log"
