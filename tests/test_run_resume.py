"""`run` resumes only what is really finished, and its fingerprints hold only output-changing settings.

The stages are replaced by fast fakes that write real, parseable files, so each case takes a moment;
tests/test_run.py runs the real stages end to end.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import pytest
import trimesh
import typer.main
from conftest import USER_PROMPT
from PIL import Image
from typer.testing import CliRunner

from cli import app
from runs.stages import RunStages

runner = CliRunner()
FRAMES = 9
SIZE = 32


@dataclasses.dataclass
class Calls:
    generate: int = 0
    reconstruct: int = 0


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    """Fake stages: generate returns noise frames, reconstruct writes every promised file."""
    import droplet3d.generate
    from recon import api

    counts = Calls()

    def fake_generate(config: Any, warn: Any = print) -> Any:
        counts.generate += 1
        rng = np.random.default_rng(config.seed)
        frames = rng.integers(0, 256, (config.frames, config.height, config.width, 3), dtype=np.uint8)
        record = {"frames": config.frames, "seed": config.seed}
        conditioning = Image.fromarray(frames[0])
        return droplet3d.generate.GenerateResult(
            frames=frames, record=record, conditioning_image=conditioning
        )

    def fake_reconstruct(request: Any, out: Path, *args: Any, **kwargs: Any) -> dict[str, Any]:
        counts.reconstruct += 1
        video_dir = request.input_path
        (out / "images").mkdir()
        names = []
        for i, frame in enumerate(sorted((video_dir / "frames").glob("*.png"))):
            names.append(f"images/{i:05d}.png")
            (out / names[-1]).write_bytes(frame.read_bytes())
        (out / "transforms.json").write_text(json.dumps({"frames": [{"file_path": n} for n in names]}))
        mesh = trimesh.creation.box()
        for name in ("mesh.glb", "mesh.ply", "mesh.obj"):
            mesh.export(out / name)
        mesh.export(out / "splats.ply")
        iio.imwrite(out / "preview.mp4", np.zeros((4, 32, 32, 3), np.uint8), fps=8)
        files = {"splats": "splats.ply", "mesh": {"glb": "mesh.glb", "obj": "mesh.obj", "ply": "mesh.ply"}}
        report = {"frames": len(names), "files": files}  # as recon.api lists them
        (out / "report.json").write_text(json.dumps(report))
        return report

    monkeypatch.setattr(droplet3d.generate, "generate", fake_generate)
    monkeypatch.setattr(api, "reconstruct", fake_reconstruct)
    return counts


@pytest.fixture()
def run_args(tiny_ckpt: Path, reference_dir: Path, tmp_path: Path) -> list[str]:
    return ["run", "--ckpt", str(tiny_ckpt), "--image", str(reference_dir / "ref_image.png"),
            "--prompt", USER_PROMPT, "--out", str(tmp_path / "run"), "--frames", str(FRAMES),
            "--height", str(SIZE), "--width", str(SIZE), "--device", "cpu", "--quiet"]  # fmt: skip


def invoke(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


def test_unchanged_run_is_skipped(calls: Calls, run_args: list[str]) -> None:
    invoke(run_args)
    output = invoke(run_args)
    assert "generate: up to date" in output and "reconstruct: up to date" in output
    assert (calls.generate, calls.reconstruct) == (1, 1)


def _damage(out: Path, what: str) -> None:
    if what == "mesh.glb deleted":
        (out / "asset" / "mesh.glb").unlink()
    elif what == "mesh.glb cut short":
        path = out / "asset" / "mesh.glb"
        path.write_bytes(path.read_bytes()[:100])
    elif what == "report.json corrupt":
        (out / "asset" / "report.json").write_text("{truncated")
    elif what == "a posed image deleted":
        (out / "asset" / "images" / "00003.png").unlink()
    elif what == "splats.ply empty":
        (out / "asset" / "splats.ply").write_bytes(b"")
    elif what == "conditioning.png deleted":
        (out / "video" / "conditioning.png").unlink()
    elif what == "orbit.mp4 deleted":
        (out / "video" / "orbit.mp4").unlink()
    elif what == "a frame deleted":
        (out / "video" / "frames" / "00004.png").unlink()
    elif what == "a frame corrupt":
        (out / "video" / "frames" / "00004.png").write_bytes(b"\x89PNG garbage")
    elif what == "generation.json corrupt":
        (out / "video" / "generation.json").write_text("[")
    else:
        raise AssertionError(what)


@pytest.mark.parametrize(
    ("what", "redone"),
    [("mesh.glb deleted", (1, 2)), ("mesh.glb cut short", (1, 2)), ("report.json corrupt", (1, 2)),
     ("a posed image deleted", (1, 2)), ("splats.ply empty", (1, 2)), ("orbit.mp4 deleted", (2, 1)),
     ("a frame deleted", (2, 1)), ("a frame corrupt", (2, 1)), ("generation.json corrupt", (2, 1)),
     ("conditioning.png deleted", (2, 1))],
)  # fmt: skip
def test_a_stage_with_missing_or_broken_outputs_is_redone(
    what: str, redone: tuple[int, int], calls: Calls, run_args: list[str], tmp_path: Path
) -> None:
    """A regenerated video is bit-identical (seeded), so the asset made from it stays valid: (2, 1)."""
    out = tmp_path / "run"
    invoke(run_args)
    _damage(out, what)
    invoke(run_args)
    assert (calls.generate, calls.reconstruct) == redone
    # The redo really repaired it: a third run skips both.
    output = invoke(run_args)
    assert "generate: up to date" in output and "reconstruct: up to date" in output
    assert (calls.generate, calls.reconstruct) == redone


def test_a_new_fps_remuxes_without_generating_again(
    calls: Calls, run_args: list[str], tmp_path: Path
) -> None:
    invoke(run_args)
    output = invoke([*run_args, "--fps", "24"])
    assert "generate: up to date" in output and calls.generate == 1
    assert iio.immeta(tmp_path / "run" / "video" / "orbit.mp4")["fps"] == 24
    assert calls.reconstruct == 1, "the frames did not change, so neither did the asset"


@pytest.mark.parametrize(
    ("option", "value"), [("--offload", "model"), ("--vae-tiling", None), ("--quiet", None)]
)
def test_memory_and_display_settings_do_not_redo_generation(
    option: str, value: str | None, calls: Calls, run_args: list[str]
) -> None:
    invoke(run_args)
    invoke([*run_args, option] + ([value] if value else []))
    assert (calls.generate, calls.reconstruct) == (1, 1)


def _config(tmp_path: Path, **changes: Any) -> Any:
    from droplet3d.generate import GenerateConfig

    image = tmp_path / "image.png"
    if not image.exists():
        iio.imwrite(image, np.zeros((8, 8, 3), np.uint8))
    base = GenerateConfig(ckpt=tmp_path, image=image, prompt=USER_PROMPT)
    return dataclasses.replace(base, **changes)


def _stages(generate: Any, **changes: Any) -> RunStages:
    """RunStages with the settings of `changes` given, by the name each has in report.json and the config
    file ("seed" is the fit's, "preset" and "engine" the fit's, "config" the orbit's)."""
    from recon.options import Export, Fit, Orbit

    fit = dict(changes.get("fit", {}))
    device = fit.pop("device", "auto")
    if "seed" in fit:
        fit["fit_seed"] = fit.pop("seed")
    fit.update({k: changes[k] for k in ("preset", "engine") if k in changes})
    orbit = {**changes.get("orbit", {}), **({"config": changes["config"]} if "config" in changes else {})}
    return RunStages(generate, Orbit(**orbit), Fit(**fit), Export(**changes.get("export", {})), device)


OUTPUT_CHANGES = {
    "prompt": "a red cube", "frames": 49, "height": 256, "width": 256, "steps": 20, "guidance_scale": 3.0,
    "seed": 7, "device": "cuda", "dtype": "bfloat16", "noise_aug_strength": 0.1, "view_align": True,
    "align_max_area": 512 * 512, "align_steps": 10, "align_auto_resize": False, "negative_prompt": "ugly",
    "background": "white", "remove_background": True, "recentre": False, "fill": 0.6,
}  # fmt: skip
NON_OUTPUT_CHANGES = {
    "fps": 24, "offload": "sequential", "vae_tiling": True, "progress": False, "compile": True,
}  # fmt: skip


def test_generate_fingerprint_holds_exactly_the_output_changing_settings(tmp_path: Path) -> None:
    from droplet3d.generate import GenerateConfig

    names = {f.name for f in dataclasses.fields(GenerateConfig)} - {"ckpt", "image", "segmenter"}
    assert names == set(OUTPUT_CHANGES) | set(NON_OUTPUT_CHANGES), "classify every new setting here"
    key = _stages(_config(tmp_path)).generate_key()
    for name, value in OUTPUT_CHANGES.items():
        assert _stages(_config(tmp_path, **{name: value})).generate_key() != key, name
    for name, value in NON_OUTPUT_CHANGES.items():
        assert _stages(_config(tmp_path, **{name: value})).generate_key() == key, name
    other_image = tmp_path / "other.png"
    iio.imwrite(other_image, np.ones((8, 8, 3), np.uint8))
    assert _stages(_config(tmp_path, image=other_image)).generate_key() != key
    assert _stages(_config(tmp_path, ckpt=tmp_path / "elsewhere")).generate_key() != key


def test_auto_and_the_device_it_picks_are_one_fingerprint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    keys = {_stages(_config(tmp_path, device=d), fit={"device": d}).generate_key() for d in ("auto", "cpu")}
    assert len(keys) == 1
    video = tmp_path / "video"
    (video / "frames").mkdir(parents=True)
    iio.imwrite(video / "frames" / "00000.png", np.zeros((8, 8, 3), np.uint8))
    keys = {_stages(_config(tmp_path), fit={"device": d}).reconstruct_key(video) for d in ("auto", "cpu")}
    assert len(keys) == 1


def test_reconstruct_fingerprint_follows_every_reconstruction_setting(tmp_path: Path) -> None:
    video = tmp_path / "video"
    (video / "frames").mkdir(parents=True)
    iio.imwrite(video / "frames" / "00000.png", np.zeros((8, 8, 3), np.uint8))
    config = tmp_path / "recon.json"
    config.write_text('{"mesh": {"voxels": 64}}')
    base = _stages(_config(tmp_path))
    key = base.reconstruct_key(video)
    for change in ({"orbit": {"elevation": 20.0}}, {"fit": {"iterations": 10}}, {"fit": {"seed": 3}},
                   {"preset": "quality"}, {"config": config}, {"engine": "splatfacto"},
                   {"export": {"faces": 1000}}):  # fmt: skip
        assert _stages(_config(tmp_path), **change).reconstruct_key(video) != key, change
    changed = _stages(_config(tmp_path), config=config).reconstruct_key(video)
    config.write_text('{"mesh": {"voxels": 96}}')
    assert _stages(_config(tmp_path), config=config).reconstruct_key(video) != changed, "the file's content"
    iio.imwrite(video / "frames" / "00000.png", np.ones((8, 8, 3), np.uint8))
    assert base.reconstruct_key(video) != key, "the frames it consumes"


def _option_names(command: str) -> set[str]:
    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    return {opt for param in click_command.params for opt in param.opts if opt.startswith("--")}


def test_run_exposes_every_option_of_its_stages() -> None:
    run = _option_names("run")
    missing_generate = _option_names("generate") - run
    # reconstruct's --seed is --fit-seed in run (--seed is generation's there, as in `generate`).
    missing_reconstruct = _option_names("reconstruct") - run - {"--seed"}
    assert not missing_generate and not missing_reconstruct, (missing_generate, missing_reconstruct)
    assert "--fit-seed" in run and "--engine" in run


def test_run_passes_fit_seed_and_engine_to_the_reconstruction(
    run_args: list[str], monkeypatch: pytest.MonkeyPatch, calls: Calls
) -> None:
    from recon import api

    seen: dict[str, Any] = {}
    real = api.reconstruct

    def spy(request: Any, out: Path, **kwargs: Any) -> Any:
        seen.update(fit=request.fit.given(request.device), engine=request.fit.engine)
        return real(request, out, **kwargs)

    monkeypatch.setattr(api, "reconstruct", spy)
    invoke([*run_args, "--fit-seed", "5", "--engine", "gsplat"])
    assert seen["fit"]["seed"] == 5 and seen["engine"] == "gsplat"


def test_the_segmenter_model_file_is_part_of_the_generate_fingerprint(tmp_path: Path) -> None:
    """Same --segmenter path, other model bytes: another mask, so generation must be redone."""
    model = tmp_path / "models" / "u2net.onnx"
    model.parent.mkdir()
    model.write_bytes(b"model one")
    with_model = _config(tmp_path, remove_background=True, segmenter=model)
    key = _stages(with_model).generate_key()
    assert _stages(_config(tmp_path, remove_background=True)).generate_key() != key
    assert _stages(_config(tmp_path, remove_background=True, segmenter=model.parent)).generate_key() == key
    model.write_bytes(b"model two")
    assert _stages(with_model).generate_key() != key
