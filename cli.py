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
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

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


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse to clobber a non-empty output folder unless asked to."""
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CLIError(f"--out {out} exists and is not empty; pass --overwrite to replace it")


@contextlib.contextmanager
def staged_output(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; move it to `out` only if the block succeeds.

    The temporary folder lives in the same parent so the final rename is atomic on one filesystem.
    """
    check_out_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


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
    from droplet3d.generate import write_outputs

    config = generate_config(locals())
    check_out_dir(out, overwrite)
    result = run_generate(config, warn=warn)
    with staged_output(out, overwrite) as tmp:
        write_outputs(result, tmp, fps=fps, progress=not quiet)
    typer.echo(f"wrote {len(result.frames)} frames to {out / 'frames'} and {out / 'orbit.mp4'}")


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
    """A run folder may be resumed; any other non-empty folder needs --overwrite."""
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / RUN_STATE).is_file():
        if not overwrite:
            raise CLIError(
                f"--out {out} is not empty and holds no {RUN_STATE}; pass --overwrite to replace it"
            )
        shutil.rmtree(out)


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


# Export options (reconstruct, run, demo): how the mesh and splats are written (recon.asset.ExportConfig).
# None = not given, so a --config file's "mesh" section or the default applies.
EXPORT_HELP = {
    "faces": "Face budget of the mesh: quadric decimation to at most this many (default 50000; 0 = all).",
    "texture_size": "Side of the baked base-colour texture in texels (default 2048).",
    "vertex_colors": "Per-vertex colour instead of a UV texture (default: textured).",
    "splat_format": "Splat file: ply (standard 3DGS), splat (antimatter15) or ply-compressed (SuperSplat).",
}


def export_option_params(panel: str | None = None) -> dict[str, Any]:
    """The typer.Option objects of the export options (`panel` groups them in --help)."""
    return {
        "faces": typer.Option(None, help=EXPORT_HELP["faces"], rich_help_panel=panel),
        "texture_size": typer.Option(None, help=EXPORT_HELP["texture_size"], rich_help_panel=panel),
        "vertex_colors": typer.Option(
            None, "--vertex-colors/--texture", help=EXPORT_HELP["vertex_colors"], show_default=False,
            rich_help_panel=panel,
        ),
        "splat_format": typer.Option(None, help=EXPORT_HELP["splat_format"], rich_help_panel=panel),
    }  # fmt: skip


EXPORT_OPTIONS = export_option_params()
RUN_EXPORT_OPTIONS = export_option_params("Reconstruction")


def export_options(
    faces: int | None, texture_size: int | None, vertex_colors: bool | None, splat_format: str | None
) -> dict[str, object]:
    """The export options actually given (None = take the config file's or the default value)."""
    return {"faces": faces, "texture_size": texture_size, "vertex_colors": vertex_colors,
            "splat_format": splat_format}  # fmt: skip


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
    faces: int | None = EXPORT_OPTIONS["faces"],
    texture_size: int | None = EXPORT_OPTIONS["texture_size"],
    vertex_colors: bool | None = EXPORT_OPTIONS["vertex_colors"],
    splat_format: str | None = EXPORT_OPTIONS["splat_format"],
) -> None:
    """Fit Gaussian splats to an orbit with known poses and export splats, meshes and a turntable preview."""
    from recon import api

    options = orbit_options(elevation, radius, fov, start_azimuth, direction, full_turn)
    fit_options = {"iterations": iterations, "device": device, "sh_degree": sh_degree,
                   "resolution": resolution, "seed": seed}  # fmt: skip
    exports = export_options(faces, texture_size, vertex_colors, splat_format)
    check_out_dir(out, overwrite)
    with staged_output(out, overwrite) as tmp:
        report = api.reconstruct(
            input, tmp, options, fit_options, preset, config, engine, progress=not quiet,
            log=_logger(quiet), export_options=exports,
        )  # fmt: skip
    print_outputs(out, report)


