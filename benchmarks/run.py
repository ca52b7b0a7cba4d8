"""Benchmark torchlpc against its peers; writes raw JSON results.

    python -m benchmarks.run                     # every case, peers included
    python -m benchmarks.run --quick --no-peers  # seconds: a smoke test
    python -m benchmarks.run --cases 'tv-f32-*' ti-f32-64x16384x8
    python -m benchmarks.report                  # BENCHMARKS.md and the plot from latest.json
    python -m benchmarks.run --device cuda       # the GPU cases, into latest-cuda.json

Every implementation runs in its own worker process (benchmarks/worker.py): ours and
scipy under this interpreter, the peers under the side environment that
benchmarks/install_peers.sh builds (torchlpc 0.7.2 has our import name). For each
case, each worker builds the same inputs and runs once on a short slice, which is
checked against ``torchlpc.reference`` (outputs and every gradient) before anything
is timed; an implementation that fails the check is not timed on that case. Then the
implementations are timed in turns, a few calls each per round, the order rotating
between rounds, so that noise on a shared machine falls on all of them alike.

Cases with a thread count of their own (``Case.threads``: the one-sequence order
sweep, one thread) run in workers started with it, beside that many threads' copy
bandwidth. At the end, fresh processes time the first forward and backward with
numba's disk cache empty and then warm (``measure_first_calls``;
``--no-first-calls`` skips them).

``--device cuda`` runs the GPU cases instead (``cases.GPU_CASES``) against torchlpc
0.7.2's CUDA kernels, philtorch and ``torchaudio.functional.lfilter``, with the peers
from the environment of benchmarks/gpu_peers.sh; benchmarks/gpu_run.sh does all of it
on a machine with a GPU. ``--device cpu --gpu-cases`` runs that same protocol on CPU
tensors (tiny shapes with ``--quick``), to test it where there is no GPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .cases import Case, select_cases

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "worker.py"
DEFAULT_PEERS_PYTHON = Path(__file__).resolve().parent / ".peers-venv" / "bin" / "python"
DEFAULT_GPU_PEERS_PYTHON = Path(__file__).resolve().parent / ".gpu-peers-venv" / "bin" / "python"

OURS = ("torchlpc", "scipy")
PEERS = ("torchlpc-0.7.2-cpp", "torchlpc-0.7.2-numba", "philtorch-0.7.0")
# The GPU cases: torchaudio runs under this interpreter, the peers in the side
# environment of benchmarks/gpu_peers.sh.
GPU_PEERS = ("torchlpc-0.7.2-cuda", "philtorch-0.7.0")
GPU_IMPLEMENTATIONS = ("torchlpc", *GPU_PEERS, "torchaudio")
LOCAL = (*OURS, "torchaudio")  # implementations that run under this interpreter
MODES = ("forward", "backward")

# Largest normalised error |out - ref|_max / |ref|_max accepted by the pre-timing check,
# by the dtype the implementation computed in. Slices are 256 samples long.
CHECK_TOLERANCE = {"float32": 1e-4, "float64": 1e-10}

# glibc: every block of 64 KiB or more is its own mapping, returned on free, so that
# the resident-memory peak of the memory workers counts live memory only.
MEMORY_WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


class WorkerError(RuntimeError):
    pass


class Worker:
    """A persistent worker process running one implementation."""

    def __init__(
        self, impl: str, python: Path, log_dir: Path, threads: int, extra_env=None, device_env=None
    ):
        self.impl = impl
        env = dict(os.environ)
        env.update(
            NUMBA_NUM_THREADS=str(threads),
            OMP_NUM_THREADS=str(threads),
            MKL_NUM_THREADS=str(threads),
            BENCHMARK_THREADS=str(threads),
            PYTHONUNBUFFERED="1",
        )
        env.update(device_env or {})
        if impl in LOCAL:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        else:
            # Nothing from our checkout may shadow the peers' packages.
            env.pop("PYTHONPATH", None)
        env.update(extra_env or {})
        suffix = ("-memory" if extra_env else "") + f"-{threads}threads"
        self.log_path = log_dir / f"{impl}{suffix}.log"
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(python), str(WORKER), impl],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            cwd=tempfile.gettempdir(),
            env=env,
            text=True,
        )

    def request(self, cmd: str, timeout: float = 900.0, **fields) -> dict:
        if self.process.poll() is not None:
            raise WorkerError(f"{self.impl} worker has exited ({self._exit()})")
        self.send(cmd, **fields)
        return self.receive(cmd, timeout)

    def send(self, cmd: str, **fields) -> None:
        try:
            self.process.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            raise WorkerError(f"{self.impl} worker has exited ({self._exit()})") from None

    def receive(self, cmd: str, timeout: float = 900.0) -> dict:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            self.close()
            raise WorkerError(f"{self.impl} worker gave no answer to {cmd} in {timeout:.0f} s")
        line = self.process.stdout.readline()
        if not line:
            raise WorkerError(f"{self.impl} worker died during {cmd} ({self._exit()})")
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise WorkerError(reply["error"])
        return reply

    def _exit(self) -> str:
        code = self.process.wait()
        return f"exit status {code}; see {self.log_path}"

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.process.stdin.flush()
                self.process.wait(timeout=10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self.log.close()


# ------------------------------------------------------------------------------ checks


def _normalised_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    scale = reference.abs().max().item()
    error = (value.to(reference.dtype) - reference).abs().max().item()
    return error / scale if scale > 0 else error


def _reference_run(case: Case, inputs: dict, dtype) -> tuple[torch.Tensor, dict]:
    """y and the gradients of the reference loop on ``inputs``, computed in ``dtype``."""
    from torchlpc import reference

    grad_y = inputs["grad_y"].detach().to(dtype)
    names = ("a", "x", "zi") if case.op == "linear_recurrence" else ("x", "A", "zi")
    leaves = {name: inputs[name].detach().to(dtype).clone().requires_grad_() for name in names}
    if case.op == "linear_recurrence":
        y = reference.linear_recurrence_reference(leaves["a"], leaves["x"], leaves["zi"])
    else:
        y = reference.allpole_reference(leaves["x"], leaves["A"], leaves["zi"])
    y.backward(grad_y)
    return y.detach(), {name: leaf.grad for name, leaf in leaves.items()}


# The check's bound is the dtype's tolerance, or this many times the error of the
# plain recursion in the implementation's own dtype where that is larger: at high
# orders the inputs' float32 coefficients make every implementation, the reference
# loop included, err by more than 1e-4, and the check is there to catch broken
# code, not the conditioning of the case.
CHECK_YARDSTICK_FACTOR = 8.0


def check_against_reference(case: Case, saved: dict) -> dict:
    """Compare a worker's slice output (and gradients) with the reference loop in
    float64; the bound of each is the dtype's tolerance or CHECK_YARDSTICK_FACTOR
    times the reference loop's own error in the worker's dtype, the larger."""
    truth_y, truth_grads = _reference_run(case, saved["inputs"], torch.float64)
    own_dtype = saved["y"].dtype
    plain_y, plain_grads = _reference_run(case, saved["inputs"], own_dtype)

    dtype = str(own_dtype).replace("torch.", "")
    errors = {"y": _normalised_error(saved["y"], truth_y)}
    plain = {"y": _normalised_error(plain_y, truth_y)}
    for name, grad in (saved.get("grads") or {}).items():
        errors[f"grad_{name}"] = (
            math.inf if grad is None else _normalised_error(grad, truth_grads[name])
        )
        plain[f"grad_{name}"] = _normalised_error(plain_grads[name], truth_grads[name])
    bounds = {
        name: max(CHECK_TOLERANCE[dtype], CHECK_YARDSTICK_FACTOR * plain[name]) for name in errors
    }
    failed = [name for name, error in errors.items() if not error <= bounds[name]]
    return {
        "ok": not failed,
        "dtype": dtype,
        "tolerance": CHECK_TOLERANCE[dtype],
        "bounds": bounds,
        "plain_recursion_errors": plain,
        "errors": errors,
        "failed": failed,
    }


# ------------------------------------------------------------------------------ timing


def _summary(times: list[float]) -> dict:
    ms = sorted(t * 1e3 for t in times)
    quartiles = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
    return {
        "median_ms": statistics.median(ms),
        "min_ms": ms[0],
        "q1_ms": quartiles[0],
        "q3_ms": quartiles[2],
        "n": len(ms),
        "times_ms": [round(t, 6) for t in ms],
    }


def time_mode(workers: dict[str, Worker], mode: str, args) -> dict[str, dict]:
    """Time one mode of the current case on every worker given, in alternating turns."""
    results, estimates = {}, {}
    for impl, worker in workers.items():
        try:
            warm = worker.request("time", mode=mode, number=args.warmup)["times"]
            estimates[impl] = min(warm)
        except WorkerError as error:
            results[impl] = {"error": str(error)}
    active = [impl for impl in workers if impl in estimates]
    wanted = {
        impl: max(args.min_repeat, min(args.repeat, int(args.budget / max(estimates[impl], 1e-9))))
        for impl in active
    }
    rounds = min(args.rounds, min(wanted.values(), default=1))
    times = {impl: [] for impl in active}
    memory = {}
    for round_index in range(rounds):
        order = (
            active[round_index % len(active) :] + active[: round_index % len(active)]
            if active
            else []
        )
        for impl in order:
            if impl in results:
                continue
            number = math.ceil(wanted[impl] / rounds)
            try:
                reply = workers[impl].request("time", mode=mode, number=number)
            except WorkerError as error:
                results[impl] = {"error": str(error)}
                continue
            times[impl] += reply["times"]
            if "peak_extra_bytes" in reply:  # CUDA, forward+backward
                seen = memory.get(impl, {}).get("peak_extra_bytes", -1)
                if reply["peak_extra_bytes"] > seen:
                    memory[impl] = {
                        "peak_extra_bytes": reply["peak_extra_bytes"],
                        "baseline_bytes": reply["baseline_bytes"],
                    }
    for impl in active:
        if impl not in results:
            results[impl] = _summary(times[impl])
            if impl in memory:
                results[impl]["device_memory"] = memory[impl]
    return results


# ----------------------------------------------------------------------------- machine


class ForeignLoad:
    """CPU time that processes other than the suite's used, in CPUs on average.

    On a shared machine it tells which cases were timed under someone else's load:
    with every core taken by our threads, one busy neighbour costs a 2-thread
    kernel whole scheduler ticks at each synchronisation.
    """

    def __init__(self, workers_of):
        self.workers_of = workers_of  # () -> the live Worker objects

    @staticmethod
    def _busy_ticks() -> int:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        return user + nice + system + irq + softirq + steal

    def _own_ticks(self) -> int:
        total = 0
        for pid in [os.getpid(), *(w.process.pid for w in self.workers_of())]:
            try:
                with open(f"/proc/{pid}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
            except (OSError, IndexError, ValueError):
                pass
        return total

    def snapshot(self):
        try:
            return time.monotonic(), self._busy_ticks(), self._own_ticks()
        except OSError:
            return None

    def since(self, start) -> float | None:
        end = self.snapshot()
        if start is None or end is None or end[0] <= start[0]:
            return None
        ticks = (end[1] - start[1]) - (end[2] - start[2])
        return max(0.0, ticks / os.sysconf("SC_CLK_TCK") / (end[0] - start[0]))

    def wait_for_quiet(self, limit_s: float, threshold: float = 0.25) -> float | None:
        """Wait (at most ``limit_s``) until others use less than ``threshold`` CPUs;
        return their last measured use."""
        deadline = time.monotonic() + limit_s
        while True:
            start = self.snapshot()
            time.sleep(0.5)
            load = self.since(start)
            if load is None or load < threshold or time.monotonic() >= deadline:
                return load


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The instruction-set flags that decide how fast the kernels can be (numba
# compiles for the host CPU): recorded so that a run on another machine can be
# told apart from noise.
_SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512dq", "avx512bw", "avx512vl")


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in _SIMD_FLAGS if flag in present]
    except OSError:
        pass
    return []


def _memory_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _git_revision() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "torchlpc"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return head + (" with uncommitted changes to torchlpc/" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        # A copy of the checkout without its .git (the GPU machine's): the revision
        # recorded beside it by benchmarks/fetch_peer_sdists.sh, if any.
        return os.environ.get("BENCHMARK_REVISION") or None


def machine_facts(threads: int) -> dict:
    return {
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": threads,
        "memory_gib": _memory_total_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "revision": _git_revision(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def measure_bandwidth(worker: Worker, args) -> dict:
    reply = worker.request(
        "bandwidth", bytes=args.bandwidth_mib * 2**20, number=args.bandwidth_repeat
    )
    median = statistics.median(reply["times"][1:] or reply["times"])
    return {
        "bytes_per_copy": reply["bytes_per_copy"],
        "median_s": median,
        "bytes_per_s": reply["bytes_per_copy"] / median,
    }


# The first calls of a fresh process: numba's disk cache empty, then warm.
FIRST_CALL_SHAPE = (4, 16000)
FIRST_CALL_KINDS = [("float32", n) for n in (1, 2, 4, 16)] + [("float64", 2), ("float64", 16)]
FIRST_CALL_MODES = ("wait", "background")  # TORCHLPC_CPU_COMPILE
_FIRST_CALL_SCRIPT = """
import json, sys, time
started = time.perf_counter()
import torch
import torchlpc
imported = time.perf_counter() - started
# torch's own first backward from a non-scalar output with a given gradient imports
# sympy (0.4-0.6 s here, in autograd's shape checks): paid by every torch user, so
# paid before the clock starts, by the same kind of backward as the one timed.
warm_up = torch.ones(2, requires_grad=True) * 2
warm_up.backward(torch.ones_like(warm_up))
B, T, N, dtype = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), getattr(torch, sys.argv[4])
generator = torch.Generator().manual_seed(0)
x = torch.randn(B, T, dtype=dtype, generator=generator, requires_grad=True)
# sum |A| < 0.9: a stable filter at every step.
A = ((torch.rand(B, T, N, dtype=dtype, generator=generator) - 0.5) * (1.8 / N)).requires_grad_()
zi = torch.zeros(B, N, dtype=dtype, requires_grad=True)
first = time.perf_counter()
y = torchlpc.sample_wise_lpc(x, A, zi)
forward = time.perf_counter() - first
first = time.perf_counter()
y.backward(torch.ones_like(y))
backward = time.perf_counter() - first
print(json.dumps(dict(import_s=imported, forward_s=forward, backward_s=backward)))
"""


def measure_first_calls(args) -> dict:
    """Times of the first forward and backward in fresh processes, for each kind in
    FIRST_CALL_KINDS and each compile mode: with numba's cache empty, then warm (a
    second process on the same cache). What a new environment pays before training."""
    B, T = (2, 300) if args.quick else FIRST_CALL_SHAPE
    kinds = FIRST_CALL_KINDS[1:2] if args.quick else FIRST_CALL_KINDS
    runs = []
    for dtype, N in kinds:
        for mode in FIRST_CALL_MODES:
            with tempfile.TemporaryDirectory(prefix="torchlpc-numba-cache-") as cache:
                env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHLPC_")}
                env.update(
                    NUMBA_CACHE_DIR=cache,
                    TORCHLPC_CPU_COMPILE=mode,
                    PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
                )
                for state in ("empty", "warm"):
                    run = {"dtype": dtype, "N": N, "mode": mode, "cache": state}
                    try:
                        out = subprocess.run(
                            [sys.executable, "-c", _FIRST_CALL_SCRIPT, str(B), str(T), str(N), dtype],
                            env=env, cwd=cache, capture_output=True, text=True, timeout=600,
                            check=True,
                        ).stdout
                        run.update(json.loads(out.strip().splitlines()[-1]))
                    except (subprocess.SubprocessError, ValueError) as error:
                        run["error"] = str(error)[-500:]
                    runs.append(run)
            shown = ", ".join(
                f"{r['cache']} {r['forward_s'] + r['backward_s']:.2f} s" if "forward_s" in r
                else f"{r['cache']} failed" for r in runs[-2:]
            )
            print(f"first calls {dtype} N={N} {mode}: {shown}", flush=True)
    return {"shape": [B, T], "runs": runs}


# -------------------------------------------------------------------------------- main


def _parse(argv):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny cases and few repetitions (smoke test)"
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="with --gpu-cases: --quick on cases small enough for Triton's interpreter",
    )
    parser.add_argument("--cases", nargs="+", metavar="NAME", help="case names or shell patterns")
    parser.add_argument(
        "--repeat", type=int, help="most timed calls per implementation, mode and case"
    )
    parser.add_argument(
        "--budget",
        type=float,
        help="seconds of timed calls aimed at per implementation, mode and case",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--no-peers", action="store_true", help="measure ours (and scipy) only")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    parser.add_argument(
        "--no-first-calls",
        action="store_true",
        help="skip the first-call times of fresh processes (empty and warm numba cache)",
    )
    parser.add_argument(
        "--peers-python",
        type=Path,
        help=f"the side environment's interpreter (default {DEFAULT_PEERS_PYTHON}, or "
        f"{DEFAULT_GPU_PEERS_PYTHON} with --device cuda)",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: the GPU cases on the current CUDA device, written to latest-cuda.json "
        "(default cpu: the CPU suite)",
    )
    # The GPU protocol on CPU tensors, to test it without a GPU.
    parser.add_argument("--gpu-cases", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--time-limit",
        type=float,
        metavar="SECONDS",
        help="start no case but the first once this many seconds have passed since the "
        "start; the cases left are recorded as skipped",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--wait-quiet",
        type=float,
        metavar="SECONDS",
        help="before each case, wait up to this long for other processes to leave the CPUs "
        "(default 10, 2 with --device cuda, 0 with --quick)",
    )
    args = parser.parse_args(argv)
    args.gpu_cases = args.gpu_cases or args.device == "cuda"
    args.quick = args.quick or args.tiny
    if args.peers_python is None:
        args.peers_python = DEFAULT_GPU_PEERS_PYTHON if args.gpu_cases else DEFAULT_PEERS_PYTHON
    # Workers start in a temporary directory. absolute(), not resolve(): a venv's
    # interpreter is a symbolic link that must stay one.
    args.peers_python = args.peers_python.absolute()
    args.repeat = args.repeat or (3 if args.quick else 30)
    args.budget = args.budget if args.budget is not None else (0.05 if args.quick else 1.0)
    if args.wait_quiet is None:
        args.wait_quiet = 0.0 if args.quick else (2.0 if args.device == "cuda" else 10.0)
    args.min_repeat = min(args.repeat, 2 if args.quick else 5)
    args.warmup = 1 if args.quick else 2
    args.rounds = 5
    args.bandwidth_mib = 16 if args.quick else 256
    args.bandwidth_repeat = 4 if args.quick else 12
    if args.gpu_cases:
        # Every worker makes one untimed full-size call per case before the warm-up
        # (kernels compile then), and some peers take seconds a call on the long
        # cases: one warm-up call and at least three timed ones.
        args.warmup = 1
        args.min_repeat = min(args.repeat, 2 if args.quick else 3)
        if args.device == "cuda":
            # Far beyond the L2 cache (50 MB on an H100).
            args.bandwidth_mib = 64 if args.quick else 1024
    args.device_env = (
        {"BENCHMARK_DEVICE": args.device, "BENCHMARK_GPU_CASES": "1"} if args.gpu_cases else {}
    )
    return args


def _start_workers(names, args, log_dir, extra_env=None):
    """Start and greet the workers; returns (workers, facts, unavailable reasons)."""
    workers, facts, unavailable = {}, {}, {}
    installer = "gpu_peers.sh" if args.gpu_cases else "install_peers.sh"
    started = {}
    for impl in names:
        python = Path(sys.executable) if impl in LOCAL else args.peers_python
        if impl not in LOCAL and args.no_peers:
            unavailable[impl] = "not measured (--no-peers)"
            continue
        if not python.exists():
            unavailable[impl] = (
                f"not installed: no side environment at {python}; run benchmarks/{installer}"
            )
            continue
        worker = Worker(impl, python, log_dir, args.threads, extra_env, args.device_env)
        if not args.gpu_cases:
            _greet(worker, impl, python, workers, facts, unavailable)
        else:
            # Greeted together: each worker imports its library (and starts CUDA) at once.
            started[impl] = (worker, python)
            try:
                worker.send("hello")
            except WorkerError:
                pass  # told again, with the reason, by _greet
    for impl, (worker, python) in started.items():
        _greet(worker, impl, python, workers, facts, unavailable, sent=True)
    return workers, facts, unavailable


def _greet(worker, impl, python, workers, facts, unavailable, sent=False) -> None:
    try:
        if sent and worker.process.poll() is None:
            facts[impl] = worker.receive("hello", timeout=300)
        else:
            facts[impl] = worker.request("hello", timeout=300)
        workers[impl] = worker
    except WorkerError as error:
        worker.close()
        unavailable[impl] = f"cannot be loaded: {error}"
        if impl in PEERS or impl in GPU_PEERS:
            unavailable[impl] += f" (install logs: {python.parent.parent}/install-*.log)"


def _replace_dead_workers(workers, unavailable, args, log_dir, extra_env=None) -> None:
    """A worker that crashed on one case (out of memory, a segfault) is started again
    for the next; its error stays recorded on the case that killed it."""
    for impl in [i for i, w in workers.items() if w.process.poll() is not None]:
        workers.pop(impl).close()
        restarted, _, reasons = _start_workers([impl], args, log_dir, extra_env)
        workers.update(restarted)
        if impl in reasons:
            unavailable[impl + (" memory" if extra_env else "")] = reasons[impl]


def _print_case_line(case: Case, mode: str, results: dict) -> None:
    ours = results.get("torchlpc", {}).get("median_ms")
    parts = []
    for impl, result in results.items():
        if "median_ms" in result:
            ratio = f" ({result['median_ms'] / ours:.2f}x)" if ours and impl != "torchlpc" else ""
            parts.append(f"{impl} {result['median_ms']:.3f} ms{ratio}")
        else:
            parts.append(f"{impl} {result.get('error') or result.get('skipped')}")
    print(f"  {mode:8s} " + " | ".join(parts), flush=True)


def _device_problem(args) -> str | None:
    """Why the GPU cases cannot run here, or None."""
    if args.device != "cuda":
        return None
    if torch.version.cuda is None:
        return (
            f"--device cuda needs a CUDA build of torch and an NVIDIA GPU; this torch "
            f"({torch.__version__}) was built without CUDA. Run it on a GPU machine "
            "(benchmarks/gpu_run.sh does it all), or test the GPU protocol on CPU tensors "
            "with --device cpu --gpu-cases --quick."
        )
    if not torch.cuda.is_available():
        return (
            f"--device cuda: torch {torch.__version__} has CUDA {torch.version.cuda}, but "
            "torch.cuda.is_available() is False: no GPU is visible here (driver, "
            "CUDA_VISIBLE_DEVICES?)."
        )
    return None


def _gpu_facts() -> dict | None:
    """nvidia-smi's view of the GPU (driver, clocks), where nvidia-smi exists."""
    fields = "name,driver_version,memory.total,clocks.max.sm,clocks.max.memory,power.limit"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.splitlines()[0] if out else ""
    values = [v.strip() for v in first.split(",")]
    return dict(zip(fields.split(","), values, strict=False)) if first else None


