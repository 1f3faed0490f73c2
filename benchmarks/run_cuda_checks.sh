#!/usr/bin/env bash
# The CUDA checks in one short run, for a machine with a GPU (results under ${OUT:-cuda_checks}/):
# the CUDA-graph tests of every sampler, then the CUDA parts of the benchmarks.
#   bash benchmarks/run_cuda_checks.sh
set -uo pipefail
out=${OUT:-cuda_checks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}.
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"
# every sampler compiled with CUDA graphs against eager, no recompiles (xdist when installed)
workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n 4" || echo "")
timeout 300 python3 -m pytest -q -p no:cacheprovider $workers tests/test_cuda.py \
    tests/test_samplers_sde.py -k cuda 2>&1 | tee "$out/test_cuda.txt"
timeout 120 python3 benchmarks/bench_sampler.py --part c --reps 10 2>&1 | tee "$out/bench_sampler_c.txt"
timeout 60 python3 benchmarks/bench_text.py --part b --device cuda --batch 64 --repeats 10 \
    2>&1 | tee "$out/bench_text_b.txt"
timeout 60 python3 benchmarks/bench_latent.py --part c --device cuda --batch 16 --repeats 10 \
    2>&1 | tee "$out/bench_latent_c.txt"
timeout 300 python3 benchmarks/bench_stable_diffusion.py --device cuda --compile --width 320 \
    --latent-size 64 --repeats 10 --no-generation-memory 2>&1 | tee "$out/bench_stable_diffusion.txt"
