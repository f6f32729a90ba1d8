"""Bad input to `droplet3d generate`: one-line errors, exit code 2, nothing half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import USER_PROMPT, assert_user_error
from PIL import Image
from typer.testing import CliRunner

from cli import app
from droplet3d.errors import Droplet3DError
from droplet3d.pipeline import Droplet3DPipeline

runner = CliRunner()


def small_args(ckpt: Path, image: Path, out: Path, *extra: str) -> list[str]:
    return [
        "generate", "--ckpt", str(ckpt), "--image", str(image), "--prompt", USER_PROMPT, "--out", str(out),
        "--frames", "5", "--height", "32", "--width", "32", "--steps", "1", "--device", "cpu", "--quiet",
        *extra,
    ]  # fmt: skip


def with_option(args: list[str], option: str, value: str) -> list[str]:
    """Replace the value of `option` in `args`, or append the option."""
    args = list(args)
    if option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    return args


@pytest.fixture()
def image(reference_dir: Path) -> Path:
    return reference_dir / "ref_image.png"


@pytest.fixture()
def ckpt_copy(tiny_ckpt: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "Droplet3D-5B"
    shutil.copytree(tiny_ckpt, dst)
    return dst


def test_missing_checkpoint_folder(image: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, small_args(tmp_path / "nope", image, tmp_path / "out"))
    assert_user_error(result, tmp_path / "out", "nope", "does not exist")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "missing",
    ["transformer/diffusion_pytorch_model.safetensors", "vae/config.json", "tokenizer/spiece.model",
     "scheduler/scheduler_config.json", "text_encoder/model.safetensors"],
)  # fmt: skip
def test_incomplete_checkpoint_names_the_file(
    ckpt_copy: Path, image: Path, tmp_path: Path, missing: str
) -> None:
    (ckpt_copy / missing).unlink()
    result = runner.invoke(app, small_args(ckpt_copy, image, tmp_path / "out"))
    assert_user_error(result, tmp_path / "out", str(ckpt_copy / missing).split("/")[-1], "missing")
    assert not (tmp_path / "out").exists()


def test_missing_shard_of_sharded_text_encoder(random_ckpt: Path, image: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(random_ckpt, ckpt)
    index = json.loads((ckpt / "text_encoder" / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (ckpt / "text_encoder" / shard).unlink()
    result = runner.invoke(app, small_args(ckpt, image, tmp_path / "out"))
    assert_user_error(result, tmp_path / "out", shard, "missing shard")


def test_view_align_needs_kontext_and_lora(tiny_ckpt: Path, image: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, small_args(tiny_ckpt, image, tmp_path / "out", "--view-align"))
    assert_user_error(result, tmp_path / "out", "FLUX.1-Kontext-dev")


def test_weights_that_do_not_match_the_config(ckpt_copy: Path, image: Path, tmp_path: Path) -> None:
    config_path = ckpt_copy / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["num_layers"] = 3
    config_path.write_text(json.dumps(config))
    result = runner.invoke(app, small_args(ckpt_copy, image, tmp_path / "out"))
    assert_user_error(result, tmp_path / "out", "transformer weights do not match")


def test_unreadable_image(tiny_ckpt: Path, tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    result = runner.invoke(app, small_args(tiny_ckpt, bad, tmp_path / "out"))
    assert_user_error(result, tmp_path / "out", "cannot read image", "broken.png")
    result = runner.invoke(app, small_args(tiny_ckpt, tmp_path / "absent.png", tmp_path / "out"))
    assert_user_error(result, tmp_path / "out", "absent.png")


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [("--height", "40", "multiples of 16"), ("--width", "24", "multiples of 16"), ("--frames", "10", "4k+1"),
     ("--frames", "0", "4k+1"), ("--steps", "0", "--steps"), ("--dtype", "int8", "--dtype"),
     ("--offload", "disk", "--offload")],
)  # fmt: skip
def test_bad_numbers(
    tiny_ckpt: Path, image: Path, tmp_path: Path, option: str, value: str, needle: str
) -> None:
    result = runner.invoke(app, with_option(small_args(tiny_ckpt, image, tmp_path / "out"), option, value))
    assert_user_error(result, tmp_path / "out", needle)


def test_prompt_and_prompt_file_are_exclusive(tiny_ckpt: Path, image: Path, tmp_path: Path) -> None:
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text(USER_PROMPT)
    result = runner.invoke(
        app, [*small_args(tiny_ckpt, image, tmp_path / "out"), "--prompt-file", str(prompt_file)]
    )
    assert_user_error(result, tmp_path / "out", "exactly one of --prompt or --prompt-file")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(tiny_ckpt: Path, image: Path, tmp_path: Path) -> None:
    args = with_option(small_args(tiny_ckpt, image, tmp_path / "out"), "--device", "cuda")
    assert_user_error(runner.invoke(app, args), tmp_path / "out", "--device cpu")


def test_cuda_out_of_memory_suggests_offload(
    tiny_ckpt: Path, image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(Droplet3DPipeline, "__call__", out_of_memory)
    result = runner.invoke(app, small_args(tiny_ckpt, image, tmp_path / "out"))
    assert_user_error(result, tmp_path / "out", "--offload model", "--offload sequential")
    assert not (tmp_path / "out").exists()


def test_long_prompt_warns_where_it_is_cut(tiny_ckpt: Path, image: Path, tmp_path: Path) -> None:
    words = [f"detail{i}" for i in range(400)]
    args = with_option(small_args(tiny_ckpt, image, tmp_path / "out"), "--prompt", " ".join(words))
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "450 T5 tokens" in warning[0]
    record = json.loads((tmp_path / "out" / "generation.json").read_text())
    dropped = record["truncated_text"]["prompt"]
    assert dropped and dropped.split()[0] in warning[0]
    assert "fantastic" in dropped  # the quality suffix sits at the end, so it is the part cut


def test_refuses_non_empty_out_unless_overwrite(tiny_ckpt: Path, image: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = runner.invoke(app, small_args(tiny_ckpt, image, out))
    assert_user_error(result, None, "not empty", "--overwrite")
    assert (out / "keep.txt").read_text() == "precious"
    result = runner.invoke(app, small_args(tiny_ckpt, image, out, "--overwrite"))
    assert result.exit_code == 0, result.output
    assert not (out / "keep.txt").exists()
    assert len(list((out / "frames").glob("*.png"))) == 5


def test_failure_while_writing_leaves_nothing(
    tiny_ckpt: Path, image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import droplet3d.generate as generate_module

    real_write = generate_module.write_outputs

    def write_then_fail(result, out_dir: Path, *args: object, **kwargs: object) -> None:
        real_write(result, out_dir, *args, **kwargs)
        raise Droplet3DError("disk full")

    monkeypatch.setattr(generate_module, "write_outputs", write_then_fail)
    result = runner.invoke(app, small_args(tiny_ckpt, image, tmp_path / "out"))
    assert_user_error(result, tmp_path / "out", "disk full")
    assert list(tmp_path.iterdir()) == []  # neither out/ nor a temporary folder is left


def test_noise_augmentation_is_seeded(tiny_ckpt: Path, image: Path, tmp_path: Path) -> None:
    """The reference draws noise augmentation from the global RNG; ours repeats for a seed."""

    def frames(out: Path, *extra: str) -> np.ndarray:
        result = runner.invoke(app, small_args(tiny_ckpt, image, out, "--noise-aug-strength", "0.5", *extra))
        assert result.exit_code == 0, result.output
        return np.stack([np.asarray(Image.open(p)) for p in sorted((out / "frames").glob("*.png"))])

    torch.manual_seed(0)
    first = frames(tmp_path / "a")
    torch.manual_seed(123)  # the global RNG must not matter
    second = frames(tmp_path / "b")
    other_seed = frames(tmp_path / "c", "--seed", "7")
    np.testing.assert_array_equal(first, second)
    assert np.abs(first.astype(int) - other_seed.astype(int)).max() > 0
