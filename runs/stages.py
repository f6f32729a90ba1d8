"""`run`'s two stages for one run folder (generate, reconstruct), each skipped when up to date.

`droplet3d run` calls `run_folder` once; `droplet3d batch` once per manifest row.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from recon.options import Export, Fit, Orbit, ReconstructRequest
from runs.errors import UsageError, warn
from runs.output import (
    STAGING_INFIX,
    check_resumable_out,
    make_parent,
    out_lock,
    real_out,
    refuse_overlap,
    staged_output,
    terminate_as_exit,
)
from runs.params import generate_config, generate_output_bytes, group_of
from runs.resume import RUN_STATE, RunState, fingerprint, folder_digest, path_digest, remove_run_leftovers

if TYPE_CHECKING:
    from droplet3d.generate import GenerateConfig, GenerateResult


def logger(quiet: bool) -> Callable[[str], None]:
    """Where a stage's log lines go: stderr, or nowhere with --quiet."""
    return (lambda _m: None) if quiet else (lambda m: typer.echo(m, err=True))


def run_stages_of(params: dict[str, Any], video: Path | None = None) -> RunStages:
    """The RunStages of `run`'s (or a batch row's) parameters; with `video`, reconstruct that only."""
    gen_config = None if video is not None else generate_config(params)
    return RunStages(
        gen_config, group_of(Orbit, params), group_of(Fit, params), group_of(Export, params),
        params["device"], video,
    )  # fmt: skip


def run_folder(
    out: Path,
    stages: RunStages,
    overwrite: bool,
    quiet: bool,
    inputs: dict[str, Path | None],
    generate: Callable[[GenerateConfig], GenerateResult] | None = None,
    say: Callable[[str], None] = typer.echo,
) -> RunOutcome:
    """`run`'s whole job for one run folder, resumable; `batch` calls it once per manifest row.

    Checks the inputs, takes the folder's lock and runs the stages that are not up to date. `generate`
    replaces the plain generation call (a batch worker passes one that keeps its pipeline loaded);
    `say` receives the "up to date, skipped" lines.
    """
    from droplet3d.generate import validate as validate_generate

    refuse_overlap(out, inputs)
    if stages.generate is not None:
        validate_generate(stages.generate)
        if not Path(stages.generate.image).is_file():
            raise UsageError(f"image {stages.generate.image} does not exist")
    elif stages.video is None or not stages.video.exists():
        raise UsageError(f"video {stages.video} does not exist")
    out = real_out(out)
    make_parent(out.parent)
    with out_lock(out), terminate_as_exit():
        check_resumable_out(out, overwrite, RUN_STATE)
        out.mkdir(exist_ok=True)
        remove_run_leftovers(out)
        return run_stages(out, stages, quiet, generate, say)


# Generation settings that change no pixel of the frames. They stay out of the fingerprint, so changing
# one does not redo a 5B-parameter generation: --fps only re-muxes orbit.mp4, the others are memory modes.
# `compile` changes frames only within bf16 noise (40.8 dB compiled vs eager over 50 steps on an H100).
NON_OUTPUT_GENERATE_SETTINGS = frozenset({"progress", "fps", "offload", "vae_tiling", "compile"})
ASSET_FILES = ("report.json", "transforms.json", "mesh.glb", "mesh.ply", "mesh.obj", "preview.mp4")
SPLATFACTO_ASSET_FILES = ("report.json", "transforms.json", "splats.ply")
GLB_MAGIC = b"glTF"
GLB_HEADER_BYTES = 12


