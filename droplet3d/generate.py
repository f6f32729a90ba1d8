"""`droplet3d generate`: from an image and a prompt to `frames/`, `orbit.mp4` and `generation.json`.

This module owns the run as a whole: validating inputs before anything heavy happens, choosing
device, dtype and memory mode, optional view alignment (which must be freed before the video
model loads), timing each stage, and writing outputs. The maths lives in `pipeline.py`.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import platform
import re
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from droplet3d import models
from droplet3d.align import _loading_bars as loading_bars
from droplet3d.checkpoint import CheckpointPaths, resolve_checkpoint
from droplet3d.conditioning import image_to_video
from droplet3d.constants import DEFAULT_NEGATIVE_PROMPT, MAX_TEXT_TOKENS
from droplet3d.errors import Droplet3DError
from droplet3d.pipeline import (
    Droplet3DPipeline,
    PipelineOutput,
    full_prompt,
)
from droplet3d.prepare import (
    DEFAULT_BACKGROUND,
    DEFAULT_FILL,
    PrepareConfig,
    load_segmenter,
    prepare,
    prepare_aligned,
    validate_prepare,
)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
OFFLOAD_MODES = ("none", "model", "sequential")
# One q/k/v matrix product per block instead of three. Off: on an H100 the step took 2.363 s fused
# against 2.360 s unfused (the three products are already large enough to fill the GPU); see
# benchmarks/RESULTS.md, "GPU". Never with offload, where the fused weight would travel beside its views.
FUSE_QKV_ON_CUDA = False


@dataclass
class GenerateConfig:
    """Every parameter of a generation run. Defaults are the reference's (Droplet3D inference.py)."""

    ckpt: Path
    image: Path
    prompt: str
    frames: int = 85
    height: int = 512
    width: int = 512
    steps: int = 50
    guidance_scale: float = 6.0
    seed: int = 42
    device: str = "auto"  # auto | cuda | cpu
    dtype: str = "auto"  # auto (bfloat16 on CUDA, float32 on CPU) | bfloat16 | float16 | float32
    noise_aug_strength: float = 0.0563
    view_align: bool = False
    align_max_area: int = 1024**2
    align_steps: int = 28
    align_auto_resize: bool = True  # Kontext's own ~1 MP input resize, as the reference; off for tiny tests
    offload: str = "none"  # none | model | sequential
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    fps: int = 8
    vae_tiling: bool = False
    progress: bool = True
    # torch.compile the transformer blocks (CUDA only): 2.05 s instead of 2.35 s per step on an H100,
    # after a compile of ~16 s (~10 s with inductor's on-disk cache warm). Off by default: for one
    # video the compile costs about what it saves (50 steps: 123.8 s vs 123.3 s; RESULTS.md, "GPU").
    compile: bool = False
    # Input preparation (droplet3d/prepare.py): what the image is composited over, whether and how its
    # background is removed, and how the object is framed. Defaults give the published example's look.
    background: str = DEFAULT_BACKGROUND  # black | white | grey
    remove_background: bool = False
    segmenter: Path | None = None  # U^2-Net .onnx file or folder; None: border flood fill
    recentre: bool = True
    fill: float = DEFAULT_FILL

    def prepare_config(self) -> PrepareConfig:
        """The preparation settings, sized to this run's frames."""
        return PrepareConfig(
            width=self.width, height=self.height, background=self.background,
            remove_background=self.remove_background, segmenter=self.segmenter, recentre=self.recentre,
            fill=self.fill,
        )  # fmt: skip


@dataclass
class GenerateResult:
    frames: np.ndarray  # [F, H, W, 3] uint8, the orbit
    record: dict = field(default_factory=dict)
    aligned_image: Image.Image | None = None  # FLUX.1-Kontext's output (before it is prepared again)
    conditioning_image: Image.Image | None = None  # the exact frame 0 the video was conditioned on


