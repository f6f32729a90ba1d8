"""Shared fixtures. Tests run offline on CPU; the reference fixtures live in tests/fixtures/reference."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REFERENCE = Path(__file__).parent / "fixtures" / "reference"
USER_PROMPT = "a cute cartoon panda astronaut wears a white spacesuit. the video rotates 360 degrees."


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return REFERENCE


@pytest.fixture(scope="session")
def tiny_ckpt() -> Path:
    """The reference's tiny checkpoint (read-only use)."""
    return REFERENCE / "tiny-droplet3d"


# The demo as the tests run it: the real demo runs 400 steps at 96 px; the orientation and the viewer show
# after fewer. A small face budget and texture keep the export's share short; the default is textured.
DEMO_TEST_FIT = {"iterations": 250, "resolution": 64}
DEMO_TEST_FACES = 5000


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`droplet3d demo` run once for every test that reads its asset: (its folder, its output)."""
    from typer.testing import CliRunner

    from cli import app
    from recon import api

    out = tmp_path_factory.mktemp("demo") / "demo"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(api, "DEMO_FIT_OPTIONS", DEMO_TEST_FIT)
        args = [
            "demo",
            "--out",
            str(out),
            "--quiet",
            "--faces",
            str(DEMO_TEST_FACES),
            "--texture-size",
            "512",
        ]
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture(scope="session")
def random_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly written random-weight checkpoint with a sharded text encoder."""
    from tiny_checkpoint import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "Droplet3D-5B")


def assert_user_error(result: Any, out: Path | None, *needles: str) -> None:
    """Exit code 2, exactly one `error:` line containing every needle, no traceback.

    With `out`, also check that nothing was written there and no staging folder was left behind.
    """
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    if out is not None:
        assert not out.exists(), "nothing may be written on failure"
        assert not list(out.parent.glob(f".{out.name}.partial-*")), "the staging folder must be removed"


def load_fixture(name: str) -> dict[str, np.ndarray]:
    with np.load(REFERENCE / name) as data:
        return {k: data[k] for k in data.files}
