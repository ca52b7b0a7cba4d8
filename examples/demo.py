"""Filter a batch of noise through time-varying resonators, backpropagate, report.

The main job of the README: it builds stable time-varying all-pole filters (a pair of
complex-conjugate poles per resonance, whose radius and angle sweep over time), filters
white noise with ``torchlpc.sample_wise_lpc``, backpropagates a loss to the signal, the
coefficients and the initial state, checks a slice against a plain loop, and smooths
the output's magnitude with ``torchlpc.linear_recurrence``.

    python examples/demo.py [--batch 8] [--length 16384] [--order 16] [--seed 0] [--quick]
"""

from __future__ import annotations

import argparse
import os
import time

# The timings below are of the numba kernels: the warm-up call waits for them
# rather than running on the chunked path while they compile in the background.
os.environ.setdefault("TORCHLPC_CPU_COMPILE", "wait")

import torch  # noqa: E402

import torchlpc  # noqa: E402
from torchlpc.reference import allpole_reference  # noqa: E402


def resonator_coefficients(batch: int, length: int, order: int, generator) -> torch.Tensor:
    """Coefficients of order/2 cascaded two-pole resonators sweeping over time."""
    if order % 2:
        raise SystemExit("--order must be even: the poles come in conjugate pairs")
    pairs = order // 2
    t = torch.linspace(0, 1, length)
    start = torch.rand(batch, pairs, 1, generator=generator)
    end = torch.rand(batch, pairs, 1, generator=generator)
    angle = torch.pi * (0.05 + 0.9 * (start + (end - start) * t))  # (batch, pairs, T)
    radius = 0.75 + 0.15 * torch.rand(batch, pairs, 1, generator=generator)
    # The denominator is the product of (1 - 2 r cos(w) z^-1 + r^2 z^-2) over the pairs.
    polynomial = torch.ones(batch, length, 1)
    for p in range(pairs):
        section = torch.stack(
            [torch.ones(batch, length), -2 * radius[:, p] * torch.cos(angle[:, p]),
             radius[:, p].expand(batch, length) ** 2], dim=-1)
        polynomial = torch.stack(
            [sum(polynomial[..., k - j] * section[..., j]
                 for j in range(3) if 0 <= k - j < polynomial.shape[-1])
             for k in range(polynomial.shape[-1] + 2)], dim=-1)
    return polynomial[..., 1:]


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--order", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a small problem, for CI")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.length, args.order = 2, 512, 4
    generator = torch.Generator().manual_seed(args.seed)

    B, T, N = args.batch, args.length, args.order
    x = torch.randn(B, T, generator=generator).requires_grad_()
    A = resonator_coefficients(B, T, N, generator).requires_grad_()
    zi = torch.randn(B, N, generator=generator).mul(0.1).requires_grad_()
    print(f"torchlpc {torchlpc.__version__}, torch {torch.__version__}, "
          f"backend {os.environ.get('TORCHLPC_BACKEND', 'auto')}")
    print(f"input x {tuple(x.shape)}, coefficients A {tuple(A.shape)}, state zi {tuple(zi.shape)}")

    # Load (or, the first time ever, compile) the kernels outside the timings. The
    # warm-up runs at full size: small inputs take a serial kernel, large ones a
    # parallel one, and the timed call must not be the first to use its kernel.
    torchlpc.sample_wise_lpc(x, A, zi).sum().backward()
    for tensor in (x, A, zi):
        tensor.grad = None
    (y, zf), forward_time = timed(lambda: torchlpc.sample_wise_lpc(x, A, zi, return_zf=True))
    loss = y.square().mean() + zf.square().mean()
    _, backward_time = timed(loss.backward)
    print(f"forward  {forward_time * 1e3:8.2f} ms  ({B * T / forward_time / 1e6:.1f} Msamples/s)")
    print(f"backward {backward_time * 1e3:8.2f} ms  (gradients of x, A and zi in one pass)")
    print(f"output rms {y.detach().square().mean().sqrt():.3f}, input rms "
          f"{x.detach().square().mean().sqrt():.3f}, loss {loss.item():.4f}")
    for name, tensor in (("x", x), ("A", A), ("zi", zi)):
        print(f"  |dL/d{name}| = {tensor.grad.norm():.4e}  shape {tuple(tensor.grad.shape)}")

    with torch.no_grad():
        check = min(256, T)
        expected = allpole_reference(x[:2, :check].double(), A[:2, :check].double(), zi[:2].double())
        error = (y[:2, :check].double() - expected).abs().max() / expected.abs().max()
    print(f"max |y - plain float64 loop| / max |y| on a {check}-sample slice: {error:.2e}")

    # A one-pole smoother of the output's magnitude: envelope[t] = 0.99 envelope[t-1] + 0.01 |y[t]|.
    with torch.no_grad():
        decay = torch.full((B, 1), 0.99)
        envelope, smoothing_time = timed(
            lambda: torchlpc.linear_recurrence(decay, 0.01 * y.abs()))
    print(f"linear_recurrence envelope {tuple(envelope.shape)} in {smoothing_time * 1e3:.2f} ms, "
          f"final mean {envelope[:, -1].mean():.3f}")


if __name__ == "__main__":
    main()
