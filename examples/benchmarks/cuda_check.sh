#!/usr/bin/env bash
# The CUDA checks of lightning_fair, in one command, on a machine with a GPU (at most 8 minutes):
#   1. versions (torch, CUDA, the GPU, lightning, torch-pruning);
#   2. the CUDA tests: python -m pytest -q tests/test_cuda.py (same scores and pruned channels as on
#      the CPU, no host round trip per batch, the Lightning callback pruning mid-fit on the GPU);
#   3. the score-speed benchmark on the GPU (examples/benchmarks/score_speed.py --device cuda);
#   4. the torchvision / timm models of issue 14, where those libraries are installed
#      (examples/benchmarks/zoo_sweep.py --device cuda: prune under a tolerance and a MACs target);
#   5. ResNet-50 at 224 with 1000 classes on the GPU at the library's defaults (32 samples of each of
#      the 100 compared classes, num_projections="auto" (32 there), memory_budget="auto"): the estimate, the passes, the
#      wall time and the peak device memory (examples/benchmarks/resnet50_memory.py --device cuda).
# Needs torch with CUDA, lightning, torch-pruning and pytest; no scikit-learn, mlxtend or network.
#
# Run from the repository root:  bash examples/benchmarks/cuda_check.sh OUT_DIR [PYTHON]
# Everything printed is also written to OUT_DIR/cuda_check.txt (each step's output to its own file).
set -u
out=${1:?usage: cuda_check.sh OUT_DIR [PYTHON]}
python=${2:-python}
mkdir -p "$out"
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
log="$out/cuda_check.txt"
: > "$log"
say() { echo "$@" | tee -a "$log"; }

step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep its output, record its status
    local name=$1 limit=$2; shift 2
    say "=== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" > "$out/$name.txt" 2>&1
    local rc=$?
    tail -n 60 "$out/$name.txt" | tee -a "$log"
    say "=== $name: exit $rc in $((SECONDS - start)) s"
}

step versions 30 "$python" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| cuDNN", torch.backends.cudnn.version(), "| CUDA available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("GPU:", torch.cuda.get_device_name(), "| memory", round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1), "GiB")
for name in ("lightning", "torchmetrics", "torch_pruning", "jsonargparse", "sklearn"):
    try:
        module = __import__(name)
        print(name, getattr(module, "__version__", "?"))
    except ImportError as error:
        print(name, "NOT INSTALLED", "(needed)" if name in ("lightning", "torch_pruning") else "(optional)")
import lightning_fair
print("lightning_fair from", lightning_fair.__file__)
EOF

step cuda_tests 100 "$python" -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py
step score_speed 50 "$python" examples/benchmarks/score_speed.py --device cuda --no-reference --repeats 5
step zoo_sweep 150 "$python" examples/benchmarks/zoo_sweep.py --size 64 --device cuda
step resnet50_cuda 120 "$python" examples/benchmarks/resnet50_memory.py --device cuda --images 3200 --batch 64 \
    --samples 32 --projections auto --budget auto
say "=== done; outputs in $out"
