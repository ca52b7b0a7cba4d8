"""Recover a time-varying all-pole filter from its input and output by gradient descent.

A known filter whose two resonances sweep in frequency filters white noise. A model
with one set of reflection coefficients per frame starts from the identity filter
and is fitted to the output by backpropagating through ``torchlpc.sample_wise_lpc``.
The model is stable at every step of training and at every sample: ``tanh`` keeps
each reflection coefficient inside (-1, 1), linear interpolation between frames keeps
it there, and ``torchlpc.reflection_to_lpc`` turns the coefficients into the LPC
coefficients the filter runs on.

Writes ``learn_time_varying_filter.png`` (the loss curve and the true and learned
coefficient trajectories) and ``learn_time_varying_filter.json`` to ``--out``.

    python examples/learn_time_varying_filter.py            # 300 steps on 4 x 16000 samples
    python examples/learn_time_varying_filter.py --quick    # a few seconds

``compile_training.py`` and ``ddp_training.py`` import the problem, the model and
the training step from here, so all three train the same thing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

import torchlpc

DEFAULT_OUT = Path(__file__).resolve().parent / "output"


@dataclass
class Problem:
    """Sizes of one fitting problem."""

    batch: int = 4
    length: int = 16000
    hop_length: int = 200
    order: int = 4
    steps: int = 300
    lr: float = 0.05

    @property
    def frames(self) -> int:
        return math.ceil(self.length / self.hop_length)


FULL = Problem()
# Enough steps that even the quick run recovers the filter (about two seconds).
QUICK = Problem(batch=2, length=2000, hop_length=200, steps=150)


def true_frame_reflections(problem: Problem) -> Tensor:
    """Reflection coefficients ``(F, N)`` of two resonances that move over the signal.

    One pole pair wanders around 0.1 of the sample rate while its radius shrinks
    from 0.92 to 0.8; the other wanders around 0.3 with radius 0.85, so every frame
    has a different, stable fourth-order filter.
    """
    if problem.order != 4:
        raise ValueError("the example's true filter has order 4.")
    position = torch.linspace(0, 1, problem.frames, dtype=torch.float64)
    low = 2 * math.pi * (0.1 + 0.04 * torch.sin(2 * math.pi * position))
    high = 2 * math.pi * (0.3 - 0.04 * torch.sin(3 * math.pi * position))
    r_low = 0.92 - 0.12 * position
    r_high = 0.85
    poles = torch.stack(
        [
            r_low * torch.exp(1j * low),
            r_low * torch.exp(-1j * low),
            r_high * torch.exp(1j * high),
            r_high * torch.exp(-1j * high),
        ],
        dim=-1,
    )
    A = torchlpc.roots_to_lpc(poles).real
    return torchlpc.lpc_to_reflection(A).float()


class FrameWiseAllPole(nn.Module):
    """An all-pole filter with one set of unconstrained parameters per frame.

    ``k = tanh(raw)`` per frame, interpolated linearly to every sample (a convex
    combination of values in (-1, 1) stays in (-1, 1)), converted to LPC
    coefficients, and run by ``sample_wise_lpc``. ``raw = 0`` is the identity filter.
    """

    def __init__(self, frames: int, order: int, hop_length: int) -> None:
        super().__init__()
        self.hop_length = hop_length
        self.raw = nn.Parameter(torch.zeros(frames, order))

    def coefficients(self, length: int) -> Tensor:
        """The sample-wise LPC coefficients ``(T, N)``."""
        k = torchlpc.upsample_coefficients(torch.tanh(self.raw), self.hop_length, length=length)
        return torchlpc.reflection_to_lpc(k)

    def forward(self, x: Tensor) -> Tensor:
        A = self.coefficients(x.shape[-1])
        # One filter for the whole batch: an expanded view, no copy per row.
        return torchlpc.sample_wise_lpc(x, A.expand(*x.shape[:-1], *A.shape))


def make_data(problem: Problem, seed: int = 0, rank: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """White noise ``x``, the true filter's output ``y``, and the true frame reflections.

    ``rank`` picks a different noise draw through the same filter (a data shard).
    """
    k_true = true_frame_reflections(problem)
    generator = torch.Generator().manual_seed(seed + 1000 * rank)
    x = torch.randn(problem.batch, problem.length, generator=generator)
    truth = FrameWiseAllPole(problem.frames, problem.order, problem.hop_length)
    with torch.no_grad():
        truth.raw.copy_(torch.atanh(k_true))
        y = truth(x)
    return x, y, k_true


def loss_fn(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Output error relative to the target's power (1.0 for the identity filter on noise)."""
    return (model(x) - y).square().mean() / y.square().mean()


