#!/usr/bin/env bash
# The learner alone on a GPU: the four streams at micro-batches of 256, 1024
# and 4096, with benchmarks/learner_only.py's metrics and rates.
#
# It is meant for a GPU machine whose python3 (3.12) has a CUDA build of
# torch but no fastavro and no network. Fetch fastavro's wheel for that
# Python once, on a machine with network, from the repository root:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 -d .whl fastavro==1.13.1
#
# then copy the tree with `.whl` to the GPU machine and run
# `bash benchmarks/device_learner.sh` there. It prints the tables and writes
# them to $OUT/device_learner.txt ($OUT defaults to /tmp).
set -euo pipefail

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
report="${OUT:-/tmp}/device_learner.txt"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c 'import torch; print("torch", torch.__version__)'
  for micro_batch in 256 1024 4096; do
    echo "micro-batch $micro_batch"
    python3 benchmarks/learner_only.py --device cuda --micro-batch "$micro_batch"
  done
} 2>&1 | tee "$report"
