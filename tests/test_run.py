"""`droplet3d run`: image -> video -> asset in one command, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trimesh
from conftest import USER_PROMPT
from typer.testing import CliRunner

from cli import app

runner = CliRunner()

# Small enough for CI: the tiny checkpoint at 64 px and a short, coarse reconstruction, exported with a
# small face budget and texture (the default 2048 texture's bake was half of this file's time).
SMALL_RECON = {
    "fit": {"init_points": 800, "hull_resolution": 24},
    "mesh": {"voxels": 48, "render_size": 48, "extra_views": 4, "faces": 2000, "texture_size": 256},
}


@pytest.fixture()
def run_args(tiny_ckpt: Path, reference_dir: Path, tmp_path: Path) -> list[str]:
    config = tmp_path / "small.json"
    config.write_text(json.dumps(SMALL_RECON))
    image = reference_dir / "ref_image.png"
    return [
        "run", "--ckpt", str(tiny_ckpt), "--image", str(image), "--prompt", USER_PROMPT,
        "--out", str(tmp_path / "run"), "--frames", "9", "--height", "64", "--width", "64", "--steps", "2",
        "--device", "cpu", "--iterations", "30", "--resolution", "32", "--config", str(config), "--quiet",
    ]  # fmt: skip


def invoke(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_run_produces_video_and_asset_and_resumes(run_args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    invoke(run_args)
    assert len(list((out / "video" / "frames").glob("*.png"))) == 9
    assert json.loads((out / "video" / "generation.json").read_text())["frames"] == 9
    for name in ("splats.ply", "mesh.glb", "mesh.ply", "mesh.obj", "preview.mp4", "transforms.json"):
        assert (out / "asset" / name).is_file(), name
    assert len(trimesh.load(out / "asset" / "mesh.glb", force="mesh").faces) > 0
    before = mtimes(out)

    # Same parameters: nothing is redone.
    output = invoke(run_args)
    assert "generate: up to date" in output and "reconstruct: up to date" in output
    assert mtimes(out) == before

    # A reconstruction parameter changed: only the asset is redone.
    output = invoke([*run_args, "--elevation", "20"])
    assert "generate: up to date" in output and "reconstruct: up to date" not in output
    after = mtimes(out)
    assert {k: v for k, v in after.items() if k.startswith("video")} == {
        k: v for k, v in before.items() if k.startswith("video")
    }
    assert after["asset/report.json"] != before["asset/report.json"]
    assert json.loads((out / "asset" / "report.json").read_text())["orbit"]["elevation"] == 20

    # A generation parameter changed: both stages are redone.
    output = invoke([*run_args, "--elevation", "20", "--seed", "3"])
    assert "up to date" not in output
    assert json.loads((out / "video" / "generation.json").read_text())["seed"] == 3
    assert mtimes(out)["asset/report.json"] != after["asset/report.json"]


def test_run_refuses_a_foreign_non_empty_folder(run_args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = runner.invoke(app, run_args)
    assert result.exit_code == 2
    assert "--overwrite" in result.output
    assert (out / "notes.txt").read_text() == "mine"
