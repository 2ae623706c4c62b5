#!/usr/bin/env bash
# install.sh -- create ./.venv with climb-hpc and its dependencies, CPU torch first.
#
# An unconstrained resolve of torch (deepspeed and sentence-transformers pull it in) downloads the
# multi-GB CUDA build; on a CPU machine we pin torch first. faiss comes from an extra, exactly one of
# [cpu] (faiss-cpu, installed here) and [gpu] (faiss-gpu-cu12). On a GPU cluster, install the CUDA 12
# torch build instead and then `pip install -e '.[dev,gpu]'` (README "Install").
#
# Usage: bash hpc/install.sh [VENV_DIR]          (default: .venv in the repository root)
#   CLIMB_HPC_TORCH=2.13.0    torch version to pin (the CPU wheel offered to pip here)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$ROOT/.venv}"
TORCH="${CLIMB_HPC_TORCH:-2.13.0}"
t0=$SECONDS
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
CONSTRAINTS="$(mktemp)"; trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH" >"$CONSTRAINTS"
"${PIP[@]}" -c "$CONSTRAINTS" "torch==$TORCH" 2> >(grep -v "is ignored: it is neither" >&2)
"${PIP[@]}" -c "$CONSTRAINTS" -e "$ROOT[dev,cpu,eval]" 2> >(grep -v "is ignored: it is neither" >&2)
if "$VENV/bin/python" -m pip list 2>/dev/null | grep -qi '^nvidia-'; then
  echo "install.sh: CUDA packages were pulled into $VENV; this should not happen on a CPU install" >&2
  exit 1
fi
echo "install.sh: climb-hpc installed in $VENV ($((SECONDS - t0)) s); torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
