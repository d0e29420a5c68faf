#!/usr/bin/env bash
# One command that checks edgeda's GPU paths on a (bare) CUDA machine, in under 9 minutes:
#   setup       scripts/setup.sh (keeps an installed torch; offline: falls back to the source tree)
#   env         torch / CUDA / driver / GPU / NCCL / nvcc / onnxruntime, and that TensorRT is absent
#   kernels     builds the torch extension of kernels/, runs tests/test_kernels.py and
#               tests/test_kernel_build.py, then benchmarks/kernel_speed.py (bandwidth vs a device copy
#               timed in the same run; speed-up vs unfused PyTorch)
#   train       CPU-profile DANN, source-only segmentation (lraspp) and detection (ssdlite) and
#               PixelDA: short CUDA runs
#               with the trainer's AMP (bf16 where the GPU has it) vs short CPU runs, iterations/s
#   torchrun    2 processes on the one GPU with NCCL (NCCL may refuse two ranks on one GPU: said so)
#   ort-gpu     pip install onnxruntime-gpu into a side folder (the machine may be offline: said so)
#   bench       edgeda bench, PyTorch CUDA eager (CUDA events: H2D / compute / D2H) and ONNX
#               Runtime's CUDA provider, on a classification, a segmentation and a detection bundle
#   step-efficiency  benchmarks/step_efficiency.py --device cuda: training-step GFLOP/s vs the
#               measured matmul peak, fp32 / AMP / channels-last
#   summary     one summary naming the GPU, CUDA and driver
# Every step has its own time cap (and all share one overall budget, GPU_CHECK_BUDGET_S, default
# 500 s); a failed or timed-out step is recorded and the next one runs. JSON goes to $OUT, or
# benchmarks/results/gpu/ when $OUT is unset (the dry run: a temporary folder unless $OUT is set).
#
# Usage: scripts/gpu_check.sh [--dry-run]
#   --dry-run   the same steps on the CPU at toy sizes; CUDA-only steps print "skipped: no CUDA"
#               (tests/test_gpu_check.py runs it so the script cannot rot)
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-500}
RESERVE=15  # kept for the summary
if [ -n "${OUT:-}" ]; then RESULTS=$OUT
elif [ $DRY = 1 ]; then RESULTS=$(mktemp -d -t edgeda-gpu-check-dry-XXXX)
else RESULTS=$ROOT/benchmarks/results/gpu; fi
mkdir -p "$RESULTS"
WORK=${GPU_CHECK_WORK:-$(mktemp -d -t edgeda-gpu-check-XXXX)}
mkdir -p "$WORK"
: > "$WORK/steps.tsv"
LOG=$RESULTS/gpu_check.log
exec > >(tee -a "$LOG") 2>&1
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export EDGEDA_CACHE=$WORK/cache TORCH_EXTENSIONS_DIR=$WORK/torch_extensions
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=8 PIP_RETRIES=0
DRYFLAG=()
[ $DRY = 1 ] && DRYFLAG=(--dry-run)
echo "edgeda GPU check $(date -u +%FT%TZ) on $(hostname)$([ $DRY = 1 ] && echo ' (dry run)'); results: $RESULTS; scratch: $WORK"

record() {  # name status rc seconds cap note
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "${6:-}" >> "$WORK/steps.tsv"
}
skip() {  # name reason
  echo "=== [$1] skipped: $2"
  record "$1" skipped 0 0 0 "$2"
}
step() {  # name cap command...: run under min(cap, budget left); record ok / failed / timed out / skipped
  local name=$1 cap=$2; shift 2
  local left=$((BUDGET - SECONDS - RESERVE))
  if [ "$left" -lt 5 ]; then skip "$name" "out of the overall time budget (${BUDGET} s)"; return; fi
  [ "$cap" -gt "$left" ] && cap=$left
  echo "=== [$name] (cap ${cap} s)"
  local t0=$SECONDS rc
  timeout --kill-after=10 "$cap" "$@"
  rc=$?
  local dt=$((SECONDS - t0))
  case $rc in
    0) record "$name" ok 0 "$dt" "$cap" ;;
    3) record "$name" skipped 3 "$dt" "$cap" "$(tail -n 1 "$WORK/last_skip" 2>/dev/null)";;
    124|137) echo "[$name] timed out after ${cap} s"; record "$name" "timed out" "$rc" "$dt" "$cap" ;;
    *) echo "[$name] failed (exit $rc)"; record "$name" failed "$rc" "$dt" "$cap" ;;
  esac
}
pystep() {  # name cap subcommand: a scripts/gpu_check.py step
  local name=$1 cap=$2 sub=$3
  echo "skipped: no CUDA" > "$WORK/last_skip"
  step "$name" "$cap" "$PY" scripts/gpu_check.py "$sub" --work "$WORK" --out "$RESULTS" "${DRYFLAG[@]}"
}

