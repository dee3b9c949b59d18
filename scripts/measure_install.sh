#!/usr/bin/env bash
# Time the README's install in a fresh clone and report the size of what it installed:
#   bash scripts/measure_install.sh [VENV_DIR]        (default: a temporary .venv, removed afterwards)
# Prints "install: <seconds> s", "venv: <size>", and the share of the CUDA libraries (nvidia/) that the default
# torch wheel brings on Linux.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-$(mktemp -d)/.venv}"
start=$(date +%s.%N)
python3 -m venv "$venv"
"$venv/bin/pip" install -q -e .
end=$(date +%s.%N)
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "install: $(python3 -c "print(f'{$end - $start:.0f}')") s"
echo "venv: $(du -sh "$venv" | cut -f1)"
echo "of which CUDA libraries (nvidia/): $(du -sh "$site/nvidia" 2>/dev/null | cut -f1 || echo none)"
"$venv/bin/python" -c "import torch; print('torch', torch.__version__, 'CUDA build' if torch.version.cuda else 'CPU build')"
[ -n "${1:-}" ] || rm -rf "$(dirname "$venv")"
