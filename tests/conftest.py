"""Shared fixtures. Tests run offline on CPU; the reference fixtures live in tests/fixtures/reference."""

from __future__ import annotations

import os
from pathlib import Path

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


@pytest.fixture(scope="session")
def random_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly written random-weight checkpoint with a sharded text encoder."""
    from tiny_checkpoint import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "Droplet3D-5B")


def load_fixture(name: str) -> dict[str, np.ndarray]:
    with np.load(REFERENCE / name) as data:
        return {k: data[k] for k in data.files}
