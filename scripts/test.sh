#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh machine (ptxas from the
# `nvidia-cuda-nvcc` PyPI wheel, into .cache/ptxas), then runs every test of the workspace, of
# the downstream crate (tests/downstream) and of the Python package (python/, with torch from
# PyPI in .cache/pyenv), the publish dry-run and the MSRV check.
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC_WHEEL_VERSION=13.5.37
# The ptxas of the CUDA 13.0 driver, whose JIT compiles FlashCore's PTX on the H200: it
# serializes wgmma where 13.5 does not (tests/ptxas.rs checks both).
DRIVER_NVCC_WHEEL_VERSION=13.0.88
# install_ptxas VERSION DIR: ptxas from the nvidia-cuda-nvcc wheel of VERSION into DIR/bin.
install_ptxas() {
  [ -x "$2/bin/ptxas" ] && return 0
  echo "installing ptxas (nvidia-cuda-nvcc==$1 from PyPI) into $2"
  mkdir -p .cache/wheels "$2/bin"
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    "nvidia-cuda-nvcc==$1" -d .cache/wheels
  python3 - "$1" "$2/bin/ptxas" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(f".cache/wheels/nvidia_cuda_nvcc-{sys.argv[1]}-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/bin/ptxas"))
    with z.open(name) as src, open(sys.argv[2], "wb") as dst:
        dst.write(src.read())
os.chmod(sys.argv[2], 0o755)
PY
  rm -rf .cache/wheels
}
ptxas=.cache/ptxas/bin/ptxas
install_ptxas "$NVCC_WHEEL_VERSION" .cache/ptxas
install_ptxas "$DRIVER_NVCC_WHEEL_VERSION" .cache/ptxas-driver
export FLASHCORE_PTXAS_DRIVER="$PWD/.cache/ptxas-driver/bin/ptxas"
export FLASHCORE_PTXAS="$PWD/$ptxas"
"$FLASHCORE_PTXAS" --version | tail -1

cargo fmt --all -- --check
cargo fmt --manifest-path tests/downstream/Cargo.toml -- --check
log=$(mktemp)
cargo test --workspace --all-targets 2>&1 | tee "$log"
cargo test --workspace --doc 2>&1 | tee -a "$log"
# A user's crate outside the workspace: its own kernels, PTX snapshots, simulator checks and CLI
# (sharing the workspace's target directory, so the dependencies built above are reused).
CARGO_TARGET_DIR="$PWD/target" cargo test --locked --manifest-path tests/downstream/Cargo.toml 2>&1 | tee -a "$log"
# FlashCore next to a crate that makes cudarc link CUDA (as candle-core's `cuda` feature does):
# type-checked only, linking needs libcuda.
CARGO_TARGET_DIR="$PWD/target" cargo check --quiet --locked --manifest-path tests/linked-cuda/Cargo.toml
# The Python package (python/): built into a virtual environment with torch from PyPI, its
# simulator-path tests run (scripts/test-python.sh).
./scripts/test-python.sh 2>&1 | tee -a "$log"
# Publishable: every crate packages and builds from its package alone, in dependency order.
# Cargo unpacks the packaged crates into a local registry's source directory and reuses an
# earlier run's copy of the same version: remove those first, or a rerun from the same path
# builds against last time's sources.
rm -rf "${CARGO_HOME:-$HOME/.cargo}"/registry/src/-*/flashcore*
cargo publish --workspace --dry-run --allow-dirty --quiet
# The declared rust-version against the dependencies' and std's (scripts/msrv.py).
python3 scripts/msrv.py
# Every public item documented, every intra-doc link resolved.
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
# The main job must also work (and say so) without a GPU.
cargo run --quiet --release --example attention
# One closing line over every test binary above.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f; exit (f > 0 || p == 0) }' "$log"