# The most frame pixels one generation may ask for: the paper's 85 frames at 1024x1024. Beyond it the
# latents, the attention and the VAE decode need far more memory than any single GPU has.
MAX_VIDEO_PIXELS = 85 * 1024 * 1024
MAX_SEED = 2**32 - 1  # the range numpy's and torch's generators both accept
# 450 T5 tokens are 2-3 thousand characters; far longer prompts only cost memory in the tokenizer and
# bloat generation.json (a 2 MB prompt took 1.1 GB).
MAX_PROMPT_CHARS = 32_000
# The largest image we decode: PIL's own bomb threshold is 2x its MAX_IMAGE_PIXELS (~179 MP); a photo
# of an object is a few MP, so anything near that is a mistake or a decompression bomb.
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
# The exact image frame 0 of the video is conditioned on, after preparation (and view alignment).
CONDITIONING_FILE = "conditioning.png"


def _require_finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Droplet3DError(f"{name} must be a finite number, got {value!r}")


def validate(config: GenerateConfig) -> None:
    """Reject bad input before loading anything (cheap checks first).

    The CLI bounds each option already; this repeats what a Python caller could get wrong, so nan
    guidance (black frames) or an absurd size cannot reach the pipeline either way.
    """
    for name in ("guidance_scale", "noise_aug_strength"):
        _require_finite(f"--{name.replace('_', '-')}", getattr(config, name))
    for name in ("frames", "height", "width", "steps", "seed", "fps", "align_max_area"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise Droplet3DError(f"--{name.replace('_', '-')} must be an integer, got {value!r}")
    if not 0 <= config.seed <= MAX_SEED:
        raise Droplet3DError(f"--seed must be between 0 and {MAX_SEED}, got {config.seed}")
    if config.fps < 1:
        raise Droplet3DError(f"--fps must be at least 1, got {config.fps}")
    if config.height % 16 or config.width % 16 or config.height <= 0 or config.width <= 0:
        raise Droplet3DError(
            f"--height and --width must be positive multiples of 16, got {config.height}x{config.width}"
        )
    if config.frames < 1 or (config.frames - 1) % 4:
        raise Droplet3DError(f"--frames must be 4k+1 (e.g. 9, 49, 85), got {config.frames}")
    if config.steps < 1:
        raise Droplet3DError(f"--steps must be at least 1, got {config.steps}")
    if config.dtype not in (*DTYPES, "auto"):
        raise Droplet3DError(f"--dtype must be one of bfloat16, float16, float32, got {config.dtype}")
    if config.offload not in OFFLOAD_MODES:
        raise Droplet3DError(f"--offload must be one of {', '.join(OFFLOAD_MODES)}, got {config.offload}")
    if config.noise_aug_strength < 0:
        raise Droplet3DError("--noise-aug-strength must be >= 0")
    if config.frames * config.height * config.width > MAX_VIDEO_PIXELS:
        raise Droplet3DError(
            f"{config.frames} frames of {config.width}x{config.height} is more than one generation can hold "
            f"in memory (at most {MAX_VIDEO_PIXELS // 1024**2} Mpx in all, e.g. 85 frames of 1024x1024)"
        )
    if not config.prompt.strip():
        raise Droplet3DError("the prompt is empty")
    if len(config.prompt) > MAX_PROMPT_CHARS:
        raise Droplet3DError(
            f"the prompt has {len(config.prompt)} characters; the text encoder reads {MAX_TEXT_TOKENS} "
            f"tokens (a few thousand characters), so at most {MAX_PROMPT_CHARS} are accepted"
        )
    resolve_device(config.device)
    validate_prepare(config.prepare_config())


def resolve_device(device: str) -> torch.device:
    """The torch device for a --device value.

    Kept identical to `recon.raster.resolve_device`; one parametrised test runs both. (recon must not
    import droplet3d, and a shared top-level module would be a third install unit for a few lines.)

    "auto" is CUDA when present, else CPU; "cpu"; "cuda" or "cuda:N" only when that GPU exists.
    Anything else, or a GPU that is not there, is a user error naming what to pass instead.
    """
    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise Droplet3DError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise Droplet3DError(f"--device {device} but CUDA is not available here; use --device cpu (or auto)")
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise Droplet3DError(
            f"--device {device} but this machine has {count} CUDA device(s); use cuda:0 to cuda:{count - 1}"
        )
    return torch.device(name)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


def load_image(path: Path) -> Image.Image:
    """The conditioning image as RGB, or RGBA when it has transparency (prepare.py composites it).

    Its size is checked from the header before any decoding.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is lower
            image = Image.open(path)
        with image:
            pixels = image.width * image.height
            if pixels > MAX_IMAGE_PIXELS:
                raise Droplet3DError(
                    f"image {path} is {image.width}x{image.height} ({pixels / 1e6:.0f} Mpx); the limit is "
                    f"{MAX_IMAGE_PIXELS / 1e6:.0f} Mpx (it is resized to --height x --width anyway)"
                )
            return image.convert("RGBA" if image.has_transparency_data else "RGB")
    except FileNotFoundError as exc:
        raise Droplet3DError(f"image {path} does not exist") from exc
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as exc:
        raise Droplet3DError(f"cannot read image {path}: {exc}") from exc


@contextmanager
def cuda_oom_as_error() -> Iterator[None]:
    """Turn CUDA out-of-memory into advice the user can act on."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as exc:
        raise Droplet3DError(
            "CUDA out of memory; retry with --offload model (less memory) or --offload sequential (least)"
        ) from exc


class StageTimer:
    """Wall-clock seconds per named stage, synchronising CUDA so the figures are real."""

    def __init__(self, device: torch.device, announce: bool = True) -> None:
        self.device = device
        self.announce = announce
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.announce:
            tqdm.write(f"droplet3d: {name.replace('_', ' ')}...")
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[name] = round(time.perf_counter() - start, 3)


# The packages whose versions shape a run's pixels, recorded in generation.json (onnxruntime: the mask).
RECORDED_PACKAGES = ("droplet3d", "torch", "diffusers", "transformers", "safetensors", "peft", "accelerate",
                     "onnxruntime")  # fmt: skip


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["cuda"] = torch.version.cuda or "none"
    return versions


def load_pipeline(
    paths: CheckpointPaths, dtype: torch.dtype, device: torch.device, offload: str
) -> Droplet3DPipeline:
    """Load all five components and place them for the chosen memory mode."""
    direct = "cpu" if offload != "none" else str(device)
    pipe = Droplet3DPipeline(
        tokenizer=models.load_tokenizer(paths.tokenizer),
        text_encoder=models.load_text_encoder(paths.text_encoder, dtype, "cpu"),
        vae=models.load_diffusers_model("vae", paths.vae, dtype, direct),
        transformer=models.load_diffusers_model("transformer", paths.transformer, dtype, direct),
        scheduler=models.load_scheduler(paths.scheduler),
    )
    if device.type == "cuda" and offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif device.type == "cuda" and offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)  # diffusers' public placement; its execution device is then `device`
    return pipe


