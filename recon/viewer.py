"""viewer.html: the asset in one page that opens from the file system, offline (viser's client).

Why viser: its pip package ships a built three.js client that `StateSerializer.as_html` writes as one
self-contained file, the scene inlined; nothing is fetched, so the page opens by double-click with no
network and no server, and nothing is copied into this tree. Measured on the 85-frame demo asset (see
benchmarks/RESULTS.md): a few MB, built in under a second, first frame in a few seconds on a software
renderer. Its splat renderer draws each gaussian's base colour (SH degree 0): view-dependent colour is
not supported by viser's splats, so the page shows the DC term of our SH coefficients.

The page is a short recorded timeline that loops (pause and scrub with the bar at the bottom):

1. the Gaussian splats, seen from the first training camera (the viewer's start and reset view);
2. the textured mesh (mesh.glb as written), in the same frame and from the same view;
3. the splats again with the orbit's cameras as frustums, each showing its frame's thumbnail, and the
   report's key figures under the object.

Everything is in the asset frame, like the files: +Y up, the first frame's side of the object facing +Z.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recon.frames import rotation_to_quaternion
from recon.poses import GL_TO_CV, Cameras
from recon.raster_torch import SH_C0, quat_to_rotmat

STATE_SECONDS = 4.0  # how long each state of the loop (splats, mesh, cameras) stays before the next
THUMBNAIL_PX = 64  # side of the frame thumbnails on the frustums
FRUSTUM_SCALE = 0.06  # frustum depth, world units (the object is about 1 unit across)
LABEL_GAP = 0.05  # world units between the object's lowest splat and the figures' label


@dataclass
class ViewerSplats:
    """Gaussians as the viewer draws them, in the asset frame."""

    centers: np.ndarray  # [N, 3]
    covariances: np.ndarray  # [N, 3, 3]
    rgbs: np.ndarray  # [N, 3] in 0..1: the DC colour (viser draws no view-dependent colour)
    opacities: np.ndarray  # [N, 1] in 0..1

    @classmethod
    def from_params(
        cls, means: np.ndarray, log_scales: np.ndarray, quats_wxyz: np.ndarray, logit_opacities: np.ndarray,
        sh0: np.ndarray,
    ) -> ViewerSplats:  # fmt: skip
        """From gsplat's raw parametrisation (as `recon.fit.Splats` and the 3DGS .ply store it)."""
        rot = quat_to_rotmat(torch.as_tensor(quats_wxyz, dtype=torch.float64)).numpy()
        variances = np.exp(2.0 * log_scales)
        covariances = np.einsum("nij,nj,nkj->nik", rot, variances, rot)
        rgbs = np.clip(0.5 + SH_C0 * sh0.reshape(-1, 3), 0.0, 1.0)
        opacities = 1.0 / (1.0 + np.exp(-logit_opacities.reshape(-1, 1)))
        return cls(means.astype(np.float32), covariances.astype(np.float32), rgbs, opacities)


@dataclass
class ViewerScene:
    """What viewer.html shows."""

    splats: ViewerSplats
    glb: bytes
    """mesh.glb's bytes, as written."""
    cameras: Cameras
    """The orbit's cameras in the asset frame (OpenGL axes, as `recon.poses.Cameras`)."""
    thumbnails: np.ndarray
    """[N, h, w, 3] uint8: each camera's frame, small."""
    figures: dict[str, str]
    """The report's key figures, name -> text, in display order."""


def thumbnails(frames: np.ndarray, side: int = THUMBNAIL_PX) -> np.ndarray:
    """Frames [N, H, W, 3] uint8 shrunk to `side` pixels on their longer side."""
    from PIL import Image

    h, w = frames.shape[1:3]
    size = (max(1, round(side * w / max(h, w))), max(1, round(side * h / max(h, w))))
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BOX)) for f in frames])


