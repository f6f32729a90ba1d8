"""The `droplet3d` command: one Typer app whose subcommands chain the three stages.

Only this module knows about both stage packages (`droplet3d` for generation, `recon` for poses,
fitting and export); they never import each other. Every subcommand follows the same contract:
bad input is reported in one line on stderr with exit code 2, and outputs are assembled in a
temporary sibling folder that is moved into place only once complete, so an interrupted or failed
run never leaves a half-written `--out` behind.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import typer

if TYPE_CHECKING:
    from droplet3d.generate import GenerateConfig

app = typer.Typer(
    name="droplet3d",
    help="Image + dense text -> 360-degree orbit video (Droplet3D) -> Gaussian splats and meshes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Image + dense text -> 360-degree orbit video (Droplet3D) -> Gaussian splats and meshes.

    Stages: `generate` (needs the Droplet3D-5B weights and, in practice, a CUDA GPU), `poses`,
    `reconstruct` (any orbit video with known circular poses), or `run` for all three. `demo`
    shows the reconstruction on a bundled orbit with no weights at all.
    """


EXIT_USAGE = 2
DEBUG_ENV = "DROPLET3D_DEBUG"
P = ParamSpec("P")
R = TypeVar("R")


class CLIError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


def fail(message: str) -> None:
    """Print a one-line error and exit with code 2 (no traceback)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(EXIT_USAGE)


def warn(message: str) -> None:
    typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)


# --------------------------------------------------------------------------- output safety
# Our own scratch names beside (or, for `run`, inside) an output folder. Anything matching them
# belongs to us: a crashed or killed run leaves them behind and the next run for the same --out
# removes them while it holds that --out's lock.
STAGING_INFIX = ".partial-"
LOCK_SUFFIX = ".lock"
# Room every command needs beyond its outputs (reports, previews, the mp4 muxer's buffers).
MIN_FREE_BYTES = 64 * 1024**2
FULL_PERMISSIONS = 0o777


def staging_prefix(out: Path) -> str:
    return f".{out.name}{STAGING_INFIX}"


def is_scratch(path: Path) -> bool:
    """Whether `path` is one of our staging folders or lock files (never user data)."""
    name = path.name
    return name.startswith(".") and (STAGING_INFIX in name or name.endswith(LOCK_SUFFIX))


def real_out(out: Path) -> Path:
    """The folder --out names, as an absolute path; a symlink is followed so we write through it.

    Staging happens beside the real folder (the rename must stay on one filesystem) and the link keeps
    pointing at the new contents. A link to a file, or a loop, is a one-line error.
    """
    out = Path(os.path.abspath(out))
    if not out.is_symlink():
        return out
    try:
        target = out.resolve(strict=False)
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop on Python < 3.13
        raise CLIError(f"--out {out} is a symlink that cannot be resolved: {exc}") from exc
    if target.exists() and not target.is_dir():
        raise CLIError(f"--out {out} is a symlink to {target}, which is not a folder")
    return target


def refuse_overlap(out: Path, inputs: dict[str, Path | None]) -> None:
    """An --out that is, contains or lies inside an input would destroy that input on replace."""
    target = real_out(out)
    for label, path in inputs.items():
        if path is None:
            continue
        source = Path(path).resolve()
        if target == source:
            raise CLIError(f"--out {out} is the {label} {path}; choose another output folder")
        if target in source.parents:
            raise CLIError(f"--out {out} contains the {label} {path}; choose another output folder")
        if source in target.parents:
            raise CLIError(f"--out {out} lies inside the {label} {path}; choose another output folder")
    if target == Path.cwd().resolve() or target in Path.cwd().resolve().parents:
        raise CLIError(f"--out {out} is the current folder or contains it; choose another output folder")


def user_entries(folder: Path) -> list[Path]:
    """What a folder holds apart from our own leftovers."""
    return [p for p in folder.iterdir() if not is_scratch(p)]


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse to clobber a non-empty output folder unless asked to."""
    out = real_out(out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a folder")
    if out.is_dir() and user_entries(out) and not overwrite:
        raise CLIError(f"--out {out} exists and is not empty; pass --overwrite to replace it")


def make_parent(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"cannot create the output's parent folder {folder}: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def out_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on --out (a `.NAME.lock` file beside it) so two writers cannot race.

    flock locks vanish with their process, so a killed run never leaves a stuck lock. The lock file is
    removed on release; a waiter that locked the removed inode notices (the inode differs) and retries.
    """
    import fcntl

    lock = out.parent / f".{out.name}{LOCK_SUFFIX}"
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise CLIError(f"cannot write in {out.parent}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise CLIError(f"--out {out} is being written by another droplet3d process; wait for it") from exc
        try:
            current = os.stat(lock).st_ino
        except FileNotFoundError:
            current = -1
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        os.close(fd)


@contextlib.contextmanager
def terminate_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit while outputs are staged, so cleanup runs as it does on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def remove_stale_staging(out: Path) -> None:
    """Delete staging folders an earlier, killed run left for this --out (call with the lock held)."""
    for leftover in out.parent.glob(staging_prefix(out) + "*"):
        shutil.rmtree(leftover, ignore_errors=True)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_staging(out: Path) -> Path:
    """A fresh staging folder beside `out`, with the permissions a plain mkdir would give."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix=staging_prefix(out), dir=out.parent))
    except OSError as exc:
        raise CLIError(f"cannot write in {out.parent}: {exc.strerror or exc}") from exc
    os.chmod(tmp, FULL_PERMISSIONS & ~current_umask())  # mkdtemp makes 0700
    return tmp


def check_free_space(folder: Path, need_bytes: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise CLIError(
            f"not enough free space in {folder}: {free / 1024**2:.0f} MiB free, "
            f"about {need_bytes / 1024**2:.0f} MiB needed"
        )


def publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished `tmp` to `out`, deciding about --overwrite again at this very moment.

    Without --overwrite the rename itself is the check: POSIX replaces only an empty folder, so a file
    the user put in --out meanwhile makes it fail, and the result is kept beside --out instead.
    """
    if overwrite and out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} became a file while this ran; it was left untouched")
    old = None
    if overwrite and out.is_dir():
        old = out.parent / f"{staging_prefix(out)}old-{os.getpid()}"
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError as exc:
        if old is not None:
            os.rename(old, out)
            raise
        kept = out.with_name(f"{out.name}.new-{os.getpid()}")
        os.rename(tmp, kept)
        raise CLIError(
            f"--out {out} was filled by someone else while this ran and was left untouched; "
            f"the result is in {kept}"
        ) from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_output(
    out: Path, overwrite: bool, need_bytes: int = MIN_FREE_BYTES, lock: bool = True
) -> Iterator[Path]:
    """Yield a staging folder beside `out`; move it to `out` only if the block succeeds.

    The staging folder lives in the same parent so the final rename is atomic on one filesystem. It is
    removed on any failure, Ctrl-C or SIGTERM; the lock keeps a second writer away (`lock=False` when
    the caller already holds a lock covering `out`, as `run` does for its stage folders).
    """
    out = real_out(out)
    check_out_dir(out, overwrite)
    make_parent(out.parent)
    with out_lock(out) if lock else contextlib.nullcontext(), terminate_as_exit():
        remove_stale_staging(out)
        tmp = make_staging(out)
        try:
            check_free_space(out.parent, need_bytes)
            yield tmp
            publish(tmp, out, overwrite)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def guarded(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn the stages' user-facing errors into a one-line message and exit code 2."""
    from droplet3d.errors import Droplet3DError
    from recon.errors import ReconError

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (CLIError, Droplet3DError, ReconError) as exc:
            fail(str(exc))
            raise AssertionError("unreachable") from exc
        except OSError as exc:  # a full or read-only disk, a vanished file: not a bug to trace
            if os.environ.get(DEBUG_ENV):
                raise
            where = f" ({exc.filename})" if exc.filename else ""
            fail(f"{exc.strerror or exc}{where}; set {DEBUG_ENV}=1 for the traceback")
            raise AssertionError("unreachable") from exc

    return wrapper


# --------------------------------------------------------------------------- generate
# Options shared by `generate` and `run` (one definition, one help text).
GENERATE_OPTIONS = {
    "ckpt": typer.Option(..., help="The released Droplet3D-5B/ folder (read offline, as published)."),
    "image": typer.Option(..., help="Input image: the object's first view (any size; resized)."),
    "prompt": typer.Option(
        None,
        help="Dense description of the object and the 360-degree orbit (the quality suffix is appended).",
    ),
    "prompt_file": typer.Option(None, help="Read the prompt from this UTF-8 text file instead."),
    "frames": typer.Option(85, help="Frames in the orbit; must be 4k+1 (85 in the paper)."),
    "height": typer.Option(512, help="Frame height in pixels, a multiple of 16."),
    "width": typer.Option(512, help="Frame width in pixels, a multiple of 16."),
    "steps": typer.Option(50, help="DDIM denoising steps."),
    "guidance_scale": typer.Option(6.0, help="Classifier-free guidance scale."),
    "seed": typer.Option(42, help="Seed of the initial noise and noise augmentation (runs are repeatable)."),
    "device": typer.Option("auto", help="auto (CUDA if present), cuda or cpu."),
    "dtype": typer.Option(
        "auto", help="auto (bfloat16 on CUDA, float32 on CPU), bfloat16, float16, float32."
    ),
    "noise_aug_strength": typer.Option(0.0563, help="Std of the noise added to the conditioning frame."),
    "view_align": typer.Option(
        False,
        help="First turn the image to the closest canonical view with FLUX.1-Kontext + the Droplet3D LoRA.",
    ),
    "align_max_area": typer.Option(1024**2, help="Pixel area Kontext resizes its input to (view alignment)."),
    "offload": typer.Option(
        "none", help="Memory mode on CUDA: none (fastest), model (CPU offload per model), sequential (least)."
    ),
    "negative_prompt": typer.Option(
        "The video is low quality, blurry, distortion. ", help="Negative prompt for classifier-free guidance."
    ),
    "fps": typer.Option(8, help="Frame rate of orbit.mp4."),
    "vae_tiling": typer.Option(False, help="Decode in spatial tiles (less memory, tiny seams)."),
    "quiet": typer.Option(False, help="No progress bars."),
}


def generate_config(params: dict[str, object]) -> GenerateConfig:
    """The GenerateConfig of a command's parameters (those named like its fields)."""
    from droplet3d.generate import GenerateConfig  # noqa: F811 - imported lazily: torch is slow to import

    names = {f.name for f in dataclass_fields(GenerateConfig)} - {"prompt", "progress"}
    return GenerateConfig(
        prompt=read_prompt(params["prompt"], params["prompt_file"]),  # type: ignore[arg-type]
        progress=not params["quiet"],
        **{k: v for k, v in params.items() if k in names},  # type: ignore[arg-type]
    )


@app.command(no_args_is_help=True)
@guarded
def generate(
    ckpt: Path = GENERATE_OPTIONS["ckpt"],
    image: Path = GENERATE_OPTIONS["image"],
    out: Path = typer.Option(..., help="Output folder: frames/, orbit.mp4, generation.json."),
    prompt: str | None = GENERATE_OPTIONS["prompt"],
    prompt_file: Path | None = GENERATE_OPTIONS["prompt_file"],
    frames: int = GENERATE_OPTIONS["frames"],
    height: int = GENERATE_OPTIONS["height"],
    width: int = GENERATE_OPTIONS["width"],
    steps: int = GENERATE_OPTIONS["steps"],
    guidance_scale: float = GENERATE_OPTIONS["guidance_scale"],
    seed: int = GENERATE_OPTIONS["seed"],
    device: str = GENERATE_OPTIONS["device"],
    dtype: str = GENERATE_OPTIONS["dtype"],
    noise_aug_strength: float = GENERATE_OPTIONS["noise_aug_strength"],
    view_align: bool = GENERATE_OPTIONS["view_align"],
    align_max_area: int = GENERATE_OPTIONS["align_max_area"],
    offload: str = GENERATE_OPTIONS["offload"],
    negative_prompt: str = GENERATE_OPTIONS["negative_prompt"],
    fps: int = GENERATE_OPTIONS["fps"],
    vae_tiling: bool = GENERATE_OPTIONS["vae_tiling"],
    overwrite: bool = typer.Option(False, help="Replace a non-empty --out folder."),
    quiet: bool = GENERATE_OPTIONS["quiet"],
) -> None:
    """Generate an 85-frame 360-degree orbit video from one image and a dense text description."""
    from droplet3d.generate import generate as run_generate
    from droplet3d.generate import validate as validate_generate
    from droplet3d.generate import write_outputs

    config = generate_config(locals())
    refuse_overlap(out, {"image": image, "checkpoint": ckpt, "prompt file": prompt_file})
    validate_generate(config)
    check_out_dir(out, overwrite)
    with staged_output(out, overwrite, generate_output_bytes(config)) as tmp:
        result = run_generate(config, warn=warn)
        write_outputs(result, tmp, fps=fps, progress=not quiet)
    typer.echo(f"wrote {len(result.frames)} frames to {out / 'frames'} and {out / 'orbit.mp4'}")


# Upper bound of the bytes per frame pixel `generate` writes: a lossless PNG of noise is about the raw
# RGB size (3 bytes), orbit.mp4 is far smaller; 4 leaves room for generation.json and aligned_input.png.
OUTPUT_BYTES_PER_PIXEL = 4


def generate_output_bytes(config: GenerateConfig) -> int:
    """Disk space `generate` needs for its outputs, checked before the slow work starts."""
    return MIN_FREE_BYTES + config.frames * config.height * config.width * OUTPUT_BYTES_PER_PIXEL


def read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    """Exactly one of --prompt / --prompt-file."""
    if (prompt is None) == (prompt_file is None):
        raise CLIError("give exactly one of --prompt or --prompt-file")
    if prompt_file is not None:
        try:
            return prompt_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise CLIError(f"cannot read --prompt-file {prompt_file}: {exc}") from exc
    return prompt or ""


# --------------------------------------------------------------------------- run (resumable)
RUN_STATE = "run.json"


def fingerprint(data: object) -> str:
    """A stable hash of JSON-able parameters: equal parameters, equal fingerprint."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def folder_digest(folder: Path) -> str:
    """Hash of every file's name and bytes under `folder` (what a later stage consumes)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass
class RunState:
    """`run.json`: the fingerprint of the inputs each finished stage was made from."""

    path: Path
    stages: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, out: Path) -> RunState:
        path = out / RUN_STATE
        try:
            stages = json.loads(path.read_text()).get("stages", {}) if path.is_file() else {}
        except (OSError, ValueError):
            stages = {}  # a damaged state file only costs a redo
        return cls(path, stages if isinstance(stages, dict) else {})

    def is_done(self, stage: str, key: str, marker: Path) -> bool:
        return self.stages.get(stage) == key and marker.is_file()

    def mark(self, stage: str, key: str) -> None:
        self.stages[stage] = key
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"stages": self.stages}, indent=2))
        tmp.replace(self.path)


