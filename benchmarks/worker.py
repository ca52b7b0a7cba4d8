"""One implementation in its own process, fed one benchmark case at a time.

Run as a script, never as part of the ``benchmarks`` package: the peers run in a
side environment and one of them has our import name, so this file depends on
nothing but the standard library, torch, and the implementation it measures.

    python benchmarks/worker.py IMPL

Requests arrive on stdin and replies leave on stdout, one JSON object per line.
Anything a library prints goes to stderr, so it cannot break the protocol.

Requests (``cmd``):
    hello                   versions, threads, where the implementation was imported from
    prepare  case, check    build the case's inputs; run the implementation once on a
                            short slice and save inputs, output and gradients to ``check``
    time     mode, number   time ``number`` calls of ``forward`` or ``backward``
                            (forward and backward together); inputs stay from prepare
    memory   case           peak resident memory of one forward+backward (see below)
    bandwidth  bytes, number  time copies of a ``bytes``-sized tensor
    release                 drop the inputs
    quit

GPU cases (the runner's ``--device cuda``, or ``--device cpu --gpu-cases`` to run the
same protocol on CPU tensors): the environment says ``BENCHMARK_DEVICE`` (``cuda`` or
``cpu``) and ``BENCHMARK_GPU_CASES=1``. Inputs are then built on the device; prepare
also makes one full-size forward+backward call, so that every kernel the case needs
(Triton's, numba's) is compiled before anything is timed; each timed call starts
on an idle device and is timed with CUDA events around it; and each timed forward+backward call on
CUDA records the peak of ``torch.cuda.max_memory_allocated`` above what was allocated
before it, so no separate memory pass is needed.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import importlib.abc
import json
import math
import os
import sys
import time
import traceback
import warnings

import torch

CHECK_BATCH = 2
CHECK_SAMPLES = 256

DEVICE = os.environ.get("BENCHMARK_DEVICE", "cpu")
# Timed calls run the numba kernels, never the chunked path that serves calls while
# they compile in the background (torchlpc.kernels.cpu_compile).
os.environ.setdefault("TORCHLPC_CPU_COMPILE", "wait")
GPU_CASES = os.environ.get("BENCHMARK_GPU_CASES") == "1"


# ----------------------------------------------------------------------------- inputs


def _smooth(
    generator, B: int, T: int, low: float, high: float, dtype, device="cpu"
) -> torch.Tensor:
    """A (B, T) parameter drifting slowly inside [low, high]: a random level per row
    plus a few cycles of a sinusoid over the whole signal.

    The random numbers always come from the CPU generator; the (B, T) arithmetic
    runs on ``device``, so that large GPU cases are not built on the CPU."""
    level = torch.rand(B, 1, generator=generator, dtype=dtype).to(device)
    phase = 2 * math.pi * torch.rand(B, 1, generator=generator, dtype=dtype).to(device)
    cycles = 1 + 4 * torch.rand(B, 1, generator=generator, dtype=dtype).to(device)
    t = torch.arange(T, dtype=dtype, device=device)[None] / max(T, 1)
    wobble = 0.5 + 0.5 * torch.sin(2 * math.pi * cycles * t + phase)
    return low + (high - low) * (0.75 * level + 0.25 * wobble)


def _stable_coefficients(generator, B: int, T: int, N: int, dtype, device="cpu") -> torch.Tensor:
    """A (B, T, N) with the poles of every frame inside radius 0.9, drifting slowly, so
    that long time-varying runs neither blow up nor decay into denormals."""
    poly = torch.zeros(B, T, N + 1, dtype=dtype, device=device)
    poly[..., 0] = 1
    for _ in range(N // 2):
        radius = _smooth(generator, B, T, 0.3, 0.9, dtype, device)
        angle = _smooth(generator, B, T, 0.05 * math.pi, 0.95 * math.pi, dtype, device)
        quadratic = (-2 * radius * torch.cos(angle), radius**2)
        product = poly.clone()
        product[..., 1:] += quadratic[0][..., None] * poly[..., :-1]
        product[..., 2:] += quadratic[1][..., None] * poly[..., :-2]
        poly = product
    if N % 2:
        pole = _smooth(generator, B, T, -0.9, 0.9, dtype, device)
        product = poly.clone()
        product[..., 1:] -= pole[..., None] * poly[..., :-1]
        poly = product
    return poly[..., 1:].contiguous()


def build_inputs(case: dict, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The case's inputs, the same in every process on the same device: x, A (or a),
    zi and grad_y. The random draws are made on the CPU in a fixed order, so a case
    has the same x, zi and grad_y on every device."""
    generator = torch.Generator().manual_seed(case["seed"])
    dtype = getattr(torch, case["dtype"])
    B, T, N = case["B"], case["T"], case["N"]
    x = torch.randn(B, T, generator=generator, dtype=dtype).to(device)
    grad_y = torch.randn(B, T, generator=generator, dtype=dtype).to(device)
    if case["op"] == "linear_recurrence":
        a = _smooth(generator, B, T, 0.5, 0.99, dtype, device)
        zi = torch.randn(B, generator=generator, dtype=dtype).to(device)
        return {"a": a, "x": x, "zi": zi, "grad_y": grad_y}
    A = _stable_coefficients(generator, B, 1 if case["time_invariant"] else T, N, dtype, device)
    zi = torch.randn(B, N, generator=generator, dtype=dtype).to(device)
    return {"x": x, "A": A, "zi": zi, "grad_y": grad_y}


