#!/usr/bin/env bash
# The GPU benchmarks in one command, for a machine with an NVIDIA GPU, nvcc and a CUDA
# torch but no network (the device tool's): builds the peers (benchmarks/gpu_peers.sh),
# runs the GPU cases (python -m benchmarks.run --device cuda), renders BENCHMARKS.md
# with its "GPU: <device>" section, and leaves what is worth keeping in $OUT.
#
#   bash benchmarks/gpu_run.sh          (device tool: carry ["benchmarks/.carry"])
#
# benchmarks/.carry comes from benchmarks/fetch_peer_sdists.sh, run where pip reaches
# PyPI. Files left in $OUT (benchmarks/results/gpu-run when OUT is unset), 6 at most:
#   latest-cuda.json     the raw GPU results. Copy it to benchmarks/results/ and run
#                        python -m benchmarks.report to refresh BENCHMARKS.md there.
#   BENCHMARKS.md        the report as rendered there: the CPU results of the checkout's
#                        benchmarks/results/latest.json, then the GPU section
#   throughput-cuda.png  the GPU plot
#   gpu_run.log          everything this script printed
#   logs.tar.gz          the workers' logs and the peers' build logs
#   gpu-wheels.tar       the peers' wheels built there and their BUILT_WITH stamp; unpacked
#                        with `tar xf gpu-wheels.tar -C benchmarks/.carry`, they are
#                        installed by the next run instead of compiled
#
# Environment: PYTHON (default python3), GPU_RUN_BUDGET (seconds for the whole script,
# default 450), RUN_ARGS (default "--device cuda"; "--device cpu --gpu-cases --quick"
# tries this script without a GPU: tests/test_gpu_suite.py runs it so in CI, with
# TRITON_INTERPRET=1 TORCHLPC_BACKEND=triton), GPU_RUN_RESULTS (the runner's results
# and logs, default benchmarks/results), GPU_PEERS_VENV (default
# benchmarks/.gpu-peers-venv), GPU_RUN_MODE=build (only build the peers, allowing
# each build PEER_BUILD_TIMEOUT, default 540 s, and bring their wheels back: for when a
# first run's builds did not finish in the time a full run leaves them), and
# gpu_peers.sh's variables.
# Exit status: benchmarks.run's (0 when the GPU results were written); gpu_peers.sh's
# with GPU_RUN_MODE=build.
set -u -o pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${OUT:-benchmarks/results/gpu-run}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
python="${PYTHON:-python3}"
budget="${GPU_RUN_BUDGET:-450}"
read -r -a run_args <<<"${RUN_ARGS:---device cuda}"
venv="${GPU_PEERS_VENV:-benchmarks/.gpu-peers-venv}"
results="${GPU_RUN_RESULTS:-benchmarks/results}"
export PYTHON="$python" PYTHONUNBUFFERED=1
if ! git rev-parse HEAD >/dev/null 2>&1 && [ -s benchmarks/.carry/REVISION ]; then
    BENCHMARK_REVISION="$(cat benchmarks/.carry/REVISION)"
    export BENCHMARK_REVISION
fi

pack() {
    tar czf "$out/logs.tar.gz" "$results"/logs/*-cuda "$results"/logs/*-gpu-cases \
        "$venv"/install-*.log 2>/dev/null
    if ls "$venv"/wheels/*.whl >/dev/null 2>&1; then
        tar cf "$out/gpu-wheels.tar" -C "$venv" --transform 's,^wheels,gpu-wheels,' wheels
    fi
}

gpu_run() {
    local start=$SECONDS status left
    echo "== machine"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.memory \
        --format=csv 2>&1 | sed 's/^/   /'
    "$python" -c '
import platform, torch
print(f"   Python {platform.python_version()}, torch {torch.__version__}, "
      f"built with CUDA {torch.version.cuda}")
for name in ("triton", "numba", "torchaudio"):
    try:
        module = __import__(name)
        print(f"   {name} {module.__version__}")
    except Exception as error:
        print(f"   {name}: cannot import ({type(error).__name__}: {error})")
'
    command -v nvcc >/dev/null && nvcc --version | tail -n 1 | sed 's/^/   nvcc: /'

    echo "== peers ($((SECONDS - start)) s)"
    if [ "${GPU_RUN_MODE:-}" = build ]; then
        PEER_BUILD_TIMEOUT="${PEER_BUILD_TIMEOUT:-540}" bash benchmarks/gpu_peers.sh "$venv"
        status=$?
        pack
        echo "== built in $((SECONDS - start)) s; in $out: $(cd "$out" && ls | tr '\n' ' ')"
        return "$status"
    fi
    left=$((budget - (SECONDS - start) - 120))
    PEER_BUILD_TIMEOUT="${PEER_BUILD_TIMEOUT:-$((left < 330 ? left : 330))}" \
        timeout $((left + 30)) bash benchmarks/gpu_peers.sh "$venv"
    echo "   gpu_peers.sh exit status $?"

    # The cases run until the budget is spent, less what the last case may take
    # beyond it and the report; then they stop, and the cases left are listed as
    # skipped. A hard stop a little later still leaves the cases done (the runner
    # writes them out after each one).
    left=$((budget - (SECONDS - start)))
    echo "== benchmarks ($((SECONDS - start)) s; $left s left)"
    local marker="$out/.run-started" fresh=""
    touch "$marker"
    timeout --kill-after=10 $((left - 15 > 60 ? left - 15 : 60)) \
        "$python" -m benchmarks.run "${run_args[@]}" --peers-python "$venv/bin/python" \
        --out "$results" --time-limit $((left - 100 > 0 ? left - 100 : 0))
    status=$?
    if [[ " ${run_args[*]} " == *" cuda "* ]]; then
        if [ "$results/latest-cuda.json" -nt "$marker" ]; then
            fresh="$results/latest-cuda.json"
        else
            # Stopped from outside: the runner's file of the cases it finished.
            partial="$(find "$results" -maxdepth 1 -name '*-cuda.json' -newer "$marker" \
                | sort | tail -n 1)"
            if [ -n "$partial" ]; then
                echo "   the run was stopped; its finished cases are in $partial"
                cp "$partial" "$results/latest-cuda.json"
                fresh="$results/latest-cuda.json"
            else
                echo "   this run wrote no GPU results"
            fi
        fi
    fi
    rm -f "$marker"

    echo "== report ($((SECONDS - start)) s)"
    if [[ " ${run_args[*]} " == *" cuda "* ]]; then
        if [ -n "$fresh" ]; then
            "$python" -m benchmarks.report --gpu-input "$fresh" \
                && sed -n '/^## GPU/,/^### Time-varying/p' BENCHMARKS.md
            cp BENCHMARKS.md "$fresh" "$out/"
            [ -f "$results/throughput-cuda.png" ] && cp "$results/throughput-cuda.png" "$out/"
        else
            echo "   no new GPU results: no report"
        fi
    else
        # A try without a GPU: its report goes to $OUT alone, the checkout's stays as it is.
        cp "$results/latest-gpu-cases.json" "$out/"
        "$python" -m benchmarks.report --markdown "$out/BENCHMARKS.md" \
            --plot "$out/throughput.png" --gpu-input "$out/latest-gpu-cases.json" \
            && sed -n '/^## GPU/,/^### Time-varying/p' "$out/BENCHMARKS.md"
    fi
    pack
    echo "== done in $((SECONDS - start)) s; in $out: $(cd "$out" && ls | tr '\n' ' ')"
    return "$status"
}

gpu_run 2>&1 | tee "$out/gpu_run.log"
exit "${PIPESTATUS[0]}"
