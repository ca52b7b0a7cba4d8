"""LPC analysis and resynthesis of a synthetic voiced, speech-like signal.

1. **Synthesis of the test signal**: a glottal pulse train with a gliding pitch
   (pulses smoothed by a time-invariant two-pole lowpass) excites a cascade of
   three formant resonators whose frequencies glide through the vowels
   /a/ -> /i/ -> /u/; the six poles of each sample become one row of LPC
   coefficients through ``torchlpc.roots_to_lpc``, and ``sample_wise_lpc`` runs the
   time-varying filter. A first difference (``torchlpc.lfilter``) models the
   radiation at the lips.
2. **Analysis**: ``torchlpc.lpc_analysis`` estimates one order-16 filter and gain
   per frame; ``torchlpc.upsample_coefficients`` interpolates them to one filter
   per sample (between reflection coefficients, so every filter stays stable).
3. **Inverse filtering**: the FIR filter ``A(z)`` with those time-varying
   coefficients (``torchlpc.lfilter`` with a time-varying numerator) whitens the
   signal into the prediction residual.
4. **Resynthesis** with ``torchlpc.sample_wise_lpc``: driven by the residual,
   the all-pole filter gives back the input up to rounding (the reconstruction
   error is printed); driven by white noise scaled by the frame gains, it gives
   a whispered version with the same spectral envelope.

Writes ``input.wav``, ``resynthesis.wav`` and ``whisper.wav`` (16-bit mono, stdlib
``wave``) and ``analysis_resynthesis.png`` (spectrograms of all three) to ``--out``.

    python examples/analysis_resynthesis.py            # 2 s of signal
    python examples/analysis_resynthesis.py --quick    # 0.3 s
"""

from __future__ import annotations

import argparse
import math
import wave
from pathlib import Path

import torch
from torch import Tensor

import torchlpc

SAMPLE_RATE = 16000
DEFAULT_OUT = Path(__file__).resolve().parent / "output"

# Formant frequencies and bandwidths (Hz) of three vowels, for a cascade synthesiser.
VOWELS = {
    "a": ((730, 1090, 2440), (90, 110, 160)),
    "i": ((270, 2290, 3010), (60, 100, 170)),
    "u": ((300, 870, 2240), (60, 90, 150)),
}


def glide(points: list[tuple[float, ...]], length: int) -> Tensor:
    """Piecewise-linear trajectories through ``points`` spread evenly over ``length`` samples.

    Returns ``(length, K)`` for points of K values each.
    """
    knots = torch.tensor(points, dtype=torch.float64)  # (P, K)
    position = torch.linspace(0, len(points) - 1, length, dtype=torch.float64)
    left = position.floor().long().clamp(max=len(points) - 2)
    alpha = (position - left)[:, None]
    return (1 - alpha) * knots[left] + alpha * knots[left + 1]


def glottal_excitation(length: int, generator: torch.Generator) -> Tensor:
    """Pulses at a pitch gliding 110 -> 140 -> 100 Hz, smoothed into glottal flow derivative-like pulses."""
    f0 = glide([(110.0,), (140.0,), (100.0,)], length)[:, 0]
    phase = torch.cumsum(f0 / SAMPLE_RATE, dim=0)
    pulses = (phase.floor().diff(prepend=phase.new_zeros(1)) > 0).double()
    # A time-invariant filter: A has a time dimension of size 1. Two real poles at 0.9.
    A = torch.tensor([[-1.8, 0.81]], dtype=torch.float64)
    flow = torchlpc.sample_wise_lpc(pulses, A)
    aspiration = 0.02 * torch.randn(length, generator=generator, dtype=torch.float64)
    return flow.diff(prepend=flow.new_zeros(1)) + aspiration


def formant_coefficients(length: int) -> Tensor:
    """Sample-wise LPC coefficients ``(T, 6)`` of three resonators gliding /a/ -> /i/ -> /u/."""
    points = [VOWELS[v][0] + VOWELS[v][1] for v in ("a", "a", "i", "i", "u", "u")]
    track = glide(points, length)  # (T, 6): 3 frequencies, 3 bandwidths
    frequency, bandwidth = track[:, :3], track[:, 3:]
    radius = torch.exp(-math.pi * bandwidth / SAMPLE_RATE)
    angle = 2 * math.pi * frequency / SAMPLE_RATE
    poles = torch.polar(radius, angle)
    return torchlpc.roots_to_lpc(torch.cat([poles, poles.conj()], dim=-1)).real