def training_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor
) -> Tensor:
    """One step of gradient descent; returns the loss before the step."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model, x, y)
    loss.backward()
    optimizer.step()
    return loss.detach()


class _TextBar:
    """A minimal stand-in for tqdm: a bar on one line of stderr, redrawn in place."""

    def __init__(self, total: int, desc: str, width: int = 30) -> None:
        self.total, self.desc, self.width, self.n, self.postfix = total, desc, width, 0, ""

    def update(self, n: int = 1) -> None:
        self.n += n
        filled = self.width * self.n // max(self.total, 1)
        bar = "#" * filled + "-" * (self.width - filled)
        end = "\n" if self.n >= self.total else ""
        print(
            f"\r{self.desc} [{bar}] {self.n}/{self.total} {self.postfix}",
            end=end,
            file=sys.stderr,
            flush=True,
        )

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def close(self) -> None:
        if self.n < self.total:
            print(file=sys.stderr)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, disable: bool = False):
    """tqdm when it is installed (the ``examples`` extra has it), else a plain text bar."""
    if disable:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _TextBar(total, desc)
    return tqdm(total=total, desc=desc, file=sys.stderr)


def fit(
    problem: Problem, x: Tensor, y: Tensor, seed: int = 0
) -> tuple[FrameWiseAllPole, list[float]]:
    torch.manual_seed(seed)
    model = FrameWiseAllPole(problem.frames, problem.order, problem.hop_length)
    optimizer = torch.optim.Adam(model.parameters(), lr=problem.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, problem.steps)
    losses = []
    bar = progress_bar(problem.steps, "fitting")
    for _ in range(problem.steps):
        loss = training_step(model, optimizer, x, y)
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix_str(f"loss {losses[-1]:.2e}", refresh=False)
        bar.update()
    bar.close()
    return model, losses


def plot(
    path: Path, losses: list[float], A_true: Tensor, A_learned: Tensor, sample_rate_note: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_coef) = plt.subplots(1, 2, figsize=(10, 3.6), width_ratios=(1, 1.6))
    ax_loss.semilogy(losses)
    ax_loss.set(xlabel="step", ylabel="relative output error", title="training loss")
    ax_loss.grid(True, which="both", alpha=0.3)
    t = torch.arange(A_true.shape[0])
    for i in range(A_true.shape[1]):
        (line,) = ax_coef.plot(t, A_true[:, i], lw=2.5, alpha=0.35)
        ax_coef.plot(t, A_learned[:, i], lw=1, ls="--", color=line.get_color(), label=f"A[t, {i}]")
    ax_coef.set(
        xlabel=f"sample t {sample_rate_note}",
        ylabel="LPC coefficient",
        title="true (thick, faint) vs learned (dashed)",
    )
    ax_coef.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax_coef.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def parse_args(description: str, argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few steps (for CI)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps (default: by --quick)"
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    problem = QUICK if args.quick else FULL
    if args.steps is not None:
        problem = Problem(**{**problem.__dict__, "steps": args.steps})
    args.out.mkdir(parents=True, exist_ok=True)

    x, y, k_true = make_data(problem, args.seed)
    print(
        f"true filter: order {problem.order}, {problem.frames} frames of {problem.hop_length} samples; "
        f"data: {problem.batch} x {problem.length} samples of white noise"
    )
    start = time.perf_counter()
    model, losses = fit(problem, x, y, args.seed)
    seconds = time.perf_counter() - start

    with torch.no_grad():
        k_learned = torch.tanh(model.raw)
        A_learned = model.coefficients(problem.length)
        truth = FrameWiseAllPole(problem.frames, problem.order, problem.hop_length)
        truth.raw.copy_(torch.atanh(k_true))
        A_true = truth.coefficients(problem.length)
    coefficient_error = (A_learned - A_true).abs().max().item()
    print(f"{problem.steps} steps in {seconds:.1f} s; loss {losses[0]:.3e} -> {losses[-1]:.3e}")
    print(f"largest |learned - true| LPC coefficient over all samples: {coefficient_error:.3e}")
    print(f"all learned filters stable: {bool(torchlpc.is_stable(A_learned).all())}")

    picture = args.out / "learn_time_varying_filter.png"
    plot(picture, losses, A_true, A_learned, "")
    summary = args.out / "learn_time_varying_filter.json"
    summary.write_text(
        json.dumps(
            {
                "steps": problem.steps,
                "seconds": seconds,
                "losses": losses,
                "max_coefficient_error": coefficient_error,
                "true_reflection_coefficients": k_true.tolist(),
                "learned_reflection_coefficients": k_learned.tolist(),
            },
            indent=1,
        )
    )
    print(f"wrote {picture} and {summary}")


if __name__ == "__main__":
    main()
