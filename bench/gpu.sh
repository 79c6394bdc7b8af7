#!/usr/bin/env bash
# The GPU suite of issue 12 for one NVIDIA H100/H200 machine (under 5 minutes):
# LRP clips/s on C3D and R3D-18 at batch 32 in float32 and bfloat16, Zennit on
# the same GPU, selective relevance throughput, and the relevance's agreement
# with the CPU float32 result at JAX's default precision and at "highest"
# (bench/gpu.py does the work; this script checks the machine and installs
# zennit).
#
# Needs JAX with CUDA, flax, optax, orbax-checkpoint, torch (and torchvision)
# and this repository installed (pip install --no-deps -e .). Zennit is the only
# extra: a wheel is installed with --no-deps from $ZENNIT_WHEEL or from
# bench/wheels/ when zennit is missing (make one here with
# `pip download --no-deps zennit==0.5.1 -d bench/wheels`); without it the
# Zennit rows say "not measured".
#
# Without a GPU it prints "not measured" and exits 0.
#
# Usage: bench/gpu.sh [OUT.json]   (default /tmp/selrel_gpu.json)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/selrel_gpu.json}"
python="${PYTHON:-python}"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "not measured: no NVIDIA GPU on this machine (nvidia-smi finds none)"
    exit 0
fi
platform="$("$python" -c 'import jax; print(jax.devices()[0].platform)' 2>/dev/null || true)"
if [ "$platform" != "gpu" ]; then
    echo "not measured: JAX sees no GPU (first device platform: ${platform:-none})"
    exit 0
fi
nvidia-smi -L

if ! "$python" -c 'import zennit' >/dev/null 2>&1; then
    wheel="${ZENNIT_WHEEL:-$(ls bench/wheels/zennit-*.whl 2>/dev/null | head -n 1 || true)}"
    if [ -n "$wheel" ]; then
        "$python" -m pip install --quiet --no-deps --no-index "$wheel"
    else
        echo "zennit is not installed and no wheel was brought: Zennit rows not measured"
    fi
fi

timeout 290 "$python" bench/gpu.py --json "$out"
echo "wrote $out"