def speech_like(seconds: float, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    length = int(seconds * SAMPLE_RATE)
    voiced = torchlpc.sample_wise_lpc(
        glottal_excitation(length, generator), formant_coefficients(length)
    )
    # Radiation at the lips: a first difference, as a 1-D (time-invariant) lfilter numerator.
    radiated = torchlpc.lfilter(
        torch.tensor([1.0, -0.97], dtype=torch.float64),
        torch.tensor([1.0], dtype=torch.float64),
        voiced,
    )
    fade = torch.ones(length, dtype=torch.float64)
    ramp = torch.linspace(0, 1, min(length // 4, 800), dtype=torch.float64)
    fade[: len(ramp)], fade[-len(ramp) :] = ramp, ramp.flip(0)
    signal = radiated * fade
    return (0.8 * signal / signal.abs().max()).float()


def write_wav(path: Path, signal: Tensor) -> None:
    """16-bit PCM mono; the signal is scaled down if it would clip."""
    peak = signal.abs().max().item()
    scaled = signal / max(1.0, peak / 0.99)
    pcm = (scaled * 32767).round().clamp(-32768, 32767).to(torch.int16)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes(pcm.numpy().tobytes())


def spectrogram_db(signal: Tensor, n_fft: int = 512, hop: int = 128) -> Tensor:
    window = torch.hann_window(n_fft)
    spectrum = torch.stft(signal, n_fft, hop, window=window, return_complex=True)
    return 20 * torch.log10(spectrum.abs() + 1e-6)


def plot(path: Path, signals: dict[str, Tensor]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(signals), figsize=(11, 3.4), sharey=True)
    seconds = len(next(iter(signals.values()))) / SAMPLE_RATE
    shown_khz = 5.0
    images = {title: spectrogram_db(signal) for title, signal in signals.items()}
    bins = int(next(iter(images.values())).shape[0] * shown_khz / (SAMPLE_RATE / 2000))
    top = max(image.max().item() for image in images.values())
    for ax, (title, image) in zip(axes, images.items()):
        shown = ax.imshow(
            image[:bins],
            origin="lower",
            aspect="auto",
            cmap="magma",
            interpolation="bilinear",
            extent=(0, seconds, 0, shown_khz),
            vmin=top - 80,
            vmax=top,
        )
        ax.set(title=title, xlabel="time (s)")
    axes[0].set_ylabel("frequency (kHz)")
    fig.colorbar(shown, ax=axes, label="dB", fraction=0.03, pad=0.01)
    fig.savefig(path, dpi=72, bbox_inches="tight")
    plt.close(fig)
    # Spectrograms of noise compress badly; a 256-colour palette keeps the file small.
    from PIL import Image

    with Image.open(path) as picture:
        paletted = picture.convert("RGB").quantize(colors=256)
    paletted.save(path, optimize=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short signal (for CI)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--order", type=int, default=16, help="LPC order of the analysis (default: 16)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    seconds = 0.3 if args.quick else 2.0
    frame_length, hop_length = 512, 128
    args.out.mkdir(parents=True, exist_ok=True)

    x = speech_like(seconds, args.seed)
    T = x.shape[-1]
    print(
        f"input: {seconds} s of a synthetic voiced signal at {SAMPLE_RATE} Hz (/a/ -> /i/ -> /u/)"
    )

    # White-noise correction 40 dB under the signal's mean power: this synthetic signal is
    # so clean and its resonances so sharp that, in float32, the default eps (1e-9) leaves
    # some frames' normal equations too ill-conditioned (unstable or NaN coefficients).
    eps = 1e-4 * x.square().mean().item()
    A_frames, gain = torchlpc.lpc_analysis(x, args.order, frame_length, hop_length, eps=eps)
    A = torchlpc.upsample_coefficients(A_frames, hop_length, mode="reflection", length=T)
    sample_gain = torchlpc.upsample_coefficients(gain[:, None], hop_length, length=T)[:, 0]
    print(
        f"analysis: order {args.order}, {A_frames.shape[0]} frames of {frame_length} samples every "
        f"{hop_length}; upsampled to A {tuple(A.shape)}; "
        f"all stable: {bool(torchlpc.is_stable(A).all())}"
    )

    # The inverse filter A(z) = 1 + sum_i A[t, i-1] z^-i is FIR: lfilter with numerator [1, A[t]].
    numerator = torch.cat([torch.ones(T, 1), A], dim=-1)
    residual = torchlpc.lfilter(numerator, torch.ones(1), x)
    resynthesis = torchlpc.sample_wise_lpc(residual, A)
    error = (resynthesis - x).abs().max().item()
    snr = 10 * math.log10(
        x.square().sum().item() / max((resynthesis - x).square().sum().item(), 1e-30)
    )
    print(
        f"prediction gain (input power / residual power): "
        f"{10 * math.log10(x.square().sum().item() / residual.square().sum().item()):.1f} dB"
    )
    print(f"reconstruction from the residual: max |error| {error:.2e}, SNR {snr:.1f} dB")

    noise = torch.randn(T, generator=torch.Generator().manual_seed(args.seed + 1))
    whisper = torchlpc.sample_wise_lpc(noise * sample_gain, A)
    print("whisper: white noise scaled by the frame gains through the same filters")

    for name, signal in (("input", x), ("resynthesis", resynthesis), ("whisper", whisper)):
        write_wav(args.out / f"{name}.wav", signal)
    picture = args.out / "analysis_resynthesis.png"
    plot(
        picture,
        {
            "input": x,
            "resynthesis from the residual": resynthesis,
            "noise-excited resynthesis (whisper)": whisper,
        },
    )
    print(
        f"wrote {', '.join(f'{n}.wav' for n in ('input', 'resynthesis', 'whisper'))} and {picture.name} "
        f"to {args.out}"
    )


if __name__ == "__main__":
    main()
