"""Per-frame appearance compensation (issue 9, "robust to generated video"): does it help when the
exposure and white balance drift from frame to frame, and does it cost anything when they do not?

The checker-textured tall figure on an orbit (elevation 20, fov 40, 42 frames at 256 px, the true
cameras given, so only appearance differs) is ray-cast, then every frame gets its own exposure: a
per-channel gain of 1 + `--drift` x (a slow wave over the orbit, out of phase per channel, i.e. exposure
and white balance wandering as a generator's do, plus a per-frame jitter of a third of it) applied to the
whole frame, background included, and clipped as a camera would. Four fits: clean or drifted frames, with
and without `FitConfig.appearance`. Judged by the ray caster at held-out views halfway between the
training azimuths, against the *clean* truth (the asset should have the frames' average exposure).

    python benchmarks/bench_appearance.py [--drift 0.15] [--iterations 600] [--resolution 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from bench_orbit import held_out_psnr, render

from recon.fit import FitConfig, fit
from recon.poses import OrbitConfig, orbit_cameras

ELEVATION, FOV, RADIUS = 20.0, 40.0, 2.0
JITTER_SHARE = 1.0 / 3.0  # the per-frame jitter, as a share of the slow wave's amplitude
CHANNEL_PHASES = np.array([0.0, 0.6, 1.2])  # radians: the channels drift apart (white balance)


def drift_gains(n: int, amplitude: float, seed: int) -> np.ndarray:
    """Per-frame, per-channel gains [n, 3] around 1: a slow wave plus per-frame jitter."""
    rng = np.random.default_rng(seed)
    t = 2.0 * np.pi * np.arange(n)[:, None] / n
    wave = np.sin(t + CHANNEL_PHASES[None, :])
    jitter = rng.uniform(-1.0, 1.0, (n, 3)) * JITTER_SHARE
    return 1.0 + amplitude * (wave + jitter)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=42)
    ap.add_argument("--size", type=int, default=256, help="Frames ray-cast at this size (px).")
    ap.add_argument("--resolution", type=int, default=64, help="The fit's training size (px).")
    ap.add_argument("--iterations", type=int, default=600)
    ap.add_argument("--drift", type=float, default=0.15, help="Amplitude of the gain's slow wave.")
    ap.add_argument("--seed", type=int, default=0, help="Seed of the per-frame jitter and of the fits.")
    ap.add_argument("--lr-appearance", type=float, default=FitConfig.lr_appearance)
    ap.add_argument("--cases", default="clean:off,clean:on,drifted:off,drifted:on",
                    help="Which fits, as frames:appearance pairs.")  # fmt: skip
    args = ap.parse_args()

    n = args.frames
    azimuths = np.arange(n) * 360.0 / n
    clean = render(azimuths, np.full(n, ELEVATION), FOV, args.size, RADIUS)
    gains = drift_gains(n, args.drift, args.seed)
    drifted = np.clip(np.round(clean * gains[:, None, None, :]), 0, 255).astype(np.uint8)
    cameras = orbit_cameras(n, OrbitConfig(elevation=ELEVATION, fov=FOV, radius=RADIUS), args.size, args.size)
    print(f"{n} frames at {args.size} px, gains {gains.min():.3f}..{gains.max():.3f}; fit {args.iterations} "
          f"iterations at {args.resolution} px; held-out PSNR against the clean truth")  # fmt: skip
    print(" frames    appearance  held-out dB  train dB  fit s  gain error (mean abs, after the gauge)")
    for case in args.cases.split(","):
        name, switch = case.split(":")
        frames, on = {"clean": clean, "drifted": drifted}[name], switch == "on"
        cfg = FitConfig(iterations=args.iterations, resolution=args.resolution, device="cpu",
                        seed=args.seed, appearance=on, lr_appearance=args.lr_appearance)  # fmt: skip
        t = time.perf_counter()
        result = fit(frames, cameras, cfg, progress=False)
        seconds = time.perf_counter() - t
        held = held_out_psnr(result.splats, ELEVATION, FOV, 1.0, n, args.resolution, RADIUS, RADIUS)
        error = "-"
        if result.appearance is not None:
            learnt = np.array(result.appearance["gain"])
            truth = gains if name == "drifted" else np.ones_like(gains)
            truth = truth / np.exp(np.log(truth).mean(0))  # the same gauge: mean log-gain zero
            error = f"{np.abs(learnt - truth).mean():.4f}"
        print(f" {name:8s}  {'on' if on else 'off':10s}  {held:11.2f}  {np.mean(result.psnr):8.2f}  "
              f"{seconds:5.0f}  {error}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
