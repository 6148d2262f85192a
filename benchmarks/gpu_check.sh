#!/usr/bin/env bash
# The GPU check (issue 25): run on a CUDA machine from the repository root, with the package
# installed (pip install -e ".[dev]"). Prints everything; finishes in a few minutes on one GPU.
#   bash benchmarks/gpu_check.sh [OUTDIR]
# 1. the gpu-marked tests (a bf16 step per backbone against fp32 on the CPU, a compiled step,
#    a run on --device cuda); 2. a 1-GPU torchrun launch of a short run; 3. the throughput
#    table of benchmarks/bench_throughput.py on the GPU (fp32, bf16, bf16 + compile).
set -uo pipefail
OUT="${1:-${OUT:-/tmp/gpu_check}}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
rc=0
echo "== machine"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || rc=1
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" || rc=1
echo "== 1. gpu tests"; timeout 240 "$PY" -m pytest -q -p no:cacheprovider -n0 -m gpu tests/test_gpu.py 2>&1 | tail -15 || rc=1
echo "== 2. torchrun, 1 process"
timeout 120 "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m mtlbench run --method baseline \
  --preset smoke --device cuda --quiet --out "$OUT/results" || rc=1
echo "== 3. throughput on the GPU"
timeout 240 "$PY" benchmarks/bench_throughput.py --device cuda --methods baseline,stl,okd \
  --modes fp32,bf16,bf16+compile --rounds 2 --steps 10 2>&1 | tail -25 || rc=1
echo "== gpu_check rc=$rc"
exit $rc
