#!/usr/bin/env bash
# The one-shot GPU check (benchmarks/gpu_check.py): `pytest -m gpu`, AMP training throughput of
# SegFormer-B0 at 512x512, eager vs torch.compile speed, the CUDA out-of-memory advice, where
# Ray is installed a fractional-GPU search, and 1, 2 and 4 trainings sharing the GPU. Writes
# benchmarks/RESULTS.md ("GPU check") and copies the results to $OUT when set. About 5 minutes on
# one H200.
#
# On a lent GPU machine that reaches no registry: make the wheels it lacks here first
# (`make gpu-wheels`: pytest, jsonschema, omegaconf, matplotlib..., about 20 MB in .whl/gpu), carry
# .whl/gpu, and run `bash benchmarks/gpu_check.sh`. Ray, Optuna and MLflow do not fit in the 64 MiB
# a lent machine takes: there the search part says it was skipped, and why.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
if [ -d .whl/gpu ]; then
  # only what is missing: the machine's own torch, numpy and pillow stay as they are
  missing=$($PY - <<'PY'
import importlib.util
need = {"pytest": "pytest", "pytest_timeout": "pytest-timeout", "jsonschema": "jsonschema", "omegaconf": "omegaconf",
        "matplotlib": "matplotlib", "tqdm": "tqdm", "filelock": "filelock"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
PY
)
  if [ -n "$missing" ]; then
    echo "gpu_check: installing from .whl/gpu: $missing"
    $PY -m pip install -q --no-index --find-links .whl/gpu $missing || echo "gpu_check: could not install $missing"
  fi
fi
exec "$PY" benchmarks/gpu_check.py "$@"
