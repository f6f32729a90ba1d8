"""The `droplet3d` command: one Typer app whose subcommands chain the three stages.

Only this module knows about both stage packages (`droplet3d` for generation, `recon` for poses,
fitting and export); they never import each other. Every subcommand follows the same contract:

- every option is defined once (OPTIONS) with its bounds, and everything is validated before the slow
  work; bad input is one `error:` line on stderr with exit code 2, never a traceback;
- outputs are assembled in a staging folder beside --out and moved into place only once complete
  (removed on failure, Ctrl-C or SIGTERM, and by the next run if the process was killed);
- --out never overlaps an input, is locked against a second writer, is re-checked at the moment of
  replacing, is written through when it is a symlink, and gets umask permissions.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import typer
from typer.core import TyperGroup

if TYPE_CHECKING:
    from droplet3d.generate import GenerateConfig, GenerateResult

# Typer vendors click privately; these are the public typer.BadParameter's base classes.
USAGE_ERROR: type[Exception] = typer.BadParameter.__bases__[0]
CLICK_EXCEPTION: type[Exception] = USAGE_ERROR.__bases__[0]


class OneLineErrors(TyperGroup):
    """Typer's group, but a bad option value is one `error:` line (exit 2), like every other error.

    Typer draws click's usage errors in a multi-line box; scripts and people grepping logs get the same
    single line as for the errors our commands raise.
    """

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except USAGE_ERROR as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # Typer's own test: it printed the help
                sys.exit(exc.exit_code)
            typer.secho(f"error: {exc.format_message()}", fg=typer.colors.RED, err=True)
            sys.exit(exc.exit_code)
        except CLICK_EXCEPTION as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
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


# --------------------------------------------------------------------------- progress in logs
PROGRESS_LINE_PERCENT = 5  # piped progress: one line each time a bar crosses another 5%
PERCENT = 100


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


@contextlib.contextmanager
def progress_lines_when_piped() -> Iterator[None]:
    """While a command runs, progress bars writing to a pipe or file print whole lines, one per 5%.

    tqdm redraws a line with carriage returns up to ten times a second, which in a CI log or `2> log`
    becomes megabytes of one-line noise. Every bar in the stack (ours, diffusers', the fit loop's) is a
    tqdm, so this swaps tqdm's `display` for one that, for a non-terminal stream only, writes a line
    when the bar enters a new 5% step (or doubles its count when the total is unknown) and never a
    carriage return. Terminals keep the live bars.
    """
    from tqdm import std

    terminal_display = std.tqdm.display

    def step_of(bar: Any) -> int:
        if bar.total:
            return min(int(bar.n * PERCENT / bar.total), PERCENT) // PROGRESS_LINE_PERCENT
        return max(int(bar.n), 1).bit_length()  # unknown length: a line per doubling

    def display(bar: Any, msg: str | None = None, pos: int | None = None) -> bool:
        if is_terminal(bar.fp):
            return terminal_display(bar, msg, pos)
        if msg is None or msg == "":  # an update, or close() clearing the bar: log a new step once
            if getattr(bar, "_logged_step", None) != step_of(bar):
                bar._logged_step = step_of(bar)
                bar.fp.write(str(bar).strip() + "\n")
                bar.fp.flush()
        else:
            bar.fp.write(msg.strip() + "\n")
        return False  # nothing to clear: close() must not write its carriage return

    std.tqdm.display = display
    try:
        yield
    finally:
        std.tqdm.display = terminal_display


def guarded(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn the stages' user-facing errors into a one-line message and exit code 2."""
    from droplet3d.errors import Droplet3DError
    from recon.errors import ReconError

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            with progress_lines_when_piped():
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


# --------------------------------------------------------------------------- options
# Every option is defined here once (default, bounds, help, panel) and used by each command that takes
# it, so `generate`, `poses`, `reconstruct` and `run` cannot drift apart. Bounds are the widest values a
# stage can sensibly run with; anything beyond is a typo (`--steps 1e12`) that would otherwise surface
# as a crash or an endless run much later.
MAX_SEED = 2**32 - 1  # the range numpy's and torch's generators both accept
MAX_STEPS = 1000  # DDIM cannot take more steps than the scheduler's 1000 training timesteps
MAX_GENERATE_FRAMES = 257  # 3x the paper's 85; the VAE's memory grows with the frame count
MAX_SIDE = 2048  # pixels, per side of a generated frame
MAX_GUIDANCE = 50.0
MAX_NOISE_AUG = 1.0  # a std on images in [-1, 1]: more is pure noise
MIN_ALIGN_AREA = 64 * 64
MAX_ALIGN_AREA = 4096 * 4096
MAX_FPS = 240
MAX_ITERATIONS = 1_000_000
MIN_FIT_RESOLUTION = 16
MAX_FIT_RESOLUTION = 4096
MAX_SH_DEGREE = 3
MIN_RADIUS = 0.05  # = recon.poses.MIN_RADIUS (--help imports no numpy; tests/test_recon_poses.py checks)
# = recon.asset's MIN_FACES, MIN_TEXTURE_SIZE (it imports torch; tests/test_recon_export.py checks)
MIN_FACES = 100
MIN_TEXTURE_SIZE = 64
# = droplet3d.prepare's DEFAULT_BACKGROUND, BACKGROUNDS, DEFAULT_FILL, MIN_FILL, MAX_FILL (that package
# imports torch; tests/test_prepare.py checks they agree).
DEFAULT_BACKGROUND = "black"
BACKGROUND_NAMES = ("black", "white", "grey")
DEFAULT_FILL = 0.85
MIN_FILL = 0.1
MAX_FILL = 1.0

