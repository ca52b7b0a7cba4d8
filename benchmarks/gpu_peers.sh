#!/usr/bin/env bash
# Builds the peers of the GPU benchmarks on the GPU machine, with no network: torchlpc
# 0.7.2 and philtorch 0.7.0 from the sdists in benchmarks/.carry/ (fetched elsewhere by
# benchmarks/fetch_peer_sdists.sh), compiled with nvcc, CUDA kernels included, against
# the machine's own CUDA torch, into a side virtual environment (torchlpc 0.7.2 has our
# import name, so it cannot share our interpreter's site-packages).
#
# Usage: benchmarks/gpu_peers.sh [VENV_DIR]   (default benchmarks/.gpu-peers-venv)
# Environment:
#   PYTHON                the interpreter whose torch the peers are built against and run
#                         with (default python3: on the device machine, the one with torch)
#   CARRY                 where the sdists and wheels are (default benchmarks/.carry)
#   MAX_JOBS              parallel compile jobs per peer (default: the CPU count)
#   PEER_BUILD_TIMEOUT    seconds each peer's build may take (default 330)
#   TORCH_CUDA_ARCH_LIST  GPU architectures to compile for (default: the visible GPU's)
#
# The venv is made with --system-site-packages and no pip of its own, and a .pth file
# adds the site-packages of PYTHON, so that the machine's torch (and numba, pip) are
# used where they are, even when PYTHON is itself a venv (whose packages a venv made
# from it would not see). Builds run without build isolation and without an index.
#
# The wheels built are kept in VENV_DIR/wheels with a BUILT_WITH stamp (Python, torch,
# CUDA, architectures); benchmarks/gpu_run.sh sends them back, and when they are found
# in $CARRY/gpu-wheels with the same stamp they are installed instead of compiled.
#
# Exit status: the number of peers not installed (0, 1 or 2); 2 or more also when
# nothing can be built at all. The benchmark runner measures whatever is there.
set -u -o pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-$here/.gpu-peers-venv}"
carry="${CARRY:-$here/.carry}"
python="${PYTHON:-python3}"
build_timeout="${PEER_BUILD_TIMEOUT:-330}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
# No debug information: the host code compiles several times faster, and the wheels
# shrink tenfold (philtorch's from 12 MB), small enough to come back from the machine.
export CFLAGS="${CFLAGS:-} -g0"
peers=(torchlpc-0.7.2 philtorch-0.7.0)

mkdir -p "$venv"
venv="$(cd "$venv" && pwd)"
carry="$(cd "$carry" 2>/dev/null && pwd || echo "$carry")"
for peer in "${peers[@]}"; do
    if [ ! -s "$carry/$peer.tar.gz" ]; then
        echo "no $carry/$peer.tar.gz: run benchmarks/fetch_peer_sdists.sh where pip reaches"
        echo "PyPI, and carry benchmarks/.carry to this machine"
        exit 2
    fi
done
if [ -f "$carry/SHA256SUMS" ]; then
    (cd "$carry" && sha256sum --check --quiet SHA256SUMS) \
        || echo "warning: the files in $carry do not match their SHA256SUMS"
fi

# What the peers are built against.
# ninja (a pip package there) and the interpreter's other scripts, on the PATH.
export PATH="$("$python" -c 'import sys; print(sys.prefix)')/bin:$PATH"
if ! facts="$("$python" -c '
import sys, torch
from torch.utils.cpp_extension import CUDA_HOME
gpu = "%d.%d" % torch.cuda.get_device_capability() if torch.cuda.is_available() else "none"
print(torch.__version__, torch.version.cuda or "none", gpu, "%d.%d" % sys.version_info[:2],
      CUDA_HOME or "none")
')"; then
    echo "cannot import torch with $python"
    exit 2
fi
read -r torch_version torch_cuda gpu_arch py_version cuda_home <<<"$facts"
# CUDA_HOME as torch finds it (the variable, nvcc on the PATH, /usr/local/cuda), or else
# the newest /usr/local/cuda-* with an nvcc.
if [ "$cuda_home" = none ]; then
    for candidate in $(ls -d /usr/local/cuda-* 2>/dev/null | sort -V -r); do
        if [ -x "$candidate/bin/nvcc" ]; then
            cuda_home="$candidate"
            break
        fi
    done
fi
if [ "$cuda_home" != none ]; then
    export CUDA_HOME="$cuda_home" PATH="$cuda_home/bin:$PATH"
fi
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ] && [ "$gpu_arch" != none ]; then
    export TORCH_CUDA_ARCH_LIST="$gpu_arch"
fi
if [ "$torch_cuda" != none ] && [ "$cuda_home" != none ] && [ "$gpu_arch" != none ]; then
    # Fail loudly rather than build a CPU-only extension.
    export PHILTORCH_FORCE_CUDA=1
else
    echo "warning: no CUDA build possible here (torch CUDA: $torch_cuda, CUDA_HOME: $cuda_home,"
    echo "GPU: $gpu_arch); the peers are built without their CUDA kernels"
    export PHILTORCH_FORCE_CUDA=0