def check_run_out(out: Path, overwrite: bool) -> None:
    """A run folder may be resumed; any other non-empty folder needs --overwrite.

    A folder holding only our own leftovers (staging folders of a killed run) counts as a run folder.
    Call with the lock on `out` held: the replacing happens here.
    """
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a folder")
    if out.is_dir() and user_entries(out) and not (out / RUN_STATE).is_file():
        if not overwrite:
            raise CLIError(
                f"--out {out} is not empty and holds no {RUN_STATE}; pass --overwrite to replace it"
            )
        shutil.rmtree(out)


def remove_run_leftovers(out: Path) -> None:
    """Staging folders a killed `run` left inside its folder (call with the run's lock held)."""
    for leftover in out.glob(".*" + STAGING_INFIX + "*"):
        shutil.rmtree(leftover, ignore_errors=True)


# --------------------------------------------------------------------------- info
INFO_PACKAGES = (
    "droplet3d", "torch", "diffusers", "transformers", "safetensors", "peft", "accelerate", "sentencepiece",
    "protobuf", "gsplat", "trimesh", "open3d", "typer", "imageio", "imageio-ffmpeg", "nerfstudio",
)  # fmt: skip


def gsplat_kernel_status() -> str:
    """Whether gsplat's CUDA kernels are usable, cached, or will compile on first use."""
    import importlib.util

    import torch

    if importlib.util.find_spec("gsplat") is None:
        return "gsplat not installed (the CPU rasteriser is used)"
    if not torch.cuda.is_available():
        return "no CUDA: gsplat kernels unavailable, the pure-PyTorch rasteriser is used"
    if importlib.util.find_spec("gsplat.csrc") is not None:
        return "precompiled"
    try:
        from torch.utils.cpp_extension import _get_build_directory

        build = Path(_get_build_directory("gsplat_cuda", verbose=False))
        if (build / "gsplat_cuda.so").exists():
            return f"compiled (cached in {build})"
    except Exception:  # private torch helper: status only, never fatal
        pass
    return "not compiled yet: gsplat compiles its CUDA kernels on first use (a few minutes, once)"