GENERATION_PANEL = "Generation"
PREPARE_PANEL = "Input image"
ORBIT_PANEL = "Orbit (poses)"
FIT_PANEL = "Reconstruction"
EXPORT_PANEL = "Export"


def finite(value: float | None) -> float | None:
    """Option callback: nan and inf pass click's range checks (every comparison is False)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}")
    return value


CKPT_HELP = "The released Droplet3D-5B/ folder (read offline, as published)."
OPTIONS: dict[str, Any] = {
    # generation
    "ckpt": typer.Option(..., help=CKPT_HELP, rich_help_panel=GENERATION_PANEL),
    "image": typer.Option(
        ...,
        help="Input image: the object's first view (any size; resized).",
        rich_help_panel=GENERATION_PANEL,
    ),
    "prompt": typer.Option(
        None,
        help="Dense description of the object and the 360-degree orbit (the quality suffix is appended).",
        rich_help_panel=GENERATION_PANEL,
    ),
    "prompt_file": typer.Option(
        None, help="Read the prompt from this UTF-8 text file instead.", rich_help_panel=GENERATION_PANEL
    ),
    "frames": typer.Option(
        85, max=MAX_GENERATE_FRAMES, help="Frames in the orbit; must be 4k+1 (85 in the paper).",
        rich_help_panel=GENERATION_PANEL,
    ),
    "height": typer.Option(
        512, min=16, max=MAX_SIDE, help="Frame height in pixels, a multiple of 16.",
        rich_help_panel=GENERATION_PANEL,
    ),
    "width": typer.Option(
        512, min=16, max=MAX_SIDE, help="Frame width in pixels, a multiple of 16.",
        rich_help_panel=GENERATION_PANEL,
    ),
    "steps": typer.Option(
        50, min=1, max=MAX_STEPS, help="DDIM denoising steps.", rich_help_panel=GENERATION_PANEL
    ),
    "guidance_scale": typer.Option(
        6.0, min=0.0, max=MAX_GUIDANCE, callback=finite, help="Classifier-free guidance scale.",
        rich_help_panel=GENERATION_PANEL,
    ),
    "seed": typer.Option(
        42, min=0, max=MAX_SEED,
        help="Seed of the initial noise and noise augmentation (runs are repeatable).",
        rich_help_panel=GENERATION_PANEL,
    ),
    "dtype": typer.Option(
        "auto", help="auto (bfloat16 on CUDA, float32 on CPU), bfloat16, float16, float32.",
        rich_help_panel=GENERATION_PANEL,
    ),
    "noise_aug_strength": typer.Option(
        0.0563, min=0.0, max=MAX_NOISE_AUG, callback=finite,
        help="Std of the noise added to the conditioning frame.", rich_help_panel=GENERATION_PANEL,
    ),
    "view_align": typer.Option(
        False,
        help="First turn the image to the closest canonical view with FLUX.1-Kontext + the Droplet3D LoRA.",
        rich_help_panel=GENERATION_PANEL,
    ),
    "align_max_area": typer.Option(
        1024**2, min=MIN_ALIGN_AREA, max=MAX_ALIGN_AREA,
        help="Pixel area Kontext resizes its input to (view alignment).", rich_help_panel=GENERATION_PANEL,
    ),
    "offload": typer.Option(
        "none",
        help="Memory mode on CUDA: none (fastest), model (CPU offload per model), sequential (least).",
        rich_help_panel=GENERATION_PANEL,
    ),
    "negative_prompt": typer.Option(
        "The video is low quality, blurry, distortion. ",  # = pipeline.DEFAULT_NEGATIVE_PROMPT
        help="Negative prompt for classifier-free guidance.",
        rich_help_panel=GENERATION_PANEL,
    ),
    "fps": typer.Option(
        8, min=1, max=MAX_FPS, help="Frame rate of orbit.mp4.", rich_help_panel=GENERATION_PANEL
    ),
    "vae_tiling": typer.Option(
        False, help="Decode in spatial tiles (less memory, tiny seams).", rich_help_panel=GENERATION_PANEL
    ),
    # input preparation (droplet3d/prepare.py); every command that takes --image takes these
    "background": typer.Option(
        DEFAULT_BACKGROUND, rich_help_panel=PREPARE_PANEL,
        help=f"Colour behind the object (transparent pixels, removed background, padding): "
        f"{', '.join(BACKGROUND_NAMES)} (black, as the published example).",
    ),
    "remove_background": typer.Option(
        False, rich_help_panel=PREPARE_PANEL,
        help="Separate the object from its background: with --segmenter's model, else by a flood fill of "
        "the border's colour (plain backgrounds only).",
    ),
    "segmenter": typer.Option(
        None, rich_help_panel=PREPARE_PANEL,
        help="U^2-Net .onnx model for --remove-background (e.g. rembg's u2net.onnx), or a folder holding "
        "one; read offline.",
    ),
    "recentre": typer.Option(
        True, "--recentre/--no-recentre", rich_help_panel=PREPARE_PANEL,
        help="Crop to the object (known from alpha or --remove-background), centre it and scale it to "
        "--fill; --no-recentre keeps the framing. Never stretched: padded to the frame's aspect.",
    ),
    "fill": typer.Option(
        DEFAULT_FILL, min=MIN_FILL, max=MAX_FILL, callback=finite, rich_help_panel=PREPARE_PANEL,
        help="How much of the frame the recentred object spans, along its tighter side (0.85: the "
        "published example).",
    ),
    # orbit
    "elevation": typer.Option(
        None, callback=finite, rich_help_panel=ORBIT_PANEL,
        help="Camera elevation in degrees above the object (positive = looking down), |value| < 90 "
        "(preset: 15).",
    ),
    "radius": typer.Option(
        None, callback=finite, rich_help_panel=ORBIT_PANEL,
        help=f"Camera distance from the object's centre, at least {MIN_RADIUS:g} (world units; the object is "
        "~1 unit across; preset: 2.0).",
    ),
    "fov": typer.Option(
        None, callback=finite, rich_help_panel=ORBIT_PANEL,
        help="Full vertical field of view in degrees, in (0, 180) (preset: 45).",
    ),
    "start_azimuth": typer.Option(
        None, callback=finite, rich_help_panel=ORBIT_PANEL,
        help="Azimuth of frame 0 in degrees, measured from +X toward +Y (world +Z up; preset: 0).",
    ),
    "direction": typer.Option(
        None, rich_help_panel=ORBIT_PANEL,
        help="Orbit direction seen from above: ccw (counter-clockwise) or cw (preset: ccw).",
    ),
    "full_turn": typer.Option(
        None, "--full-turn/--no-full-turn", show_default=False, rich_help_panel=ORBIT_PANEL,
        help="The last frame repeats the first view (step 360/(N-1)); default: it does not (360/N).",
    ),
    "orbit_mode": typer.Option(
        None, "--orbit", rich_help_panel=ORBIT_PANEL,
        help="auto: estimate elevation, fov, direction and full-turn from the frames (radius stays 2: the "
        "object's size follows), holding any value given; fixed: use the given and preset values. Default: "
        "auto when no orbit value is given (command line, --config, generation.json), else fixed.",
    ),
    "refine": typer.Option(
        None, "--refine/--no-refine", show_default=False, rich_help_panel=ORBIT_PANEL,
        help="Given orbit values are starting points of the estimate, not fixed, and every frame's pose and "
        "the focal length are refined with the splats (default: refine poses when the orbit is estimated).",
    ),
    "config": typer.Option(
        None, rich_help_panel=ORBIT_PANEL,
        help="JSON config file with 'orbit', 'fit', 'mesh' and 'preset' keys (see configs/); "
        "command-line options override it.",
    ),
    # reconstruction
    "preset": typer.Option(
        None, help="fast or quality (default: quality on CUDA, fast on CPU).", rich_help_panel=FIT_PANEL
    ),
    "iterations": typer.Option(
        None, min=1, max=MAX_ITERATIONS, help="Training steps (fast: 600, quality: 7000).",
        rich_help_panel=FIT_PANEL,
    ),
    "sh_degree": typer.Option(
        None, min=0, max=MAX_SH_DEGREE, help="Spherical-harmonics degree 0-3 (fast: 1, quality: 3).",
        rich_help_panel=FIT_PANEL,
    ),
    "resolution": typer.Option(
        None, min=MIN_FIT_RESOLUTION, max=MAX_FIT_RESOLUTION, rich_help_panel=FIT_PANEL,
        help="Longest image side used for fitting; frames are downscaled (fast: 128, quality: 512).",
    ),
    "fit_seed": typer.Option(
        None, "--seed", min=0, max=MAX_SEED, rich_help_panel=FIT_PANEL,
        help="Random seed of the initialisation and view order (default 0).",
    ),
    "engine": typer.Option(
        "gsplat", rich_help_panel=FIT_PANEL,
        help="gsplat (built in) or splatfacto (nerfstudio's ns-train; needs the nerfstudio extra; its "
        "re-centring, re-orientation and auto-scaling are turned off so its splats stay in our frame).",
    ),
    # every command
    "device": typer.Option("auto", help="auto (CUDA if present), cuda or cpu (or cuda:N)."),
    "overwrite": typer.Option(False, help="Replace a non-empty --out folder."),
    "quiet": typer.Option(False, help="No progress output."),
}  # fmt: skip
# Export (reconstruct, run, demo): how the mesh and splats are written (recon.asset.ExportConfig). None =
# not given, so a --config file's "mesh" section or the default applies.
OPTIONS.update({
    "faces": typer.Option(
        None, min=0, rich_help_panel=EXPORT_PANEL,
        help=f"Face budget of the mesh: quadric decimation to at most this many, at least {MIN_FACES} "
        "(default 50000; 0 = all).",
    ),
    "texture_size": typer.Option(
        None, min=MIN_TEXTURE_SIZE, max=8192, rich_help_panel=EXPORT_PANEL,
        help="Side of the baked base-colour texture in texels (default 2048).",
    ),
    "vertex_colors": typer.Option(
        None, "--vertex-colors/--texture", show_default=False, rich_help_panel=EXPORT_PANEL,
        help="Per-vertex colour instead of a UV texture (default: textured).",
    ),
    "splat_format": typer.Option(
        None, rich_help_panel=EXPORT_PANEL,
        help="Splat file: ply (standard 3DGS), splat (antimatter15) or ply-compressed (SuperSplat).",
    ),
})  # fmt: skip
EXPORT_NAMES = ("faces", "texture_size", "vertex_colors", "splat_format")
# `run` has two seeds: --seed is generation's (as in `generate`), this one the reconstruction's.
OPTIONS["run_fit_seed"] = typer.Option(
    None, "--fit-seed", min=0, max=MAX_SEED, rich_help_panel=FIT_PANEL,
    help="Random seed of the reconstruction's initialisation and view order (default 0).",
)  # fmt: skip
# `batch`: where and how the rows run. Its --ckpt means what it means elsewhere, but is optional: only
# rows with an image generate.
BATCH_PANEL = "Batch"
MAX_RESOURCES_PER_ROW = 1024.0  # CPUs or GPUs one row may ask Ray for; more is a typo
OPTIONS.update({
    "batch_ckpt": typer.Option(None, "--ckpt", help=CKPT_HELP, rich_help_panel=GENERATION_PANEL),
    "backend": typer.Option(
        "local", rich_help_panel=BATCH_PANEL,
        help="local: the rows one after another in this process; ray: each row a task on a Ray cluster "
        "(pip install 'droplet3d[ray]').",
    ),
    "address": typer.Option(
        "local", rich_help_panel=BATCH_PANEL,
        help="With --backend ray: local (start a Ray instance on this machine for this batch), auto (join "
        "the one `ray start` runs here, or $RAY_ADDRESS) or HOST:PORT of a cluster's head.",
    ),
    "gpus_per_row": typer.Option(
        None, min=0.0, max=MAX_RESOURCES_PER_ROW, callback=finite, rich_help_panel=BATCH_PANEL,
        help="With --backend ray: GPUs each row holds (fractions share a GPU; default 1 when the cluster "
        "has GPUs, else 0).",
    ),
    "cpus_per_row": typer.Option(
        1.0, min=0.0, max=MAX_RESOURCES_PER_ROW, callback=finite, rich_help_panel=BATCH_PANEL,
        help="With --backend ray: CPU cores each row holds (and uses as its thread count).",
    ),
})  # fmt: skip
INPUT_HELP = "Orbit video file, folder of frames, or a `generate` output folder."
ORBIT_NAMES = ("elevation", "radius", "fov", "start_azimuth", "direction", "full_turn")
# The input-preparation options: every command that generates (generate, run, batch) takes all of them.
PREPARE_NAMES = ("background", "remove_background", "segmenter", "recentre", "fill")


def orbit_options(params: dict[str, Any]) -> dict[str, object]:
    """The orbit options of a command's parameters (None = take the preset / generation.json / config),
    with --orbit and --refine as "mode" and "refine" (`recon.orbit_mode`)."""
    return {**{name: params[name] for name in ORBIT_NAMES}, "mode": params["orbit_mode"],
            "refine": params["refine"]}  # fmt: skip


def export_options(params: dict[str, Any]) -> dict[str, object]:
    """The export options of a command's parameters (None = take the config file's or the default)."""
    return {name: params[name] for name in EXPORT_NAMES}


def fit_options(params: dict[str, Any], seed_name: str = "seed") -> dict[str, object]:
    """The fitting options of a command's parameters (None = take the preset / config value)."""
    return {
        "iterations": params["iterations"], "device": params["device"], "sh_degree": params["sh_degree"],
        "resolution": params["resolution"], "seed": params[seed_name],
    }  # fmt: skip