fi
stamp="python $py_version, torch $torch_version, CUDA $torch_cuda"
stamp+=", arch ${TORCH_CUDA_ARCH_LIST:-none}"
echo "== building against $stamp; CUDA_HOME=$cuda_home, MAX_JOBS=$MAX_JOBS"
command -v nvcc >/dev/null && nvcc --version | tail -n 2 | sed 's/^/   /'

if [ ! -x "$venv/bin/python" ]; then
    echo "== creating $venv"
    "$python" -m venv --without-pip --system-site-packages "$venv" \
        || { echo "cannot create the virtual environment $venv"; exit 2; }
fi
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$python" -c '
import sys
print("\n".join(p for p in sys.path if p.endswith(("site-packages", "dist-packages"))))
' >"$site/_benchmarks_parent_site.pth"
if ! "$venv/bin/python" -c 'import torch, pip' 2>/dev/null; then
    echo "the venv $venv cannot import torch and pip through $site/_benchmarks_parent_site.pth"
    exit 2
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
if ls "$carry"/build-wheels/*.whl >/dev/null 2>&1; then
    echo "== build requirements from $carry/build-wheels"
    "${pip[@]}" install --quiet --no-index --no-deps "$carry"/build-wheels/*.whl \
        || echo "warning: could not install the build wheels"
fi
mkdir -p "$venv/wheels"
rm -f "$venv"/wheels/*.whl "$venv/wheels/BUILT_WITH"
# What an earlier call installed in the venv goes: a failed build must leave no stale
# peer. (Only from the venv: the parent's packages are none of this script's business.)
for dist in torchlpc philtorch; do
    if ls -d "$site/$dist"-*.dist-info >/dev/null 2>&1; then
        "${pip[@]}" uninstall --quiet --yes "$dist" >/dev/null 2>&1
    fi
done

build_peer() {
    local peer="$1" dist="${1%%-*}" log="$venv/install-${1%%-*}.log" prebuilt start
    start=$SECONDS
    prebuilt="$(ls "$carry/gpu-wheels/$dist-"*.whl 2>/dev/null | head -n 1)"
    if [ -n "$prebuilt" ] \
            && [ "$(cat "$carry/gpu-wheels/BUILT_WITH" 2>/dev/null)" = "$stamp" ]; then
        echo "== $peer: the wheel built by an earlier run, $(basename "$prebuilt")"
        cp "$prebuilt" "$venv/wheels/"
    else
        echo "== $peer: compiling (at most ${build_timeout} s; log: $log)"
        if ! timeout "$build_timeout" "${pip[@]}" wheel --no-deps --no-index \
                --no-build-isolation -w "$venv/wheels" "$carry/$peer.tar.gz" >"$log" 2>&1; then
            echo "== $peer: build FAILED after $((SECONDS - start)) s; the end of its log:"
            tail -n 25 "$log" | sed "s/^/   $dist | /"
            return 1
        fi
    fi
    if ! "${pip[@]}" install --no-deps --no-index --force-reinstall \
            "$venv/wheels/$dist-"*.whl >>"$log" 2>&1; then
        echo "== $peer: install FAILED; see $log"
        return 1
    fi
    echo "== $peer: installed in $((SECONDS - start)) s"
}

# Both at once: nvcc is slow, and the machine has the cores.
pids=()
for peer in "${peers[@]}"; do
    build_peer "$peer" &
    pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do
    wait "$pid" || failed=$((failed + 1))
done
echo "$stamp" >"$venv/wheels/BUILT_WITH"

echo "== import check"
(cd / && "$venv/bin/python" - <<'PY'
import importlib
import warnings
from importlib.metadata import version

import torch

warnings.simplefilter("ignore")
cuda = torch.cuda.is_available()
print(f"   torch {torch.__version__} from {torch.__file__}, CUDA available: {cuda}")
for name in ("torchlpc", "philtorch"):
    try:
        module = importlib.import_module(name)
    except Exception as error:  # report every failure, keep checking the rest
        print(f"   {name}: cannot import ({type(error).__name__}: {error})")
        continue
    line = f"   {name} {version(name)} from {module.__file__}"
    if name == "torchlpc":
        line += f", extension loaded: {getattr(module, 'EXTENSION_LOADED', '? (not 0.7.2)')}"
        for op in ("lpc", "scan"):
            try:
                has = torch._C._dispatch_has_kernel_for_dispatch_key(f"torchlpc::{op}", "CUDA")
            except Exception as error:
                has = f"? ({type(error).__name__})"
            line += f", CUDA {op} kernel: {has}"
    print(line)
    if not cuda:
        continue
    try:
        x = torch.randn(2, 64, device="cuda")
        A = 0.1 * torch.randn(2, 64, 3, device="cuda")
        zi = torch.zeros(2, 3, device="cuda")
        if name == "torchlpc":
            y = module.sample_wise_lpc(x, A, zi)
        else:
            from philtorch import lpv

            y = lpv.allpole(A, x, zi)[0]
        torch.cuda.synchronize()
        print(f"   {name}: a CUDA call ran, y finite: {bool(torch.isfinite(y).all())}")
    except Exception as error:
        print(f"   {name}: a CUDA call failed ({type(error).__name__}: {error})")
PY
)
echo "== $failed peer(s) not installed"
exit "$failed"