@app.command()
@guarded
def info(
    ckpt: Path | None = typer.Option(
        None,
        help="Also check this Droplet3D-5B folder: files, configs and weight shapes (no weights loaded).",
    ),
    view_align: bool = typer.Option(True, help="With --ckpt: also require FLUX.1-Kontext-dev/ and the LoRA."),
) -> None:
    """Versions, device, gsplat kernel status, and an offline check of a checkpoint folder."""
    from importlib import metadata

    import torch

    for name in INFO_PACKAGES:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "not installed" + (" (optional extra: pip install 'droplet3d[nerfstudio]')"
                                         if name == "nerfstudio" else "")  # fmt: skip
        typer.echo(f"{name:>15}: {version}")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        memory = f"{props.total_memory / 1024**3:.0f} GiB"
        typer.echo(f"{'device':>15}: cuda ({props.name}, {memory}), CUDA {torch.version.cuda}")
    else:
        threads = torch.get_num_threads()
        typer.echo(f"{'device':>15}: cpu only ({threads} threads); generation needs a CUDA GPU in practice")
    typer.echo(f"{'gsplat kernels':>15}: {gsplat_kernel_status()}")
    if ckpt is None:
        return
    from droplet3d.checkpoint import check_checkpoint

    report = check_checkpoint(ckpt, view_align=view_align)
    for component, summary in report.found.items():
        typer.echo(f"{component:>15}: {summary}")
    if not report.ok:
        for problem in report.problems:
            typer.secho(f"problem: {problem}", fg=typer.colors.RED, err=True)
        raise CLIError(f"checkpoint {ckpt} has {len(report.problems)} problem(s), listed above")
    typer.echo(f"checkpoint {ckpt}: OK")


