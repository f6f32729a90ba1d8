"""Full-size generation on a CUDA GPU with random weights in the released shapes.

No released weights are needed: every component is built directly on the GPU in the real classes
with the published shapes (transformer: 42 layers, 48 heads x 64, in_channels 33, text_embed_dim
4096; text encoder: a random T5-XXL-shaped encoder, 24 layers, d_model 4096; VAE: the CogVideoX-5B
VAE config) and run through `droplet3d.generate.generate`, the code path of `droplet3d generate`
(only checkpoint reading is replaced). Random weights make the video noise, but the work per step
is the real one, so the timings are.

Phases (each records into the JSON file as it finishes; a phase that would overrun `--deadline`
is skipped and says so):

* `peak`: the card's measured bf16 matrix-product rate (8192^3) and device-to-device copy rate.
* `sdpa`: every fused attention backend on the real attention shape, its TFLOP/s and its error
  against fp32 maths on a smaller problem.
* `step`: one transformer call at batch 2 (batched CFG) per attention backend, with fused q/k/v,
  and its FLOPs as a fraction of bf16 peak.
* `e2e`: `generate()` end to end (text encoder, VAE encode, 50 DDIM steps with CFG, VAE decode).
* `vae_benchmark`: the VAE decode again with cuDNN autotuning, and how far its frames move.
* `offload_model`: `--offload model` for a few steps (the step itself is the same as without offload;
  the extra is the transfers).
* `compile`: the blocks compiled with `torch.compile`: compile seconds and seconds per step.
* `offload_sequential`: one transformer call under sequential offload.
* `fp8` (experiment, not in the default list): the linear layers in float8 with per-channel and
  per-token scales, eager and compiled, against bf16 and the float32 call.

    python benchmarks/bench_generate_gpu.py --json out.json [--steps 50] [--deadline 500]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from droplet3d import generate as gen  # noqa: E402
from droplet3d import models  # noqa: E402
from droplet3d.pipeline import Droplet3DPipeline  # noqa: E402
from droplet3d.transformer import Droplet3DTransformer3DModel  # noqa: E402
from droplet3d.vae import normalize_vae_config, use_reference_encode_batching  # noqa: E402

TINY = REPO / "tests" / "fixtures" / "reference" / "tiny-droplet3d"
IMAGE = REPO / "tests" / "fixtures" / "reference" / "ref_image.png"
PROMPT = "a cute cartoon panda astronaut wears a white spacesuit. the video rotates 360 degrees."
DATASHEET_BF16_TFLOPS = 989.0  # H100 SXM dense bf16

# The released transformer config (the class defaults are the release's; named here for the record).
RELEASED_TRANSFORMER = {
    "num_layers": 42, "num_attention_heads": 48, "attention_head_dim": 64, "in_channels": 33,
    "out_channels": 16, "text_embed_dim": 4096, "time_embed_dim": 512, "sample_frames": 85,
    "sample_height": 64, "sample_width": 64, "add_noise_in_inpaint_model": True,
}  # fmt: skip
# The CogVideoX-5B VAE (Droplet3D ships it under its own block names).
COGVIDEOX_5B_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 16, "block_out_channels": [128, 256, 256, 512],
    "down_block_types": ["Droplet3DDownBlock3D"] * 4, "up_block_types": ["Droplet3DUpBlock3D"] * 4,
    "layers_per_block": 3, "act_fn": "silu", "norm_eps": 1e-6, "norm_num_groups": 32,
    "temporal_compression_ratio": 4, "sample_height": 480, "sample_width": 720, "scaling_factor": 0.7,
    "force_upcast": True, "use_quant_conv": False, "use_post_quant_conv": False,
}  # fmt: skip
# T5 v1.1 XXL's encoder.
T5_XXL = {
    "vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6, "tie_word_embeddings": False,
    "is_encoder_decoder": False, "use_cache": False,
}  # fmt: skip

# `--smoke` runs every phase on the CPU with tiny shapes, to check the script before spending GPU time.
DEVICE = "cuda"

BACKENDS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}


class Recorder:
    """Keeps every figure in one dict, rewrites the JSON after each phase and enforces the deadline."""

    def __init__(self, path: Path, deadline_s: float) -> None:
        self.path = path
        self.start = time.perf_counter()
        self.deadline_s = deadline_s
        self.data: dict[str, Any] = {"skipped": {}, "errors": {}}

    def left(self) -> float:
        return self.deadline_s - (time.perf_counter() - self.start)

    def phase(self, name: str, estimate_s: float, run: Callable[[], Any], keep: bool = True) -> Any:
        """Run one phase unless it would overrun; keep going after an error (the record says which)."""
        if self.left() < estimate_s:
            self.data["skipped"][name] = f"needs ~{estimate_s:.0f} s, {self.left():.0f} s left"
            print(f"[{name}] skipped: {self.data['skipped'][name]}", flush=True)
            self.save()
            return None
        print(f"[{name}] start (t={time.perf_counter() - self.start:.0f} s)", flush=True)
        began = time.perf_counter()
        try:
            result = run()
        except Exception as exc:  # a failed phase is a finding; the others still run
            self.data["errors"][name] = f"{type(exc).__name__}: {exc}"[:2000]
            print(f"[{name}] FAILED: {self.data['errors'][name]}", flush=True)
            result = None
        self.data.setdefault("phase_seconds", {})[name] = round(time.perf_counter() - began, 1)
        if result is not None and keep:
            shown = {k: v for k, v in result.items() if not k.startswith("_")}  # "_x": kept, not saved
            self.data[name] = shown
            print(f"[{name}] {json.dumps(shown, default=str)}", flush=True)
        self.save()
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
        return result

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=2, default=str))


def cuda_time(fn: Callable[[], Any], reps: int, warmup: int = 1) -> list[float]:
    """Seconds of each of `reps` calls after `warmup` calls, measured with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    if DEVICE == "cpu":
        for _ in range(reps):
            began = time.perf_counter()
            fn()
            times.append(time.perf_counter() - began)
        return times
    for _ in range(reps):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(begin.elapsed_time(end) / 1000)
    return times


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 (NaN if either has non-finite values)."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