def apply_speedups(pipe: Droplet3DPipeline, config: GenerateConfig, device: torch.device) -> list[str]:
    """Turn on the CUDA speed-ups that keep results within bf16 noise; return their names.

    Nothing changes on the CPU, where the stack must stay bit-exact with the reference fixtures.
    """
    if device.type != "cuda":
        return []
    applied = ["sdpa:" + ",".join(b.name.lower() for b in pipe.sdpa_priority or ())]
    if FUSE_QKV_ON_CUDA and config.offload == "none":
        pipe.transformer.fuse_qkv_projections()
        applied.append("fused_qkv")
    if config.compile:
        pipe.transformer.compile_blocks()
        applied.append("compiled_blocks")
    return applied


def run_view_alignment(
    image: Image.Image,
    config: GenerateConfig,
    paths: CheckpointPaths,
    dtype: torch.dtype,
    device: torch.device,
) -> Image.Image:
    """FLUX.1-Kontext + the released LoRA; the Kontext pipeline is freed before returning."""
    from droplet3d.align import AlignConfig, align_view

    align_config = AlignConfig(
        height=config.height,
        width=config.width,
        max_area=config.align_max_area,
        num_inference_steps=config.align_steps,
        auto_resize=config.align_auto_resize,
        dtype=dtype,
        device=str(device),
        offload=config.offload,
    )
    return align_view(image, paths.root, align_config, progress=config.progress)