# --------------------------------------------------------------------------- poses / reconstruct / demo
INPUT_HELP = "Orbit video file, folder of frames, or a `generate` output folder."
ORBIT_HELP = {
    "elevation": "Camera elevation in degrees above the object (positive = looking down), |value| < 90.",
    "radius": "Camera distance from the object's centre, > 0 (world units; the object is ~1 unit across).",
    "fov": "Full vertical field of view in degrees, in (0, 180).",
    "start_azimuth": "Azimuth of frame 0 in degrees, measured from +X toward +Y (world +Z up).",
    "direction": "Orbit direction seen from above: ccw (counter-clockwise) or cw.",
    "full_turn": "The last frame repeats the first view (step 360/(N-1)); default: it does not (360/N).",
    "config": "JSON config file with 'orbit', 'fit', 'mesh' and 'preset' keys (see configs/); "
    "command-line options override it.",
}


def orbit_options(
    elevation: float | None, radius: float | None, fov: float | None, start_azimuth: float | None,
    direction: str | None, full_turn: bool | None,
) -> dict[str, object]:  # fmt: skip
    """The orbit options actually given (None = take the preset / generation.json / config value)."""
    return {
        "elevation": elevation, "radius": radius, "fov": fov, "start_azimuth": start_azimuth,
        "direction": direction, "full_turn": full_turn,
    }  # fmt: skip


