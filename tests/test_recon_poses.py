"""Stage 2: orbit poses, transforms.json, presets and config precedence."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from recon import synthetic
from recon.config import asset_path, read_config, resolve_orbit, resolve_settings
from recon.errors import ReconError
from recon.poses import OrbitConfig, orbit_cameras, read_transforms, write_transforms

ROOT = Path(__file__).resolve().parents[1]


def expected_center(i: int, n: int, el: float, r: float, start: float, sign: float, full: bool) -> np.ndarray:
    step = 360.0 / ((n - 1) if full else n)
    az = math.radians(start + sign * step * i)
    e = math.radians(el)
    return r * np.array([math.cos(e) * math.cos(az), math.cos(e) * math.sin(az), math.sin(e)])


@pytest.mark.parametrize("direction", ["ccw", "cw"])
@pytest.mark.parametrize("full_turn", [False, True])
def test_orbit_cameras_follow_the_documented_conventions(direction: str, full_turn: bool) -> None:
    orbit = OrbitConfig(elevation=25.0, radius=2.5, fov=40.0, start_azimuth=30.0, direction=direction,
                        full_turn=full_turn)  # fmt: skip
    n, w, h = 12, 80, 60
    cams = orbit_cameras(n, orbit, w, h)
    sign = 1.0 if direction == "ccw" else -1.0
    for i in range(n):
        c2w = cams.c2w[i]
        center = expected_center(i, n, 25.0, 2.5, 30.0, sign, full_turn)
        np.testing.assert_allclose(c2w[:3, 3], center, atol=1e-9)
        forward = -c2w[:3, 2]  # OpenGL: the camera looks down its -z
        np.testing.assert_allclose(forward, -center / np.linalg.norm(center), atol=1e-9)
        assert abs(c2w[2, 0]) < 1e-9, "no roll: the camera's x axis stays horizontal"
        assert c2w[2, 1] > 0, "world +Z projects upward in the image"
        np.testing.assert_allclose(c2w[:3, :3].T @ c2w[:3, :3], np.eye(3), atol=1e-9)
        assert np.linalg.det(c2w[:3, :3]) > 0
    if full_turn:
        np.testing.assert_allclose(cams.c2w[-1], cams.c2w[0], atol=1e-9)
    # ccw seen from above: the cross product of consecutive positions points to +Z.
    z = np.cross(cams.c2w[0, :3, 3], cams.c2w[1, :3, 3])[2]
    assert (z > 0) == (direction == "ccw")
    # fov is the full vertical field of view; principal point at the centre.
    assert cams.fy == pytest.approx(0.5 * h / math.tan(math.radians(20.0)))
    assert (cams.cx, cams.cy) == (w / 2, h / 2)


def test_poses_agree_with_the_independent_ground_truth_cameras() -> None:
    cams = orbit_cameras(36, OrbitConfig(elevation=15, radius=2.0, fov=45), 96, 96)
    truth = synthetic.orbit_c2w(np.arange(36) * 10.0, 15.0, 2.0)
    np.testing.assert_allclose(cams.c2w, truth, atol=1e-9)
    # The origin projects to the image centre in every view (gsplat's OpenCV viewmats).
    vm = cams.viewmats()
    p = vm[:, :3, 3]  # camera coordinates of the origin
    assert np.all(p[:, 2] > 0)
    np.testing.assert_allclose(cams.fx * p[:, 0] / p[:, 2] + cams.cx, 48.0, atol=1e-9)


def test_transforms_json_round_trip_and_nerfstudio_fields(tmp_path: Path) -> None:
    orbit = OrbitConfig()
    cams = orbit_cameras(10, orbit, 64, 48)
    names = [f"images/{i:05d}.png" for i in range(10)]
    write_transforms(tmp_path / "transforms.json", cams, names, orbit)
    meta = json.loads((tmp_path / "transforms.json").read_text())
    assert meta["camera_model"] == "PINHOLE"
    assert {"fl_x", "fl_y", "cx", "cy", "w", "h", "frames"} <= set(meta)
    assert (meta["w"], meta["h"]) == (64, 48)
    assert meta["frames"][3]["file_path"] == "images/00003.png"
    assert np.array(meta["frames"][3]["transform_matrix"]).shape == (4, 4)
    back, files = read_transforms(tmp_path / "transforms.json")
    np.testing.assert_allclose(back.c2w, cams.c2w)
    assert files == names


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"radius": 0.0}, "radius"), ({"radius": -1.0}, "radius"), ({"elevation": 90.0}, "elevation"),
        ({"elevation": -95.0}, "elevation"), ({"fov": 0.0}, "fov"), ({"fov": 180.0}, "fov"),
        ({"direction": "up"}, "direction"), ({"radius": float("nan")}, "radius"),
    ],
)  # fmt: skip
def test_nonsense_orbit_values_are_rejected(change: dict, needle: str) -> None:
    with pytest.raises(ReconError, match=needle):
        OrbitConfig().updated(change).validate()


def test_configs_dir_holds_the_shipped_presets() -> None:
    for name in ("orbit_droplet3d.json", "recon_fast.json", "recon_quality.json"):
        assert json.loads((ROOT / "configs" / name).read_text()) == json.loads(asset_path(name).read_text())
    read_config(ROOT / "configs" / "my_orbit.example.json")


def test_config_precedence_preset_hints_file_cli(tmp_path: Path) -> None:
    default = resolve_orbit(None, None, None)
    assert default == OrbitConfig(15.0, 2.0, 45.0, 0.0, "ccw", False)
    hints = {"elevation": 30.0, "radius": 3.0, "fov": 50.0}
    cfg = {"orbit": {"radius": 4.0, "fov": 55.0}}
    orbit = resolve_orbit(cfg, hints, {"fov": 60.0, "elevation": None})
    assert (orbit.elevation, orbit.radius, orbit.fov) == (30.0, 4.0, 60.0)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"preset": "quality", "fit": {"iterations": 5}, "orbit": {"direction": "cw"}}))
    s = resolve_settings(path, None, None, {"sh_degree": 0})
    assert (s.preset, s.fit.iterations, s.fit.sh_degree, s.fit.resolution) == ("quality", 5, 0, 512)
    assert s.orbit.direction == "cw"
    path.write_text(json.dumps({"orbit": {"radius": 2, "elevaton": 3}}))
    with pytest.raises(ReconError, match="elevaton"):
        resolve_settings(path)


def test_transforms_load_with_nerfstudios_own_parser(tmp_path: Path) -> None:
    pytest.importorskip("nerfstudio")
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    from recon.api import write_poses
    from recon.inputs import OrbitFrames

    frames = np.full((12, 32, 32, 3), 200, dtype=np.uint8)
    write_poses(tmp_path, OrbitFrames(frames, "folder"), OrbitConfig())
    outputs = (
        NerfstudioDataParserConfig(data=tmp_path, train_split_fraction=1.0)
        .setup()
        .get_dataparser_outputs("train")
    )
    assert len(outputs.image_filenames) == 12
    assert outputs.image_filenames[0].name == "00000.png"
    assert float(outputs.cameras.fy[0]) == pytest.approx(0.5 * 32 / math.tan(math.radians(22.5)))


def test_the_orbit_checks_the_radius_bound_the_cli_offers() -> None:
    from recon import poses

    with pytest.raises(ReconError, match="radius"):
        OrbitConfig(radius=poses.MIN_RADIUS / 2).validate()
    OrbitConfig(radius=poses.MIN_RADIUS).validate()