@dataclass
class RunStages:
    """What `run` does, and the fingerprint of each stage: only the settings that change its outputs."""

    generate: GenerateConfig | None
    """The generation; None for a reconstruct-only run (a batch row that names a video)."""
    orbit: Orbit
    fit: Fit
    export: Export
    device: str
    """Where the reconstruction runs ("auto": CUDA when present)."""
    video: Path | None = None
    """The orbit a reconstruct-only run reconstructs (video file, frames folder or generate folder)."""

    def generate_key(self) -> str:
        assert self.generate is not None, "a reconstruct-only run has no generate stage"
        params = {k: v for k, v in vars(self.generate).items() if k not in NON_OUTPUT_GENERATE_SETTINGS}
        params["image"] = hashlib.sha256(Path(self.generate.image).read_bytes()).hexdigest()
        params["ckpt"] = str(Path(self.generate.ckpt).resolve())
        params["device"] = device_key(self.generate.device)
        if self.generate.segmenter is not None:  # the model's bytes, not its name, shape the mask
            from droplet3d.segment import file_sha256, resolve_model_file

            params["segmenter"] = file_sha256(resolve_model_file(self.generate.segmenter))
        return fingerprint(params)

    def reconstruct_key(self, video_dir: Path) -> str:
        """`video_dir` is the generate stage's folder, or for a reconstruct-only run its `video`.

        Of a generated orbit only frames/ counts (a re-mux at another --fps changes no frame); a given
        orbit counts whole, since its generation.json or file name can carry the orbit's parameters.
        """
        config = self.orbit.config
        config_text = config.read_text() if config is not None and config.is_file() else None
        video = folder_digest(video_dir / "frames") if self.generate is not None else path_digest(video_dir)
        return fingerprint(
            {"orbit": self.orbit.given(), "fit": self.fit.given(device_key(self.device)),
             "preset": self.fit.preset, "config": config_text,
             "engine": self.fit.engine, "export": self.export.given(), "video": video}
        )  # fmt: skip

    def reconstruct_request(self, video_dir: Path) -> ReconstructRequest:
        """The reconstruction of `video_dir` (the generate stage's folder, or `video`)."""
        return ReconstructRequest(video_dir, self.orbit, self.fit, self.export, self.device)


@dataclass
class RunOutcome:
    """What `run_stages` did for one run folder."""

    report: dict[str, object]
    """The asset's report.json."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall seconds of each stage that ran this time (a stage that was up to date is absent)."""


def device_key(device: str) -> str:
    """The device a --device value means here ("auto" and "cpu" are the same run on a CPU machine)."""
    from droplet3d.errors import Droplet3DError
    from droplet3d.generate import resolve_device

    try:
        return str(resolve_device(device))
    except Droplet3DError:  # not resolvable here: the stage itself will say so
        return device


def file_problem(path: Path) -> str | None:
    """Why `path` is not a usable output (missing, empty, or does not parse), or None if it is."""
    if not path.is_file() or path.stat().st_size == 0:
        return f"{path.name} is missing or empty"
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            if not isinstance(json.loads(path.read_text()), dict):
                return f"{path.name} is not a JSON object"
        elif suffix == ".ply":
            with path.open("rb") as handle:
                header = handle.read(4096)
            if not header.startswith(b"ply") or b"end_header" not in header:
                return f"{path.name} is not a PLY file"
        elif suffix == ".glb":
            header = path.read_bytes()[:GLB_HEADER_BYTES]
            declared = int.from_bytes(header[8:12], "little") if len(header) == GLB_HEADER_BYTES else -1
            if not header.startswith(GLB_MAGIC) or declared != path.stat().st_size:
                return f"{path.name} is not a complete glTF binary"
        elif suffix == ".obj":
            if not any(line.startswith("v ") for line in path.read_text(errors="replace").splitlines()):
                return f"{path.name} holds no vertices"
        elif suffix == ".png":
            from PIL import Image

            with Image.open(path) as image:
                image.load()
        elif suffix == ".mp4":
            import imageio.v3 as iio

            iio.improps(path)
    except Exception as exc:  # any decoder error means: redo the stage
        return f"{path.name} does not parse ({type(exc).__name__})"
    return None


def generate_outputs_problem(video_dir: Path, config: GenerateConfig) -> str | None:
    """Why a finished generate stage's outputs cannot be trusted, or None."""
    names = ["generation.json", "orbit.mp4", "conditioning.png"]
    names += ["aligned_input.png"] if config.view_align else []
    for name in names:
        problem = file_problem(video_dir / name)
        if problem:
            return problem
    record = json.loads((video_dir / "generation.json").read_text())
    frames = sorted((video_dir / "frames").glob("*.png")) if (video_dir / "frames").is_dir() else []
    if record.get("frames") != config.frames or len(frames) != config.frames:
        return f"{len(frames)} of {config.frames} frames in frames/"
    for frame in frames:
        problem = file_problem(frame)
        if problem:
            return problem
    return None


