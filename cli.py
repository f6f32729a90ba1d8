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

import functools
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import typer
from typer.core import TyperGroup

from runs.errors import CLICK_EXCEPTION, USAGE_ERROR, UsageError, warn
from runs.output import check_out_dir, real_out, refuse_overlap, staged_output
from runs.params import (
    export_options,
    fit_options,
    generate_config,
    generate_output_bytes,
    orbit_options,
)
from runs.progress import progress_lines_when_piped
from runs.stages import logger, run_folder, run_stages_of

if TYPE_CHECKING:
    pass


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


def fail(message: str) -> None:
    """Print a one-line error and exit with code 2 (no traceback)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(EXIT_USAGE)


def guarded(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn the stages' user-facing errors into a one-line message and exit code 2."""
    from droplet3d.errors import Droplet3DError
    from recon.errors import ReconError

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            with progress_lines_when_piped():
                return fn(*args, **kwargs)
        except (UsageError, Droplet3DError, ReconError) as exc:
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
        raise UsageError(f"checkpoint {ckpt} has {len(report.problems)} problem(s), listed above")
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
            progress=not quiet, log=logger(quiet), export_options=export_options(params),
        )  # fmt: skip
    print_outputs(out, report)


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
        report = api.demo(tmp, device, progress=not quiet, log=logger(quiet), export_options=exports)
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
    params = locals()
    from runs.batch import EXIT_ROWS_FAILED, run_batch
    from runs.manifest import RowOptions

    command = typer.main.get_command(app).commands["batch"]  # type: ignore[attr-defined]
    failed = run_batch(manifest, out, params, RowOptions(command, GENERATION_OPTIONS))
    if failed:
        raise typer.Exit(EXIT_ROWS_FAILED)


# Options only generation reads: a batch row with a video that sets one is refused.
GENERATION_OPTIONS = frozenset(
    {name for name, option in OPTIONS.items() if option.rich_help_panel in (GENERATION_PANEL, PREPARE_PANEL)}
    - {"batch_ckpt"}
    | {"ckpt"}
)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
