"""Fit differentiable envelope followers to the output of a classic attack/release detector.

The target is what an analogue-style level detector makes of a string of notes:
it smooths the instantaneous power ``u = x**2`` with a fast *attack* pole while
the input is above its output and a slow *release* pole otherwise,

    y[t] = c[t] y[t-1] + (1 - c[t]) u[t],   c[t] = attack if u[t] > y[t-1] else release,

a branch inside the loop over time that gradients cannot pass. Two differentiable
followers are fitted to it by gradient descent, to recover its time constants
(5 ms and 200 ms) from its input and output alone:

* **one pole**: ``torchlpc.nn.OnePoleSmoother`` with a learnable pole and a
  learnable gain; one time constant has to serve rises and falls alike.
* **attack / release**: the branch becomes a soft gate, and the loop a few
  rounds of a fixed-point iteration: given the previous round's output ``y``, the
  gate ``sigmoid(sharpness * log(u[t] / y[t-1]))`` blends the two poles into a
  time-varying pole ``c[t]``, and ``torchlpc.linear_recurrence`` runs the whole
  signal with it at once. The first round starts from the release smoother
  alone, which is time-invariant (pole of shape ``(*, 1)``). The gradient reaches
  the time constants through every round's coefficients and inputs.

Writes ``envelope_follower.png`` (signal, target and both fits; the loss curves)
and ``envelope_follower.json`` to ``--out``.

    python examples/envelope_follower.py            # 3 s of signal, 200 steps
    python examples/envelope_follower.py --quick    # 0.5 s, 25 steps
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from torch import Tensor, nn

import torchlpc
from torchlpc.nn import OnePoleSmoother

SAMPLE_RATE = 16000
TRUE_ATTACK_MS, TRUE_RELEASE_MS = 5.0, 200.0
DEFAULT_OUT = Path(__file__).resolve().parent / "output"


def pole(time_constant_ms: Tensor | float) -> Tensor:
    """The one-pole coefficient ``exp(-1 / (tau * sample_rate))`` for a time constant in ms."""
    return torch.exp(-1000.0 / (torch.as_tensor(time_constant_ms) * SAMPLE_RATE))


def make_notes(seconds: float, seed: int) -> Tensor:
    """A signal ``(T,)``: notes with a 5 ms attack and a 250 ms decay, each a
    five-harmonic tone at a random pitch between 200 and 800 Hz."""
    generator = torch.Generator().manual_seed(seed)
    T = int(seconds * SAMPLE_RATE)
    t = torch.arange(T, dtype=torch.float64) / SAMPLE_RATE
    x = torch.zeros(T, dtype=torch.float64)
    onset = 0.02
    while onset < seconds:
        length = 0.25 + 0.35 * torch.rand((), generator=generator).item()
        level = 0.3 + 0.7 * torch.rand((), generator=generator).item()
        f0 = 200 * 2 ** (2 * torch.rand((), generator=generator).item())
        inside = (t >= onset) & (t < onset + length)
        local = t[inside] - onset
        envelope = level * (1 - torch.exp(-local / 0.005)) * torch.exp(-local / 0.250)
        tone = sum(torch.sin(2 * math.pi * h * f0 * local) / h for h in range(1, 6))
        x[inside] = envelope * tone
        onset += length
    return x.float()


def branching_detector(u: Tensor, attack_ms: float, release_ms: float) -> Tensor:
    """The target: the attack/release detector as a plain loop, with its branch."""
    attack, release = pole(attack_ms).item(), pole(release_ms).item()
    y, out = 0.0, []
    for value in u.tolist():
        c = attack if value > y else release
        y = c * y + (1 - c) * value
        out.append(y)
    return torch.tensor(out, dtype=u.dtype)


class OnePoleFollower(nn.Module):
    def __init__(self, time_constant_ms: float = 20.0) -> None:
        super().__init__()
        self.smoother = OnePoleSmoother(pole=pole(time_constant_ms).item())
        self.log_gain = nn.Parameter(torch.zeros(()))

    def forward(self, u: Tensor) -> Tensor:
        return self.log_gain.exp() * self.smoother(u)

    def describe(self) -> str:
        tau = -1000.0 / (SAMPLE_RATE * torch.log(self.smoother.pole).item())
        return f"time constant {tau:.1f} ms, gain {self.log_gain.exp().item():.2f}"


class AttackReleaseFollower(nn.Module):
    def __init__(
        self,
        attack_ms: float = 20.0,
        release_ms: float = 50.0,
        rounds: int = 5,
        sharpness: float = 20.0,
    ) -> None:
        super().__init__()
        self.log_attack_ms = nn.Parameter(torch.tensor(math.log(attack_ms)))
        self.log_release_ms = nn.Parameter(torch.tensor(math.log(release_ms)))
        self.rounds, self.sharpness = rounds, sharpness

    def forward(self, u: Tensor) -> Tensor:
        attack, release = pole(self.log_attack_ms.exp()), pole(self.log_release_ms.exp())
        release_row = release.expand(*u.shape[:-1], 1)
        y = torchlpc.linear_recurrence(release_row, (1 - release) * u)
        for _ in range(self.rounds):
            previous = torch.nn.functional.pad(y[..., :-1], (1, 0))
            rising = torch.sigmoid(self.sharpness * torch.log((u + 1e-6) / (previous + 1e-6)))
            c = rising * attack + (1 - rising) * release  # (*, T): time-varying
            y = torchlpc.linear_recurrence(c, (1 - c) * u)
        return y

    def describe(self) -> str:
        return (
            f"attack {self.log_attack_ms.exp().item():.1f} ms, "
            f"release {self.log_release_ms.exp().item():.1f} ms"
        )


def loss_fn(power: Tensor, target_power: Tensor) -> Tensor:
    """Squared error of the amplitude envelopes, relative to the target's mean power."""
    return ((power + 1e-8).sqrt() - target_power.sqrt()).square().mean() / target_power.mean()