@app.command(no_args_is_help=True)
@guarded
def poses(
    input: Path = typer.Argument(..., help=INPUT_HELP),
    out: Path = typer.Option(..., help="Output folder: images/ and a nerfstudio transforms.json."),
    elevation: float | None = typer.Option(None, help=ORBIT_HELP["elevation"] + " (preset: 15)"),
    radius: float | None = typer.Option(None, help=ORBIT_HELP["radius"] + " (preset: 2.0)"),
    fov: float | None = typer.Option(None, help=ORBIT_HELP["fov"] + " (preset: 45)"),
    start_azimuth: float | None = typer.Option(None, help=ORBIT_HELP["start_azimuth"] + " (preset: 0)"),
    direction: str | None = typer.Option(None, help=ORBIT_HELP["direction"] + " (preset: ccw)"),
    full_turn: bool | None = typer.Option(
        None, "--full-turn/--no-full-turn", help=ORBIT_HELP["full_turn"], show_default=False
    ),
    config: Path | None = typer.Option(None, help=ORBIT_HELP["config"]),
    overwrite: bool = typer.Option(False, help="Replace a non-empty --out folder."),
) -> None:
    """Known circular poses for an orbit: images/ + transforms.json (nerfstudio, OpenGL camera-to-world)."""
    from recon import api

    options = orbit_options(elevation, radius, fov, start_azimuth, direction, full_turn)
    refuse_overlap(out, {"input": input, "config file": config})
    with staged_output(out, overwrite) as tmp:
        summary = api.poses(input, tmp, options, config)
    typer.echo(f"wrote {summary['frames']} posed frames to {out / 'images'} and {out / 'transforms.json'}")