def report_figures(report: dict[str, Any]) -> dict[str, str]:
    """The key figures of a report.json, as the viewer's panel lists them."""
    orbit = report.get("orbit", {})
    estimate = report.get("orbit_estimate") or {}
    figures = {
        "training PSNR": f"{report['psnr']['mean']:.2f} dB over {report['frames']} frames",
        "gaussians": f"{report['gaussians']:,}",
        "mesh": f"{report['mesh']['faces']:,} faces, texture {report['mesh']['texture_size'] or 'none'}",
        "orbit": (
            f"{'estimated' if 'summary' in estimate else 'given'}: elevation {orbit.get('elevation', 0):.1f} "
            f"deg, fov {orbit.get('fov', 0):.1f} deg, {orbit.get('direction', '?')}"
        ),
        "time": f"{report['timings_s']['total']:.0f} s on {report['device']}",
    }
    return figures


def write_viewer(path: Path, scene: ViewerScene) -> int:
    """Write viewer.html for `scene` at `path`; returns its size in bytes."""
    import viser

    # viser prints a banner and a goodbye on stdout even when not verbose: not our command's output.
    with contextlib.redirect_stdout(io.StringIO()):
        server = viser.ViserServer(host="127.0.0.1", port=0, verbose=False)  # records; nobody connects
        try:
            html = _record(server, scene)
        finally:
            server.stop()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    return len(html.encode("utf-8"))


def _record(server: Any, scene: ViewerScene) -> str:
    """The page: set the scene and the start view, then record the loop of states."""
    # 1. The frame and the start view (the first training camera).
    server.scene.set_up_direction("+y")
    first = scene.cameras.c2w[0]
    server.initial_camera.position = first[:3, 3]
    server.initial_camera.look_at = first[:3, 3] - first[:3, 2]  # OpenGL cameras look down -Z
    server.initial_camera.up = first[:3, 1]
    server.initial_camera.fov = 2.0 * np.arctan(scene.cameras.height / 2.0 / scene.cameras.fy)

    # 2. The three things it shows, all in the asset frame, and labels: viser's embedded page shows scene
    #    labels but not its control panel. A one-word label names the state above the object; the
    #    report's figures go under it with the cameras (on the object views they would hide its outline).
    s = scene.splats
    splats = server.scene.add_gaussian_splats("/splats", s.centers, s.covariances, s.rgbs, s.opacities)
    mesh = server.scene.add_glb("/mesh", scene.glb, visible=False)
    frustums = _frustums(server, scene)
    top, bottom = float(s.centers[:, 1].max()) + LABEL_GAP, float(s.centers[:, 1].min()) - LABEL_GAP
    state = server.scene.add_label("/state", "splats", position=(0.0, top, 0.0), anchor="bottom-center")
    figures = "\n".join(f"{name}: {text}" for name, text in scene.figures.items())
    report = server.scene.add_label(
        "/figures", figures, position=(0.0, bottom, 0.0), anchor="top-center", visible=False
    )

    # 3. The loop: each state stays STATE_SECONDS.
    serializer = server.get_scene_serializer()
    serializer.insert_sleep(STATE_SECONDS)
    splats.visible, mesh.visible, state.text = False, True, "mesh"
    serializer.insert_sleep(STATE_SECONDS)
    mesh.visible, splats.visible, state.text, report.visible = False, True, "orbit cameras and report", True
    for frustum in frustums:
        frustum.visible = True
    serializer.insert_sleep(STATE_SECONDS)
    return serializer.as_html()


def _frustums(server: Any, scene: ViewerScene) -> list[Any]:
    """A hidden frustum per camera but the first, with its frame's thumbnail (viser uses OpenCV axes)."""
    cams = scene.cameras
    fov = 2.0 * np.arctan(cams.height / 2.0 / cams.fy)
    out = []
    for i, c2w in enumerate(cams.c2w):
        if i == 0:  # the start view looks out of the first camera: its frustum would frame the picture
            continue
        cv = c2w @ GL_TO_CV
        out.append(server.scene.add_camera_frustum(
            f"/cameras/{i:03d}", fov, cams.width / cams.height, scale=FRUSTUM_SCALE,
            image=scene.thumbnails[i], wxyz=rotation_to_quaternion(cv[:3, :3]), position=cv[:3, 3],
            visible=False,
        ))  # fmt: skip
    return out