def ready_pipeline(
    paths: CheckpointPaths, dtype: torch.dtype, device: torch.device, config: GenerateConfig
) -> tuple[Droplet3DPipeline, list[str]]:
    """A loaded, placed pipeline with the run's speed-ups and VAE mode, and the speed-ups' names."""
    pipe = load_pipeline(paths, dtype, device, config.offload)
    speedups = apply_speedups(pipe, config, device)
    if config.vae_tiling:
        pipe.vae.enable_tiling()
    return pipe, speedups


@dataclass
class PipelineCache:
    """Keeps the video pipeline loaded from one generation to the next, in a process that makes many.

    Loading the five components takes about a minute for the 5B model, as long as a whole generation on
    a fast GPU; a batch worker generates many orbits with one load. The price: the text encoder stays
    (T5-XXL, 9.5 GB on the GPU without offload) instead of being dropped after encoding. A different
    checkpoint, device, dtype or memory mode loads afresh, and so does view alignment on CUDA: Kontext
    and the video model never share the GPU, as in a single generation.
    """

    key: tuple[str, ...] | None = None
    """What the held pipeline was loaded for; None when none is held."""
    pipe: Droplet3DPipeline | None = None
    """The held pipeline."""
    speedups: list[str] = field(default_factory=list)
    """The speed-ups applied when it was loaded (recorded in each generation.json)."""
    loads: int = 0
    """How many times a pipeline was loaded (a batch reports it; tests check it)."""

    def get(
        self, paths: CheckpointPaths, dtype: torch.dtype, device: torch.device, config: GenerateConfig
    ) -> tuple[Droplet3DPipeline, list[str]]:
        key = (str(paths.root), str(dtype), str(device), config.offload, str(config.compile),
               str(config.vae_tiling))  # fmt: skip
        if self.pipe is None or self.key != key:
            self.clear()
            self.pipe, self.speedups = ready_pipeline(paths, dtype, device, config)
            self.key = key
            self.loads += 1
        return self.pipe, self.speedups

    def clear(self) -> None:
        """Free the held pipeline (before a different one, or Kontext, needs the memory)."""
        if self.pipe is None:
            return
        self.pipe, self.key = None, None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def generate(
    config: GenerateConfig, warn: Callable[[str], None] = print, pipelines: PipelineCache | None = None
) -> GenerateResult:
    """Run the full stack. Returns the orbit frames and the record written to generation.json.

    With `pipelines`, the video pipeline is taken from (and left in) that cache instead of being
    loaded for this call alone.
    """
    validate(config)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    paths = resolve_checkpoint(config.ckpt, view_align=config.view_align)
    timer = StageTimer(device, announce=config.progress)
    with timer("prepare"):
        prep_config = config.prepare_config()
        segmenter = load_segmenter(prep_config)
        prepared = prepare(load_image(config.image), prep_config, segmenter)
    preparation = {"input": prepared.record}
    image = prepared.image
    aligned = None

    with cuda_oom_as_error():
        if config.view_align:
            if pipelines is not None and device.type == "cuda":
                pipelines.clear()
            with timer("view_align"):
                aligned = run_view_alignment(image, config, paths, dtype, device)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            with timer("prepare_aligned"):
                realigned = prepare_aligned(aligned, prep_config, prepared, segmenter, warn)
            preparation["view_aligned"] = realigned.record
            image = realigned.image
        del segmenter

        with timer("load"), loading_bars(config.progress):  # --quiet silences transformers' bar too
            if pipelines is None:
                pipe, speedups = ready_pipeline(paths, dtype, device, config)
            else:
                pipe, speedups = pipelines.get(paths, dtype, device, config)
        pipe.set_progress_bar_config(disable=not config.progress, desc="denoise", leave=False)

        prompt = full_prompt(config.prompt)
        with timer("text_encoder"):
            ids, dropped = pipe.tokenize([prompt, config.negative_prompt])
            for which, text in zip(("prompt", "negative prompt"), dropped, strict=True):
                if text:
                    limit = f"the {which} is longer than {MAX_TEXT_TOKENS} T5 tokens"
                    warn(f"{limit}; the text from {text[:60]!r}... onwards is dropped")
            embeds = pipe.encode_text(ids).to(dtype)
            if config.offload == "none" and device.type == "cuda" and pipelines is None:
                pipe.release_text_encoder()  # T5-XXL is ~9.5 GB on the GPU; it is not needed again
                torch.cuda.empty_cache()

        video, mask = image_to_video(image, config.frames, config.height, config.width)
        generator = torch.Generator(device=device).manual_seed(config.seed)  # where the latents live
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with timer("denoise"):
            out: PipelineOutput = pipe(
                prompt_embeds=embeds[:1],
                negative_prompt_embeds=embeds[1:],
                video=video,
                mask=mask,
                num_inference_steps=config.steps,
                guidance_scale=config.guidance_scale,
                noise_aug_strength=config.noise_aug_strength,
                generator=generator,
                decode=False,
            )
        with timer("vae_decode"):
            decoded = pipe.decode_latents(out.latents)
        pipe.maybe_free_model_hooks()

    surplus = decoded.shape[2] - config.frames
    orbit = decoded[0, :, surplus:]  # [3, F, H, W]: the leading surplus frames are copies of frame 0
    frames = (orbit.permute(1, 2, 3, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)

    record = {
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "image_sha256": hashlib.sha256(Path(config.image).read_bytes()).hexdigest(),
        "prompt": prompt,
        "negative_prompt": config.negative_prompt,
        "text_tokens": MAX_TEXT_TOKENS,
        "truncated_text": {"prompt": dropped[0], "negative_prompt": dropped[1]},
        "seed": config.seed,
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "frames": config.frames,
        "height": config.height,
        "width": config.width,
        "decoded_frames": int(decoded.shape[2]),
        "frames_dropped": int(surplus),
        "view_aligned": aligned is not None,
        "preparation": preparation,
        "conditioning_image": CONDITIONING_FILE,
        "speedups": speedups,
        "timings_s": timer.seconds,
        "peak_gpu_memory_gb": (
            round(torch.cuda.max_memory_allocated(device) / 1024**3, 2) if device.type == "cuda" else None
        ),
        "versions": package_versions(),
    }
    return GenerateResult(frames=frames, record=record, aligned_image=aligned, conditioning_image=image)


def write_orbit_video(frames: list[np.ndarray], path: Path, fps: int) -> None:
    """orbit.mp4 (H.264); also used by `run` to re-mux at a new --fps without regenerating."""
    import imageio.v2 as imageio

    imageio.mimwrite(path, frames, fps=fps, codec="libx264", quality=8)


def write_outputs(result: GenerateResult, out_dir: Path, fps: int, progress: bool = True) -> None:
    """frames/00000.png..., orbit.mp4, generation.json, conditioning.png and (if any) aligned_input.png."""
    frames_dir = out_dir / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(tqdm(result.frames, desc="write frames", disable=not progress, leave=False)):
        Image.fromarray(frame).save(frames_dir / f"{i:05d}.png")
    write_orbit_video(list(result.frames), out_dir / "orbit.mp4", fps)
    if result.aligned_image is not None:
        result.aligned_image.save(out_dir / "aligned_input.png")
    if result.conditioning_image is not None:
        result.conditioning_image.save(out_dir / CONDITIONING_FILE)
    (out_dir / "generation.json").write_text(json.dumps(result.record, indent=2))
