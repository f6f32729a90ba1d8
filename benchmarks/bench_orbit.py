"""Auto-orbit benchmark (issue 9): is the orbit found from the video, and is the asset as good as given it?

The checker-textured tall figure (`recon.synthetic.tall_textured_scene`) is ray-cast on orbits at
elevation x fov (default: the representative subset below; ``--grid`` for all 9 of {5, 20, 35} x
{30, 40, 50}) and one clockwise orbit, frames at ``--size`` px (the fit trains at ``--resolution``). For
each: the estimate from the frames alone (targets: elevation and fov within 2 degrees, the right
direction), then two fits, one given the true orbit and one given the estimate with pose refinement
(the `reconstruct` default), judged by the independent ray caster at held-out views halfway between the
training azimuths (target: within 1 dB of the true-orbit fit); the estimate's time over the fit's
(target: at most 30%). ``--jitter`` adds one orbit with +-1 degree random per-frame azimuth and
elevation error, fitted from the true nominal orbit with refinement; target: every frame within 0.3
degree of its true pose (after removing the mean offset, a gauge: a rotation of the whole scene).

    python benchmarks/bench_orbit.py [--grid] [--jitter] [--frames 42] [--size 128] [--resolution 64]
        [--iterations 300] [--orbits 20/40/ccw,20/40/cw]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from recon import synthetic
from recon.fit import FitConfig, fit, psnr
from recon.orbit_estimate import estimate_orbit
from recon.pose_refine import orbit_angles
from recon.poses import Cameras, OrbitConfig, orbit_cameras

RADIUS = 2.0
SUBSET = [(5.0, 30.0, "ccw"), (20.0, 40.0, "ccw"), (35.0, 50.0, "ccw"), (20.0, 40.0, "cw")]
GRID = [(e, f, "ccw") for e in (5.0, 20.0, 35.0) for f in (30.0, 40.0, 50.0)] + [(20.0, 40.0, "cw")]
TARGETS = {"angle": 2.0, "psnr_drop": 1.0, "time_share": 0.3, "jitter": 0.3}
JITTER = 1.0  # degrees, uniform +-
BACKGROUND = (1.0, 1.0, 1.0)


def render(azimuths: np.ndarray, elevations: np.ndarray, fov: float, size: int) -> np.ndarray:
    c2w = np.concatenate(
        [synthetic.orbit_c2w([a], e, RADIUS) for a, e in zip(azimuths, elevations, strict=True)]
    )
    frames, _ = synthetic.render(c2w, fov, size, synthetic.tall_textured_scene(), 2, BACKGROUND)
    return frames


def held_out_psnr(
    splats, elevation: float, fov: float, sign: float, n: int, res: int, like: Cameras
) -> float:
    """Mean PSNR at views halfway between the training azimuths, rendered at the true orbit."""
    az = sign * (np.arange(n) + 0.5) * 360.0 / n
    truth = render(az, np.full(n, elevation), fov, res)
    focal = 0.5 * res / np.tan(np.radians(fov) / 2)
    cams = Cameras(synthetic.orbit_c2w(az, elevation, RADIUS), focal, focal, res / 2, res / 2, res, res)
    renders, _ = splats.render(cams)
    gt = torch.tensor(truth, dtype=torch.float32) / 255.0
    return float(np.mean([psnr(renders[i : i + 1].clamp(0, 1), gt[i : i + 1]) for i in range(n)]))


def run_orbit(elevation: float, fov: float, direction: str, args: argparse.Namespace) -> dict[str, float]:
    n, sign = args.frames, 1.0 if direction == "ccw" else -1.0
    frames = render(sign * np.arange(n) * 360.0 / n, np.full(n, elevation), fov, args.size)
    cfg = FitConfig(iterations=args.iterations, resolution=args.resolution, device="cpu")
    truth = OrbitConfig(elevation=elevation, fov=fov, direction=direction)
    t = time.perf_counter()
    estimate = estimate_orbit(frames, OrbitConfig())
    t_estimate = time.perf_counter() - t
    if args.estimate_only:
        return {
            "el": estimate.orbit.elevation, "fov": estimate.orbit.fov,
            "dir_ok": estimate.orbit.direction == direction, "d_el": estimate.orbit.elevation - elevation,
            "d_fov": estimate.orbit.fov - fov, "psnr_true": float("nan"), "psnr_auto": float("nan"),
            "t_est": t_estimate, "t_fit": float("nan"), "t_fit_auto": float("nan"),
        }  # fmt: skip
    given = fit(frames, orbit_cameras(n, truth, args.size, args.size), cfg, progress=False)
    auto_cfg = cfg.updated({"refine_poses": True})
    auto = fit(frames, orbit_cameras(n, estimate.orbit, args.size, args.size), auto_cfg, progress=False)
    # Judge the auto fit in its own gauge: it is at radius 2 like the truth, so only the fov differs.
    p_given = held_out_psnr(given.splats, elevation, fov, sign, n, args.resolution, given.cameras)
    p_auto = held_out_psnr(auto.splats, elevation, fov, sign, n, args.resolution, auto.cameras)
    return {
        "el": estimate.orbit.elevation,
        "fov": estimate.orbit.fov,
        "dir_ok": estimate.orbit.direction == direction,
        "d_el": estimate.orbit.elevation - elevation,
        "d_fov": estimate.orbit.fov - fov,
        "psnr_true": p_given,
        "psnr_auto": p_auto,
        "t_est": t_estimate,
        "t_fit": given.seconds,
        "t_fit_auto": auto.seconds,
    }


def run_jitter(args: argparse.Namespace) -> dict[str, float]:
    n = args.jitter_frames
    rng = np.random.default_rng(args.seed)
    nominal_az = np.arange(n) * 360.0 / n
    az = nominal_az + rng.uniform(-JITTER, JITTER, n)
    el = 20.0 + rng.uniform(-JITTER, JITTER, n)
    frames = render(az, el, 40.0, args.size)
    cfg = FitConfig(
        iterations=args.jitter_iterations, resolution=args.resolution, device="cpu", refine_poses=True
    )
    result = fit(
        frames,
        orbit_cameras(n, OrbitConfig(elevation=20.0, fov=40.0), args.size, args.size),
        cfg,
        progress=False,
    )
    got_az, got_el, _ = orbit_angles(result.cameras.c2w)
    d_az = (got_az - az + 180.0) % 360.0 - 180.0
    d_el = got_el - el
    err = np.maximum(np.abs(d_az - d_az.mean()), np.abs(d_el - d_el.mean()))
    before = np.maximum(np.abs(az - nominal_az), np.abs(el - 20.0))
    return {
        "before_max": float(before.max()),
        "before_mean": float(before.mean()),
        "after_max": float(err.max()),
        "after_mean": float(err.mean()),
        "offset_az": float(d_az.mean()),
        "offset_el": float(d_el.mean()),
        "fov": float(2 * np.degrees(np.arctan(0.5 * result.cameras.height / result.cameras.fy))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", action="store_true", help="All 9 elevation x fov orbits, not the subset.")
    parser.add_argument("--jitter", action="store_true", help="Also the per-frame jitter orbit.")
    parser.add_argument("--only-jitter", action="store_true")
    parser.add_argument("--estimate-only", action="store_true", help="Only the estimates (no fits, no PSNR).")
    parser.add_argument(
        "--orbits",
        default="",
        help="Only these orbits, e.g. 20/40/ccw,35/50/ccw (default: the subset or grid).",
    )
    parser.add_argument("--frames", type=int, default=42)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--jitter-frames", type=int, default=24)
    parser.add_argument("--jitter-iterations", type=int, default=600)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(
        f"{args.frames} frames at {args.size} px, fit at {args.resolution} px, {args.iterations} iterations, "
        f"{torch.get_num_threads()} threads"
    )
    ok = True
    if not args.only_jitter:
        print(
            f"{'true el/fov/dir':>16} {'est el':>7} {'est fov':>7} {'dir':>4} "
            f"{'PSNR true':>9} {'PSNR auto':>9} "
            f"{'est s':>6} {'fit s':>6} {'share':>6}"
        )
        chosen = [(float(e), float(f), d) for e, f, d in (o.split("/") for o in args.orbits.split(",") if o)]
        for el, fov, direction in chosen or (GRID if args.grid else SUBSET):
            r = run_orbit(el, fov, direction, args)
            share = r["t_est"] / r["t_fit"]
            if args.estimate_only:  # NaN comparisons are False: judge the estimate alone
                r.update(psnr_true=0.0, psnr_auto=0.0)
                share = 0.0
            good = (
                abs(r["d_el"]) <= TARGETS["angle"]
                and abs(r["d_fov"]) <= TARGETS["angle"]
                and r["dir_ok"]
                and r["psnr_true"] - r["psnr_auto"] <= TARGETS["psnr_drop"]
                and share <= TARGETS["time_share"]
            )
            ok &= good
            print(
                f"{el:5.0f}/{fov:3.0f}/{direction:>4}   {r['el']:7.2f} {r['fov']:7.2f} "
                f"{'ok' if r['dir_ok'] else 'BAD':>4} {r['psnr_true']:9.2f} {r['psnr_auto']:9.2f} "
                f"{r['t_est']:6.1f} {r['t_fit']:6.1f} {share:6.2f}  "
                f"{'PASS' if good else 'FAIL'}",
                flush=True,
            )
    if args.jitter or args.only_jitter:
        j = run_jitter(args)
        good = j["after_max"] <= TARGETS["jitter"]
        ok &= good
        print(
            f"jitter +-{JITTER:g} deg, {args.jitter_frames} frames, {args.jitter_iterations} iterations: "
            f"before max "
            f"{j['before_max']:.2f} mean {j['before_mean']:.2f}; after max {j['after_max']:.2f} mean "
            f"{j['after_mean']:.2f} deg (offset az {j['offset_az']:.2f} el {j['offset_el']:.2f}; refined fov "
            f"{j['fov']:.2f})  {'PASS' if good else 'FAIL'}",
            flush=True,
        )
    print(
        "targets: elevation and fov within 2 deg, right direction, held-out PSNR within 1 dB of the true "
        "orbit, "
        "estimate <= 30% of the fit's time, jitter refined to <= 0.3 deg per frame"
    )
    print("PASS" if ok else "FAIL")


if __name__ == "__main__":
    main()