def asset_outputs_problem(asset_dir: Path, engine: str) -> str | None:
    """Why a finished reconstruct stage's outputs cannot be trusted, or None."""
    for name in SPLATFACTO_ASSET_FILES if engine == "splatfacto" else ASSET_FILES:
        problem = file_problem(asset_dir / name)
        if problem:
            return problem
    listed = json.loads((asset_dir / "report.json").read_text()).get("files", {})
    for name in listed_files(listed):  # the splat file (its name follows --splat-format), texture, mtl
        problem = file_problem(asset_dir / name)
        if problem:
            return problem
    transforms = json.loads((asset_dir / "transforms.json").read_text())
    for frame in transforms.get("frames", []):
        problem = file_problem(asset_dir / str(frame.get("file_path", "")))
        if problem:
            return problem
    return None


def listed_files(files: object) -> list[str]:
    """Every file name in report.json's (nested) "files" record."""
    if isinstance(files, str):
        return [files]
    if isinstance(files, dict):
        return [name for value in files.values() for name in listed_files(value)]
    if isinstance(files, list):
        return [name for value in files for name in listed_files(value)]
    return []


def remux_orbit(video_dir: Path, fps: int) -> None:
    """Rewrite orbit.mp4 from frames/ at another frame rate (the frames themselves are unchanged)."""
    import imageio.v3 as iio

    from droplet3d.generate import write_orbit_video

    frames = [iio.imread(p) for p in sorted((video_dir / "frames").glob("*.png"))]
    tmp = video_dir / f".orbit{STAGING_INFIX}{os.getpid()}.mp4"
    try:
        write_orbit_video(frames, tmp, fps)
        tmp.replace(video_dir / "orbit.mp4")
    finally:
        tmp.unlink(missing_ok=True)


def orbit_fps(video: Path) -> float | None:
    import imageio.v3 as iio

    try:
        return float(iio.immeta(video)["fps"])
    except Exception:  # unknown frame rate: re-mux to be sure
        return None


def run_stages(
    out: Path,
    stages: RunStages,
    quiet: bool,
    generate: Callable[[GenerateConfig], GenerateResult] | None = None,
    say: Callable[[str], None] = typer.echo,
) -> RunOutcome:
    """`run`'s two stages, each skipped only when its fingerprint matches and its outputs parse.

    Call with the run's lock held. A reconstruct-only run (`stages.generate` is None) reconstructs
    `stages.video` and has no video/ folder.
    """
    import droplet3d.generate
    from recon import api

    video_dir, asset_dir = out / "video", out / "asset"
    state = RunState.load(out)
    log = logger(quiet)
    seconds: dict[str, float] = {}
    gen = stages.generate
    if gen is None:
        assert stages.video is not None, "a reconstruct-only run names its video"
        video_dir = stages.video
    else:
        gen_key = stages.generate_key()
        problem = (
            generate_outputs_problem(video_dir, gen) if state.stages.get("generate") == gen_key else "changed"
        )
        if problem is None:
            say(f"generate: up to date in {video_dir}, skipped")
            if orbit_fps(video_dir / "orbit.mp4") != gen.fps:
                remux_orbit(video_dir, gen.fps)
        else:
            if problem != "changed":
                log(f"generate: {problem}; generating again")
            state.forget("generate")
            start = time.perf_counter()
            with staged_output(video_dir, True, generate_output_bytes(gen), lock=False) as tmp:
                # Looked up at call time, so a test's stand-in for droplet3d.generate.generate is used.
                result = generate(gen) if generate else droplet3d.generate.generate(gen, warn=warn)
                droplet3d.generate.write_outputs(result, tmp, fps=gen.fps, progress=not quiet)
            state.mark("generate", gen_key)
            seconds["generate"] = time.perf_counter() - start

    recon_key = stages.reconstruct_key(video_dir)
    problem = (
        asset_outputs_problem(asset_dir, stages.fit.engine) if state.stages.get("reconstruct") == recon_key
        else "changed"
    )  # fmt: skip
    if problem is None:
        say(f"reconstruct: up to date in {asset_dir}, skipped")
        return RunOutcome(json.loads((asset_dir / "report.json").read_text()), seconds)
    if problem != "changed":
        log(f"reconstruct: {problem}; reconstructing again")
    state.forget("reconstruct")
    start = time.perf_counter()
    with staged_output(asset_dir, True, lock=False) as tmp:
        report = api.reconstruct(stages.reconstruct_request(video_dir), tmp, progress=not quiet, log=log)
    state.mark("reconstruct", recon_key)
    seconds["reconstruct"] = time.perf_counter() - start
    return RunOutcome(report, seconds)