def input_names(case: dict) -> tuple[str, ...]:
    """Differentiable inputs in call order."""
    return ("a", "x", "zi") if case["op"] == "linear_recurrence" else ("x", "A", "zi")


def check_slice(case: dict, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The first rows and samples: short enough for the Python reference loop."""
    rows, samples = slice(0, CHECK_BATCH), slice(0, CHECK_SAMPLES)
    part = {}
    for name, tensor in tensors.items():
        if name == "zi":
            part[name] = tensor[rows].clone()
        elif name == "A" and case["time_invariant"]:
            part[name] = tensor[rows].clone()
        else:
            part[name] = tensor[rows, samples].clone()
    return part


# ----------------------------------------------------------------------- implementations


class _BlockModule(importlib.abc.MetaPathFinder):
    """Makes one module unimportable, to send torchlpc 0.7.2 down its numba path."""

    def __init__(self, fullname: str):
        self.fullname = fullname

    def find_spec(self, fullname, path, target=None):
        if fullname == self.fullname:
            raise ImportError(f"{fullname} blocked by the benchmark to measure the numba path")
        return None


def _package_version(distribution: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


class Implementation:
    """Loads a library and hands out the function a case is timed with."""

    name = ""
    modes = ("forward", "backward")

    def load(self) -> dict:
        """Import the library; return facts for the report."""
        raise NotImplementedError

    def why_unsupported(self, case: dict, mode: str) -> str | None:
        return None

    def function(self, case: dict):
        """fn(*inputs) -> y, differentiable in every input for mode ``backward``."""
        raise NotImplementedError

    def release_caches(self) -> None:
        """Give back memory the library keeps between calls, so that a measured
        call's peak counts every output it makes."""


class Ours(Implementation):
    name = "torchlpc"

    def load(self):
        import torchlpc

        self.torchlpc = torchlpc
        facts = {"version": torchlpc.__version__, "file": torchlpc.__file__}
        facts["TORCHLPC_BACKEND"] = os.environ.get("TORCHLPC_BACKEND", "")
        try:
            from torchlpc import _dispatch

            if GPU_CASES:
                facts["backend"] = _dispatch.select_backend(torch.device(DEVICE), torch.float32)
            else:
                facts["backend"] = _dispatch.select_backend(torch.device("cpu"))
        except Exception as error:  # a private helper; its absence only loses a fact
            facts["backend"] = f"unknown ({type(error).__name__})"
        return facts

    def function(self, case):
        if case["op"] == "linear_recurrence":
            return self.torchlpc.linear_recurrence
        return self.torchlpc.sample_wise_lpc

    def release_caches(self):
        # The CPU kernels keep output memory between calls (revisions before it
        # have no such function).
        release = getattr(self.torchlpc, "empty_cpu_cache", None)
        if release is not None:
            release()


def _expanded(A: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The peers take only (B, T, N) coefficients: a time-invariant filter is given to
    them as an expanded view, inside the timed call, as a user would write it."""
    return A.expand(-1, x.shape[1], -1)


class TorchLPC072(Implementation):
    """torchlpc 0.7.2 from the side environment, its C++ extension or its numba path.

    ``torchlpc-0.7.2-cuda`` is the extension again, on CUDA tensors: it must have been
    built with its CUDA kernels (``benchmarks/gpu_peers.sh``), or 0.7.2 would quietly run
    its numba.cuda kernels instead, which is not what the comparison is about.
    """

    def __init__(self, extension: bool, cuda: bool = False):
        self.extension = extension
        self.cuda = cuda
        self.name = "torchlpc-0.7.2-" + ("cuda" if cuda else "cpp" if extension else "numba")

    def load(self):
        if not self.extension:
            sys.meta_path.insert(0, _BlockModule("torchlpc._C"))
        import torchlpc
        from torchlpc.recurrence import Recurrence

        if torchlpc.EXTENSION_LOADED != self.extension:
            raise RuntimeError(
                f"torchlpc 0.7.2 loaded with EXTENSION_LOADED={torchlpc.EXTENSION_LOADED}, "
                f"but {self.name} needs {self.extension}"
            )
        self.torchlpc, self.Recurrence = torchlpc, Recurrence
        facts = {
            "version": _package_version("torchlpc"),
            "file": torchlpc.__file__,
            "extension_loaded": torchlpc.EXTENSION_LOADED,
        }
        if self.cuda:
            if facts["version"] != "0.7.2":
                # The side environment sees its parent's packages: without 0.7.2 in
                # it, an installed torchlpc of ours could be found instead.
                raise RuntimeError(
                    f"torchlpc {facts['version']} from {torchlpc.__file__} is not 0.7.2"
                )
            kernels = {op: _has_cuda_kernel(f"torchlpc::{op}") for op in ("lpc", "scan")}
            facts["cuda_kernels"] = kernels
            if DEVICE == "cuda" and False in kernels.values():
                raise RuntimeError(
                    "torchlpc 0.7.2's extension has no CUDA kernel for "
                    + ", ".join(op for op, present in kernels.items() if present is False)
                    + ": it was built without CUDA (no nvcc or no GPU at build time?)"
                )
        return facts

    def function(self, case):
        if case["op"] == "linear_recurrence":
            # 0.7.2 has no public order-1 entry point; Recurrence takes (decay, impulse, init).
            return self.Recurrence.apply
        return lambda x, A, zi: self.torchlpc.sample_wise_lpc(x, _expanded(A, x), zi)


def _has_cuda_kernel(op: str) -> bool | None:
    """Whether the custom op ``op`` has a CUDA kernel registered; None if torch cannot say."""
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"))
    except Exception:  # a private torch function; its absence only loses a fact
        return None


class PhilTorch(Implementation):
    name = "philtorch-0.7.0"

    def load(self):
        import philtorch
        from philtorch import lpv

        self.lpv = lpv
        return {"version": philtorch.__version__, "file": philtorch.__file__}

    def function(self, case):
        if case["op"] == "linear_recurrence":
            # linear_recurrence(a, init, x): the state comes second.
            return lambda a, x, zi: self.lpv.linear_recurrence(a, zi, x)
        # allpole(a, x, zi) has our sign and state order; with zi it returns (y, zf).
        return lambda x, A, zi: self.lpv.allpole(_expanded(A, x), x, zi)[0]


class SciPy(Implementation):
    """scipy.signal.lfilter, one call per row (each row has its own filter), float64."""

    name = "scipy"
    modes = ("forward",)

    def load(self):
        import numpy
        import scipy
        from scipy import signal

        self.np, self.signal = numpy, signal
        return {"version": scipy.__version__, "numpy": numpy.__version__}

    def why_unsupported(self, case, mode):
        if case["op"] != "allpole" or not case["time_invariant"]:
            return "lfilter takes time-invariant filters only"
        if mode != "forward":
            return "lfilter has no gradients"
        return None

    def function(self, case):
        np, signal = self.np, self.signal
        state = {}

        def call(x, A, zi):
            # lfilter's arguments (float64 arrays, its own state form) are made on the
            # first call with new inputs, which is a warm-up call, never a timed one.
            key = (x.data_ptr(), x.shape, A.data_ptr(), zi.data_ptr())
            if state.get("key") != key:
                denominators = np.concatenate(
                    [np.ones((A.shape[0], 1)), A[:, 0].double().numpy()], axis=1
                )
                state.update(
                    key=key,
                    x=x.double().numpy(),
                    a=denominators,
                    zi=[
                        signal.lfiltic([1.0], d, z)
                        for d, z in zip(denominators, zi.double().numpy(), strict=True)
                    ],
                )
            out = np.empty_like(state["x"])
            for b in range(out.shape[0]):
                out[b] = signal.lfilter([1.0], state["a"][b], state["x"][b], zi=state["zi"][b])[0]
            return torch.from_numpy(out)

        return call


class TorchAudio(Implementation):
    """``torchaudio.functional.lfilter``, one filter per batch row (``batching=True``).

    lfilter takes time-invariant filters only, and no initial state: the state is
    folded into the first N input samples inside the timed call (a few small ops),
    ``x[t] - sum_{j < N - t} A[t + j] zi[j]`` for ``t < N``, which gives exactly the
    filter started from ``zi``, gradients included. ``clamp=False``: lfilter clamps
    its output to [-1, 1] by default.
    """

    name = "torchaudio"

    def load(self):
        import torchaudio
        from torchaudio.functional import lfilter

        self.lfilter = lfilter
        facts = {"version": torchaudio.__version__, "file": torchaudio.__file__}
        try:
            from torchaudio._extension import _IS_TORCHAUDIO_EXT_AVAILABLE

            facts["extension"] = bool(_IS_TORCHAUDIO_EXT_AVAILABLE)
        except ImportError:
            facts["extension"] = None
        return facts

    def why_unsupported(self, case, mode):
        if case["op"] != "allpole" or not case["time_invariant"]:
            return "lfilter takes time-invariant filters only"
        return None

    def function(self, case):
        lfilter = self.lfilter

        def call(x, A, zi):
            B, T = x.shape
            N = A.shape[-1]
            a = A[:, 0]
            # window[t, j] = A[t + j] (0 past the end): the state's share of y[t], t < N.
            window = torch.nn.functional.pad(a, (0, N)).unfold(-1, N, 1)[:, :N]
            head = (window * zi[:, None, :]).sum(-1)[:, :T]
            x0 = torch.cat([x[:, : head.shape[1]] - head, x[:, head.shape[1] :]], dim=1)
            one = torch.ones(B, 1, dtype=x.dtype, device=x.device)
            a_coeffs = torch.cat([one, a], dim=1)
            b_coeffs = torch.nn.functional.pad(one, (0, N))
            return lfilter(x0, a_coeffs, b_coeffs, clamp=False, batching=True)

        return call


IMPLEMENTATIONS = {
    "torchlpc": Ours,
    "scipy": SciPy,
    "torchaudio": TorchAudio,
    "torchlpc-0.7.2-cpp": lambda: TorchLPC072(extension=True),
    "torchlpc-0.7.2-numba": lambda: TorchLPC072(extension=False),
    "torchlpc-0.7.2-cuda": lambda: TorchLPC072(extension=True, cuda=True),
    "philtorch-0.7.0": PhilTorch,
}


# --------------------------------------------------------------------------------- runs


class Session:
    def __init__(self, implementation: Implementation):
        self.impl = implementation
        self.case = None
        self.tensors = {}

    @staticmethod
    def _call(case, tensors, fn, mode, grad_y=None):
        """One forward, or one forward and backward; returns y. Gradients accumulate
        into the inputs' ``.grad``: callers clear them outside the timed region."""
        args = [tensors[name] for name in input_names(case)]
        if mode == "forward":
            return fn(*args)
        y = fn(*args)
        y.backward(grad_y)
        return y

    @staticmethod
    def _clear_grads(case, tensors):
        for name in input_names(case):
            tensors[name].grad = None

    @staticmethod
    def _leaves(tensors, names, requires_grad):
        return {
            name: (t.detach().requires_grad_(requires_grad) if name in names else t)
            for name, t in tensors.items()
        }

    def hello(self, request):
        facts = self.impl.load()
        import numpy

        try:
            import numba

            numba_facts = {
                "numba": numba.__version__,
                "numba_threads": numba.config.NUMBA_NUM_THREADS,
            }
        except ImportError:
            numba_facts = {"numba": "not installed"}
        return {
            "implementation": facts,
            "python": sys.version.split()[0],
            "executable": sys.executable,
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            **numba_facts,
            **({"device": _device_facts()} if GPU_CASES else {}),
        }

    def prepare(self, request):
        case = request["case"]
        self.release({})
        names = input_names(case)
        modes = {mode: self.impl.why_unsupported(case, mode) for mode in ("forward", "backward")}
        modes = {
            m: (r or ("not offered" if m not in self.impl.modes else None))
            for m, r in modes.items()
        }
        if modes["forward"] is not None:
            return {"unsupported": modes}
        tensors = build_inputs(case, DEVICE) if GPU_CASES else build_inputs(case)

        part = check_slice(case, tensors)
        fn = self.impl.function(case)
        saved = {"inputs": part}
        if modes["backward"] is None:
            leaves = self._leaves(part, names, True)
            y = self._call(case, leaves, fn, "backward", leaves["grad_y"])
            saved["grads"] = {name: leaves[name].grad for name in names}
        else:
            y = self._call(case, part, fn, "forward")
        saved["y"] = y.detach()
        if GPU_CASES:
            # The runner checks on the CPU, against the reference loop.
            saved = _to_cpu(saved)
        torch.save(saved, request["check"])

        self.case, self.fn = case, fn
        self.tensors = {
            "forward": tensors,
            "backward": self._leaves(tensors, names, True),
        }
        reply = {"unsupported": modes}
        if GPU_CASES:
            # One full-size call, untimed: kernels are compiled (Triton, numba) for
            # this shape's variant and launch configuration before any timing.
            mode = "backward" if modes["backward"] is None else "forward"
            tensors = self.tensors[mode]
            _synchronize()
            start = time.perf_counter()
            y = self._call(case, tensors, fn, mode, tensors["grad_y"])
            _synchronize()
            reply["first_call_s"] = {mode: time.perf_counter() - start}
            del y
            self._clear_grads(case, tensors)
        return reply

    def time(self, request):
        mode, number = request["mode"], request["number"]
        tensors = self.tensors[mode]
        if GPU_CASES:
            return self._time_on_device(mode, number, tensors)
        times = []
        gc.collect()
        gc.disable()
        try:
            for _ in range(number):
                if mode == "backward":
                    self._clear_grads(self.case, tensors)
                start = time.perf_counter()
                y = self._call(self.case, tensors, self.fn, mode, tensors["grad_y"])
                times.append(time.perf_counter() - start)
                del y
        finally:
            gc.enable()
        return {"times": times}

    def _time_on_device(self, mode, number, tensors):
        """Each call on an idle device: on CUDA the time between two CUDA events
        recorded on the stream before and after it (launch overheads included, as the
        device waits for them), on CPU tensors the wall-clock time. On CUDA,
        forward+backward calls also give the peak device memory each one allocated
        beyond what was allocated before it (max over the calls)."""
        on_cuda = DEVICE == "cuda"
        track_memory = on_cuda and mode == "backward"
        if on_cuda:
            start_event = torch.cuda.Event(enable_timing=True)
            end_event = torch.cuda.Event(enable_timing=True)
        times, peak_extra = [], 0
        gc.collect()
        gc.disable()
        try:
            for _ in range(number):
                if mode == "backward":
                    self._clear_grads(self.case, tensors)
                _synchronize()
                if track_memory:
                    torch.cuda.reset_peak_memory_stats()
                    before = torch.cuda.memory_allocated()
                if on_cuda:
                    start_event.record()
                    y = self._call(self.case, tensors, self.fn, mode, tensors["grad_y"])
                    end_event.record()
                    end_event.synchronize()
                    times.append(start_event.elapsed_time(end_event) / 1e3)
                else:
                    start = time.perf_counter()
                    y = self._call(self.case, tensors, self.fn, mode, tensors["grad_y"])
                    _synchronize()
                    times.append(time.perf_counter() - start)
                if track_memory:
                    peak_extra = max(peak_extra, torch.cuda.max_memory_allocated() - before)
                del y
        finally:
            gc.enable()
        reply = {"times": times}
        if track_memory:
            reply["peak_extra_bytes"] = peak_extra
            reply["baseline_bytes"] = before
        return reply

    def memory(self, request):
        """Peak resident memory of one forward+backward above the resident memory
        after the inputs exist and the implementation is warm.

        Reliable only when freed memory really leaves the process, so the runner
        starts this worker with a fixed glibc mmap threshold (every large block is
        its own mapping, unmapped on free), and the peak is reset through
        /proc/self/clear_refs right before the measured call. This sees every
        allocation (torch, numpy, numba), which a profiler of torch's allocator
        does not.
        """
        case = request["case"]
        self.release({})
        names = input_names(case)
        tensors = self._leaves(build_inputs(case), names, True)
        fn = self.impl.function(case)
        for _ in range(2):
            self._clear_grads(case, tensors)
            self._call(case, tensors, fn, "backward", tensors["grad_y"])
        self._clear_grads(case, tensors)
        gc.collect()
        self.impl.release_caches()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        baseline = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        y = self._call(case, tensors, fn, "backward", tensors["grad_y"])
        peak = _status_kib("VmHWM")
        del y
        return {"peak_extra_bytes": (peak - baseline) * 1024, "baseline_rss_bytes": baseline * 1024}

    def bandwidth(self, request):
        device = DEVICE if GPU_CASES else "cpu"
        source = torch.ones(request["bytes"] // 4, dtype=torch.float32, device=device)
        target = torch.empty_like(source)
        times = []
        for _ in range(request["number"]):
            _synchronize()
            start = time.perf_counter()
            target.copy_(source)
            _synchronize()
            times.append(time.perf_counter() - start)
        del source, target
        if device == "cuda":
            torch.cuda.empty_cache()
        return {"times": times, "bytes_per_copy": 2 * (request["bytes"] // 4) * 4}

    def release(self, request):
        self.case, self.tensors = None, {}
        gc.collect()
        if GPU_CASES and DEVICE == "cuda":
            # Hand the cached blocks back, for the other workers on the same GPU.
            torch.cuda.empty_cache()
        return {}


def _synchronize() -> None:
    """Wait for the GPU's queued work (a no-op without CUDA tensors)."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    return value


def _device_facts() -> dict:
    """The device the GPU cases run on, for the report."""
    facts = {"type": DEVICE}
    try:
        import triton

        facts["triton"] = triton.__version__
    except ImportError:
        facts["triton"] = "not installed"
    if DEVICE != "cuda":
        facts["name"] = f"CPU tensors ({torch.backends.cpu.get_cpu_capability()})"
        return facts
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    facts.update(
        name=props.name,
        memory_bytes=props.total_memory,
        multiprocessors=props.multi_processor_count,
        capability=f"{props.major}.{props.minor}",
        l2_cache_bytes=getattr(props, "L2_cache_size", None),
        torch_cuda=torch.version.cuda,
    )
    return facts


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def main() -> None:
    name = sys.argv[1]
    # The protocol owns the real stdout; everything else printed goes to stderr.
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    warnings.simplefilter("ignore")
    torch.set_num_threads(int(os.environ.get("BENCHMARK_THREADS", "2")))
    session = Session(IMPLEMENTATIONS[name]())
    for line in sys.stdin:
        request = json.loads(line)
        command = request["cmd"]
        if command == "quit":
            break
        try:
            reply = {"ok": True, **getattr(session, command)(request)}
        except Exception as error:
            traceback.print_exc()
            reply = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        protocol.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
