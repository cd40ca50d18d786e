#!/usr/bin/env bash
# GPU check: the released TTVSR recipe at full size (50-frame sequences, 64x64 LR crops, bf16, NCCL on
# 2+ GPUs) through jobs/train_ttvsr.py for 300 iterations on a synthetic REDS-sized dataset, then
# jobs/evaluate.py; prints frames/s, peak GPU memory and the loss curve. bench/gpu_check.py does the
# work (its docstring says what and where); this wrapper checks for GPUs first and holds the whole
# check to a hard time limit, under 8 minutes.
#
#   bash bench/gpu_check.sh [--gpus N] [--iters 300] [--budget 460] [--out outputs/gpu_check]
#   make gpu-check GPU_CHECK_ARGS="--gpus 2"
#   bash bench/gpu_check.sh --cpu-smoke        # no GPU needed: the same steps on CPU, tiny
#
# Environment: PYTHON (default .venv/bin/python, which needs a CUDA build of torch), TORCH_VERSION
# (for the hint when torch has no CUDA; the Makefile passes its own), GPU_CHECK_HARD_LIMIT (seconds,
# default 475: everything still running then is stopped).
# Exit status: 0 passed, 1 a step failed or ran out of time, 2 no usable GPU, 124 the hard limit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PYTHON:-.venv/bin/python}
if [[ ! -x $PY ]]; then
    echo "gpu_check: no Python at $PY: run 'make venv' (with a CUDA build of torch) or set PYTHON" >&2
    exit 2
fi

smoke=0
for arg in "$@"; do
    [[ $arg == --cpu-smoke ]] && smoke=1
done
if (( ! smoke )); then
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        echo "gpu_check: nvidia-smi not found: this needs NVIDIA GPUs and their driver (or --cpu-smoke)" >&2
        exit 2
    fi
    if ! nvidia-smi -L; then
        echo "gpu_check: nvidia-smi lists no GPU" >&2
        exit 2
    fi
fi

# timeout(1) signals the check's whole process group; gpu_check.py then stops the jobs it started
# (each in its own session, with its local Ray) before exiting.
status=0
timeout --kill-after=5 "${GPU_CHECK_HARD_LIMIT:-475}" "$PY" bench/gpu_check.py "$@" || status=$?
if (( status == 124 )); then
    echo "gpu_check: stopped at the hard limit of ${GPU_CHECK_HARD_LIMIT:-475} s" >&2
fi
exit "$status"
