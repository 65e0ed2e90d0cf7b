#!/usr/bin/env bash
# Create (or refresh) the project-local virtual environment in .venv.
#
# Idempotent: a stamp file records the hash of pyproject.toml and this script; when
# neither changed, the script returns at once. On a machine without an NVIDIA driver it
# installs the CPU build torch==2.13.0 first, so that the package's own range
# (torch>=2.4) is satisfied without pulling a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
STAMP="$VENV/.infermesh-setup"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"

# The etcd store's tests start a real etcd server: Debian's etcd-server package.
if ! command -v etcd >/dev/null 2>&1; then
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing etcd (Debian package etcd-server) for the etcd store tests"
        apt_install=(apt-get install -y -qq --no-install-recommends etcd-server)
        if ! DEBIAN_FRONTEND=noninteractive "${apt_install[@]}" >/dev/null 2>&1; then
            apt-get update -qq >/dev/null 2>&1 || true
            DEBIAN_FRONTEND=noninteractive "${apt_install[@]}" >/dev/null 2>&1 \
                || echo "setup: could not install etcd-server; the etcd store tests will be skipped"
        fi
    else
        echo "setup: etcd is not on PATH and this is not root with apt-get; the etcd store" \
            "tests will be skipped (install Debian's etcd-server package to run them)"
    fi
fi

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -x "$VENV/bin/infermesh-run" ]]; then
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup: creating $VENV with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

if ! command -v nvidia-smi >/dev/null 2>&1; then
    if ! "$VENV/bin/python" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
        echo "setup: no NVIDIA driver found; installing the CPU build torch==2.13.0"
        if [[ -d /opt/wheels ]] || [[ -n "${PIP_FIND_LINKS:-}" ]]; then
            "${PIP[@]}" "torch==2.13.0"
        else
            "${PIP[@]}" "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
                --extra-index-url https://pypi.org/simple
        fi
    fi
fi

echo "setup: installing infermesh with its dev extras into $VENV"
"${PIP[@]}" -e ".[dev]"
echo "$want" > "$STAMP"
echo "setup: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