def _logger(quiet: bool) -> Callable[[str], None]:
    return (lambda _m: None) if quiet else (lambda m: typer.echo(m, err=True))


def print_outputs(out: Path, report: dict[str, object]) -> None:
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
    device: str = typer.Option("auto", help="auto (CUDA if present), cuda or cpu."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty --out folder."),
    quiet: bool = typer.Option(False, help="No progress bars."),
    faces: int | None = EXPORT_OPTIONS["faces"],
    texture_size: int | None = EXPORT_OPTIONS["texture_size"],
    vertex_colors: bool | None = EXPORT_OPTIONS["vertex_colors"],
    splat_format: str | None = EXPORT_OPTIONS["splat_format"],
) -> None:
    """Reconstruct the bundled example orbit (no weights needed): textured .glb, .ply and a preview."""
    from recon import api

    check_out_dir(out, overwrite)
    exports = export_options(faces, texture_size, vertex_colors, splat_format)
    with staged_output(out, overwrite) as tmp:
        report = api.demo(tmp, device, progress=not quiet, log=_logger(quiet), export_options=exports)
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
    faces: int | None = RUN_EXPORT_OPTIONS["faces"],
    texture_size: int | None = RUN_EXPORT_OPTIONS["texture_size"],
    vertex_colors: bool | None = RUN_EXPORT_OPTIONS["vertex_colors"],
    splat_format: str | None = RUN_EXPORT_OPTIONS["splat_format"],
) -> None:
    """Image + text -> orbit video -> splats and meshes, in one command.

    Re-running with the same --out resumes: a stage whose outputs exist and whose inputs and
    parameters are unchanged is skipped; a changed parameter redoes that stage and what follows.
    """
    from droplet3d.generate import generate as run_generate
    from droplet3d.generate import write_outputs
    from recon import api

    gen_config = generate_config(locals())
    orbit = orbit_options(elevation, radius, fov, start_azimuth, direction, full_turn)
    fit_options = {
        "iterations": iterations,
        "device": device,
        "sh_degree": sh_degree,
        "resolution": resolution,
    }
    check_run_out(out, overwrite)
    if not image.is_file():
        raise CLIError(f"image {image} does not exist")
    video_dir, asset_dir = out / "video", out / "asset"
    state = RunState.load(out)
    log = (lambda m: None) if quiet else (lambda m: typer.echo(m, err=True))

    gen_params = {k: v for k, v in vars(gen_config).items() if k != "progress"}
    gen_key = fingerprint(
        {
            "params": gen_params,
            "image": hashlib.sha256(image.read_bytes()).hexdigest(),
            "ckpt": ckpt.resolve(),
        }
    )
    if state.is_done("generate", gen_key, video_dir / "generation.json"):
        typer.echo(f"generate: up to date in {video_dir}, skipped")
    else:
        result = run_generate(gen_config, warn=warn)
        with staged_output(video_dir, overwrite=True) as tmp:
            write_outputs(result, tmp, fps=gen_config.fps, progress=not quiet)
        state.mark("generate", gen_key)

    config_text = config.read_text() if config is not None and config.is_file() else None
    exports = export_options(faces, texture_size, vertex_colors, splat_format)
    recon_key = fingerprint(
        {"orbit": orbit, "fit": fit_options, "preset": preset, "config": config_text,
         "video": folder_digest(video_dir / "frames"), "export": exports}
    )  # fmt: skip
    if state.is_done("reconstruct", recon_key, asset_dir / "report.json"):
        typer.echo(f"reconstruct: up to date in {asset_dir}, skipped")
        report = json.loads((asset_dir / "report.json").read_text())
    else:
        with staged_output(asset_dir, overwrite=True) as tmp:
            report = api.reconstruct(
                video_dir, tmp, orbit, fit_options, preset, config, progress=not quiet, log=log,
                export_options=exports,
            )  # fmt: skip
        state.mark("reconstruct", recon_key)
    typer.echo(f"video: {video_dir / 'orbit.mp4'}")
    print_outputs(asset_dir, report)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