def generate_config(params: dict[str, object]) -> GenerateConfig:
    """The GenerateConfig of a command's parameters (those named like its fields)."""
    from droplet3d.generate import GenerateConfig  # noqa: F811 - imported lazily: torch is slow to import

    names = {f.name for f in dataclass_fields(GenerateConfig)} - {"prompt", "progress"}
    return GenerateConfig(
        prompt=read_prompt(params["prompt"], params["prompt_file"]),  # type: ignore[arg-type]
        progress=not params["quiet"],
        **{k: v for k, v in params.items() if k in names},  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------- generate
@app.command(no_args_is_help=True)
@guarded
def generate(
    ckpt: Path = OPTIONS["ckpt"],
    image: Path = OPTIONS["image"],
    out: Path = typer.Option(..., help="Output folder: frames/, orbit.mp4, generation.json."),
    prompt: str | None = OPTIONS["prompt"],
    prompt_file: Path | None = OPTIONS["prompt_file"],
    frames: int = OPTIONS["frames"],
    height: int = OPTIONS["height"],
    width: int = OPTIONS["width"],
    steps: int = OPTIONS["steps"],
    guidance_scale: float = OPTIONS["guidance_scale"],
    seed: int = OPTIONS["seed"],
    device: str = OPTIONS["device"],
    dtype: str = OPTIONS["dtype"],
    noise_aug_strength: float = OPTIONS["noise_aug_strength"],
    view_align: bool = OPTIONS["view_align"],
    align_max_area: int = OPTIONS["align_max_area"],
    offload: str = OPTIONS["offload"],
    negative_prompt: str = OPTIONS["negative_prompt"],
    fps: int = OPTIONS["fps"],
    vae_tiling: bool = OPTIONS["vae_tiling"],
    background: str = OPTIONS["background"],
    remove_background: bool = OPTIONS["remove_background"],
    segmenter: Path | None = OPTIONS["segmenter"],
    recentre: bool = OPTIONS["recentre"],
    fill: float = OPTIONS["fill"],
    overwrite: bool = OPTIONS["overwrite"],
    quiet: bool = OPTIONS["quiet"],
) -> None:
    """Generate an 85-frame 360-degree orbit video from one image and a dense text description."""
    from droplet3d.generate import generate as run_generate
    from droplet3d.generate import validate as validate_generate
    from droplet3d.generate import write_outputs

    config = generate_config(locals())
    refuse_overlap(
        out, {"image": image, "checkpoint": ckpt, "prompt file": prompt_file, "segmenter": segmenter}
    )
    validate_generate(config)
    check_out_dir(out, overwrite)
    with staged_output(out, overwrite, generate_output_bytes(config)) as tmp:
        result = run_generate(config, warn=warn)
        write_outputs(result, tmp, fps=fps, progress=not quiet)
    typer.echo(f"wrote {len(result.frames)} frames to {out / 'frames'} and {out / 'orbit.mp4'}")


# Upper bound of the bytes per frame pixel `generate` writes: a lossless PNG of noise is about the raw
# RGB size (3 bytes), orbit.mp4 is far smaller; 4 leaves room for generation.json and the input images.
OUTPUT_BYTES_PER_PIXEL = 4


def generate_output_bytes(config: GenerateConfig) -> int:
    """Disk space `generate` needs for its outputs, checked before the slow work starts."""
    return MIN_FREE_BYTES + config.frames * config.height * config.width * OUTPUT_BYTES_PER_PIXEL


MAX_TEXT_TOKENS = 450  # = droplet3d.pipeline.MAX_TEXT_TOKENS (that module imports torch)
# A prompt file is read whole and recorded in generation.json; 450 T5 tokens are about 2-3 KB of English.
MAX_PROMPT_FILE_BYTES = 64 * 1024


def read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    """Exactly one of --prompt / --prompt-file."""
    if (prompt is None) == (prompt_file is None):
        raise CLIError("give exactly one of --prompt or --prompt-file")
    if prompt_file is not None:
        try:
            if prompt_file.stat().st_size > MAX_PROMPT_FILE_BYTES:
                raise CLIError(
                    f"--prompt-file {prompt_file} is {prompt_file.stat().st_size / 1024:.0f} KB; the text "
                    f"encoder reads {MAX_TEXT_TOKENS} tokens (a few KB), so at most "
                    f"{MAX_PROMPT_FILE_BYTES // 1024} KB are accepted"
                )
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


def path_digest(path: Path) -> str:
    """Hash of a file's name and bytes, or of a folder's files (`folder_digest`)."""
    if path.is_dir():
        return folder_digest(path)
    return hashlib.sha256(path.name.encode() + path.read_bytes()).hexdigest()


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

    def mark(self, stage: str, key: str) -> None:
        self.stages[stage] = key
        self._save()

    def forget(self, stage: str) -> None:
        """Drop a stage before redoing it: a run killed mid-stage must not look finished."""
        if self.stages.pop(stage, None) is not None:
            self._save()

    def _save(self) -> None:
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
    "protobuf", "onnxruntime", "gsplat", "trimesh", "open3d", "typer", "imageio", "imageio-ffmpeg",
    "nerfstudio",
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
@app.command(no_args_is_help=True)
@guarded
def poses(
    input: Path = typer.Argument(..., help=INPUT_HELP),
    out: Path = typer.Option(..., help="Output folder: images/ and a nerfstudio transforms.json."),
    elevation: float | None = OPTIONS["elevation"],
    radius: float | None = OPTIONS["radius"],
    fov: float | None = OPTIONS["fov"],
    start_azimuth: float | None = OPTIONS["start_azimuth"],
    direction: str | None = OPTIONS["direction"],
    full_turn: bool | None = OPTIONS["full_turn"],
    orbit_mode: str | None = OPTIONS["orbit_mode"],
    refine: bool | None = OPTIONS["refine"],
    config: Path | None = OPTIONS["config"],
    overwrite: bool = OPTIONS["overwrite"],
) -> None:
    """Known circular poses for an orbit: images/ + transforms.json (nerfstudio, OpenGL camera-to-world)."""
    from recon import api

    options = orbit_options(locals())
    refuse_overlap(out, {"input": input, "config file": config})
    with staged_output(out, overwrite) as tmp:
        summary = api.poses(input, tmp, options, config, log=lambda _m: None)
    if "summary" in summary["orbit_estimate"]:
        typer.echo(summary["orbit_estimate"]["summary"])
    typer.echo(f"wrote {summary['frames']} posed frames to {out / 'images'} and {out / 'transforms.json'}")


@app.command(no_args_is_help=True)
@guarded
def reconstruct(
    input: Path = typer.Argument(..., help=INPUT_HELP),
    out: Path = typer.Option(
        ..., help="Output folder: splats.ply, mesh.glb/.ply/.obj, preview.mp4, report.json, transforms.json."
    ),
    elevation: float | None = OPTIONS["elevation"],
    radius: float | None = OPTIONS["radius"],
    fov: float | None = OPTIONS["fov"],
    start_azimuth: float | None = OPTIONS["start_azimuth"],
    direction: str | None = OPTIONS["direction"],
    full_turn: bool | None = OPTIONS["full_turn"],
    orbit_mode: str | None = OPTIONS["orbit_mode"],
    refine: bool | None = OPTIONS["refine"],
    config: Path | None = OPTIONS["config"],
    preset: str | None = OPTIONS["preset"],
    iterations: int | None = OPTIONS["iterations"],
    sh_degree: int | None = OPTIONS["sh_degree"],
    resolution: int | None = OPTIONS["resolution"],
    seed: int | None = OPTIONS["fit_seed"],
    engine: str = OPTIONS["engine"],
    device: str = OPTIONS["device"],
    overwrite: bool = OPTIONS["overwrite"],
    quiet: bool = OPTIONS["quiet"],
    faces: int | None = OPTIONS["faces"],
    texture_size: int | None = OPTIONS["texture_size"],
    vertex_colors: bool | None = OPTIONS["vertex_colors"],
    splat_format: str | None = OPTIONS["splat_format"],
) -> None:
    """Fit Gaussian splats to an orbit with known poses and export splats, meshes and a turntable preview."""
    from recon import api

    params = locals()
    refuse_overlap(out, {"input": input, "config file": config})
    with staged_output(out, overwrite) as tmp:
        report = api.reconstruct(
            input, tmp, orbit_options(params), fit_options(params), preset, config, engine,
            progress=not quiet, log=_logger(quiet), export_options=export_options(params),
        )  # fmt: skip
    print_outputs(out, report)


def _logger(quiet: bool) -> Callable[[str], None]:
    return (lambda _m: None) if quiet else (lambda m: typer.echo(m, err=True))


def print_outputs(out: Path, report: dict[str, object]) -> None:
    estimate = report.get("orbit_estimate")
    if isinstance(estimate, dict) and "summary" in estimate:
        typer.echo(estimate["summary"])
    if "gaussians" in report:
        psnr = report["psnr"]["mean"]  # type: ignore[index]
        typer.echo(f"{report['gaussians']} gaussians, mean training PSNR {psnr:.2f} dB")
    names = ("mesh.glb", "splats.ply", "splats.splat", "splats.compressed.ply", "mesh.ply", "mesh.obj",
             "mesh.mtl", "preview.mp4", "report.json")  # fmt: skip
    for name in names:
        if (out / name).is_file():
            typer.echo(f"{name:>12}: {out / name}")


@app.command()
@guarded
def demo(
    out: Path = typer.Option(Path("droplet3d-demo"), help="Output folder for the demo's files."),
    device: str = OPTIONS["device"],
    overwrite: bool = OPTIONS["overwrite"],
    quiet: bool = OPTIONS["quiet"],
    faces: int | None = OPTIONS["faces"],
    texture_size: int | None = OPTIONS["texture_size"],
    vertex_colors: bool | None = OPTIONS["vertex_colors"],
    splat_format: str | None = OPTIONS["splat_format"],
) -> None:
    """Reconstruct the bundled example orbit (no weights needed): textured .glb, .ply and a preview."""
    from recon import api

    exports = export_options(locals())
    with staged_output(out, overwrite) as tmp:
        report = api.demo(tmp, device, progress=not quiet, log=_logger(quiet), export_options=exports)
    print_outputs(out, report)


# --------------------------------------------------------------------------- run
@app.command(no_args_is_help=True)
@guarded
def run(
    ckpt: Path = OPTIONS["ckpt"],
    image: Path = OPTIONS["image"],
    out: Path = typer.Option(..., help="Run folder: video/ (generate), asset/ (reconstruct) and run.json."),
    prompt: str | None = OPTIONS["prompt"],
    prompt_file: Path | None = OPTIONS["prompt_file"],
    frames: int = OPTIONS["frames"],
    height: int = OPTIONS["height"],
    width: int = OPTIONS["width"],
    steps: int = OPTIONS["steps"],
    guidance_scale: float = OPTIONS["guidance_scale"],
    seed: int = OPTIONS["seed"],
    dtype: str = OPTIONS["dtype"],
    noise_aug_strength: float = OPTIONS["noise_aug_strength"],
    view_align: bool = OPTIONS["view_align"],
    align_max_area: int = OPTIONS["align_max_area"],
    offload: str = OPTIONS["offload"],
    negative_prompt: str = OPTIONS["negative_prompt"],
    fps: int = OPTIONS["fps"],
    vae_tiling: bool = OPTIONS["vae_tiling"],
    background: str = OPTIONS["background"],
    remove_background: bool = OPTIONS["remove_background"],
    segmenter: Path | None = OPTIONS["segmenter"],
    recentre: bool = OPTIONS["recentre"],
    fill: float = OPTIONS["fill"],
    elevation: float | None = OPTIONS["elevation"],
    radius: float | None = OPTIONS["radius"],
    fov: float | None = OPTIONS["fov"],
    start_azimuth: float | None = OPTIONS["start_azimuth"],
    direction: str | None = OPTIONS["direction"],
    full_turn: bool | None = OPTIONS["full_turn"],
    orbit_mode: str | None = OPTIONS["orbit_mode"],
    refine: bool | None = OPTIONS["refine"],
    config: Path | None = OPTIONS["config"],
    preset: str | None = OPTIONS["preset"],
    iterations: int | None = OPTIONS["iterations"],
    sh_degree: int | None = OPTIONS["sh_degree"],
    resolution: int | None = OPTIONS["resolution"],
    fit_seed: int | None = OPTIONS["run_fit_seed"],
    engine: str = OPTIONS["engine"],
    device: str = OPTIONS["device"],
    overwrite: bool = typer.Option(False, help="Replace a non-empty --out that is not a run folder."),
    quiet: bool = OPTIONS["quiet"],
    faces: int | None = OPTIONS["faces"],
    texture_size: int | None = OPTIONS["texture_size"],
    vertex_colors: bool | None = OPTIONS["vertex_colors"],
    splat_format: str | None = OPTIONS["splat_format"],
) -> None:
    """Image + text -> orbit video -> splats and meshes, in one command.

    Re-running with the same --out resumes: a stage whose outputs exist and whose inputs and
    parameters are unchanged is skipped; a changed parameter redoes that stage and what follows.
    """
    params = locals()
    stages = run_stages_of(params)
    inputs = {
        "image": image, "checkpoint": ckpt, "prompt file": prompt_file, "config file": config,
        "segmenter": segmenter,
    }  # fmt: skip
    outcome = run_folder(out, stages, overwrite, quiet, inputs)
    out = real_out(out)
    typer.echo(f"video: {out / 'video' / 'orbit.mp4'}")
    print_outputs(out / "asset", outcome.report)


def run_stages_of(params: dict[str, Any], video: Path | None = None) -> RunStages:
    """The RunStages of `run`'s (or a batch row's) parameters; with `video`, reconstruct that only."""
    gen_config = None if video is not None else generate_config(params)
    return RunStages(
        gen_config, orbit_options(params), fit_options(params, "fit_seed"), params["preset"],
        params["config"], params["engine"], export_options(params), video,
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
            raise CLIError(f"image {stages.generate.image} does not exist")
    elif stages.video is None or not stages.video.exists():
        raise CLIError(f"video {stages.video} does not exist")
    out = real_out(out)
    make_parent(out.parent)
    with out_lock(out), terminate_as_exit():
        check_run_out(out, overwrite)
        out.mkdir(exist_ok=True)
        remove_run_leftovers(out)
        return run_stages(out, stages, quiet, generate, say)


# --------------------------------------------------------------------------- batch
@app.command(no_args_is_help=True)
@guarded
def batch(
    manifest: Path = typer.Argument(
        ...,
        help="CSV or JSONL, one asset per row: id plus image and prompt (or prompt_file), generated with "
        "--ckpt, or id plus video; any other column is that row's value of an option below.",
    ),
    out: Path = typer.Option(
        ...,
        help="Batch folder: a run folder per row id (as `run` writes), batch.json and summary.csv. "
        "With --backend ray on a cluster: shared storage, at this path on every node.",
    ),
    ckpt: Path | None = OPTIONS["batch_ckpt"],
    frames: int = OPTIONS["frames"],
    height: int = OPTIONS["height"],
    width: int = OPTIONS["width"],
    steps: int = OPTIONS["steps"],
    guidance_scale: float = OPTIONS["guidance_scale"],
    seed: int = OPTIONS["seed"],
    dtype: str = OPTIONS["dtype"],
    noise_aug_strength: float = OPTIONS["noise_aug_strength"],
    view_align: bool = OPTIONS["view_align"],
    align_max_area: int = OPTIONS["align_max_area"],
    offload: str = OPTIONS["offload"],
    negative_prompt: str = OPTIONS["negative_prompt"],
    fps: int = OPTIONS["fps"],
    vae_tiling: bool = OPTIONS["vae_tiling"],
    background: str = OPTIONS["background"],
    remove_background: bool = OPTIONS["remove_background"],
    segmenter: Path | None = OPTIONS["segmenter"],
    recentre: bool = OPTIONS["recentre"],
    fill: float = OPTIONS["fill"],
    elevation: float | None = OPTIONS["elevation"],
    radius: float | None = OPTIONS["radius"],
    fov: float | None = OPTIONS["fov"],
    start_azimuth: float | None = OPTIONS["start_azimuth"],
    direction: str | None = OPTIONS["direction"],
    full_turn: bool | None = OPTIONS["full_turn"],
    orbit_mode: str | None = OPTIONS["orbit_mode"],
    refine: bool | None = OPTIONS["refine"],
    config: Path | None = OPTIONS["config"],
    preset: str | None = OPTIONS["preset"],
    iterations: int | None = OPTIONS["iterations"],
    sh_degree: int | None = OPTIONS["sh_degree"],
    resolution: int | None = OPTIONS["resolution"],
    fit_seed: int | None = OPTIONS["run_fit_seed"],
    engine: str = OPTIONS["engine"],
    device: str = OPTIONS["device"],
    overwrite: bool = typer.Option(
        False,
        help="Replace a non-empty --out that is not a batch folder, and row folders that are not "
        "run folders.",
    ),
    quiet: bool = OPTIONS["quiet"],
    faces: int | None = OPTIONS["faces"],
    texture_size: int | None = OPTIONS["texture_size"],
    vertex_colors: bool | None = OPTIONS["vertex_colors"],
    splat_format: str | None = OPTIONS["splat_format"],
    backend: str = OPTIONS["backend"],
    address: str = OPTIONS["address"],
    gpus_per_row: float | None = OPTIONS["gpus_per_row"],
    cpus_per_row: float = OPTIONS["cpus_per_row"],
) -> None:
    """Many images or orbits to assets: each manifest row through `run`'s resumable stages.

    A row that fails (missing file, bad option, out of memory, a crash) is recorded in batch.json and
    summary.csv and the others go on; the exit code is 1 when any row failed. Re-running skips the
    rows that are done.
    """
    import batch as batch_module

    failed = batch_module.run_batch(manifest, out, locals())
    if failed:
        raise typer.Exit(batch_module.EXIT_ROWS_FAILED)


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
    orbit: dict[str, object]
    fit: dict[str, object]
    preset: str | None
    config: Path | None
    engine: str
    export: dict[str, object]
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
        config_text = self.config.read_text() if self.config is not None and self.config.is_file() else None
        video = folder_digest(video_dir / "frames") if self.generate is not None else path_digest(video_dir)
        return fingerprint(
            {"orbit": self.orbit, "fit": {**self.fit, "device": device_key(str(self.fit.get("device")))},
             "preset": self.preset, "config": config_text,
             "engine": self.engine, "export": self.export, "video": video}
        )  # fmt: skip


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
    log = _logger(quiet)
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
        asset_outputs_problem(asset_dir, stages.engine) if state.stages.get("reconstruct") == recon_key
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
        report = api.reconstruct(
            video_dir, tmp, stages.orbit, stages.fit, stages.preset, stages.config, stages.engine,
            progress=not quiet, log=log, export_options=stages.export,
        )  # fmt: skip
    state.mark("reconstruct", recon_key)
    seconds["reconstruct"] = time.perf_counter() - start
    return RunOutcome(report, seconds)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
