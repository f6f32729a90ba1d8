"""Everything is validated up front, once: options, config files, resources, images and checkpoints."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import pytest
from conftest import USER_PROMPT, assert_user_error
from recon_helpers import orbit_frames, write_video
from typer.testing import CliRunner

from cli import app

runner = CliRunner()
HUGE_SIDE = 20_000  # a 400-megapixel image: PIL calls it a decompression bomb


def forged_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims `width` x `height`: opening it reads the header only, so no test
    ever allocates the pixels (the point of checking sizes before decoding)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "orbit.mp4", orbit_frames(8, 32, supersample=1))


@pytest.fixture()
def generate_args(tiny_ckpt: Path, reference_dir: Path, tmp_path: Path) -> list[str]:
    return ["--ckpt", str(tiny_ckpt), "--image", str(reference_dir / "ref_image.png"), "--prompt",
            USER_PROMPT, "--device", "cpu", "--out", str(tmp_path / "out")]  # fmt: skip


@pytest.mark.parametrize(
    ("option", "value"),
    [("--steps", "1e12"), ("--steps", "1000000000000"), ("--seed", "1e20"),
     ("--seed", "100000000000000000000"), ("--seed", "-1"), ("--fps", "-5"), ("--fps", "0"),
     ("--guidance-scale", "nan"), ("--guidance-scale", "inf"), ("--noise-aug-strength", "nan"),
     ("--frames", "100001"), ("--height", "100000"), ("--align-max-area", "0")],
)  # fmt: skip
@pytest.mark.parametrize("command", ["generate", "run"])
def test_generation_options_out_of_bounds_are_one_line(
    command: str, option: str, value: str, generate_args: list[str], tmp_path: Path
) -> None:
    result = runner.invoke(app, [command, *generate_args, option, value])
    assert_user_error(result, tmp_path / "out", option)


@pytest.mark.parametrize(
    ("option", "value"),
    [("--iterations", "1e23"), ("--iterations", "100000000000000000000000"), ("--seed", "1e20"),
     ("--resolution", "1000000"), ("--sh-degree", "4"), ("--elevation", "nan"), ("--radius", "inf"),
     ("--fov", "nan"), ("--start-azimuth", "-inf")],
)  # fmt: skip
def test_reconstruction_options_out_of_bounds_are_one_line(
    option: str, value: str, video: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["reconstruct", str(video), "--out", str(out), option, value])
    assert_user_error(result, out, option)


def test_run_bounds_its_reconstruction_options_too(generate_args: list[str], tmp_path: Path) -> None:
    for option, value in [("--iterations", "1e23"), ("--fit-seed", "1e20"), ("--elevation", "nan")]:
        result = runner.invoke(app, ["run", *generate_args, option, value])
        assert_user_error(result, tmp_path / "out", option)


def test_the_python_api_rejects_nan_guidance_too(tiny_ckpt: Path, reference_dir: Path) -> None:
    from droplet3d.errors import Droplet3DError
    from droplet3d.generate import GenerateConfig, validate

    for change in ({"guidance_scale": float("nan")}, {"noise_aug_strength": float("inf")}, {"seed": 10**20},
                   {"fps": -5}, {"frames": 257, "height": 2048, "width": 2048}):  # fmt: skip
        config = GenerateConfig(tiny_ckpt, reference_dir / "ref_image.png", USER_PROMPT, **change)
        with pytest.raises(Droplet3DError):
            validate(config)


@pytest.mark.parametrize(
    ("config", "needle"),
    [({"fit": {"init_points": "many"}}, "init_points"), ({"mesh": {"voxels": "x"}}, "voxels"),
     ({"mesh": {"voxels": 100000}}, "voxels"), ({"mesh": {"alpha_min": 7}}, "alpha_min"),
     ({"fit": {"lr_means": "fast"}}, "lr_means"), ({"fit": {"iterations": 2.5}}, "iterations"),
     ({"orbit": {"radius": "far"}}, "radius"), ({"orbit": {"full_turn": 1}}, "full_turn"),
     ({"fit": {"hull_resolution": 4096}}, "hull_resolution")],
)  # fmt: skip
def test_config_values_of_the_wrong_type_are_rejected_before_any_work(
    config: dict[str, Any], needle: str, video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recon import api

    def no_work(*_a: Any, **_k: Any) -> None:
        raise AssertionError("the video must not be read before the settings are checked")

    monkeypatch.setattr(api, "load_orbit", no_work)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "out"
    args = ["reconstruct", str(video), "--out", str(out), "--config", str(path), "--device", "cpu"]
    assert_user_error(runner.invoke(app, args), out, needle)


@pytest.mark.parametrize("section", ["fit", "mesh"])
def test_every_bounded_setting_refuses_a_value_just_outside_its_bounds(section: str) -> None:
    """Bounds are declared on the settings' fields (`recon.overrides.bounded`), and a config file cannot
    step past any of them, on either side."""
    from recon.config import resolve_settings
    from recon.errors import ReconError
    from recon.fit import FitConfig
    from recon.mesh import MeshConfig
    from recon.overrides import bounds

    defaults = FitConfig() if section == "fit" else MeshConfig()
    declared = bounds(defaults)
    assert len(declared) >= 7
    for name, (low, high) in declared.items():
        step = 1 if isinstance(getattr(defaults, name), int) else 0.5
        for value in (low - step, high + step):
            with pytest.raises(ReconError, match=f"{name} must be between"):
                resolve_settings({section: {name: value}})


def test_non_finite_config_numbers_are_rejected(video: Path, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"fit": {"ssim_lambda": NaN}, "orbit": {"elevation": Infinity}}')
    out = tmp_path / "out"
    result = runner.invoke(app, ["reconstruct", str(video), "--out", str(out), "--config", str(path)])
    assert_user_error(result, out, "finite")


def test_too_many_frames_are_refused_before_decoding(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    tiny = np.full((4, 4, 3), 128, np.uint8)
    for i in range(1500):
        iio.imwrite(folder / f"{i:05d}.png", tiny)
    out = tmp_path / "out"
    assert_user_error(runner.invoke(app, ["poses", str(folder), "--out", str(out)]), out, "1500 frames")


def test_huge_frames_are_refused_from_their_headers(tmp_path: Path) -> None:
    folder = tmp_path / "huge"
    folder.mkdir()
    for i in range(8):
        forged_png(folder / f"{i:05d}.png", 10_000, 10_000)
    out = tmp_path / "out"
    assert_user_error(runner.invoke(app, ["poses", str(folder), "--out", str(out)]), out, "too large")


def test_a_decompression_bomb_frame_is_a_user_error(tmp_path: Path) -> None:
    folder = tmp_path / "bomb"
    folder.mkdir()
    for i in range(8):
        forged_png(folder / f"{i:05d}.png", HUGE_SIDE, HUGE_SIDE)
    out = tmp_path / "out"
    assert_user_error(runner.invoke(app, ["poses", str(folder), "--out", str(out)]), out, "00000.png")


@pytest.mark.parametrize("side", [HUGE_SIDE, 9000])  # a PIL bomb, and one under PIL's limit but over ours
def test_a_huge_conditioning_image_is_a_user_error(side: int, tiny_ckpt: Path, tmp_path: Path) -> None:
    image = forged_png(tmp_path / "huge.png", side, side)
    out = tmp_path / "out"
    args = ["generate", "--ckpt", str(tiny_ckpt), "--image", str(image), "--prompt", USER_PROMPT,
            "--out", str(out), "--frames", "5", "--height", "32", "--width", "32",
            "--device", "cpu"]  # fmt: skip
    result = runner.invoke(app, args)
    assert_user_error(result, out, "huge.png")
    assert "warning" not in result.output.lower()


def _break(ckpt: Path, how: str) -> str:
    """Damage one file of a checkpoint copy; return a word the error must contain."""
    if how == "config is a list":
        (ckpt / "transformer" / "config.json").write_text("[1, 2]")
        return "JSON object"
    if how == "weight_map is a list":
        index = ckpt / "text_encoder" / "model.safetensors.index.json"
        data = json.loads(index.read_text())
        data["weight_map"] = sorted(set(data["weight_map"].values()))
        index.write_text(json.dumps(data))
        return "weight_map"
    if how == "bogus beta_schedule":
        path = ckpt / "scheduler" / "scheduler_config.json"
        data = json.loads(path.read_text())
        data["beta_schedule"] = "bogus"
        path.write_text(json.dumps(data))
        return "scheduler"
    if how == "truncated safetensors":
        path = ckpt / "transformer" / "diffusion_pytorch_model.safetensors"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return "truncated"
    if how == "0-byte safetensors":
        (ckpt / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
        return "not a safetensors file"
    if how == "garbage spiece.model":
        (ckpt / "tokenizer" / "spiece.model").write_bytes(b"\x00garbage" * 100)
        return "SentencePiece"
    raise AssertionError(how)


CHECKPOINT_DAMAGE = ["config is a list", "weight_map is a list", "bogus beta_schedule",
                     "truncated safetensors", "0-byte safetensors", "garbage spiece.model"]  # fmt: skip


@pytest.mark.parametrize("how", CHECKPOINT_DAMAGE)
def test_a_damaged_checkpoint_is_one_line_for_generate_and_a_problem_for_info(
    how: str, random_ckpt: Path, reference_dir: Path, tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(random_ckpt, ckpt)
    needle = _break(ckpt, how)
    out = tmp_path / "out"
    args = ["generate", "--ckpt", str(ckpt), "--image", str(reference_dir / "ref_image.png"),
            "--prompt", USER_PROMPT, "--out", str(out), "--frames", "5", "--height", "32", "--width", "32",
            "--steps", "1", "--device", "cpu", "--quiet"]  # fmt: skip
    assert_user_error(runner.invoke(app, args), out, needle)
    info = runner.invoke(app, ["info", "--ckpt", str(ckpt), "--no-view-align"])
    assert info.exit_code == 2 and "Traceback" not in info.output
    problems = [line for line in info.output.splitlines() if line.startswith("problem:")]
    assert any(needle in line for line in problems), info.output


def test_info_calls_a_checkpoint_file_a_file(tmp_path: Path) -> None:
    afile = tmp_path / "Droplet3D-5B"
    afile.write_text("not a folder")
    result = runner.invoke(app, ["info", "--ckpt", str(afile)])
    assert result.exit_code == 2 and "is a file" in result.output and "does not exist" not in result.output


def test_a_huge_prompt_is_refused_before_it_is_read_or_tokenized(
    generate_args: list[str], tmp_path: Path
) -> None:
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("a panda. " * (2 * 1024**2 // 9))  # 2 MB
    args = [a for a in generate_args if a != USER_PROMPT and a != "--prompt"]
    result = runner.invoke(app, ["generate", *args, "--prompt-file", str(prompt_file)])
    assert_user_error(result, tmp_path / "out", "--prompt-file", "KB")
    result = runner.invoke(app, ["generate", *args, "--prompt", "word " * 10_000])
    assert_user_error(result, tmp_path / "out", "characters")


@pytest.mark.parametrize(
    ("component", "key", "value"),
    [
        ("transformer", "num_layers", "two"),
        ("vae", "block_out_channels", "x"),
        ("text_encoder", "d_model", "big"),
    ],
)
def test_a_checkpoint_config_value_of_the_wrong_type_is_one_line(
    component: str, key: str, value: str, tiny_ckpt: Path, reference_dir: Path, tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    path = ckpt / component / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
    out = tmp_path / "out"
    args = ["generate", "--ckpt", str(ckpt), "--image", str(reference_dir / "ref_image.png"),
            "--prompt", USER_PROMPT, "--out", str(out), "--frames", "5", "--height", "32", "--width", "32",
            "--steps", "1", "--device", "cpu", "--quiet"]  # fmt: skip
    assert_user_error(runner.invoke(app, args), out, component.replace("_", " ").split()[-1])
    info = runner.invoke(app, ["info", "--ckpt", str(ckpt), "--no-view-align"])
    assert info.exit_code == 2 and any(
        line.startswith(f"problem: {component}") for line in info.output.splitlines()
    )
