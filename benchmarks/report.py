"""Turns a results file of ``benchmarks.run`` into BENCHMARKS.md and a throughput plot.

    python -m benchmarks.report [--input benchmarks/results/latest.json]
        [--gpu-input benchmarks/results/latest-cuda.json]
        [--markdown BENCHMARKS.md] [--plot benchmarks/results/throughput.png]
        [--statistic median|min]

The GPU results (``python -m benchmarks.run --device cuda``, by default
``latest-cuda.json`` beside the CPU input) are rendered, when that file exists, as
a section of their own, "GPU: <device>", after the CPU results, with their plot in
``throughput-cuda.png`` beside them. The markdown is generated, never edited by
hand: change this file instead.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
from pathlib import Path

from .cases import GPU_BANDWIDTH_SHAPE, GPU_TARGET_SHAPES, ONE_THREAD

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

OURS = "torchlpc"
PEER_LABELS = {
    "torchlpc-0.7.2-cpp": "0.7.2 C++",
    "torchlpc-0.7.2-numba": "0.7.2 numba",
    "torchlpc-0.7.2-cuda": "0.7.2 CUDA",
    "philtorch-0.7.0": "philtorch",
    "scipy": "scipy",
    "torchaudio": "torchaudio",
}
# Peers that run some cases only: their cells stay empty where they do not apply.
PARTIAL_PEERS = ("scipy", "torchaudio")
DESCRIPTIONS = {
    "torchlpc": "this checkout (`sample_wise_lpc`, `linear_recurrence`)",
    "torchlpc-0.7.2-cpp": "torchlpc 0.7.2 built from its sdist, C++ extension "
    "(`sample_wise_lpc`; order 1 through `torchlpc.recurrence.Recurrence`)",
    "torchlpc-0.7.2-numba": "torchlpc 0.7.2 with its C++ extension blocked at import, "
    "so it runs its numba fallback",
    "philtorch-0.7.0": "philtorch 0.7.0 built from its sdist (`philtorch.lpv.allpole`, "
    "`philtorch.lpv.linear_recurrence`)",
    "scipy": "`scipy.signal.lfilter`, one call per batch row, float64, forward only "
    "(time-invariant cases)",
}
GPU_DESCRIPTIONS = {
    "torchlpc": "this checkout (`sample_wise_lpc`, `linear_recurrence`) on CUDA tensors",
    "torchaudio": "`torchaudio.functional.lfilter(x, a, b, clamp=False, batching=True)`, one "
    "filter per batch row (time-invariant cases only; the initial state folded into the "
    "first N input samples inside the timed call, as lfilter has none)",
    "torchlpc-0.7.2-cuda": "torchlpc 0.7.2 built on the GPU machine from its sdist with its "
    "CUDA kernels (`sample_wise_lpc`; order 1 through `torchlpc.recurrence.Recurrence`)",
    "philtorch-0.7.0": "philtorch 0.7.0 built on the GPU machine from its sdist with its CUDA "
    "kernels (`philtorch.lpv.allpole`, `philtorch.lpv.linear_recurrence`)",
}
MODE_TITLES = {"forward": "Forward", "backward": "Forward + backward (gradients of x, A, zi)"}
GROUPS = ("time-varying", "time-invariant", "linear recurrence", "time-varying float64")
MEMORY_RESOLUTION = 4 * 2**20  # below this, the RSS method cannot resolve a ratio


def _title(mode: str) -> str:
    """'Forward' or 'Forward + backward', without the gradient list."""
    return MODE_TITLES[mode].split(" (")[0]


def _shape(case: dict) -> str:
    if case["op"] == "linear_recurrence":
        return f"{case['B']}×{case['T']}"
    t = "1" if case["time_invariant"] else str(case["T"])
    label = f"{case['B']}×{case['T']}×{case['N']}"
    return label + (f" (A: {case['B']}×{t}×{case['N']})" if case["time_invariant"] else "")


def _ms(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _time(case: dict, impl: str, mode: str, statistic: str) -> float | None:
    """Milliseconds of one call: the median (or the minimum) of the timed calls."""
    return case["results"].get(impl, {}).get(mode, {}).get(f"{statistic}_ms")


def _why_missing(case: dict, impl: str, mode: str) -> str:
    result = case["results"].get(impl)
    if result is None:
        return "not available"
    if mode in result and "error" in result[mode]:
        return result[mode]["error"]
    if "error" in result:
        return result["error"]
    check = result.get("check")
    if check and not check["ok"]:
        return "failed the correctness check: " + ", ".join(
            f"{name} {check['errors'][name]:.1e}" for name in check["failed"]
        )
    reason = (result.get("unsupported") or {}).get(mode)
    return reason or "not measured"


class Report:
    h2 = "##"  # the level of the report's sections
    footnote_prefix = ""  # footnote labels must be unique in the whole markdown file
    descriptions = DESCRIPTIONS
    memory_resolution = MEMORY_RESOLUTION

    def __init__(self, data: dict, statistic: str = "median"):
        self.data = data
        self.statistic = statistic
        self.bandwidth = data["bandwidth"]["bytes_per_s"]
        self.bandwidth_by_threads = {
            int(k): v["bytes_per_s"] for k, v in data["bandwidth"].get("by_threads", {}).items()
        }
        self.notes: dict[tuple[str, str, str], list[str]] = {}
        self.available = [i for i, v in data["implementations"].items() if v["available"]]
        self.peers = [i for i in self.available if i != OURS]

    def time(self, case: dict, impl: str, mode: str) -> float | None:
        return _time(case, impl, mode, self.statistic)

    def bandwidth_for(self, case: dict) -> float:
        """The copy bandwidth of the threads that ran the case."""
        return self.bandwidth_by_threads.get(case.get("threads") or 0, self.bandwidth)

    def note(self, impl: str, what: str, reason: str, case: dict) -> str:
        """A footnote marker; one footnote per distinct reason, listing its cases."""
        key = (impl, what, reason)
        if key not in self.notes:
            self.notes[key] = []
        if case["name"] not in self.notes[key]:
            self.notes[key].append(case["name"])
        return f"[^{self.footnote_prefix}{list(self.notes).index(key) + 1}]"

    def footnotes(self) -> list[str]:
        return [
            f"[^{self.footnote_prefix}{i + 1}]: {impl}, {what}: {reason} ({', '.join(cases)})"
            for i, ((impl, what, reason), cases) in enumerate(self.notes.items())
        ]

    def cell_ratio(self, case: dict, impl: str, mode: str) -> str:
        ours, theirs = self.time(case, OURS, mode), self.time(case, impl, mode)
        if ours is None:
            return "—"
        if theirs is None:
            if impl in PARTIAL_PEERS and (
                case["results"].get(impl, {}).get("unsupported") or {}
            ).get(mode):
                return ""
            return "—" + self.note(impl, _title(mode).lower(), _why_missing(case, impl, mode), case)
        return f"{theirs / ours:.2f}×"

    def mode_table(self, cases: list[dict], mode: str) -> list[str]:
        peers = [p for p in self.peers if any(self.time(c, p, mode) is not None for c in cases)]
        header = [
            "case",
            f"torchlpc ms ({self.statistic})",
            "IQR",
            "Msamples/s",
            "of bandwidth limit",
        ]
        header += [f"vs {PEER_LABELS[p]}" for p in peers]
        if any(c["dtype"] == "float64" for c in cases):
            header.append("float64 / float32")
        with_load = any(c.get("foreign_cpus") is not None for c in cases)
        if with_load:
            header.append("others' CPUs")
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for case in cases:
            ours = self.time(case, OURS, mode)
            if ours is None:
                marker = self.note(
                    OURS,
                    _title(mode).lower(),
                    _why_missing(case, OURS, mode),
                    case,
                )
                row = [_shape(case), "—" + marker, "", "", ""]
            else:
                timing = case["results"][OURS][mode]
                seconds = ours / 1e3
                fraction = self._floor_ms(case, mode) / ours
                spread = f"{(timing['q3_ms'] - timing['q1_ms']) / ours:.0%}"
                row = [
                    _shape(case),
                    _ms(ours),
                    spread,
                    f"{case['samples'] / seconds / 1e6:.1f}",
                    f"{fraction:.1%}",
                ]
            row += [self.cell_ratio(case, p, mode) for p in peers]
            if "float64 / float32" in header:
                twin = self.float32_twin(case)
                if twin is not None and ours is not None and self.time(twin, OURS, mode):
                    row.append(f"{ours / self.time(twin, OURS, mode):.2f}")
                else:
                    row.append("—")
            if with_load:
                foreign = case.get("foreign_cpus")
                row.append("?" if foreign is None else f"{foreign:.2f}")
            lines.append("| " + " | ".join(row) + " |")
        return lines

    def float32_twin(self, case: dict) -> dict | None:
        for other in self.data["cases"]:
            if other["dtype"] == "float32" and all(
                other[k] == case[k] for k in ("op", "B", "T", "N", "time_invariant")
            ):
                return other
        return None

    def header(self, source: str) -> list[str]:
        data, machine = self.data, self.data["machine"]
        impls = data["implementations"]
        ours = impls[OURS]["facts"]
        started = datetime.datetime.fromisoformat(data["started"])
        finished = datetime.datetime.fromisoformat(data["finished"])
        bandwidth_runs = ", ".join(
            f"{r['bytes_per_s'] / 1e9:.1f}" for r in data["bandwidth"]["runs"]
        )
        load = machine.get("load_average") or []
        load_end = machine.get("load_average_end") or []
        rows = [
            (
                "CPU",
                f"{machine['cpu']}, {machine['logical_cpus']} logical CPUs "
                f"({machine['usable_cpus']} usable), "
                f"{ours.get('cpu_capability', '?')} kernels in torch"
                + (f"; flags {' '.join(machine['cpu_flags'])}" if machine.get("cpu_flags") else ""),
            ),
            (
                "Threads",
                f"{machine['threads']} (`torch.set_num_threads`, `NUMBA_NUM_THREADS`, "
                "`OMP_NUM_THREADS`)",
            ),
            (
                "Memory",
                f"{machine['memory_gib']} GiB; copy bandwidth {self.bandwidth / 1e9:.1f} GB/s "
                f"(best of the runs at start and end: {bandwidth_runs} GB/s)",
            ),
            ("Other processes", self.foreign_summary()),
            (
                "Load average (1 min)",
                f"{load[0]:.2f} at start, {load_end[0]:.2f} at end" if load and load_end else "?",
            ),
            (
                "Date",
                f"{started:%Y-%m-%d %H:%M} UTC, the run took "
                f"{(finished - started).total_seconds() / 60:.1f} min",
            ),
            ("Platform", f"{machine['platform']}, Python {machine['python']}"),
            (
                "torchlpc",
                f"{ours['implementation']['version']}, revision {machine.get('revision') or '?'}, "
                f"backend `{ours['implementation'].get('backend', '?')}`",
            ),
            (
                "torch / numba / numpy",
                f"{ours['torch']} / {ours.get('numba', '?')} / {ours['numpy']}",
            ),
        ]
        if impls.get("scipy", {}).get("available"):
            rows.append(("scipy", impls["scipy"]["facts"]["implementation"]["version"]))
        for impl, info in impls.items():
            if impl in (OURS, "scipy"):
                continue
            if info["available"]:
                facts = info["facts"]
                status = (
                    f"{facts['implementation']['version']}, side environment with torch "
                    f"{facts['torch']}, numba {facts.get('numba', '?')}"
                )
            else:
                status = f"**not measured**: {info['reason']}"
            rows.append((impl, status))
        lines = [
            "# Benchmarks",
            "",
            f"Generated by `python -m benchmarks.report` from `{source}`, written by "
            f"`{data['command']}`. Do not edit by hand; rerun both to refresh.",
            "",
            "| machine | |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v} |" for k, v in rows]
        return lines

    def foreign_summary(self) -> str:
        values = [
            c["foreign_cpus"] for c in self.data["cases"] if c.get("foreign_cpus") is not None
        ]
        if not values:
            return "not measured"
        busy = sum(v >= 0.25 for v in values)
        return (
            f"used {statistics.median(values):.2f} CPUs during the median case, at most "
            f"{max(values):.2f}; {busy} of {len(values)} cases ran beside more than a quarter "
            "of a busy CPU (column *others' CPUs*); the times of those cases are inflated"
        )

    def _case(self, name: str) -> dict | None:
        return next((c for c in self.data["cases"] if c["name"] == name), None)

    def _speedup(self, case: dict, peer: str, mode: str) -> float | None:
        ours, theirs = self.time(case, OURS, mode), self.time(case, peer, mode)
        return theirs / ours if ours and theirs else None

    def _floor_ms(self, case: dict, mode: str) -> float:
        """The least time the case's bytes allow at the copy bandwidth of its threads."""
        return case["min_bytes"][mode] / self.bandwidth_for(case) * 1e3

    def _fraction(self, case: dict, mode: str) -> float | None:
        ours = self.time(case, OURS, mode)
        return self._floor_ms(case, mode) / ours if ours else None

    def _memory_ratio(self, case: dict) -> float | None:
        memory = case["results"].get(OURS, {}).get("memory") or {}
        if "ratio_to_necessary" not in memory or case["necessary_bytes"] < self.memory_resolution:
            return None
        return memory["ratio_to_necessary"]

    def _float64_ratio(self, case: dict, mode: str) -> float | None:
        twin = self.float32_twin(case)
        ours = self.time(case, OURS, mode)
        theirs = self.time(twin, OURS, mode) if twin else None
        return ours / theirs if ours and theirs else None

    def target_rows(self) -> list[tuple[str, str, str, float | None, str, float | None]]:
        """(measure, case, goal, value, unit, ceiling) for every target of the CPU
        suite: a goal is met when the value is at least the bound (at most, for the
        goals written "≤"); ``ceiling``, for a speed-up over a peer, is the speed-up
        at which we would run at the bandwidth limit (the peer's time over the least
        time the bytes allow), None for the other measures."""
        cpp = "torchlpc-0.7.2-cpp"
        rows = []
        cases = self.data["cases"]

        def speedup(measure: str, case: dict, goal: float, peer: str, mode: str) -> tuple:
            return (measure, case, f"≥ {goal:g}×", self._speedup(case, peer, mode), "x",
                    self._ceiling(case, peer, mode))

        batched = [c for c in cases if not c.get("threads")]
        one_thread = [c for c in cases if c.get("threads") == 1]
        for case in batched:
            invariant, recurrence = case["time_invariant"], case["op"] == "linear_recurrence"
            label = " (its A expanded)" if invariant else ""
            # From a batch of 8 on: 3x forward, 8x forward+backward (issue 14); below,
            # the first suite's goals (float32 time-varying and order-1 cases).
            if case["B"] >= 8:
                forward, backward = 3.0, 8.0
            elif case["dtype"] == "float32" and not invariant:
                forward, backward = (2.0 if recurrence or case["N"] >= 8 else 1.5), 5.0
            else:
                forward, backward = None, None
            if invariant:
                backward = 10.0
            if (case["B"], case["T"], case["N"]) == (16, 44100, 32):
                backward = 10.0
            if forward is not None:
                rows.append(speedup(f"Forward vs 0.7.2 C++{label}", case, forward, cpp, "forward"))
            if backward is not None:
                rows.append(speedup(f"Forward + backward vs 0.7.2 C++{label}", case, backward,
                                    cpp, "backward"))
        slowest = [
            (self._speedup(c, cpp, m), c, m) for c in cases for m in ("forward", "backward")
            if self._speedup(c, cpp, m) is not None
        ]
        if slowest:
            _, case, mode = min(slowest, key=lambda row: row[0])
            rows.append(speedup(
                f"Never slower than 0.7.2 C++: the least speed-up ({_title(mode).lower()})",
                case, 1.0, cpp, mode,
            ))
        for case in batched:
            varying = case["op"] == "allpole" and not case["time_invariant"]
            shape = (case["B"], case["T"], case["N"])
            named = shape in ((64, 16384, 8), (1, 2**20, 2)) if case["time_invariant"] else (
                case["op"] == "linear_recurrence" and shape[:2] in ((64, 16384), (1, 2**20))
            )
            if (varying and case["min_bytes"]["forward"] >= 4 * 2**20) or named:
                for mode in ("forward", "backward"):
                    rows.append((f"{_title(mode)}, of the bandwidth limit", case, "≥ 60%",
                                 self._fraction(case, mode), "%", None))
        for case in one_thread:
            if case["N"] in (8, 16, 32):
                for mode in ("forward", "backward"):
                    rows.append((f"{_title(mode)}, one thread, of its bandwidth floor", case,
                                 "≥ 60%", self._fraction(case, mode), "%", None))
        for case in batched:
            if case["dtype"] == "float32" and self._memory_ratio(case) is not None:
                rows.append(("Peak memory of forward + backward / necessary", case, "≤ 1.2×",
                             self._memory_ratio(case), "x", None))
        for case in (c for c in batched if c["group"] == "time-invariant"):
            rows.append(speedup("Forward vs scipy.signal.lfilter (float64)", case, 1.0, "scipy",
                                "forward"))
        for case in (c for c in batched if c["dtype"] == "float64"):
            for mode in ("forward", "backward"):
                rows.append((f"{_title(mode)}: float64 time / float32 time", case, "≤ 2×",
                             self._float64_ratio(case, mode), "x", None))
        for run in self._first_call_runs("wait"):
            goal = "≤ 3 s" if run["cache"] == "empty" else "≤ 0.2 s"
            value = run["forward_s"] + run["backward_s"] if "forward_s" in run else None
            rows.append((f"First forward + backward, fresh process, {run['cache']} numba cache",
                         f"{run['dtype']}, N = {run['N']}", goal, value, "s", None))
        out = []
        for measure, case, goal, value, unit, ceiling in rows:
            shape = case if isinstance(case, str) else _shape(case) + (
                ", float64" if case["dtype"] == "float64" else ""
            ) + (", one thread" if case.get("threads") == 1 else "")
            out.append((measure, shape, goal, value, unit, ceiling))
        return out

    def _ceiling(self, case: dict, peer: str, mode: str) -> float | None:
        """The speed-up over ``peer`` at which we would run at the bandwidth limit."""
        theirs = self.time(case, peer, mode)
        return theirs / self._floor_ms(case, mode) if theirs else None

    def _first_call_runs(self, mode: str) -> list[dict]:
        return [r for r in self.data.get("first_calls", {}).get("runs", []) if r["mode"] == mode]

    @staticmethod
    def _met(goal: str, value: float | None, unit: str) -> str:
        if value is None:
            return "not measured"
        bound = float(goal.split()[1].rstrip("×%")) / (100 if unit == "%" else 1)
        met = value <= bound if goal.startswith("≤") else value >= bound
        return "met" if met else "**missed**"

    def targets(self) -> list[str]:
        rows = self.target_rows()
        lines = [
            f"{self.h2} Targets",
            "",
            f"Every target of the CPU suite, case by case, from this run: speed-ups are the "
            f"peer's {self.statistic} time over ours, fractions of the bandwidth limit and "
            "memory as in the tables below.",
            "",
        ]
        verdicts = []
        for _, _, goal, value, unit, ceiling in rows:
            verdict = self._met(goal, value, unit)
            bound = float(goal.split()[1].rstrip("×%"))
            if verdict != "met" and ceiling is not None and ceiling < bound:
                verdict += " (above the bandwidth ceiling)"
            verdicts.append(verdict)
        missed = sum(v != "met" for v in verdicts)
        lines.append(
            f"{len(rows) - missed} of {len(rows)} met."
            if rows
            else "No case of this run carries a target."
        )
        lines += [
            "",
            "*Ceiling*, for a speed-up over a peer: the speed-up at which torchlpc would run at "
            "the bandwidth limit (the peer's time over the least time its bytes allow at the "
            "copy bandwidth of this run); a target above it cannot be met on this machine "
            "without moving fewer bytes than the model counts.",
            "",
            "| measure | case | target | measured | ceiling | |",
            "|---|---|---|---|---|---|",
        ]
        for (measure, shape, goal, value, unit, ceiling), verdict in zip(rows, verdicts, strict=True):
            shown = "—" if value is None else (
                f"{value:.1%}" if unit == "%" else f"{value:.2f} s" if unit == "s" else f"{value:.2f}×"
            )
            top = "" if ceiling is None else f"{ceiling:.2f}×"
            lines.append(f"| {measure} | {shape} | {goal} | {shown} | {top} | {verdict} |")
        return lines

    def order_sweep(self, plot: str | None) -> list[str]:
        """One sequence on one thread, against the order: ns per sample and the
        fraction of the one-thread bandwidth floor, ours and the peers'."""
        cases = sorted(
            (c for c in self.data["cases"] if c["group"] == ONE_THREAD), key=lambda c: c["N"]
        )
        if not cases:
            return []
        bandwidth = self.bandwidth_for(cases[0])
        peers = [p for p in self.peers if any(self.time(c, p, "forward") for c in cases)]
        lines = [
            f"{self.h2} One sequence, one thread: cost per sample against the order",
            "",
            f"B = 1, T = {cases[0]['T']}, float32, time-varying A, one thread for every "
            f"implementation (their workers run with 1 thread; copy bandwidth of one thread "
            f"{bandwidth / 1e9:.1f} GB/s in this run). *Floor*: the least bytes the pass must "
            "move over that bandwidth, per sample; *of floor*: floor over our time. Cells of the "
            "peers: their ns per sample (our speed-up over them).",
            "",
        ]
        if plot:
            lines += [f"![ns per sample against the order]({plot})", ""]
        header = ["N", "floor fwd ns", "ours fwd ns", "of floor", "floor f+b ns", "ours f+b ns",
                  "of floor"]
        header += [f"{PEER_LABELS[p]} fwd ns" for p in peers]
        header += [f"{PEER_LABELS[p]} f+b ns" for p in peers]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for case in cases:
            row = [str(case["N"])]
            for mode in ("forward", "backward"):
                floor = self._floor_ms(case, mode) * 1e6 / case["samples"]
                ours = self.time(case, OURS, mode)
                row.append(f"{floor:.2f}")
                if ours is None:
                    row += ["—", ""]
                else:
                    ns = ours * 1e6 / case["samples"]
                    row += [f"{ns:.2f}", f"{floor / ns:.0%}"]
            for mode in ("forward", "backward"):
                for peer in peers:
                    theirs, ours = self.time(case, peer, mode), self.time(case, OURS, mode)
                    row.append(
                        f"{theirs * 1e6 / case['samples']:.2f} ({theirs / ours:.2f}×)"
                        if theirs and ours else "—"
                    )
            lines.append("| " + " | ".join(row) + " |")
        return lines

    def first_call_table(self) -> list[str]:
        calls = self.data.get("first_calls")
        if not calls:
            return []
        B, T = calls["shape"]
        lines = [
            f"{self.h2} First calls",
            "",
            f"A fresh process (`python -c`; torch and torchlpc imported, and one backward "
            "through a torch op run first with the same kind of output gradient, since "
            "autograd's first such backward imports sympy, 0.4-0.6 s here) runs one "
            f"`sample_wise_lpc` forward and its backward at ({B}, {T}, N), numba's disk cache "
            "(`NUMBA_CACHE_DIR`) first empty, then warm from that first process. "
            "`TORCHLPC_CPU_COMPILE=wait` is the default: a call waits for its kernels; "
            "`background` runs the first calls of a kind on the chunked path while they "
            "compile. Seconds.",
            "",
            "| dtype | N | mode | cache | import | forward | backward | forward + backward |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for run in calls["runs"]:
            head = f"| {run['dtype']} | {run['N']} | {run['mode']} | {run['cache']} |"
            if "forward_s" in run:
                lines.append(
                    f"{head} {run['import_s']:.2f} | {run['forward_s']:.2f} | "
                    f"{run['backward_s']:.2f} | {run['forward_s'] + run['backward_s']:.2f} |"
                )
            else:
                lines.append(f"{head} failed: {run.get('error', '?')[:200]} | | | |")
        return lines

    def memory_table(self) -> list[str]:
        impls = [i for i in self.available if i != "scipy"]
        cases = [
            c for c in self.data["cases"] if any("memory" in c["results"].get(i, {}) for i in impls)
        ]
        if not cases:
            return []
        lines = [
            f"{self.h2} Peak memory of forward + backward",
            "",
            self.memory_intro(),
            "",
            "| case | necessary MiB | "
            + " | ".join("torchlpc" if i == OURS else PEER_LABELS[i] for i in impls)
            + " |",
            "|" + "---|" * (2 + len(impls)),
        ]
        for case in cases:
            row = [case["name"], f"{case['necessary_bytes'] / 2**20:.1f}"]
            for impl in impls:
                memory = case["results"].get(impl, {}).get("memory")
                if memory is None:
                    row.append("—")
                elif "error" in memory:
                    row.append("—" + self.note(impl, "peak memory", memory["error"], case))
                elif case["necessary_bytes"] < self.memory_resolution:
                    row.append(f"{memory['peak_bytes'] / 2**20:.1f}")
                else:
                    row.append(
                        f"{memory['peak_bytes'] / 2**20:.1f} ({memory['ratio_to_necessary']:.2f}×)"
                    )
            lines.append("| " + " | ".join(row) + " |")
        return lines

    def memory_intro(self) -> str:
        return (
            "Peak = inputs (x, A, zi, grad_y) + the growth of the worker's peak resident set "
            "during one forward+backward; *necessary* = inputs + y + grad_x + grad_A + grad_zi. "
            "Cells: peak MiB (peak / necessary). Cases needing less than "
            f"{MEMORY_RESOLUTION // 2**20} MiB are below what this method resolves and show "
            "MiB only."
        )

    def checks(self) -> list[str]:
        worst: dict[str, float] = {}
        failures = []
        for case in self.data["cases"]:
            for impl, result in case["results"].items():
                check = result.get("check")
                if not check:
                    continue
                worst[impl] = max(worst.get(impl, 0.0), max(check["errors"].values()))
                if not check["ok"]:
                    failures.append(f"{impl} on {case['name']} ({', '.join(check['failed'])})")
        settings = self.data["check"]
        tolerance = ", ".join(f"{k} {v:g}" for k, v in settings["tolerance"].items())
        lines = [
            f"{self.h2} Correctness check",
            "",
            "Before timing, every implementation ran each case on its first "
            f"{settings['batch']} rows "
            f"and {settings['samples']} samples; y and every gradient were compared with "
            "`torchlpc.reference` (autograd through the reference loop, in float64). Largest "
            "error |out − ref|max / |ref|max over all cases and outputs (tolerance by dtype: "
            f"{tolerance}, or {self.data['check'].get('yardstick_factor', 8):g} times the "
            "plain recursion's own error in the implementation's dtype where that is larger, "
            "as on ill-conditioned high orders): "
            + ", ".join(f"{impl} {value:.1e}" for impl, value in worst.items())
            + ".",
        ]
        if failures:
            lines += ["", "**Failed, so not timed:** " + "; ".join(failures) + "."]
        return lines

    def method(self) -> list[str]:
        settings = self.data["settings"]
        return [
            f"{self.h2} Method",
            "",
            "- Each implementation runs in its own worker process (`benchmarks/worker.py`); the "
            "peers in the side environment of `benchmarks/install_peers.sh`. Inputs are built "
            "in the worker before timing, the same in every worker (seeded, poles inside radius "
            "0.9 drifting slowly).",
            f"- Per case and mode: {settings['warmup']} warm-up call(s), then up to "
            f"{settings['repeat']} timed calls (at least {settings['min_repeat']}, aiming at "
            f"{settings['budget']} s per implementation), taken in {settings['rounds']} rounds "
            "with the implementations in rotating order, so that the machine's noise falls on "
            "all of them. Each timed call is measured on its own; forward+backward is one "
            "forward and `y.backward(grad_y)` with x, A, zi requiring gradients. The outputs and "
            "gradients of a call are freed before the next, as in a training loop: torchlpc's CPU "
            "kernels then write into output memory they kept from the calls before (see "
            "`torchlpc.empty_cpu_cache`), the peers into what PyTorch's allocator (glibc) gives "
            "them.",
            "- Every core is one of our threads, so a single busy neighbour costs a 2-thread "
            "kernel whole scheduler ticks at each synchronisation. Before each case the runner "
            f"waits up to {settings.get('wait_quiet', 0):g} s for other processes to go idle, "
            "and it records the CPU time used by processes outside the suite during the case "
            "(`/proc/stat` less the suite's own processes): column *others' CPUs*.",
            "- Time-invariant cases give torchlpc A of shape (B, 1, N); the peers get "
            "`A.expand(B, T, N)` inside the timed call (what a user of theirs would write), and "
            "autograd sums their (B, T, N) gradient back. scipy gets float64 arrays and its own "
            "state form (`lfiltic`), prepared outside the timed calls.",
            "- *Of bandwidth limit*: the least bytes any implementation must move (read x, A, zi "
            "and write y; forward+backward adds reading grad_y, A, y and writing grad_x, grad_A, "
            "grad_zi) over the time, divided by the copy bandwidth measured in the same run "
            f"(`copy_` of a {settings['bandwidth_mib']} MiB float32 tensor, counting its read and "
            "its write; the better of a measurement before and one after the cases).",
            "- Peak memory: a separate worker per implementation, started with "
            "`MALLOC_MMAP_THRESHOLD_=65536` so that every large block is its own mapping and is "
            "returned when freed; after two warm-up runs (and `torchlpc.empty_cpu_cache()`, which "
            "gives back the output memory that torchlpc's CPU kernels keep between calls, so that "
            "the measured call makes every output afresh) the peak resident set is reset through "
            "`/proc/self/clear_refs` and read back (`VmHWM`) after one forward+backward. Unlike "
            "`torch.profiler`'s memory events, this also sees numpy and numba allocations, which "
            "the 0.7.2 numba path makes.",
        ]

    plot_alt = "throughput per case"

    def legend(self) -> str:
        return (
            f"Times are the {self.statistic} of the timed calls. "
            "*vs X* columns: X's time over torchlpc's (above 1: torchlpc is faster). "
            "*IQR*: interquartile range of torchlpc's timed calls over their median "
            "(the machine's noise). *others' CPUs*: CPUs that processes outside the suite kept "
            "busy, on average, while the case ran. *Msamples/s*: B·T / time. "
            "*float64 / float32*: torchlpc's time against the same shape in float32."
        )

    def render(self, source: str, plot: str | None, sweep_plot: str | None = None) -> str:
        lines = self.header(source) + [""]
        lines += ["| implementation | what runs |", "|---|---|"]
        lines += [
            f"| {i} | {self.descriptions.get(i, '')} |" for i in self.data["implementations"]
        ]
        lines += ["", self.legend()]
        if plot:
            lines += ["", f"![{self.plot_alt}]({plot})"]
        lines += [""] + self.targets()
        for group in GROUPS:
            cases = [c for c in self.data["cases"] if c["group"] == group]
            if not cases:
                continue
            lines += ["", f"{self.h2} {group[0].upper()}{group[1:]}"]
            for mode in ("forward", "backward"):
                if any(self.time(c, OURS, mode) is not None for c in cases):
                    lines += ["", f"**{MODE_TITLES[mode]}**", ""] + self.mode_table(cases, mode)
        sweep = self.order_sweep(sweep_plot)
        if sweep:
            lines += [""] + sweep
        memory = self.memory_table()
        if memory:
            lines += [""] + memory
        first_calls = self.first_call_table()
        if first_calls:
            lines += [""] + first_calls
        lines += [""] + self.checks() + [""] + self.method()
        if self.notes:
            lines += [""] + self.footnotes()
        return "\n".join(lines) + "\n"


def _gib(value) -> str:
    return f"{value / 2**30:.1f} GiB" if value else "?"


def _mb(value) -> str:
    return f"{value / 1e6:.0f} MB" if value else "?"


class GpuReport(Report):
    """The GPU results (``benchmarks.run --device cuda``): a section of BENCHMARKS.md of
    its own, after the CPU results, with its sections one level down."""

    h2 = "###"
    footnote_prefix = "gpu-"
    descriptions = GPU_DESCRIPTIONS
    memory_resolution = 0  # the allocator's counters are exact
    plot_alt = "GPU throughput per case"

    def device_name(self) -> str:
        return self.data.get("device", {}).get("name") or "unknown device"

    def header(self, source: str) -> list[str]:
        data, machine = self.data, self.data["machine"]
        device = data.get("device", {})
        smi = machine.get("nvidia_smi") or {}
        impls = data["implementations"]
        ours = impls[OURS]["facts"]
        started = datetime.datetime.fromisoformat(data["started"])
        finished = datetime.datetime.fromisoformat(data["finished"])
        bandwidth_runs = ", ".join(
            f"{r['bytes_per_s'] / 1e9:.0f}" for r in data["bandwidth"]["runs"]
        )
        rows = [
            (
                "GPU",
                f"{self.device_name()}, compute capability {device.get('capability', '?')}, "
                f"{device.get('multiprocessors', '?')} SMs, {_gib(device.get('memory_bytes'))}, "
                f"L2 cache {_mb(device.get('l2_cache_bytes'))}",
            ),
            (
                "Driver / CUDA",
                f"driver {smi.get('driver_version', '?')}, torch built with CUDA "
                f"{device.get('torch_cuda', '?')}; max clocks SM "
                f"{smi.get('clocks.max.sm', '?')}, memory {smi.get('clocks.max.memory', '?')}",
            ),
            (
                "Memory bandwidth",
                f"{self.bandwidth / 1e9:.0f} GB/s by a device-to-device copy of "
                f"{data['settings'].get('bandwidth_mib', '?')} MiB, counting its read and its "
                f"write (best of the runs at start and end: {bandwidth_runs} GB/s)",
            ),
            (
                "Host",
                f"{machine['cpu']}, {machine['logical_cpus']} logical CPUs; "
                f"{machine['platform']}, Python {machine['python']}",
            ),
            (
                "Date",
                f"{started:%Y-%m-%d %H:%M} UTC, the run took "
                f"{(finished - started).total_seconds() / 60:.1f} min",
            ),
            (
                "torchlpc",
                f"{ours['implementation']['version']}, revision {machine.get('revision') or '?'}, "
                f"backend `{ours['implementation'].get('backend', '?')}`",
            ),
            ("torch / triton", f"{ours['torch']} / {device.get('triton', '?')}"),
        ]
        for impl, info in impls.items():
            if impl == OURS:
                continue
            if info["available"]:
                facts = info["facts"]
                status = facts["implementation"]["version"]
                if impl == "torchaudio":
                    extension = facts["implementation"].get("extension")
                    status += (
                        ", with its compiled extension"
                        if extension
                        else ", **without** its compiled extension (Python loop over time)"
                    )
                else:
                    status += f", side environment with torch {facts['torch']}"
            else:
                status = f"**not measured**: {info['reason']}"
            rows.append((impl, status))
        lines = [
            f"## GPU: {self.device_name()}",
            "",
            f"Generated by `python -m benchmarks.report` from `{source}`, written by "
            f"`{data['command']}` (on the GPU machine: `bash benchmarks/gpu_run.sh`). "
            "float32 throughout.",
        ]
        if data.get("partial"):
            lines += ["", "**This run was stopped before its end; the cases below are those "
                      "it finished.**"]
        if data.get("skipped_cases"):
            lines += ["", "Not run, the run's time limit being spent: "
                      + ", ".join(data["skipped_cases"]) + "."]
        lines += ["", "| GPU machine | |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in rows]
        return lines

    def _case(self, group: str, shape) -> dict | None:
        B, T, N = shape
        for case in self.data["cases"]:
            if (case["group"], case["B"], case["T"], case["N"]) == (group, B, T, N) and case[
                "dtype"
            ] == "float32":
                return case
        return None

    def targets(self) -> list[str]:
        def label(shape):
            return "×".join(str(v) for v in shape)

        rows = []
        peer = "torchlpc-0.7.2-cuda"
        for mode, goal in (("forward", 5.0), ("backward", 10.0)):
            for shape in GPU_TARGET_SHAPES:
                case = self._case("time-varying", shape)
                ours = theirs = None
                if case is not None:
                    ours, theirs = self.time(case, OURS, mode), self.time(case, peer, mode)
                if case is None:
                    measured = "case not run"
                elif not ours:
                    measured = f"not measured (torchlpc: {_why_missing(case, OURS, mode)})"
                elif not theirs:
                    measured = f"not measured (0.7.2: {_why_missing(case, peer, mode)})"
                else:
                    ratio = theirs / ours
                    verdict = "met" if ratio >= goal else "**not met**"
                    measured = f"{ratio:.2f}× ({verdict})"
                rows.append(
                    f"| {_title(mode)} vs torchlpc 0.7.2 CUDA | {label(shape)} | ≥ {goal:g}× | "
                    f"{measured} |"
                )
        case = self._case("time-varying", GPU_BANDWIDTH_SHAPE)
        ours = self.time(case, OURS, "forward") if case else None
        if ours:
            fraction = case["min_bytes"]["forward"] / (ours / 1e3) / self.bandwidth
            verdict = "met" if fraction >= 0.5 else "**not met**"
            measured = f"{fraction:.1%} ({verdict})"
        else:
            measured = "case not run" if case is None else "not measured"
        rows.append(
            f"| Forward: fraction of the copy bandwidth | {label(GPU_BANDWIDTH_SHAPE)} | ≥ 50% | "
            f"{measured} |"
        )
        for other, name in (("philtorch-0.7.0", "philtorch"), ("torchaudio", "torchaudio")):
            for mode in ("forward", "backward"):
                values = []
                for case in self.data["cases"]:
                    ours, theirs = self.time(case, OURS, mode), self.time(case, other, mode)
                    if ours and theirs:
                        values.append(theirs / ours)
                if values:
                    rows.append(
                        f"| {_title(mode)} vs {name} | every case it ran ({len(values)}) | "
                        f"(for comparison) | {min(values):.2f}× / "
                        f"{statistics.median(values):.2f}× / {max(values):.2f}× (min / median / "
                        "max) |"
                    )
        return [
            f"{self.h2} Targets",
            "",
            f"Speed-ups are the peer's {self.statistic} time over ours, in the same run. "
            "Fraction of the copy bandwidth: the least bytes a forward pass must move (read x, "
            "A, zi; write y) over its time, divided by the measured copy bandwidth above.",
            "",
            "| measure | case | target | measured |",
            "|---|---|---|---|",
            *rows,
        ]

    def memory_intro(self) -> str:
        return (
            "Peak = inputs (x, A, zi, grad_y) + the most that `torch.cuda.max_memory_allocated()` "
            "rose, during one timed forward+backward, above what was allocated before it; "
            "*necessary* = inputs + y + grad_x + grad_A + grad_zi. Cells: peak MiB (peak / "
            "necessary). Memory that a library takes outside PyTorch's allocator is not seen."
        )

    def method(self) -> list[str]:
        settings = self.data["settings"]
        return [
            f"{self.h2} Method",
            "",
            "- Each implementation runs in its own worker process (`benchmarks/worker.py`): "
            "torchlpc and torchaudio under the GPU machine's Python and torch, the peers in the "
            "side environment of `benchmarks/gpu_peers.sh`, built there from their sdists with "
            "nvcc against that same torch. Inputs are built on the GPU by each worker from the "
            "same seeded draws.",
            "- Per case, each worker first makes one untimed full-size forward+backward call, "
            "so that kernels compiled on first use (Triton's, numba's) are compiled before "
            "timing; its time, compilation included, is kept in the results file "
            "(`first_call_s`). Then per mode: "
            f"{settings['warmup']} warm-up call(s) and up to {settings['repeat']} timed calls "
            f"(at least {settings['min_repeat']}, aiming at {settings['budget']} s per "
            f"implementation), in up to {settings['rounds']} rounds with the implementations in "
            "rotating order. Each timed call starts on an idle device (after "
            "`torch.cuda.synchronize()`) and is timed by CUDA events recorded before and after "
            "it: launch overheads are included, as the device waits for them.",
            "- Time-invariant cases give torchlpc A of shape (B, 1, N); the peers get "
            "`A.expand(B, T, N)` inside the timed call. torchaudio's lfilter gets a = [1, A], "
            "b = [1, 0, …, 0] and `clamp=False`; it has no initial state, so zi is folded into "
            "the first N samples of x inside the timed call (exact, gradients included).",
            "- *Of bandwidth limit*: the least bytes any implementation must move (read x, A, zi "
            "and write y; forward+backward adds reading grad_y, A, y and writing grad_x, grad_A, "
            "grad_zi) over the time, divided by the device-to-device copy bandwidth measured in "
            "the same run (the better of a measurement before and one after the cases).",
            "- Peak memory: `torch.cuda.reset_peak_memory_stats()` before each timed "
            "forward+backward call, `torch.cuda.max_memory_allocated()` after it.",
        ]

    def legend(self) -> str:
        return (
            f"Times are the {self.statistic} of the timed calls. "
            "*vs X* columns: X's time over torchlpc's (above 1: torchlpc is faster). "
            "*IQR*: interquartile range of torchlpc's timed calls over their median. "
            "*others' CPUs*: CPUs that processes outside the suite kept busy, on average, while "
            "the case ran. *Msamples/s*: B·T / time."
        )


def plot_throughput(data: dict, path: Path, statistic: str = "median") -> str | None:
    """Horizontal bars of samples per second, one panel per mode; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib); no plot written"
    impls = [i for i, v in data["implementations"].items() if v["available"]]
    cases = [c for c in data["cases"] if not c.get("threads")]
    height_inches = max(3.5, 1.6 + 0.16 * len(cases) * len(impls))
    fig, axes = plt.subplots(1, 2, figsize=(13, height_inches), sharey=True)
    height = 0.8 / len(impls)
    for axis, mode in zip(axes, ("forward", "backward"), strict=True):
        for k, impl in enumerate(impls):
            ys, values = [], []
            for row, case in enumerate(cases):
                median = _time(case, impl, mode, statistic)
                if median:
                    ys.append(row + (k - (len(impls) - 1) / 2) * height)
                    values.append(case["samples"] / (median / 1e3))
            axis.barh(ys, values, height=height, color=f"C{k}", label=impl)
        axis.set_xscale("log")
        axis.set_title(_title(mode))
        axis.set_xlabel("samples per second (higher is better)")
        axis.grid(axis="x", which="both", alpha=0.3)
    axes[0].set_yticks(range(len(cases)))
    axes[0].set_yticklabels([c["name"] for c in cases], fontsize=8)
    axes[0].invert_yaxis()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="upper center", ncol=len(impls), fontsize=8, bbox_to_anchor=(0.5, 0.97)
    )
    if data.get("device", {}).get("type") == "cuda":
        title = f"torchlpc throughput, {data['device'].get('name', 'GPU')}, float32"
    else:
        machine = data["machine"]
        title = f"torchlpc throughput, {machine['cpu']}, {machine['threads']} threads"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def plot_order_sweep(data: dict, path: Path, statistic: str = "median") -> str | None:
    """ns per sample against the order, one thread, every implementation, with the
    bandwidth floor; None when written."""
    cases = sorted((c for c in data["cases"] if c["group"] == ONE_THREAD), key=lambda c: c["N"])
    if not cases:
        return "no one-thread case in this run; no order plot written"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib); no plot written"
    by_threads = data["bandwidth"].get("by_threads", {})
    bandwidth = by_threads.get("1", {}).get("bytes_per_s")
    impls = [i for i, v in data["implementations"].items() if v["available"] and i != "scipy"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    orders = [c["N"] for c in cases]
    for axis, mode in zip(axes, ("forward", "backward"), strict=True):
        for k, impl in enumerate(impls):
            points = [
                (c["N"], _time(c, impl, mode, statistic) * 1e6 / c["samples"])
                for c in cases if _time(c, impl, mode, statistic)
            ]
            if points:
                axis.plot(*zip(*points), marker="o", color=f"C{k}", label=impl)
        if bandwidth:
            floor = [c["min_bytes"][mode] / bandwidth / c["samples"] * 1e9 for c in cases]
            axis.plot(orders, floor, color="black", linestyle="--", label="bandwidth floor")
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xticks(orders)
        axis.set_xticklabels([str(n) for n in orders])
        axis.set_xlabel("order N")
        axis.set_title(_title(mode))
        axis.grid(which="both", alpha=0.3)
    axes[0].set_ylabel("ns per sample (lower is better)")
    axes[0].legend(fontsize=8)
    machine = data["machine"]
    fig.suptitle(f"One sequence (T = {cases[0]['T']}), one thread, float32, {machine['cpu']}",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--input", type=Path, default=HERE / "results" / "latest.json")
    parser.add_argument(
        "--gpu-input",
        type=Path,
        help="GPU results to add as a section of their own, if the file exists "
        "(default: latest-cuda.json beside --input)",
    )
    parser.add_argument("--no-gpu", action="store_true", help="leave the GPU results out")
    parser.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--plot", type=Path, help="default: throughput.png beside the input")
    parser.add_argument(
        "--statistic",
        choices=("median", "min"),
        default="median",
        help="time of a case: the median of its timed calls (default) or the fastest",
    )
    args = parser.parse_args(argv)
    if not args.input.exists():
        print(f"{args.input} does not exist; run python -m benchmarks.run first", file=sys.stderr)
        return 1
    data = json.loads(args.input.read_text())
    plot_path = args.plot or args.input.parent / "throughput.png"
    problem = plot_throughput(data, plot_path, args.statistic)
    if problem:
        print(problem, file=sys.stderr)
    markdown_dir = args.markdown.resolve().parent

    def relative(path: Path) -> str:
        return Path(os.path.relpath(path.resolve(), markdown_dir)).as_posix()

    sweep_path = plot_path.parent / "order-sweep.png"
    sweep_problem = plot_order_sweep(data, sweep_path, args.statistic)
    if sweep_problem and sweep_problem != problem and "no one-thread case" not in sweep_problem:
        print(sweep_problem, file=sys.stderr)
    text = Report(data, args.statistic).render(
        relative(args.input),
        None if problem else relative(plot_path),
        None if sweep_problem else relative(sweep_path),
    )
    written = [str(args.markdown)] + ([] if problem else [str(plot_path)])
    written += [] if sweep_problem else [str(sweep_path)]

    gpu_input = args.gpu_input or args.input.parent / "latest-cuda.json"
    if not args.no_gpu and gpu_input.exists():
        gpu_data = json.loads(gpu_input.read_text())
        gpu_plot = gpu_input.parent / "throughput-cuda.png"
        gpu_problem = plot_throughput(gpu_data, gpu_plot, args.statistic) if gpu_data[
            "cases"
        ] else "no GPU case was run; no GPU plot written"
        if gpu_problem and gpu_problem != problem:
            print(gpu_problem, file=sys.stderr)
        gpu_text = GpuReport(gpu_data, args.statistic).render(
            relative(gpu_input), None if gpu_problem else relative(gpu_plot)
        )
        text += "\n" + gpu_text
        written += [] if gpu_problem else [str(gpu_plot)]
    elif args.gpu_input and not args.no_gpu:
        print(f"{args.gpu_input} does not exist; no GPU section", file=sys.stderr)
    args.markdown.write_text(text)
    print("wrote " + " and ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
