"""viewer.html on an asset folder (issue 23): page size, build time, time to first frame, splat fidelity.

Opens the folder's viewer.html from the file system in headless Chromium (Debian's, through Playwright;
WebGL on SwiftShader, so the times are a software renderer's), and measures:

* the page's size, and how long writing it took (report.json's `timings_s.viewer`);
* time to first frame: from navigation until the canvas shows the object;
* splat fidelity: the viewer's splats at the first frame's camera against our own rasteriser's render of
  the same splats.ply at the same camera and size (PSNR over the picture, IoU of the object masks), and
  both against frame 0 itself (IoU). viser draws each splat's base colour only, so the SH degree >= 1
  terms our render includes count against it.

    python benchmarks/bench_viewer.py ASSET_FOLDER [--size 480] [--picture PNG]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from recon_helpers import read_binary_ply  # noqa: E402
from test_viewer import CHROMIUM, FOREGROUND, PLAYBACK_BAR_PX, _iou, _mask, _show  # noqa: E402

from recon.viewer import STATE_SECONDS  # noqa: E402


def our_render(folder: Path, size: int) -> np.ndarray:
    """Our rasteriser's render of splats.ply at the first frame's camera, [size, size, 3] uint8, on white."""
    import torch

    from recon.fit import Splats
    from recon.poses import Cameras

    v = read_binary_ply(folder / "splats.ply")
    t = json.loads((folder / "transforms.json").read_text())
    rest = sorted((k for k in v if k.startswith("f_rest_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    k = len(rest) // 3
    degree = int(round(np.sqrt(k + 1))) - 1

    def tensor(names: list[str]) -> torch.Tensor:
        return torch.tensor(np.stack([v[n] for n in names], -1), dtype=torch.float32)

    # 3DGS .ply stores the SH rest coefficients channel-major: all of red's, then green's, then blue's.
    sh_n = tensor(rest).reshape(-1, 3, k).transpose(1, 2) if k else torch.zeros(len(v["x"]), 0, 3)
    splats = Splats(
        means=tensor(["x", "y", "z"]), scales=tensor(["scale_0", "scale_1", "scale_2"]),
        quats=tensor(["rot_0", "rot_1", "rot_2", "rot_3"]), opacities=tensor(["opacity"])[:, 0],
        sh0=tensor(["f_dc_0", "f_dc_1", "f_dc_2"])[:, None], shN=sh_n, sh_degree=degree,
        background=torch.ones(3),
    )  # fmt: skip
    scale = size / t["h"]
    c2w = np.asarray(t["frames"][0]["transform_matrix"])[None]
    cams = Cameras(c2w, t["fl_x"] * scale, t["fl_y"] * scale, t["cx"] * scale, t["cy"] * scale, size, size)
    render, _ = splats.render(cams)
    return (render[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def viewer_shots(page_path: Path, size: int) -> tuple[float, list[np.ndarray]]:
    """Seconds to the first frame showing the object, and the canvas in each state of the loop."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--enable-unsafe-swiftshader"])
        page = browser.new_page(viewport={"width": size, "height": size + PLAYBACK_BAR_PX})
        start = time.perf_counter()
        page.goto(page_path.as_uri())
        page.wait_for_selector("[role=slider]", state="attached", timeout=120_000)
        clip = {"x": 0, "y": 0, "width": size, "height": size}
        while True:
            shot = np.asarray(Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("RGB"))
            if (np.abs(shot.astype(int) - 255).sum(-1) > FOREGROUND).mean() > 0.02:
                break
        first = time.perf_counter() - start
        page.get_by_role("button").nth(1).click()  # pause
        for close in page.locator(".mantine-Notification-closeButton").all():
            close.click()
        shots = [_show(page, t * STATE_SECONDS) for t in (0.5, 1.5, 2.5)]
        browser.close()
    return first, shots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--size", type=int, default=480)
    parser.add_argument("--picture", type=Path, default=None)
    args = parser.parse_args()
    page = args.folder / "viewer.html"
    built = json.loads((args.folder / "report.json").read_text())["timings_s"].get("viewer")
    print(f"page: {page.stat().st_size / 1024**2:.1f} MB, written in {built} s")
    first, (splats, mesh, cameras) = viewer_shots(page, args.size)
    print(f"time to first frame: {first:.1f} s (SwiftShader)")
    ours = our_render(args.folder, args.size)
    report = json.loads((args.folder / "report.json").read_text())
    frame0 = np.asarray(
        Image.open(args.folder / "images" / "00000.png").convert("RGB").resize((args.size, args.size))
    )

    white = np.array([255, 255, 255])
    truth = _mask(frame0, np.round(np.asarray(report["background"]["color"]) * 255))
    mse = np.mean((splats.astype(float) - ours.astype(float)) ** 2)
    print(f"viewer splats vs our render: PSNR {10 * np.log10(255**2 / mse):.2f} dB, "
          f"IoU {_iou(_mask(splats, white), _mask(ours, white)):.3f}")  # fmt: skip
    against = {name: _iou(_mask(image, white), truth) for name, image in
               {"viewer splats": splats, "viewer mesh": mesh, "our render": ours}.items()}  # fmt: skip
    print("IoU against frame 0: " + ", ".join(f"{name} {value:.3f}" for name, value in against.items()))
    if args.picture:
        row = np.concatenate([frame0, ours, splats, mesh, cameras], 1)
        Image.fromarray(row).resize((row.shape[1] // 2, row.shape[0] // 2)).save(args.picture)
        print(f"picture: {args.picture} (frame 0 | our render | viewer: splats, mesh, cameras)")


if __name__ == "__main__":
    main()
