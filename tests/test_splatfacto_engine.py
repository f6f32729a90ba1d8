"""`--engine splatfacto`: nerfstudio keeps our transforms.json frame (no re-centring, re-orienting, scaling).

nerfstudio is an optional extra in its own environment, so fake `ns-train` / `ns-export` executables
record the command line and write what the real ones write.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
from recon_helpers import orbit_frames, write_video
from typer.testing import CliRunner

from cli import app

runner = CliRunner()

FAKE_TRAIN = """
import json, os, sys
from pathlib import Path
with open(os.environ["FAKE_NS_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
runs = Path(sys.argv[sys.argv.index("--output-dir") + 1]) / "splatfacto" / "run"
runs.mkdir(parents=True)
(runs / "config.yml").write_text("method_name: splatfacto\\n")
"""
FAKE_EXPORT = """
import sys
from pathlib import Path
out = Path(sys.argv[sys.argv.index("--output-dir") + 1])
(out / "splat.ply").write_bytes(b"ply\\nformat binary_little_endian 1.0\\nelement vertex 0\\nend_header\\n")
"""


def fake_tool(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture()
def fake_nerfstudio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_tool(bin_dir, "ns-train", FAKE_TRAIN)
    fake_tool(bin_dir, "ns-export", FAKE_EXPORT)
    log = tmp_path / "ns-train.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_NS_LOG", str(log))
    return log


def test_splatfacto_keeps_our_frame_and_writes_splats_ply(fake_nerfstudio: Path, tmp_path: Path) -> None:
    video = write_video(tmp_path / "orbit.mp4", orbit_frames(8, 32, supersample=1))
    out = tmp_path / "asset"
    args = ["reconstruct", str(video), "--out", str(out), "--engine", "splatfacto", "--iterations", "50",
            "--device", "cpu", "--quiet"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    argv = json.loads(fake_nerfstudio.read_text().splitlines()[0])
    assert argv[:2] == ["splatfacto", "--data"] and "--max-num-iterations" in argv
    parser = argv.index("nerfstudio-data")  # the dataparser and its options come after the method's
    options = dict(zip(argv[parser + 1 :: 2], argv[parser + 2 :: 2], strict=True))
    assert options == {"--orientation-method": "none", "--center-method": "none",
                       "--auto-scale-poses": "False", "--scale-factor": "1.0"}  # fmt: skip
    assert (out / "splats.ply").is_file() and not (out / "splat.ply").exists()
    assert (out / "transforms.json").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["engine"] == "splatfacto" and "+Y up" in json.dumps(report["frames_of_reference"])