def fit(model: nn.Module, u: Tensor, target: Tensor, steps: int, lr: float) -> list[float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(u), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def plot(
    path: Path, x: Tensor, target: Tensor, fits: dict[str, Tensor], losses: dict[str, list[float]]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_env, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.6), width_ratios=(2, 1))
    shown = slice(0, min(len(x), SAMPLE_RATE))
    t = torch.arange(len(x))[shown] / SAMPLE_RATE
    colors = ("tab:orange", "tab:blue")
    ax_env.plot(t, x[shown].abs(), color="0.85", lw=0.5, label="|signal|")
    ax_env.plot(t, target[shown].sqrt(), color="k", lw=3, label="target detector")
    for (name, estimate), color in zip(fits.items(), colors):
        ax_env.plot(t, estimate[shown].sqrt(), color=color, lw=1, label=name)
    ax_env.set(
        xlabel="time (s)",
        ylabel="amplitude (sqrt of smoothed power)",
        title="envelope followers after fitting",
    )
    ax_env.legend(fontsize="small", loc="upper right")
    for (name, curve), color in zip(losses.items(), colors):
        ax_loss.semilogy(curve, color=color, label=name)
    ax_loss.set(xlabel="step", ylabel="relative squared error", title="training loss")
    ax_loss.grid(True, which="both", alpha=0.3)
    ax_loss.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short signal and few steps (for CI)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps (default: by --quick)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    seconds, steps = (0.5, 25) if args.quick else (3.0, 200)
    if args.steps is not None:
        steps = args.steps
    args.out.mkdir(parents=True, exist_ok=True)

    x = make_notes(seconds, args.seed)
    u = x.square()
    target = branching_detector(u, TRUE_ATTACK_MS, TRUE_RELEASE_MS)
    print(
        f"signal: {seconds} s at {SAMPLE_RATE} Hz; target detector: attack {TRUE_ATTACK_MS:g} ms, "
        f"release {TRUE_RELEASE_MS:g} ms"
    )
    models = {"one pole": OnePoleFollower(), "attack / release": AttackReleaseFollower()}
    losses, fits = {}, {}
    for name, model in models.items():
        losses[name] = fit(model, u, target, steps, lr=0.05)
        with torch.no_grad():
            fits[name] = model(u)
        print(
            f"{name:>16}: loss {losses[name][0]:.2e} -> {losses[name][-1]:.2e} after {steps} steps; "
            f"{model.describe()}"
        )

    picture = args.out / "envelope_follower.png"
    plot(picture, x, target, fits, losses)
    summary = args.out / "envelope_follower.json"
    summary.write_text(
        json.dumps(
            {
                "steps": steps,
                "seconds_of_signal": seconds,
                "true": {"attack_ms": TRUE_ATTACK_MS, "release_ms": TRUE_RELEASE_MS},
                "models": {
                    name: {"losses": losses[name], "fitted": models[name].describe()}
                    for name in models
                },
            },
            indent=1,
        )
    )
    print(f"wrote {picture} and {summary}")


if __name__ == "__main__":
    main()
