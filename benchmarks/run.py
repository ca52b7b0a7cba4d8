"""Benchmark torchlpc against its peers; writes raw JSON results.

    python -m benchmarks.run                     # every case, peers included
    python -m benchmarks.run --quick --no-peers  # seconds: a smoke test
    python -m benchmarks.run --cases 'tv-f32-*' ti-f32-64x16384x8
    python -m benchmarks.report                  # BENCHMARKS.md and the plot from latest.json

Every implementation runs in its own worker process (benchmarks/worker.py): ours and
scipy under this interpreter, the peers under the side environment that
benchmarks/install_peers.sh builds (torchlpc 0.7.2 has our import name). For each
case, each worker builds the same inputs and runs once on a short slice, which is
checked against ``torchlpc.reference`` (outputs and every gradient) before anything
is timed; an implementation that fails the check is not timed on that case. Then the
implementations are timed in turns, a few calls each per round, the order rotating
between rounds, so that noise on a shared machine falls on all of them alike.
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

OURS = ("torchlpc", "scipy")
PEERS = ("torchlpc-0.7.2-cpp", "torchlpc-0.7.2-numba", "philtorch-0.7.0")
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

    def __init__(self, impl: str, python: Path, log_dir: Path, threads: int, extra_env=None):
        self.impl = impl
        env = dict(os.environ)
        env.update(
            NUMBA_NUM_THREADS=str(threads),
            OMP_NUM_THREADS=str(threads),
            MKL_NUM_THREADS=str(threads),
            BENCHMARK_THREADS=str(threads),
            PYTHONUNBUFFERED="1",
        )
        if impl in OURS:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        else:
            # Nothing from our checkout may shadow the peers' packages.
            env.pop("PYTHONPATH", None)
        env.update(extra_env or {})
        suffix = "-memory" if extra_env else ""
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
        try:
            self.process.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            raise WorkerError(f"{self.impl} worker has exited ({self._exit()})") from None
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


def check_against_reference(case: Case, saved: dict) -> dict:
    """Compare a worker's slice output (and gradients) with the reference loop in float64."""
    from torchlpc import reference

    inputs = {k: v.detach().to(torch.float64) for k, v in saved["inputs"].items()}
    grad_y = inputs.pop("grad_y")
    names = ("a", "x", "zi") if case.op == "linear_recurrence" else ("x", "A", "zi")
    leaves = {name: inputs[name].clone().requires_grad_() for name in names}
    if case.op == "linear_recurrence":
        y = reference.linear_recurrence_reference(leaves["a"], leaves["x"], leaves["zi"])
    else:
        y = reference.allpole_reference(leaves["x"], leaves["A"], leaves["zi"])
    y.backward(grad_y)

    dtype = str(saved["y"].dtype).replace("torch.", "")
    errors = {"y": _normalised_error(saved["y"], y.detach())}
    for name, grad in (saved.get("grads") or {}).items():
        if grad is None:
            errors[f"grad_{name}"] = math.inf
        else:
            errors[f"grad_{name}"] = _normalised_error(grad, leaves[name].grad)
    tolerance = CHECK_TOLERANCE[dtype]
    failed = [name for name, error in errors.items() if not error <= tolerance]
    return {
        "ok": not failed,
        "dtype": dtype,
        "tolerance": tolerance,
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
                times[impl] += workers[impl].request("time", mode=mode, number=number)["times"]
            except WorkerError as error:
                results[impl] = {"error": str(error)}
    for impl in active:
        if impl not in results:
            results[impl] = _summary(times[impl])
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
        return None


def machine_facts(threads: int) -> dict:
    return {
        "cpu": _cpu_model(),
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


# -------------------------------------------------------------------------------- main


def _parse(argv):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny cases and few repetitions (smoke test)"
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
    parser.add_argument("--peers-python", type=Path, default=DEFAULT_PEERS_PYTHON)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--wait-quiet",
        type=float,
        metavar="SECONDS",
        help="before each case, wait up to this long for other processes to leave the CPUs "
        "(default 10, 0 with --quick)",
    )
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (3 if args.quick else 30)
    args.budget = args.budget if args.budget is not None else (0.05 if args.quick else 1.0)
    if args.wait_quiet is None:
        args.wait_quiet = 0.0 if args.quick else 10.0
    args.min_repeat = min(args.repeat, 2 if args.quick else 5)
    args.warmup = 1 if args.quick else 2
    args.rounds = 5
    args.bandwidth_mib = 16 if args.quick else 256
    args.bandwidth_repeat = 4 if args.quick else 12
    return args


def _start_workers(names, args, log_dir, extra_env=None):
    """Start and greet the workers; returns (workers, facts, unavailable reasons)."""
    workers, facts, unavailable = {}, {}, {}
    for impl in names:
        python = Path(sys.executable) if impl in OURS else args.peers_python
        if impl not in OURS and args.no_peers:
            unavailable[impl] = "not measured (--no-peers)"
            continue
        if not python.exists():
            unavailable[impl] = (
                f"not installed: no side environment at {python}; run benchmarks/install_peers.sh"
            )
            continue
        worker = Worker(impl, python, log_dir, args.threads, extra_env)
        try:
            facts[impl] = worker.request("hello", timeout=300)
            workers[impl] = worker
        except WorkerError as error:
            worker.close()
            unavailable[impl] = f"cannot be loaded: {error}"
            if impl in PEERS:
                unavailable[impl] += f" (install logs: {python.parent.parent}/install-*.log)"
    return workers, facts, unavailable


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


def main(argv=None) -> int:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    cases = select_cases(args.cases, args.quick)
    started = datetime.datetime.now(datetime.timezone.utc)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    log_dir = args.out / "logs" / stamp
    log_dir.mkdir(parents=True, exist_ok=True)
    check_dir = Path(tempfile.mkdtemp(prefix="torchlpc-bench-"))

    machine = machine_facts(args.threads)
    names = OURS + PEERS
    workers, facts, unavailable = _start_workers(names, args, log_dir)
    if "torchlpc" not in workers:
        print(f"torchlpc itself cannot be benchmarked: {unavailable['torchlpc']}", file=sys.stderr)
        return 1
    for impl in names:
        status = "ready" if impl in workers else unavailable[impl]
        print(f"{impl:22s} {status}", flush=True)

    memory_workers = {}
    if not args.no_memory:
        # Started now, beside the timing workers, so that both import the same
        # torchlpc even if the checkout changes while the suite runs.
        candidates = [impl for impl in workers if impl != "scipy"]
        memory_workers, _, failed = _start_workers(candidates, args, log_dir, MEMORY_WORKER_ENV)
        unavailable.update({f"{impl} memory": reason for impl, reason in failed.items()})

    bandwidth = [measure_bandwidth(workers["torchlpc"], args)]
    print(f"copy bandwidth {bandwidth[0]['bytes_per_s'] / 1e9:.1f} GB/s", flush=True)

    case_results = []
    load = ForeignLoad(lambda: [*workers.values(), *memory_workers.values()])
    for case in cases:
        print(f"{case.name}  (B={case.B}, T={case.T}, N={case.N}, {case.dtype})", flush=True)
        _replace_dead_workers(workers, unavailable, args, log_dir)
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
            results = time_mode(ready[mode], mode, args)
            for impl, result in results.items():
                per_impl[impl][mode] = result
            _print_case_line(case, mode, results)
        for impl, worker in workers.items():
            try:
                worker.request("release")
            except WorkerError as error:
                per_impl[impl].setdefault("error", str(error))
        if not args.no_memory:
            measure_memory(case, per_impl, memory_workers, unavailable, args, log_dir)
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

    bandwidth.append(measure_bandwidth(workers["torchlpc"], args))
    for worker in [*workers.values(), *memory_workers.values()]:
        worker.close()

    shutil.rmtree(check_dir, ignore_errors=True)
    finished = datetime.datetime.now(datetime.timezone.utc)
    document = {
        "schema": 1,
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "command": " ".join(
            ["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])]
        ),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {**machine, "load_average_end": machine_facts(args.threads)["load_average"]},
        "bandwidth": {
            "runs": bandwidth,
            "bytes_per_s": max(b["bytes_per_s"] for b in bandwidth),
            "method": "torch copy_ of a float32 tensor, 2 threads; bytes = read + write",
        },
        "implementations": {
            impl: {
                "available": impl in facts,
                "facts": facts.get(impl),
                "reason": unavailable.get(impl),
            }
            for impl in names
        },
        "check": {"batch": 2, "samples": 256, "tolerance": CHECK_TOLERANCE},
        "cases": case_results,
    }
    text = json.dumps(document, indent=1)
    (args.out / f"{stamp}.json").write_text(text)
    (args.out / "latest.json").write_text(text)
    print(
        f"wrote {args.out / (stamp + '.json')} and latest.json "
        f"in {(finished - started).total_seconds():.0f} s",
        flush=True,
    )
    return 0


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
