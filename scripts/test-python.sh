#!/usr/bin/env bash
# The Python package's tests on a machine without a GPU (part of the README's test command,
# scripts/test.sh): a virtual environment in .cache/pyenv with torch and maturin from PyPI (the
# torch wheel carries CUDA libraries it does not load here), the package built into it
# (`maturin develop`: the dev profile, the workspace's target directory), then
# python/tests/test_flashcore.py: the simulator path against float64, the custom op's fake
# implementation and tracing, typed errors (its GPU tests skip; scripts/gpu-python.sh runs them).
# Where torch cannot be installed (too little disk, no index) the tests are skipped, and the
# reason printed.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
MATURIN_VERSION=1.16.0
env=.cache/pyenv
cargo fmt --manifest-path python/Cargo.toml -- --check
if ! "$env/bin/python" -c "import torch, numpy, maturin" 2>/dev/null; then
  mkdir -p .cache
  free_gb=$(df -Pk .cache | awk 'NR == 2 { print int($4 / 1048576) }')
  if [ "$free_gb" -lt 10 ]; then
    echo "SKIPPED the Python package's tests: $free_gb GB free on this disk, torch from PyPI needs about 5 GB"
    exit 0
  fi
  echo "installing torch==$TORCH_VERSION, numpy and maturin==$MATURIN_VERSION from PyPI into $env"
  rm -rf "$env"
  python3 -m venv "$env"
  if ! "$env/bin/pip" install --quiet --no-cache-dir "torch==$TORCH_VERSION" numpy "maturin==$MATURIN_VERSION"; then
    echo "SKIPPED the Python package's tests: pip could not install torch==$TORCH_VERSION from PyPI (output above)"
    rm -rf "$env"
    exit 0
  fi
fi
VIRTUAL_ENV="$PWD/$env" PATH="$PWD/$env/bin:$PATH" CARGO_TARGET_DIR="$PWD/target" \
  maturin develop --locked --manifest-path python/Cargo.toml
"$env/bin/python" python/tests/test_flashcore.py