def main(argv=None) -> int:
    clock = time.monotonic()
    args = _parse(argv)
    problem = _device_problem(args)
    if problem:
        print(f"benchmarks.run: {problem}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        cases = select_cases(args.cases, args.quick, gpu=args.gpu_cases, tiny=args.tiny)
    except ValueError as error:
        print(f"benchmarks.run: {error}", file=sys.stderr)
        return 2
    started = datetime.datetime.now(datetime.timezone.utc)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    # The GPU cases have their own files: latest-cuda.json beside the CPU suite's
    # latest.json (latest-gpu-cases.json for the protocol run on CPU tensors).
    suffix = "" if not args.gpu_cases else ("-cuda" if args.device == "cuda" else "-gpu-cases")
    args.out.mkdir(parents=True, exist_ok=True)
    log_dir = args.out / "logs" / (stamp + suffix)
    log_dir.mkdir(parents=True, exist_ok=True)
    check_dir = Path(tempfile.mkdtemp(prefix="torchlpc-bench-"))

    machine = machine_facts(args.threads)
    if args.device == "cuda":
        machine["nvidia_smi"] = _gpu_facts()
    names = GPU_IMPLEMENTATIONS if args.gpu_cases else OURS + PEERS
    workers, facts, unavailable = _start_workers(names, args, log_dir)
    if "torchlpc" not in workers:
        print(f"torchlpc itself cannot be benchmarked: {unavailable['torchlpc']}", file=sys.stderr)
        return 1
    for impl in names:
        status = "ready" if impl in workers else unavailable[impl]
        print(f"{impl:22s} {status}", flush=True)
    if args.gpu_cases:
        device = facts["torchlpc"].get("device", {})
        print(f"device: {device.get('name')}, torchlpc backend "
              f"{facts['torchlpc']['implementation'].get('backend')}", flush=True)

    memory_workers = {}
    if not args.no_memory and not args.gpu_cases:
        # Started now, beside the timing workers, so that both import the same
        # torchlpc even if the checkout changes while the suite runs.
        candidates = [impl for impl in workers if impl != "scipy"]
        memory_workers, _, failed = _start_workers(candidates, args, log_dir, MEMORY_WORKER_ENV)
        unavailable.update({f"{impl} memory": reason for impl, reason in failed.items()})

    bandwidth = [measure_bandwidth(workers["torchlpc"], args)]
    print(f"copy bandwidth {bandwidth[0]['bytes_per_s'] / 1e9:.1f} GB/s", flush=True)
    # Cases with a thread count of their own (case.threads) run in workers started
    # for it, with the copy bandwidth of that many threads measured beside them.
    pools = {args.threads: (workers, args)}
    bandwidth_of_pool: dict[int, list] = {}

    def pool_for(case: Case) -> tuple[dict, argparse.Namespace]:
        threads = case.threads or args.threads
        if threads not in pools:
            pool_args = argparse.Namespace(**{**vars(args), "threads": threads})
            # The implementations the run's own pool could start.
            names_here = list(pools[args.threads][0])
            started_workers, _, reasons = _start_workers(names_here, pool_args, log_dir)
            unavailable.update({f"{impl} ({threads} threads)": r for impl, r in reasons.items()})
            pools[threads] = (started_workers, pool_args)
            if "torchlpc" in started_workers:
                bandwidth_of_pool[threads] = [measure_bandwidth(started_workers["torchlpc"], pool_args)]
                print(f"copy bandwidth, {threads} threads: "
                      f"{bandwidth_of_pool[threads][0]['bytes_per_s'] / 1e9:.1f} GB/s", flush=True)
        return pools[threads]
    first_calls = None

    case_results, skipped = [], []
    load = ForeignLoad(
        lambda: [*(w for pool, _ in pools.values() for w in pool.values()), *memory_workers.values()]
    )

    def document(final: bool) -> dict:
        finished = datetime.datetime.now(datetime.timezone.utc)
        doc = {
            "schema": 1,
            "started": started.isoformat(timespec="seconds"),
            "finished": finished.isoformat(timespec="seconds"),
            "command": " ".join(
                ["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])]
            ),
            "settings": {
                k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
            },
            "machine": {**machine, "load_average_end": machine_facts(args.threads)["load_average"]},
            "bandwidth": {
                "runs": bandwidth,
                "bytes_per_s": max(b["bytes_per_s"] for b in bandwidth),
                "method": f"torch copy_ of a float32 tensor, {args.threads} threads; "
                "bytes = read + write",
                "by_threads": {
                    str(threads): {"runs": runs, "bytes_per_s": max(r["bytes_per_s"] for r in runs)}
                    for threads, runs in bandwidth_of_pool.items()
                },
            },
            "implementations": {
                impl: {
                    "available": impl in facts,
                    "facts": facts.get(impl),
                    "reason": unavailable.get(impl),
                }
                for impl in names
            },
            "check": {
                "batch": 2,
                "samples": 256,
                "tolerance": CHECK_TOLERANCE,
                "yardstick_factor": CHECK_YARDSTICK_FACTOR,
            },
            "cases": case_results,
        }
        if first_calls is not None:
            doc["first_calls"] = first_calls
        if args.gpu_cases:
            doc["device"] = {**facts["torchlpc"].get("device", {}), "type": args.device}
            doc["bandwidth"]["method"] = (
                f"torch copy_ of a {args.bandwidth_mib} MiB float32 tensor on the device, "
                "between two torch.cuda.synchronize(); bytes = read + write"
            )
            doc["skipped_cases"] = skipped
            if not final:
                doc["partial"] = True
        return doc

    for case in cases:
        if (
            args.time_limit is not None
            and case_results  # the first case always runs
            and time.monotonic() - clock > args.time_limit
        ):
            skipped.append(case.name)
            print(f"{case.name}  skipped: the time limit of {args.time_limit:g} s is spent",
                  flush=True)
            continue
        threads = f", {case.threads} thread(s)" if case.threads else ""
        print(f"{case.name}  (B={case.B}, T={case.T}, N={case.N}, {case.dtype}{threads})",
              flush=True)
        workers, case_args = pool_for(case)
        _replace_dead_workers(workers, unavailable, case_args, log_dir)
        if args.wait_quiet:
            before = load.wait_for_quiet(args.wait_quiet)
            if before is not None and before >= 0.25:
                print(f"  other processes still use {before:.2f} CPUs; going on", flush=True)
        case_start = load.snapshot()
        per_impl = {impl: {} for impl in workers}
        ready = {mode: {} for mode in MODES}
        for impl, worker in workers.items():
            check_path = check_dir / f"{case.name}-{impl}.pt"
            try:
                reply = worker.request("prepare", case=case.to_json(), check=str(check_path))
            except WorkerError as error:
                per_impl[impl]["error"] = str(error)
                continue
            unsupported = {m: r for m, r in reply["unsupported"].items() if r}
            if unsupported:
                per_impl[impl]["unsupported"] = unsupported
            if "first_call_s" in reply:
                per_impl[impl]["first_call_s"] = reply["first_call_s"]
            if "forward" in unsupported:
                continue
            check = check_against_reference(case, torch.load(check_path))
            per_impl[impl]["check"] = check
            if not check["ok"]:
                print(f"  {impl}: FAILED the check ({check['errors']}); not timed", flush=True)
                continue
            for mode in MODES:
                if mode not in unsupported:
                    ready[mode][impl] = worker
        for mode in MODES:
            if not ready[mode]:
                continue
            results = time_mode(ready[mode], mode, case_args)
            for impl, result in results.items():
                device_memory = result.pop("device_memory", None)
                per_impl[impl][mode] = result
                if device_memory is not None:
                    per_impl[impl]["memory"] = _device_memory(case, device_memory)
            _print_case_line(case, mode, results)
        for impl, worker in workers.items():
            try:
                worker.request("release")
            except WorkerError as error:
                per_impl[impl].setdefault("error", str(error))
        if not args.no_memory and not args.gpu_cases and not case.threads:
            measure_memory(case, per_impl, memory_workers, unavailable, args, log_dir)
        elif args.device == "cuda":
            ours = per_impl.get("torchlpc", {}).get("memory", {})
            if "peak_bytes" in ours:
                print(
                    f"  memory   torchlpc {ours['peak_bytes'] / 2**20:.1f} MiB on the device, "
                    f"{ours['ratio_to_necessary']:.2f}x inputs+outputs+gradients",
                    flush=True,
                )
        foreign = load.since(case_start)
        if foreign is not None and foreign >= 0.25:
            print(
                f"  other processes used {foreign:.2f} CPUs on average during this case", flush=True
            )
        case_results.append(
            {
                **case.to_json(),
                "foreign_cpus": foreign,
                "min_bytes": {m: case.min_bytes(m) for m in MODES},
                "necessary_bytes": case.necessary_bytes(),
                "results": per_impl,
            }
        )
        if args.gpu_cases:
            # Kept after every case: a run stopped from outside still leaves its cases.
            (args.out / f"{stamp}{suffix}.json").write_text(json.dumps(document(False), indent=1))

    workers = pools[args.threads][0]
    bandwidth.append(measure_bandwidth(workers["torchlpc"], args))
    for threads, (pool, pool_args) in pools.items():
        if threads in bandwidth_of_pool and "torchlpc" in pool:
            bandwidth_of_pool[threads].append(measure_bandwidth(pool["torchlpc"], pool_args))
        for worker in pool.values():
            worker.close()
    for worker in memory_workers.values():
        worker.close()
    if not args.gpu_cases and not args.no_first_calls:
        first_calls = measure_first_calls(args)

    shutil.rmtree(check_dir, ignore_errors=True)
    text = json.dumps(document(True), indent=1)
    (args.out / f"{stamp}{suffix}.json").write_text(text)
    (args.out / f"latest{suffix}.json").write_text(text)
    finished = datetime.datetime.fromisoformat(json.loads(text)["finished"])
    print(
        f"wrote {args.out / (stamp + suffix + '.json')} and latest{suffix}.json "
        f"in {(finished - started).total_seconds():.0f} s",
        flush=True,
    )
    return 0


def _device_memory(case: Case, reply: dict) -> dict:
    """A case's peak device memory, in the form of measure_memory's results."""
    peak = case.necessary_bytes() // 2 + reply["peak_extra_bytes"]
    return {
        **reply,
        "method": "torch.cuda.max_memory_allocated",
        "peak_bytes": peak,
        "ratio_to_necessary": peak / case.necessary_bytes(),
    }


def measure_memory(
    case: Case, per_impl: dict, memory_workers: dict, unavailable: dict, args, log_dir
) -> None:
    """Peak memory of one forward+backward of ``case`` for every implementation that
    was timed on it, in the memory workers (see Session.memory in worker.py)."""
    _replace_dead_workers(memory_workers, unavailable, args, log_dir, MEMORY_WORKER_ENV)
    for impl, result in per_impl.items():
        if "median_ms" not in result.get("backward", {}):
            continue
        worker = memory_workers.get(impl)
        if worker is None:
            result["memory"] = {"error": unavailable.get(f"{impl} memory", "no memory worker")}
            continue
        try:
            reply = worker.request("memory", case=case.to_json())
            peak = case.necessary_bytes() // 2 + reply["peak_extra_bytes"]
            result["memory"] = {
                **reply,
                "peak_bytes": peak,
                "ratio_to_necessary": peak / case.necessary_bytes(),
            }
            worker.request("release")
        except WorkerError as error:
            result.setdefault("memory", {"error": str(error)})
    ours = per_impl.get("torchlpc", {}).get("memory", {})
    if "peak_bytes" in ours:
        print(
            f"  memory   torchlpc {ours['peak_bytes'] / 2**20:.1f} MiB, "
            f"{ours['ratio_to_necessary']:.2f}x inputs+outputs+gradients",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
