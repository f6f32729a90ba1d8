"""Batch benchmark: rows per minute of a reconstruct-only `droplet3d batch`, locally and on local Ray.

Writes --rows small orbit videos of the analytic object (`recon.synthetic`, each from its own start
azimuth, so every row is a different input), a CSV manifest naming them, and runs the same batch twice
as a user would, each in a fresh process (start-up, imports and, for Ray, starting the instance and
its workers included):

- `--backend local`: the rows one after another in one process (torch uses every core);
- `--backend ray --address local`: a private Ray instance on this machine, --cpus-per-row cores per
  row, so cores / cpus-per-row rows run at once (Ray gives each worker that many threads).

The rows are tiny on purpose (the figure is the batch machinery's throughput on a small machine, not
the reconstruction's): 8 frames of 32 px, 10 steps at 16 px, a coarse mesh. Every row must finish
"done"; the script fails otherwise.

    python benchmarks/bench_batch.py [--rows 20] [--cpus-per-row 1] [--backends local,ray] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from recon import synthetic

ROOT = Path(__file__).resolve().parent.parent
FRAMES, SIZE, ELEVATION, RADIUS, FOV = 8, 32, 15.0, 2.0, 45.0
TINY_RECON = {
    "fit": {"init_points": 200, "hull_resolution": 16},
    "mesh": {"voxels": 24, "render_size": 32, "extra_views": 0},
}
ROW_OPTIONS = ["--iterations", "10", "--resolution", "16", "--faces", "200", "--vertex-colors",
               "--device", "cpu", "--quiet"]  # fmt: skip
SECONDS_PER_MINUTE = 60.0


def write_orbits(folder: Path, rows: int) -> Path:
    """`rows` orbit videos, a tiny reconstruction config and the manifest; returns the manifest."""
    import imageio

    lines = []
    for i in range(rows):
        azimuths = i * 360.0 / rows + np.arange(FRAMES) * 360.0 / FRAMES
        frames, _ = synthetic.render(synthetic.orbit_c2w(azimuths, ELEVATION, RADIUS), FOV, SIZE)
        video = folder / f"orbit{i:03d}.mp4"
        with imageio.get_writer(str(video), fps=8, codec="libx264", quality=10, macro_block_size=16) as w:
            for frame in frames:
                w.append_data(frame)
        lines.append({"id": f"row{i:03d}", "video": video.name, "start_azimuth": f"{i * 360.0 / rows:g}"})
    (folder / "tiny.json").write_text(json.dumps(TINY_RECON))
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "video", "start_azimuth"])
        writer.writeheader()
        writer.writerows(lines)
    return manifest


def run_batch(manifest: Path, out: Path, extra: list[str]) -> float:
    """Wall seconds of one `droplet3d batch` in a fresh process; every row must be done."""
    command = [sys.executable, "-m", "cli", "batch", str(manifest), "--out", str(out),
               "--config", str(manifest.parent / "tiny.json"), *ROW_OPTIONS, *extra]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    counts = json.loads((out / "batch.json").read_text())["counts"]
    if counts["done"] != sum(counts.values()):
        raise SystemExit(f"not every row was done: {counts}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--cpus-per-row", type=float, default=1.0)
    parser.add_argument("--keep", type=Path, help="write the orbits and batch folders here and keep them")
    parser.add_argument("--backends", default="local,ray", help="comma-separated: local, ray")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        manifest = write_orbits(folder, args.rows)
        backends = {
            "local": [],
            "ray": ["--backend", "ray", "--address", "local", "--cpus-per-row", f"{args.cpus_per_row:g}"],
        }
        print(f"{args.rows} reconstruct-only rows ({FRAMES} frames of {SIZE} px, 10 steps at 16 px), "
              f"{os.cpu_count()} cores")  # fmt: skip
        for name, extra in backends.items():
            if name not in args.backends.split(","):
                continue
            seconds = run_batch(manifest, folder / f"out-{name}", extra)
            rate = args.rows / seconds * SECONDS_PER_MINUTE
            print(f"{name:>6}: {seconds:6.1f} s wall, {rate:5.1f} rows/min")


if __name__ == "__main__":
    main()
