"""Every command-line option, defined once: default, bounds, units, help and help panel.

Options come in groups, one dataclass each (`Generation`, `Prepare`, `Orbit`, `Fit`, `Export`, ...); a
command is declared by the groups it takes (`cli.py`), which builds its flags from the fields here, so
the same option cannot drift between commands, and hands each command one instance of every group. The
reconstruction's groups (`Orbit`, `Fit`, `Export`) are `recon.options`', since `recon.api` takes them as
they are; the rest are here.
Torch-free and typer-free on purpose: `--help` must not wait for torch, and the groups are plain data the
stages can read.

Bounds are the widest values a stage can sensibly run with; anything beyond is a typo (`--steps 1e12`)
that would otherwise surface as a crash or an endless run much later. Values a stage checks too come from
that stage's torch-free `constants` module (`droplet3d.constants`, `recon.constants`): one definition.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from droplet3d.constants import (
    BACKGROUNDS,
    DEFAULT_BACKGROUND,
    DEFAULT_FILL,
    DEFAULT_NEGATIVE_PROMPT,
    MAX_FILL,
    MIN_FILL,
)
from recon.constants import MAX_SEED
from recon.options import FIT_PANEL, FIT_SEED_HELP, REQUIRED, Fit, option
from recon.options import Export as Export  # the reconstruction's groups live with the library that reads
from recon.options import Orbit as Orbit  # them (`recon.options`); the commands take them from here too
from recon.options import is_required as is_required

MAX_STEPS = 1000  # DDIM cannot take more steps than the scheduler's 1000 training timesteps
MAX_GENERATE_FRAMES = 257  # 3x the paper's 85; the VAE's memory grows with the frame count
MAX_SIDE = 2048  # pixels, per side of a generated frame
MAX_GUIDANCE = 50.0
MAX_NOISE_AUG = 1.0  # a std on images in [-1, 1]: more is pure noise
MIN_ALIGN_AREA = 64 * 64
MAX_ALIGN_AREA = 4096 * 4096
MAX_FPS = 240
BACKGROUND_NAMES = tuple(BACKGROUNDS)
MAX_RESOURCES_PER_ROW = 1024.0  # CPUs or GPUs one row may ask Ray for; more is a typo

GENERATION_PANEL = "Generation"
PREPARE_PANEL = "Input image"
BATCH_PANEL = "Batch"
CKPT_HELP = "The released Droplet3D-5B/ folder (read offline, as published)."
INPUT_HELP = "Orbit video file, folder of frames, or a `generate` output folder."


def values(*groups: Any) -> dict[str, Any]:
    """The fields of `groups` as one flat name -> value dict (the stages' plumbing in `runs.params`)."""
    return {f.name: getattr(group, f.name) for group in groups for f in fields(group)}


def names(*groups: type) -> frozenset[str]:
    """The option names of some groups."""
    return frozenset(f.name for group in groups for f in fields(group))


@dataclass
class Inputs:
    """What `generate` and `run` generate from: the checkpoint, the image and its description."""

    ckpt: Path = option(
        REQUIRED,
        panel=GENERATION_PANEL,
        help=CKPT_HELP,
    )
    image: Path = option(
        REQUIRED,
        panel=GENERATION_PANEL,
        help="Input image: the object's first view (any size; resized).",
    )
    prompt: str | None = option(
        None,
        panel=GENERATION_PANEL,
        help="Dense description of the object and the 360-degree orbit (the quality suffix is appended).",
    )
    prompt_file: Path | None = option(
        None,
        panel=GENERATION_PANEL,
        help="Read the prompt from this UTF-8 text file instead.",
    )


@dataclass
class Generation:
    """How the orbit video is generated (`droplet3d.generate.GenerateConfig`); paper defaults."""

    frames: int = option(
        85,
        high=MAX_GENERATE_FRAMES,
        panel=GENERATION_PANEL,
        help="Frames in the orbit; must be 4k+1 (85 in the paper).",
    )
    height: int = option(
        512,
        low=16,
        high=MAX_SIDE,
        panel=GENERATION_PANEL,
        help="Frame height in pixels, a multiple of 16.",
    )
    width: int = option(
        512,
        low=16,
        high=MAX_SIDE,
        panel=GENERATION_PANEL,
        help="Frame width in pixels, a multiple of 16.",
    )
    steps: int = option(
        50,
        low=1,
        high=MAX_STEPS,
        panel=GENERATION_PANEL,
        help="DDIM denoising steps.",
    )
    guidance_scale: float = option(
        6.0,
        low=0.0,
        high=MAX_GUIDANCE,
        finite=True,
        panel=GENERATION_PANEL,
        help="Classifier-free guidance scale.",
    )
    seed: int = option(
        42,
        low=0,
        high=MAX_SEED,
        panel=GENERATION_PANEL,
        help="Seed of the initial noise and noise augmentation (runs are repeatable).",
    )
    dtype: str = option(
        "auto",
        panel=GENERATION_PANEL,
        help="auto (bfloat16 on CUDA, float32 on CPU), bfloat16, float16, float32.",
    )
    noise_aug_strength: float = option(
        0.0563,
        low=0.0,
        high=MAX_NOISE_AUG,
        finite=True,
        panel=GENERATION_PANEL,
        help="Std of the noise added to the conditioning frame.",
    )
    view_align: bool = option(
        False,
        panel=GENERATION_PANEL,
        help="First turn the image to the closest canonical view with FLUX.1-Kontext + the Droplet3D LoRA.",
    )
    align_max_area: int = option(
        1024**2,
        low=MIN_ALIGN_AREA,
        high=MAX_ALIGN_AREA,
        panel=GENERATION_PANEL,
        help="Pixel area Kontext resizes its input to (view alignment).",
    )
    offload: str = option(
        "none",
        panel=GENERATION_PANEL,
        help="Memory mode on CUDA: none (fastest), model (CPU offload per model), sequential (least).",
    )
    negative_prompt: str = option(
        DEFAULT_NEGATIVE_PROMPT,
        panel=GENERATION_PANEL,
        help="Negative prompt for classifier-free guidance.",
    )
    fps: int = option(
        8,
        low=1,
        high=MAX_FPS,
        panel=GENERATION_PANEL,
        help="Frame rate of orbit.mp4.",
    )
    vae_tiling: bool = option(
        False,
        panel=GENERATION_PANEL,
        help="Decode in spatial tiles (less memory, tiny seams).",
    )


@dataclass
class Prepare:
    """How the input image is prepared (`droplet3d.prepare`); every command that takes --image."""

    background: str = option(
        DEFAULT_BACKGROUND,
        panel=PREPARE_PANEL,
        help=f"Colour behind the object (transparent pixels, removed background, padding): "
        f"{', '.join(BACKGROUND_NAMES)} (black, as the published example).",
    )
    remove_background: bool = option(
        False,
        panel=PREPARE_PANEL,
        help="Separate the object from its background: with --segmenter's model, else by a flood fill of "
        "the border's colour (plain backgrounds only).",
    )
    segmenter: Path | None = option(
        None,
        panel=PREPARE_PANEL,
        help="U^2-Net .onnx model for --remove-background (e.g. rembg's u2net.onnx), or a folder holding "
        "one; read offline.",
    )
    recentre: bool = option(
        True,
        "--recentre/--no-recentre",
        panel=PREPARE_PANEL,
        help="Crop to the object (known from alpha or --remove-background), centre it and scale it to "
        "--fill; --no-recentre keeps the framing. Never stretched: padded to the frame's aspect.",
    )
    fill: float = option(
        DEFAULT_FILL,
        low=MIN_FILL,
        high=MAX_FILL,
        finite=True,
        panel=PREPARE_PANEL,
        help="How much of the frame the recentred object spans, along its tighter side (0.85: the "
        "published example).",
    )


@dataclass
class RunFit(Fit):
    """`run` and `batch` have two seeds: --seed is generation's, --fit-seed the reconstruction's."""

    fit_seed: int | None = option(
        None, "--fit-seed", low=0, high=MAX_SEED, panel=FIT_PANEL, help=FIT_SEED_HELP
    )


@dataclass
class Common:
    """Options of every command that runs a stage (`poses` runs none of the slow ones)."""

    device: str = option(
        "auto",
        help="auto (CUDA if present), cuda or cpu (or cuda:N).",
    )
    quiet: bool = option(
        False,
        help="No progress output.",
    )


@dataclass
class BatchInputs:
    """`batch`'s --ckpt: as elsewhere, but optional (only rows with an image generate)."""

    ckpt: Path | None = option(
        None,
        "--ckpt",
        panel=GENERATION_PANEL,
        help=CKPT_HELP,
    )


@dataclass
class Backend:
    """Where and how a batch's rows run."""

    backend: str = option(
        "local",
        panel=BATCH_PANEL,
        help="local: the rows one after another in this process; ray: each row a task on a Ray cluster "
        "(pip install 'droplet3d[ray]').",
    )
    address: str = option(
        "local",
        panel=BATCH_PANEL,
        help="With --backend ray: local (start a Ray instance on this machine for this batch), auto (join "
        "the one `ray start` runs here, or $RAY_ADDRESS) or HOST:PORT of a cluster's head.",
    )
    gpus_per_row: float | None = option(
        None,
        low=0.0,
        high=MAX_RESOURCES_PER_ROW,
        finite=True,
        panel=BATCH_PANEL,
        help="With --backend ray: GPUs each row holds (fractions share a GPU; default 1 when the cluster "
        "has GPUs, else 0).",
    )
    cpus_per_row: float = option(
        1.0,
        low=0.0,
        high=MAX_RESOURCES_PER_ROW,
        finite=True,
        panel=BATCH_PANEL,
        help="With --backend ray: CPU cores each row holds (and uses as its thread count).",
    )


# Each command's own folders: what it reads and where it writes (the one thing that differs per command).
OVERWRITE_HELP = "Replace a non-empty --out folder."


@dataclass
class GenerateFolders:
    """`generate`'s output."""

    out: Path = option(REQUIRED, help="Output folder: frames/, orbit.mp4, generation.json.")
    overwrite: bool = option(False, help=OVERWRITE_HELP)


@dataclass
class PosesFolders:
    """`poses`' input and output."""

    input: Path = option(REQUIRED, help=INPUT_HELP, argument=True)
    out: Path = option(REQUIRED, help="Output folder: images/ and a nerfstudio transforms.json.")
    overwrite: bool = option(False, help=OVERWRITE_HELP)


@dataclass
class ReconstructFolders:
    """`reconstruct`'s input and output."""

    input: Path = option(REQUIRED, help=INPUT_HELP, argument=True)
    out: Path = option(
        REQUIRED,
        help="Output folder: splats.ply, mesh.glb/.ply/.obj, preview.mp4, report.json, transforms.json.",
    )
    overwrite: bool = option(False, help=OVERWRITE_HELP)


@dataclass
class DemoFolders:
    """`demo`'s output."""

    out: Path = option(Path("droplet3d-demo"), help="Output folder for the demo's files.")
    overwrite: bool = option(False, help=OVERWRITE_HELP)


@dataclass
class RunFolders:
    """`run`'s folder (resumable)."""

    out: Path = option(REQUIRED, help="Run folder: video/ (generate), asset/ (reconstruct) and run.json.")
    overwrite: bool = option(False, help="Replace a non-empty --out that is not a run folder.")


@dataclass
class BatchFolders:
    """`batch`'s manifest and folder."""

    manifest: Path = option(
        REQUIRED, argument=True,
        help="CSV or JSONL, one asset per row: id plus image and prompt (or prompt_file), generated with "
        "--ckpt, or id plus video; any other column is that row's value of an option below.",
    )  # fmt: skip
    out: Path = option(
        REQUIRED,
        help="Batch folder: a run folder per row id (as `run` writes), batch.json and summary.csv. "
        "With --backend ray on a cluster: shared storage, at this path on every node.",
    )
    overwrite: bool = option(
        False,
        help="Replace a non-empty --out that is not a batch folder, and row folders that are not "
        "run folders.",
    )


MAX_PORT = 65535


@dataclass
class ViewOptions:
    """What `view` serves, and where."""

    folder: Path = option(
        REQUIRED, argument=True, help="An asset folder (viewer.html), a run folder or a batch folder."
    )
    port: int = option(0, low=0, high=MAX_PORT, help="Port on 127.0.0.1 (0: any free port).")
    open_browser: bool = option(False, "--open", help="Also open the page in the default browser.")


# Options only generation reads: a batch row with a video that sets one is refused.
GENERATION_ONLY = names(Inputs, Generation, Prepare) - {"image", "prompt", "prompt_file"}
