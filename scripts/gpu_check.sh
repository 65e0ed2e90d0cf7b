#!/usr/bin/env bash
# The GPU-only checks (pytest -m gpu tests/gpu) on a machine with an NVIDIA GPU and a CUDA
# build of torch, with no network: the wheels in .whl/ (cp312 manylinux x86_64: what such a
# machine's Python 3.12 lacks, e.g. pyzmq, and the protobuf our generated code needs) are
# installed into /tmp/site, which goes first on PYTHONPATH.
#
#   bash scripts/gpu_check.sh                 # logs in a temporary folder (printed)
#   OUT=/some/dir bash scripts/gpu_check.sh   # logs in $OUT: pytest.log, one log per NCCL run
#   PYTHON=/path/to/python bash scripts/gpu_check.sh    # another interpreter
#
# The interpreter is $PYTHON, else .venv/bin/python in a checkout set up by scripts/setup.sh
# (where, without a GPU, the tests are skipped), else python3.
#
# Exit status: pytest's (0 when every test passed or was skipped).
set -uo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
if [[ -z "${PYTHON:-}" && -x .venv/bin/python ]]; then
    PY=.venv/bin/python
fi
LOGS="${OUT:-$(mktemp -d)}"
mkdir -p "$LOGS"
echo "gpu_check: logs in $LOGS"

if compgen -G ".whl/*.whl" >/dev/null; then
    if "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl || exit 1
    else
        echo "gpu_check: the wheels in .whl/ are for CPython 3.12, $PY is" \
            "$("$PY" -c 'import platform; print(platform.python_version())'): using its own packages"
    fi
fi
export PYTHONPATH="/tmp/site:$PWD"
export INFERMESH_TEST_LOG_DIR="$LOGS"  # tests/gpu keep each NCCL worker's output there

{
    nvidia-smi || echo "gpu_check: no nvidia-smi on this machine"
    "$PY" - <<'EOF'
import importlib
import torch
nccl = None
if torch.cuda.is_available() and torch.distributed.is_nccl_available():
    nccl = torch.cuda.nccl.version()
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuda available: {torch.cuda.is_available()}, NCCL {nccl}")
for name in ("zmq", "google.protobuf", "prometheus_client", "pynvml", "numpy", "pytest"):
    module = importlib.import_module(name)
    print(f"{name} {getattr(module, '__version__', '?')} from {module.__file__}")
EOF
} 2>&1 | tee "$LOGS/environment.log"

timeout_flag=()
if "$PY" -c 'import pytest_timeout' 2>/dev/null; then
    timeout_flag=(--timeout=300)  # per test; each NCCL worker also has its own 240 s limit
fi
"$PY" -m pytest -q -m gpu tests/gpu -p no:cacheprovider -rs "${timeout_flag[@]}" 2>&1 \
    | tee "$LOGS/pytest.log"
exit "${PIPESTATUS[0]}"
