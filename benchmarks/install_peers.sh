#!/usr/bin/env bash
# Builds the libraries torchlpc is compared against into a side virtual environment.
#
# They cannot share our environment: torchlpc 0.7.2 has our import name. Both peers
# compile a C++ extension against the installed torch, so they are built from their
# source packages without build isolation, next to the same torch==2.13.0 CPU wheel.
#
# Usage: benchmarks/install_peers.sh [VENV_DIR]   (default benchmarks/.peers-venv)
# Environment: PYTHON (interpreter for the venv, default python3), MAX_JOBS (default 2).
# Exit status: the number of peers that failed to install; the benchmark runner works
# with whatever subset is present and reports the rest as unavailable.
set -u -o pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-$here/.peers-venv}"
constraints="$here/peers-constraints.txt"
python="${PYTHON:-python3}"
export MAX_JOBS="${MAX_JOBS:-2}"
# A CPU-only build even where nvcc exists: the benchmarks time CPU kernels.
export PHILTORCH_FORCE_CUDA=0
export CUDA_HOME=""

if [ ! -x "$venv/bin/python" ]; then
    echo "== creating $venv"
    "$python" -m venv "$venv" || { echo "cannot create the virtual environment $venv"; exit 2; }
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

echo "== build and runtime requirements"
if ! "${pip[@]}" install -c "$constraints" torch==2.13.0 numpy numba \
        "setuptools>=77.0.3" "setuptools_scm>=8" wheel ninja; then
    echo "cannot install torch==2.13.0 and the build requirements into $venv"
    exit 2
fi

failed=0
install_peer() {
    local name="$1" log="$venv/install-${1%%=*}.log"
    echo "== $name (log: $log)"
    if "${pip[@]}" install --no-build-isolation --no-binary "${name%%=*}" -c "$constraints" \
            "$name" >"$log" 2>&1; then
        echo "   installed"
    else
        echo "   FAILED; the last lines of the log:"
        tail -n 15 "$log" | sed 's/^/   | /'
        failed=$((failed + 1))
    fi
}
install_peer torchlpc==0.7.2
install_peer philtorch==0.7.0

echo "== import check"
(cd / && "$venv/bin/python" - <<'PY'
import importlib
import warnings
from importlib.metadata import version

warnings.simplefilter("ignore")
for name in ("torch", "numba", "torchlpc", "philtorch"):
    try:
        module = importlib.import_module(name)
    except Exception as error:  # report every failure, keep checking the rest
        print(f"   {name}: cannot import ({type(error).__name__}: {error})")
        continue
    extra = ""
    if name == "torchlpc":
        extra = f", C++ extension loaded: {module.EXTENSION_LOADED}"
    print(f"   {name} {version(name)}{extra}")
PY
)
echo "== $failed peer(s) failed to install"
exit "$failed"
