# Sourced by scripts/serve and scripts/test: make .venv with everything Parley needs.
# Usage: . scripts/bootstrap.sh EXTRAS   (e.g. "embedded" or "embedded,test")
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRAS="${1:-embedded}"
PY="${PYTHON:-python3}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }

apt_install() {
  # Install Debian packages that are missing (only on Debian/Ubuntu, only what is absent).
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if [ "${#missing[@]}" -gt 0 ] && command -v apt-get >/dev/null; then
    echo "parley: installing Debian packages: ${missing[*]}" >&2
    as_root apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

"$PY" - <<'PYCHECK' || { echo "parley needs Python 3.11 or newer (set PYTHON=...)" >&2; exit 1; }
import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)
PYCHECK

# venv/ensurepip and a C/C++ toolchain (llama-cpp-python compiles llama.cpp once, then pip caches the wheel)
if ! "$PY" -c "import ensurepip, venv" 2>/dev/null; then
  apt_install "python3-venv"
fi
if ! command -v g++ >/dev/null || ! command -v gcc >/dev/null; then
  apt_install build-essential
fi
if ! "$PY" -c "import sysconfig, os, sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')) else 1)"; then
  apt_install python3-dev
fi

VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
# A CPU-only build of llama.cpp without its examples, tests and servers: smaller and faster to compile.
export CMAKE_ARGS="${CMAKE_ARGS:--DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_NATIVE=OFF}"
"$VENV/bin/python" -m pip install -q -e "$ROOT[$EXTRAS]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
"$VENV/bin/python" -c "import parley" || { echo "parley: install failed" >&2; exit 1; }
export PATH="$VENV/bin:$PATH"
