"""`droplet3d info`: environment report and an offline checkpoint check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from cli import app

runner = CliRunner()


def test_info_reports_versions_and_device() -> None:
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    for name in ("torch", "diffusers", "gsplat", "open3d", "device", "gsplat kernels"):
        assert f"{name}:" in result.output


def test_info_accepts_a_complete_checkpoint(random_ckpt: Path) -> None:
    result = runner.invoke(app, ["info", "--ckpt", str(random_ckpt), "--no-view-align"])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output


def test_info_lists_every_missing_file(tiny_ckpt: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    (ckpt / "tokenizer" / "spiece.model").unlink()
    result = runner.invoke(app, ["info", "--ckpt", str(ckpt)])
    assert result.exit_code == 2
    problems = [line for line in result.output.splitlines() if line.startswith("problem:")]
    assert len(problems) == 3, result.output  # spiece.model, FLUX.1-Kontext-dev/, the LoRA
    assert any("spiece.model" in p for p in problems)
    assert any("pytorch_lora_weights.safetensors" in p for p in problems)


def test_info_finds_shape_mismatches_without_loading(tiny_ckpt: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    config_path = ckpt / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["num_attention_heads"] = 4  # inner dim 32 instead of 16: every projection is mis-shaped
    config_path.write_text(json.dumps(config))
    result = runner.invoke(app, ["info", "--ckpt", str(ckpt), "--no-view-align"])
    assert result.exit_code == 2
    assert "transformer:" in result.output and "shape" in result.output