# ------------------------------------------------------------------------------------------ shapes
def token_counts(frames: int, height: int, width: int, text_tokens: int = 450) -> tuple[int, int]:
    """(text tokens, video tokens) of one transformer call."""
    lat_frames = (frames - 1) // 4 + 1
    return text_tokens, lat_frames * (height // 16) * (width // 16)


def step_flops(frames: int, height: int, width: int, batch: int = 2) -> float:
    """Matrix-product FLOPs of one transformer call (q/k/v/out, MLP, attention; the rest is < 0.1%)."""
    cfg = RELEASED_TRANSFORMER
    dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    text, video = token_counts(frames, height, width)
    n = text + video
    per_layer = 2 * n * 4 * dim * dim + 2 * n * 2 * 4 * dim * dim + 4 * n * n * dim
    return float(batch * cfg["num_layers"] * per_layer)


# ------------------------------------------------------------------------------------------ phases
def measure_peaks() -> dict[str, float]:
    """bf16 matrix-product rate and copy bandwidth of this card, as found."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    t = statistics.median(cuda_time(lambda: a @ b, reps=10, warmup=3))
    src = torch.randn(2**30 // 2, device="cuda", dtype=torch.bfloat16)  # 1 GiB
    dst = torch.empty_like(src)
    tc = statistics.median(cuda_time(lambda: dst.copy_(src), reps=10, warmup=3))
    return {
        "bf16_matmul_tflops": round(2 * 8192**3 / t / 1e12, 1),
        "copy_gbps_read_plus_write": round(2 * src.numel() * 2 / tc / 1e9, 0),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }


def measure_sdpa(frames: int, height: int, width: int) -> dict[str, Any]:
    """Each backend on the real attention shape (batch 2, 48 heads x 64), plus its error vs fp32 maths."""
    text, video = token_counts(frames, height, width)
    n, heads, hd = text + video, 48, 64
    g = torch.Generator(device="cuda").manual_seed(0)

    def qkv(batch: int, length: int, dtype: torch.dtype) -> list[torch.Tensor]:
        # q and k come out of the qk LayerNorm contiguous; v is a transposed view, as in the model.
        q = torch.randn(batch, heads, length, hd, device="cuda", dtype=dtype, generator=g)
        k = torch.randn(batch, heads, length, hd, device="cuda", dtype=dtype, generator=g)
        v = torch.randn(batch, length, heads, hd, device="cuda", dtype=dtype, generator=g).transpose(1, 2)
        return [q, k, v]

    big = qkv(2, n, torch.bfloat16)
    small = qkv(1, 4096, torch.float32)
    with sdpa_kernel(SDPBackend.MATH):
        ref = torch.nn.functional.scaled_dot_product_attention(*small)
    flops = 4 * 2 * heads * n * n * hd
    out: dict[str, Any] = {"tokens": n}
    for name, backend in [("default", None), *BACKENDS.items()]:
        try:
            with sdpa_kernel(backend) if backend is not None else contextlib.nullcontext():
                t = statistics.median(
                    cuda_time(lambda: torch.nn.functional.scaled_dot_product_attention(*big), reps=5)
                )
                small_out = torch.nn.functional.scaled_dot_product_attention(
                    *[x.to(torch.bfloat16) for x in small]
                )
            out[name] = {
                "ms": round(t * 1e3, 2),
                "tflops": round(flops / t / 1e12, 1),
                "rel_err_vs_fp32": round(rel_err(small_out, ref), 5),
            }
        except RuntimeError as exc:
            out[name] = {"error": str(exc).splitlines()[0][:300]}
    return out


def build_transformer(dtype: torch.dtype) -> Droplet3DTransformer3DModel:
    """The released-shape transformer, random weights from seed 0, built on the device."""
    torch.manual_seed(0)
    with torch.device(DEVICE):
        transformer = Droplet3DTransformer3DModel.from_config(RELEASED_TRANSFORMER)
    return torch.nn.Module.to(transformer, dtype=dtype).eval().requires_grad_(False)


def build_text_encoder(dtype: torch.dtype) -> torch.nn.Module:
    """A random T5-XXL-shaped encoder on the device."""
    from transformers import T5Config, T5EncoderModel

    with torch.device(DEVICE):
        text_encoder = T5EncoderModel(T5Config(**T5_XXL))
    return text_encoder.to(dtype=dtype).eval().requires_grad_(False)


def build_pipeline(
    dtype: torch.dtype, transformer: Droplet3DTransformer3DModel | None = None
) -> Droplet3DPipeline:
    """All five components with random weights in the released shapes, built on the device."""
    from diffusers import AutoencoderKLCogVideoX

    transformer = transformer if transformer is not None else build_transformer(dtype)
    with torch.device(DEVICE):
        vae = AutoencoderKLCogVideoX.from_config(normalize_vae_config(COGVIDEOX_5B_VAE))
    vae = torch.nn.Module.to(use_reference_encode_batching(vae), dtype=dtype).eval().requires_grad_(False)
    pipe = Droplet3DPipeline(
        tokenizer=models.load_tokenizer(TINY / "tokenizer"),
        text_encoder=build_text_encoder(dtype),
        vae=vae,
        transformer=transformer,
        scheduler=models.load_scheduler(TINY / "scheduler"),
    )
    pipe.to(DEVICE)
    return pipe


def measure_layouts(frames: int, height: int, width: int) -> dict[str, Any]:
    """cuDNN attention with q/k/v laid out as the model makes them and the two uniform layouts."""
    text, video = token_counts(frames, height, width)
    n, heads, hd = text + video, 48, 64
    flops = 4 * 2 * heads * n * n * hd

    def bhsd() -> torch.Tensor:
        return torch.randn(2, heads, n, hd, device=DEVICE, dtype=torch.bfloat16)

    def bshd() -> torch.Tensor:
        return torch.randn(2, n, heads, hd, device=DEVICE, dtype=torch.bfloat16).transpose(1, 2)

    layouts = {"model (q,k BHSD; v BSHD view)": (bhsd, bhsd, bshd), "all BHSD": (bhsd,) * 3,
               "all BSHD views": (bshd,) * 3}  # fmt: skip
    out: dict[str, Any] = {}
    for name, makers in layouts.items():
        qkv = [make() for make in makers]
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            t = statistics.median(
                cuda_time(lambda qkv=qkv: torch.nn.functional.scaled_dot_product_attention(*qkv), 5)
            )
        out[name] = {"ms": round(t * 1e3, 2), "tflops": round(flops / t / 1e12, 1)}
    return out


def fp32_reference(
    transformer: Droplet3DTransformer3DModel, frames: int, height: int, width: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor, float]:
    """One full-size call (batch 1) in strict float32: no TF32, memory-efficient attention."""
    inputs = {k: v[:1].float() if v.is_floating_point() else v[:1] for k, v in step_inputs(
        frames, height, width, torch.float32).items()}  # fmt: skip
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        t, out = time_step(transformer, inputs, [SDPBackend.EFFICIENT_ATTENTION], reps=1, warmup=0)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
    return inputs, out, t


def measure_accuracy(
    pipe: Droplet3DPipeline, inputs: dict[str, torch.Tensor], reference: torch.Tensor, label: str
) -> dict[str, Any]:
    """bf16 calls (as the pipeline makes them, and with FlashAttention-2) against the float32 call."""
    bf16 = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
    out: dict[str, Any] = {}
    for name, priority in [(label, list(pipe.sdpa_priority or [])), ("flash", [SDPBackend.FLASH_ATTENTION])]:
        _, y = time_step(pipe.transformer, bf16, priority, reps=1)
        out[f"rel_err_{name}_vs_fp32"] = round(rel_err(y, reference), 5)
        if label == "compiled":
            break
    return out


def ensure_text_encoder(pipe: Droplet3DPipeline) -> None:
    """generate() releases the T5 after use; build a fresh random one for the next run."""
    if pipe.text_encoder is None:
        pipe.register_modules(text_encoder=build_text_encoder(pipe.transformer.dtype))


def frames_psnr(a: Any, b: Any) -> float:
    mse = float(((a.astype("float64") - b.astype("float64")) ** 2).mean())
    return round(10 * math.log10(255**2 / mse), 2) if mse > 0 else float("inf")


def param_counts(pipe: Droplet3DPipeline) -> dict[str, float]:
    return {
        name: round(sum(p.numel() for p in getattr(pipe, name).parameters()) / 1e9, 3)
        for name in ("transformer", "text_encoder", "vae")
    }


def step_inputs(frames: int, height: int, width: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """One batched-CFG transformer call's inputs at full size."""
    g = torch.Generator(device=DEVICE).manual_seed(1)
    lat = ((frames - 1) // 4 + 1, height // 8, width // 8)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=DEVICE, dtype=dtype, generator=g)

    return {
        "hidden_states": randn(2, lat[0], 16, lat[1], lat[2]),
        "inpaint_latents": randn(2, lat[0], 17, lat[1], lat[2]),
        "encoder_hidden_states": randn(2, 450, RELEASED_TRANSFORMER["text_embed_dim"]) * 0.1,
        "timestep": torch.tensor([999, 999], device=DEVICE),
    }


def time_step(
    transformer: Droplet3DTransformer3DModel,
    inputs: dict[str, torch.Tensor],
    priority: list[SDPBackend] | None,
    reps: int = 3,
    warmup: int = 1,
) -> tuple[float, torch.Tensor]:
    """Median seconds of one transformer call under an attention-backend order, and its output."""
    from droplet3d.pipeline import attention_backends

    @torch.no_grad()
    def call() -> torch.Tensor:
        with attention_backends(torch.device(DEVICE), priority):
            return transformer(**inputs)[0]

    times = cuda_time(call, reps=reps, warmup=warmup)
    return statistics.median(times), call()


def measure_steps(pipe: Droplet3DPipeline, frames: int, height: int, width: int) -> dict[str, Any]:
    """Seconds per transformer call per attention backend, then with fused q/k/v; picks the fastest."""
    inputs = step_inputs(frames, height, width, pipe.transformer.dtype)
    flops = step_flops(frames, height, width)
    tr = pipe.transformer
    out: dict[str, Any] = {"tflop_per_step": round(flops / 1e12, 1)}
    baseline = None
    best_name, best_t = None, math.inf
    for name, priority in [("default", None), *[(k, [v]) for k, v in BACKENDS.items()]]:
        try:
            t, y = time_step(tr, inputs, priority)
        except RuntimeError as exc:
            out[name] = {"error": str(exc).splitlines()[0][:300]}
            continue
        baseline = y if baseline is None else baseline
        out[name] = {
            "s": round(t, 3),
            "tflops": round(flops / t / 1e12, 1),
            "of_datasheet_peak": round(flops / t / 1e12 / DATASHEET_BF16_TFLOPS, 3),
            "finite": bool(torch.isfinite(y).all()),
            "rel_err_vs_default": round(rel_err(y, baseline), 5),
        }
        if name != "default" and t < best_t:
            best_name, best_t = name, t
    priority = [BACKENDS[best_name]] + [b for k, b in BACKENDS.items() if k != best_name] + [SDPBackend.MATH]
    pipe.sdpa_priority = priority
    tr.fuse_qkv_projections()
    t, y = time_step(tr, inputs, priority)
    out["fused_qkv+" + best_name] = {
        "s": round(t, 3),
        "tflops": round(flops / t / 1e12, 1),
        "of_datasheet_peak": round(flops / t / 1e12 / DATASHEET_BF16_TFLOPS, 3),
        "rel_err_vs_default": round(rel_err(y, baseline), 5),
    }
    fused_wins = t < best_t
    if not fused_wins:
        tr.unfuse_qkv_projections()
    gen.FUSE_QKV_ON_CUDA = fused_wins
    out["chosen"] = {"sdpa_first": best_name, "fused_qkv": fused_wins}
    return out


def place(pipe: Droplet3DPipeline, offload: str) -> Droplet3DPipeline:
    """Put the components where `load_pipeline` would for `offload` (weights already in memory)."""
    pipe.remove_all_hooks()
    ensure_text_encoder(pipe)
    if offload == "none" or DEVICE == "cpu":
        pipe.to(DEVICE)
        return pipe
    # With offload generate() does not fuse q/k/v: moving fused weights would copy their views.
    pipe.transformer.unfuse_qkv_projections()
    for module in (pipe.text_encoder, pipe.transformer, pipe.vae):
        module.to("cpu")
    torch.cuda.empty_cache()
    if offload == "model":
        pipe.enable_model_cpu_offload(device=torch.device(DEVICE))
    else:
        pipe.enable_sequential_cpu_offload(device=torch.device(DEVICE))
    return pipe


def only_transformer_on_device(pipe: Droplet3DPipeline) -> None:
    """Drop offload hooks and put the pipeline on the device (diffusers' public placement).

    The T5 goes too unless it was released: the pipeline no longer overrides diffusers' private
    execution-device property to run with components split across devices.
    """
    pipe.remove_all_hooks()
    pipe.to(DEVICE)


def run_generate(pipe: Droplet3DPipeline, steps: int, offload: str, **extra: Any) -> dict[str, Any]:
    """`generate()` as `droplet3d generate` runs it, on the in-memory random pipeline."""
    ensure_text_encoder(pipe)
    gen.resolve_checkpoint = lambda ckpt, view_align=False: None
    gen.load_pipeline = lambda paths, dtype, device, mode: place(pipe, mode)
    config = gen.GenerateConfig(
        ckpt=Path("random-weights"), image=IMAGE, prompt=PROMPT, steps=steps, offload=offload,
        device=DEVICE, progress=False, **extra,
    )  # fmt: skip
    if DEVICE == "cpu":
        config.frames, config.height, config.width = SMOKE_VIDEO
    began = time.perf_counter()
    result = gen.generate(config)
    wall = time.perf_counter() - began
    timings = result.record["timings_s"]
    frames = result.frames.astype("float32")
    return {
        "steps": steps,
        "offload": offload,
        "timings_s": timings,
        "end_to_end_s_without_load": round(wall - timings.get("load", 0.0), 2),
        "wall_s": round(wall, 2),
        "s_per_step_incl_vae_encode": round(timings["denoise"] / steps, 3),
        "peak_gpu_memory_gb": result.record["peak_gpu_memory_gb"],
        "speedups": result.record["speedups"],
        "frames_shape": list(result.frames.shape),
        "frames_mean_std": [round(float(frames.mean()), 2), round(float(frames.std()), 2)],
        "_frames": result.frames,
    }


def measure_vae_autotune(pipe: Droplet3DPipeline, frames: int, height: int, width: int) -> dict[str, Any]:
    """VAE decode of random latents with and without cuDNN autotuning (benchmark=True)."""
    pipe.remove_all_hooks()
    pipe.to(DEVICE)
    g = torch.Generator(device=DEVICE).manual_seed(2)
    lat = torch.randn(1, (frames - 1) // 4 + 1, 16, height // 8, width // 8, device=DEVICE, generator=g)
    lat = lat.to(pipe.vae.dtype)
    out: dict[str, Any] = {}
    results = {}
    for bench in (False, True, True):  # the second autotuned run is the one without tuning cost
        torch.backends.cudnn.benchmark = bench
        sync()
        began = time.perf_counter()
        results[bench] = pipe.decode_latents(lat)
        sync()
        out.setdefault(f"decode_s_benchmark_{bench}", []).append(round(time.perf_counter() - began, 2))
    torch.backends.cudnn.benchmark = False
    diff = (results[True] - results[False]).abs()
    out["max_abs_frame_diff"] = round(float(diff.max()), 5)
    mse = float((diff**2).mean())
    out["psnr_db_autotuned_vs_default"] = round(-10 * math.log10(mse), 1) if mse > 0 else "identical"
    return out


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def measure_compile(pipe: Droplet3DPipeline, frames: int, height: int, width: int) -> dict[str, Any]:
    """Regional torch.compile of the blocks: the compile's cost and the step after it."""
    from droplet3d.pipeline import attention_backends

    only_transformer_on_device(pipe)
    inputs = step_inputs(frames, height, width, pipe.transformer.dtype)
    tr = pipe.transformer
    if gen.FUSE_QKV_ON_CUDA:  # compile what generate() would run
        tr.fuse_qkv_projections()
    priority = list(pipe.sdpa_priority or [])
    eager_t, eager_y = time_step(tr, inputs, priority, reps=2)
    tr.compile_blocks()
    sync()
    began = time.perf_counter()
    with torch.no_grad(), attention_backends(torch.device(DEVICE), priority):
        tr(**inputs)
    sync()
    first = time.perf_counter() - began
    t, y = time_step(tr, inputs, priority, reps=3)
    for block in tr.transformer_blocks:  # back to eager for the phases after this one
        block._compiled_call_impl = None
    flops = step_flops(frames, height, width)
    return {
        "eager_s": round(eager_t, 3),
        "first_call_s_incl_compile": round(first, 1),
        "compiled_s": round(t, 3),
        "compiled_tflops": round(flops / t / 1e12, 1),
        "speedup": round(eager_t / t, 3),
        "rel_err_vs_eager": round(rel_err(y, eager_y), 5),
    }


def measure_sequential(pipe: Droplet3DPipeline, frames: int, height: int, width: int) -> dict[str, Any]:
    """One transformer call with every layer's weights streamed from the CPU (`--offload sequential`)."""
    place(pipe, "sequential")
    torch.cuda.reset_peak_memory_stats()
    inputs = step_inputs(frames, height, width, torch.bfloat16)
    t, _ = time_step(pipe.transformer, inputs, list(pipe.sdpa_priority or []), reps=1)
    return {
        "s_per_step": round(t, 2),
        "peak_gpu_memory_gb_during_step": round(torch.cuda.max_memory_allocated() / 1024**3, 2),
    }


FP8_MAX = 448.0  # largest float8 e4m3fn value


class Fp8Linear(torch.nn.Module):
    """Experiment only: a Linear computed in float8 e4m3 (torch._scaled_mm), bf16 out.

    Weights get one scale per output channel, activations one per token (computed on the fly), so
    an outlier spoils only its own row. Not in the product: with random weights no one can say
    whether the error it adds is visible; it is measured here for speed and error per call.
    """

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX  # [out, 1]
        self.register_buffer("weight", (w / scale).to(torch.float8_e4m3fn))  # [out, in], row-major
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, out]
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.fused_bias = scaled_mm_takes_bias(w.device, linear.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        rows = x.reshape(-1, x.shape[-1])
        scale = rows.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX  # [tokens, 1]
        quantised = (rows.float() / scale).to(torch.float8_e4m3fn)
        out = torch._scaled_mm(
            quantised, self.weight.t(), scale_a=scale, scale_b=self.weight_scale,
            bias=self.bias if self.fused_bias else None, out_dtype=x.dtype,
        )  # fmt: skip
        if self.bias is not None and not self.fused_bias:
            out = out + self.bias
        return out.reshape(*lead, out.shape[-1])


_BIAS_SUPPORT: dict[tuple[str, torch.dtype], bool] = {}


def scaled_mm_takes_bias(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this torch's row-wise scaled matrix product accepts a bias (else it is added after)."""
    key = (str(device), dtype)
    if key not in _BIAS_SUPPORT:
        a = torch.ones(32, 32, device=device).to(torch.float8_e4m3fn)
        scale_a, scale_b = torch.ones(32, 1, device=device), torch.ones(1, 32, device=device)
        try:
            torch._scaled_mm(a, a.t(), scale_a=scale_a, scale_b=scale_b,
                             bias=torch.zeros(32, device=device, dtype=dtype), out_dtype=dtype)  # fmt: skip
            _BIAS_SUPPORT[key] = True
        except RuntimeError:
            _BIAS_SUPPORT[key] = False
    return _BIAS_SUPPORT[key]


def linears_to_fp8(transformer: Droplet3DTransformer3DModel) -> int:
    """Swap every block's q/k/v/out and MLP projections for `Fp8Linear`; returns how many."""
    count = 0
    for block in transformer.transformer_blocks:
        attn, ff = block.attn1, block.ff
        for name in ("to_q", "to_k", "to_v"):
            setattr(attn, name, Fp8Linear(getattr(attn, name)))
        attn.to_out[0] = Fp8Linear(attn.to_out[0])
        ff.net[0].proj = Fp8Linear(ff.net[0].proj)
        ff.net[2] = Fp8Linear(ff.net[2])
        count += 6
    return count


def measure_fp8(
    pipe: Droplet3DPipeline, frames: int, height: int, width: int, reference: tuple | None
) -> dict[str, Any]:
    """Step seconds and error vs float32: bf16 eager and compiled, then fp8 linears eager and compiled."""
    from droplet3d.pipeline import attention_backends

    only_transformer_on_device(pipe)
    tr = pipe.transformer
    priority = list(pipe.sdpa_priority or [])
    inputs = step_inputs(frames, height, width, tr.dtype)
    ref_inputs = None
    if reference is not None:  # batch 1 doubled: the timed shapes, so nothing is compiled again
        ref_inputs = {
            k: torch.cat([v, v]).to(tr.dtype) if v.is_floating_point() else torch.cat([v, v])
            for k, v in reference[0].items()
        }
    flops = step_flops(frames, height, width)
    out: dict[str, Any] = {}

    def measure(name: str, compiled: bool) -> None:
        began = time.perf_counter()
        if compiled:
            tr.compile_blocks()
            with torch.no_grad(), attention_backends(torch.device(DEVICE), priority):
                tr(**inputs)
            sync()
        first = time.perf_counter() - began
        t, _ = time_step(tr, inputs, priority, reps=2, warmup=0 if compiled else 1)
        entry: dict[str, Any] = {"s": round(t, 3), "tflops_equiv": round(flops / t / 1e12, 1)}
        if compiled:
            entry["first_call_s_incl_compile"] = round(first, 1)
        if ref_inputs is not None:
            _, y = time_step(tr, ref_inputs, priority, reps=1, warmup=0)
            entry["rel_err_vs_fp32"] = round(rel_err(y[:1], reference[1]), 5)
        for block in tr.transformer_blocks:
            block._compiled_call_impl = None
        out[name] = entry
        print(f"[fp8] {name} {entry}", flush=True)

    measure("bf16_eager", compiled=False)
    measure("bf16_compiled", compiled=True)
    out["fp8_linears"] = linears_to_fp8(tr)
    out["fp8_bias_fused_in_scaled_mm"] = next(iter(_BIAS_SUPPORT.values()), None)
    measure("fp8_eager", compiled=False)
    measure("fp8_compiled", compiled=True)
    return out


def use_smoke_shapes() -> None:
    """Tiny shapes on the CPU: every phase's code runs in seconds, its figures mean nothing."""
    global DEVICE
    DEVICE = "cpu"
    RELEASED_TRANSFORMER.update(num_layers=2, num_attention_heads=2, attention_head_dim=8, text_embed_dim=32,
                                time_embed_dim=16, sample_height=16, sample_width=16)  # fmt: skip
    T5_XXL.update(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, vocab_size=180)
    COGVIDEOX_5B_VAE.update(block_out_channels=[8, 16, 16, 16], layers_per_block=1, norm_num_groups=4)


SMOKE_VIDEO = (9, 64, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("bench_generate_gpu.json"))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--frames", type=int, default=85)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--offload-steps", type=int, default=4)
    parser.add_argument("--deadline", type=float, default=520.0, help="seconds; later phases are skipped")
    parser.add_argument(
        "--phases", default="peak,sdpa,layout,accuracy,step,e2e,e2e_compile,vae,model,compile,sequential"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (checks the script)")
    args = parser.parse_args()
    phases = set(args.phases.split(","))
    f, s = args.frames, args.size
    if args.smoke:
        use_smoke_shapes()
        phases -= {"peak", "sdpa", "layout", "accuracy", "model", "sequential"}
        (f, s), args.steps = SMOKE_VIDEO[:2], 2
    elif not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU (or --smoke)")
    rec = Recorder(args.json, args.deadline)
    rec.data["config"] = {"frames": f, "height": s, "width": s, "steps": args.steps, "guidance_scale": 6.0,
                          "dtype": "bfloat16", "transformer": RELEASED_TRANSFORMER, "text_encoder": T5_XXL,
                          "vae": COGVIDEOX_5B_VAE}  # fmt: skip
    est_step = 2.5  # seconds per step before measuring; refined below
    if "peak" in phases:
        rec.phase("peak", 15, measure_peaks)
    if "sdpa" in phases:
        rec.phase("sdpa", 30, lambda: measure_sdpa(f, s, s))
    if "layout" in phases:
        rec.phase("sdpa_layout", 20, lambda: measure_layouts(f, s, s))
    dtype = torch.float32 if args.smoke else torch.bfloat16  # generate() runs the CPU in float32
    transformer, reference = None, None
    if "accuracy" in phases:  # the float32 call first, from the same weights the bf16 runs then use
        transformer = build_transformer(torch.float32)
        ref_inputs, ref_out, ref_t = fp32_reference(transformer, f, s, s)
        reference = (ref_inputs, ref_out)
        rec.data["fp32_reference_call_s"] = round(ref_t, 1)
        transformer = torch.nn.Module.to(transformer, dtype=dtype)
    pipe = rec.phase("build", 60, lambda: build_pipeline(dtype, transformer), keep=False)
    if pipe is None:
        return
    rec.data["params_billion"] = param_counts(pipe)
    pipe.set_progress_bar_config(disable=True)
    if reference is not None:
        rec.phase("accuracy_eager", 20, lambda: measure_accuracy(pipe, *reference, "eager"))
    if "step" in phases:
        steps = rec.phase("step", 80, lambda: measure_steps(pipe, f, s, s))
        if steps:
            est_step = min(v["s"] for v in steps.values() if isinstance(v, dict) and "s" in v)
    eager = None
    if "e2e" in phases:
        eager = rec.phase("e2e", est_step * args.steps + 60, lambda: run_generate(pipe, args.steps, "none"))
    if "e2e_compile" in phases:

        def compiled_run() -> dict[str, Any]:
            result = run_generate(pipe, args.steps, "none", compile=True)
            if eager is not None:
                result["frames_psnr_db_vs_eager"] = frames_psnr(result["_frames"], eager["_frames"])
            return result

        rec.phase("e2e_compile", 0.88 * est_step * args.steps + 80, compiled_run)
        if reference is not None:
            rec.phase("accuracy_compiled", 20, lambda: measure_accuracy(pipe, *reference, "compiled"))
    if "vae" in phases:
        rec.phase("vae_benchmark", 60, lambda: measure_vae_autotune(pipe, f, s, s))
    if "model" in phases:
        rec.phase(
            "offload_model",
            est_step * args.offload_steps + 70,
            lambda: run_generate(pipe, args.offload_steps, "model"),
        )
    if "compile" in phases:
        rec.phase("compile", 150, lambda: measure_compile(pipe, f, s, s))
    if "fp8" in phases:  # last: it replaces the transformer's linear layers
        rec.phase("fp8", 120, lambda: measure_fp8(pipe, f, s, s, reference))
    if "sequential" in phases:
        rec.phase("offload_sequential", 60, lambda: measure_sequential(pipe, f, s, s))
    print("SUMMARY " + json.dumps(rec.data, default=str))


if __name__ == "__main__":
    main()