# ---- setup: install what is missing; offline, fall back to the source tree on PYTHONPATH
setup() {
  if [ $DRY = 1 ]; then
    echo "dry run: scripts/setup.sh not run (it would pip-install into this environment)"
    "$PY" -c "import torch, edgeda; print('torch', torch.__version__, '| edgeda from', edgeda.__file__)"
    return
  fi
  if scripts/setup.sh dev; then return 0; fi
  echo "scripts/setup.sh failed (offline?): trying an editable install without build isolation or dependencies"
  if "$PY" -m pip install -q --no-build-isolation --no-deps -e . ; then return 0; fi
  echo "pip could not install edgeda: using the source tree on PYTHONPATH"
  "$PY" -c "import torch, edgeda, onnxruntime, safetensors, click, yaml, PIL, sklearn, matplotlib" || return 1
}
export DRY PY WORK
export -f setup
step setup 120 bash -c setup
"$PY" -c "import torch; print('torch', torch.__version__, '| built for CUDA', torch.version.cuda, '| CUDA available', torch.cuda.is_available())" \
  || echo "torch does not import: every later step will fail and say so"
HAVE_CUDA=0
[ $DRY = 0 ] && "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null && HAVE_CUDA=1

pystep env 60 env

# ---- kernels: build the extension, the GPU kernel tests, the kernel benchmark
if [ $HAVE_CUDA = 1 ]; then
  ARCH=$("$PY" -c "import torch; p = torch.cuda.get_device_capability(0); print(f'{p[0]}.{p[1]}')")
  export TORCH_CUDA_ARCH_LIST=$ARCH MAX_JOBS=${MAX_JOBS:-$(nproc)}
  step kernels-build 200 "$PY" -c "import time; t = time.time(); from edgeda import kernels; kernels.extension(); \
print(f'built the edgeda CUDA extension for sm_${ARCH/./} in {time.time() - t:.0f} s')"
  step kernels-tests 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_kernel_build.py
  step kernels-bench 60 "$PY" benchmarks/kernel_speed.py --out "$RESULTS/kernels.json"
else
  for s in kernels-build kernels-tests kernels-bench; do skip $s "no CUDA"; done
fi

pystep train 200 train
if [ $HAVE_CUDA = 1 ]; then pystep torchrun 75 torchrun; else skip torchrun "no CUDA"; fi

# ---- onnxruntime-gpu: into a side folder, so the installed onnxruntime stays as it is
if [ $HAVE_CUDA = 1 ]; then
  if "$PY" -c "import onnxruntime as o, sys; sys.exit(0 if 'CUDAExecutionProvider' in o.get_available_providers() else 1)" 2>/dev/null; then
    skip ort-gpu "the installed onnxruntime already has the CUDA provider"
    export GPU_CHECK_ORT_GPU="already installed"
  else
    ort_install() {
      "$PY" -m pip install -q --no-deps --target "$WORK/ort-gpu" onnxruntime-gpu || {
        echo "onnxruntime-gpu could not be installed (no network or no wheel for this Python): ONNX Runtime CUDA is not benchmarked"; return 1; }
    }
    export -f ort_install
    step ort-gpu 60 bash -c ort_install
    if [ -d "$WORK/ort-gpu/onnxruntime" ]; then
      export PYTHONPATH=$WORK/ort-gpu:$PYTHONPATH
      export GPU_CHECK_ORT_GPU=$("$PY" -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())")
      echo "onnxruntime-gpu: $GPU_CHECK_ORT_GPU"
    else
      export GPU_CHECK_ORT_GPU="not installed: pip could not fetch onnxruntime-gpu here"
    fi
  fi
else
  skip ort-gpu "no CUDA"
fi

pystep bench 150 bench

# ---- training-step efficiency (GFLOP/s vs the measured matmul peak; AMP, channels-last)
if [ $HAVE_CUDA = 1 ]; then
  step step-efficiency 90 "$PY" benchmarks/step_efficiency.py --device cuda --rounds 3 --steps 5 --warmup 3 \
    --out "$RESULTS/step_efficiency.json" --no-readme
else  # the dry run: the same script, one toy model and variant on the CPU
  echo "CUDA step efficiency: skipped: no CUDA (the dry run runs a toy CPU pass of the same script)"
  step step-efficiency 60 "$PY" benchmarks/step_efficiency.py --small --models dann --variants default --rounds 1 \
    --steps 1 --warmup 0 --out "$RESULTS/step_efficiency.json" --no-readme
fi

BUDGET=$((BUDGET + RESERVE)) RESERVE=0
step summary 30 "$PY" scripts/gpu_check.py summary --work "$WORK" --out "$RESULTS" "${DRYFLAG[@]}"
echo "total ${SECONDS} s"
exit 0