@app.command(no_args_is_help=True)
@guarded
def reconstruct(
    input: Path = typer.Argument(..., help=INPUT_HELP),
    out: Path = typer.Option(
        ..., help="Output folder: splats.ply, mesh.glb/.ply/.obj, preview.mp4, report.json, transforms.json."
    ),
    elevation: float | None = typer.Option(None, help=ORBIT_HELP["elevation"] + " (preset: 15)"),
    radius: float | None = typer.Option(None, help=ORBIT_HELP["radius"] + " (preset: 2.0)"),
    fov: float | None = typer.Option(None, help=ORBIT_HELP["fov"] + " (preset: 45)"),
    start_azimuth: float | None = typer.Option(None, help=ORBIT_HELP["start_azimuth"] + " (preset: 0)"),
    direction: str | None = typer.Option(None, help=ORBIT_HELP["direction"] + " (preset: ccw)"),
    full_turn: bool | None = typer.Option(
        None, "--full-turn/--no-full-turn", help=ORBIT_HELP["full_turn"], show_default=False
    ),
    preset: str | None = typer.Option(None, help="fast or quality (default: quality on CUDA, fast on CPU)."),
    iterations: int | None = typer.Option(None, help="Training steps (fast: 600, quality: 7000)."),
    device: str = typer.Option("auto", help="auto (CUDA if present), cuda or cpu."),
    sh_degree: int | None = typer.Option(None, help="Spherical-harmonics degree 0-3 (fast: 1, quality: 3)."),
    resolution: int | None = typer.Option(
        None, help="Longest image side used for fitting; frames are downscaled (fast: 128, quality: 512)."
    ),
    seed: int | None = typer.Option(None, help="Random seed of the initialisation and view order (0)."),
    engine: str = typer.Option(
        "gsplat", help="gsplat (built in) or splatfacto (nerfstudio's ns-train; needs the nerfstudio extra)."
    ),
    config: Path | None = typer.Option(None, help=ORBIT_HELP["config"]),
    overwrite: bool = typer.Option(False, help="Replace a non-empty --out folder."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Fit Gaussian splats to an orbit with known poses and export splats, meshes and a turntable preview."""
    from recon import api

    options = orbit_options(elevation, radius, fov, start_azimuth, direction, full_turn)
    fit_options = {"iterations": iterations, "device": device, "sh_degree": sh_degree,
                   "resolution": resolution, "seed": seed}  # fmt: skip
    refuse_overlap(out, {"input": input, "config file": config})
    with staged_output(out, overwrite) as tmp:
        report = api.reconstruct(
            input, tmp, options, fit_options, preset, config, engine, progress=not quiet,
            log=_logger(quiet),
        )  # fmt: skip
    print_outputs(out, report)


def _logger(quiet: bool) -> Callable[[str], None]:
    return (lambda _m: None) if quiet else (lambda m: typer.echo(m, err=True))


def print_outputs(out: Path, report: dict[str, object]) -> None:
    if "gaussians" in report:
        psnr = report["psnr"]["mean"]  # type: ignore[index]
        typer.echo(f"{report['gaussians']} gaussians, mean training PSNR {psnr:.2f} dB")
    for name in ("mesh.glb", "splats.ply", "mesh.ply", "mesh.obj", "preview.mp4", "report.json"):
        if (out / name).is_file():
            typer.echo(f"{name:>12}: {out / name}")


@app.command()
@guarded
def demo(
    out: Path = typer.Option(Path("droplet3d-demo"), help="Output folder for the demo's files."),
    device: str = typer.Option("auto", help="auto (CUDA if present), cuda or cpu."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty --out folder."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Reconstruct the bundled example orbit (no weights needed): .glb, .ply and a preview in a minute."""
    from recon import api

    with staged_output(out, overwrite) as tmp:
        report = api.demo(tmp, device, progress=not quiet, log=_logger(quiet))
    print_outputs(out, report)


# --------------------------------------------------------------------------- run
@app.command(no_args_is_help=True)
@guarded
def run(
    ckpt: Path = GENERATE_OPTIONS["ckpt"],
    image: Path = GENERATE_OPTIONS["image"],
    out: Path = typer.Option(..., help="Run folder: video/ (generate), asset/ (reconstruct) and run.json."),
    prompt: str | None = GENERATE_OPTIONS["prompt"],
    prompt_file: Path | None = GENERATE_OPTIONS["prompt_file"],
    frames: int = GENERATE_OPTIONS["frames"],
    height: int = GENERATE_OPTIONS["height"],
    width: int = GENERATE_OPTIONS["width"],
    steps: int = GENERATE_OPTIONS["steps"],
    guidance_scale: float = GENERATE_OPTIONS["guidance_scale"],
    seed: int = GENERATE_OPTIONS["seed"],
    dtype: str = GENERATE_OPTIONS["dtype"],
    noise_aug_strength: float = GENERATE_OPTIONS["noise_aug_strength"],
    view_align: bool = GENERATE_OPTIONS["view_align"],
    align_max_area: int = GENERATE_OPTIONS["align_max_area"],
    offload: str = GENERATE_OPTIONS["offload"],
    negative_prompt: str = GENERATE_OPTIONS["negative_prompt"],
    fps: int = GENERATE_OPTIONS["fps"],
    vae_tiling: bool = GENERATE_OPTIONS["vae_tiling"],
    elevation: float | None = typer.Option(
        None, help=ORBIT_HELP["elevation"], rich_help_panel="Reconstruction"
    ),
    radius: float | None = typer.Option(None, help=ORBIT_HELP["radius"], rich_help_panel="Reconstruction"),
    fov: float | None = typer.Option(None, help=ORBIT_HELP["fov"], rich_help_panel="Reconstruction"),
    start_azimuth: float | None = typer.Option(
        None, help=ORBIT_HELP["start_azimuth"], rich_help_panel="Reconstruction"
    ),
    direction: str | None = typer.Option(
        None, help=ORBIT_HELP["direction"], rich_help_panel="Reconstruction"
    ),
    full_turn: bool | None = typer.Option(
        None, "--full-turn/--no-full-turn", help=ORBIT_HELP["full_turn"], rich_help_panel="Reconstruction"
    ),
    preset: str | None = typer.Option(
        None,
        help="fast or quality (default: quality on CUDA, fast on CPU).",
        rich_help_panel="Reconstruction",
    ),
    iterations: int | None = typer.Option(
        None, help="Training steps (default: the preset's).", rich_help_panel="Reconstruction"
    ),
    sh_degree: int | None = typer.Option(
        None, help="Spherical-harmonics degree 0-3.", rich_help_panel="Reconstruction"
    ),
    resolution: int | None = typer.Option(
        None, help="Longest image side used for fitting.", rich_help_panel="Reconstruction"
    ),
    config: Path | None = typer.Option(None, help=ORBIT_HELP["config"], rich_help_panel="Reconstruction"),
    device: str = typer.Option("auto", help="auto (CUDA if present), cuda or cpu, for both stages."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty --out that is not a run folder."),
    quiet: bool = GENERATE_OPTIONS["quiet"],
) -> None:
    """Image + text -> orbit video -> splats and meshes, in one command.

    Re-running with the same --out resumes: a stage whose outputs exist and whose inputs and
    parameters are unchanged is skipped; a changed parameter redoes that stage and what follows.
    """
    from droplet3d.generate import validate as validate_generate

    gen_config = generate_config(locals())
    orbit = orbit_options(elevation, radius, fov, start_azimuth, direction, full_turn)
    fit_options = {
        "iterations": iterations,
        "device": device,
        "sh_degree": sh_degree,
        "resolution": resolution,
    }
    refuse_overlap(
        out, {"image": image, "checkpoint": ckpt, "prompt file": prompt_file, "config file": config}
    )
    validate_generate(gen_config)
    if not image.is_file():
        raise CLIError(f"image {image} does not exist")
    out = real_out(out)
    make_parent(out.parent)
    with out_lock(out), terminate_as_exit():
        check_run_out(out, overwrite)
        out.mkdir(exist_ok=True)
        remove_run_leftovers(out)
        report = run_stages(out, gen_config, orbit, fit_options, preset, config, quiet)
    typer.echo(f"video: {out / 'video' / 'orbit.mp4'}")
    print_outputs(out / "asset", report)


def run_stages(
    out: Path, gen_config: GenerateConfig, orbit: dict[str, object], fit_options: dict[str, object],
    preset: str | None, config: Path | None, quiet: bool,
) -> dict[str, object]:  # fmt: skip
    """`run`'s two stages, each skipped when run.json says its inputs are unchanged (lock held)."""
    from droplet3d.generate import generate as run_generate
    from droplet3d.generate import write_outputs
    from recon import api

    video_dir, asset_dir = out / "video", out / "asset"
    state = RunState.load(out)
    log = _logger(quiet)
    gen_params = {k: v for k, v in vars(gen_config).items() if k != "progress"}
    gen_key = fingerprint(
        {
            "params": gen_params,
            "image": hashlib.sha256(gen_config.image.read_bytes()).hexdigest(),
            "ckpt": gen_config.ckpt.resolve(),
        }
    )
    if state.is_done("generate", gen_key, video_dir / "generation.json"):
        typer.echo(f"generate: up to date in {video_dir}, skipped")
    else:
        with staged_output(video_dir, True, generate_output_bytes(gen_config), lock=False) as tmp:
            result = run_generate(gen_config, warn=warn)
            write_outputs(result, tmp, fps=gen_config.fps, progress=not quiet)
        state.mark("generate", gen_key)

    config_text = config.read_text() if config is not None and config.is_file() else None
    recon_key = fingerprint(
        {"orbit": orbit, "fit": fit_options, "preset": preset, "config": config_text,
         "video": folder_digest(video_dir / "frames")}
    )  # fmt: skip
    if state.is_done("reconstruct", recon_key, asset_dir / "report.json"):
        typer.echo(f"reconstruct: up to date in {asset_dir}, skipped")
        return json.loads((asset_dir / "report.json").read_text())
    with staged_output(asset_dir, True, lock=False) as tmp:
        report = api.reconstruct(
            video_dir, tmp, orbit, fit_options, preset, config, progress=not quiet, log=log
        )
    state.mark("reconstruct", recon_key)
    return report


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
