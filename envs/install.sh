#!/usr/bin/env bash
# Install t2i into ./.venv on a fresh Debian/Ubuntu machine (CPU or CUDA).
#   T2I_TORCH="torch==2.14.1 torchvision==0.29.1"  pins the PyTorch pair (default below);
#   T2I_SYSTEM_PACKAGES=0                           skips apt (chromium for the report test, graphviz for --dag);
#   PYTHON=/path/to/python3.12                      the venv's interpreter (default: envs/find_python.sh's pick).
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH=${T2I_TORCH:-"torch==2.14.1 torchvision==0.29.1"}
# A Python >= 3.11 for a new venv, before anything else (without one: one line on how to get one, exit 1).
[ -x .venv/bin/python ] || PYTHON=$(bash envs/find_python.sh)

if [ "${T2I_SYSTEM_PACKAGES:-1}" = 1 ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  if $SUDO true 2>/dev/null; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium graphviz >/dev/null
  else
    echo "install.sh: no root: skipping apt (chromium, graphviz); the report's browser test will be skipped" >&2
  fi
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# torch and torchvision must come as a matching pair (PyPI's torchvision next to another torch fails to import).
.venv/bin/python -m pip install -q $TORCH
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -c "import torch, torchvision, t2i; print('t2i installed: torch', torch.__version__, 'cuda', torch.cuda.is_available())"
