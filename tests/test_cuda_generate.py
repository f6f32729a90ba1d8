"""The generation stack on CUDA: same function as on the CPU, bf16 within bf16 noise, every offload mode.

CPU-vs-reference exactness is test_conformance.py's job; here the question is whether the CUDA paths
(attention kernels picked by priority, fused q/k/v, bf16, accelerate's offload hooks) compute the
same thing. Errors are ||a - b|| / ||b||: float32 on different devices lands near 1e-6, bf16 between
1e-3 and 1e-2, a wrong computation near 1. The fused q/k/v test also runs on the CPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import USER_PROMPT
from torch.nn.attention import SDPBackend

from droplet3d.generate import GenerateConfig, generate
from droplet3d.pipeline import CUDA_SDPA_PRIORITY, attention_backends
from droplet3d.transformer import Droplet3DTransformer3DModel

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# The released block layout (48 heads x 64, text_embed_dim 4096, time_embed_dim 512), two layers deep.
MID_CONFIG = {
    "num_layers": 2, "num_attention_heads": 48, "attention_head_dim": 64, "in_channels": 33,
    "out_channels": 16, "text_embed_dim": 4096, "time_embed_dim": 512, "sample_frames": 85,
    "sample_height": 64, "sample_width": 64,
}  # fmt: skip


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm())


def transformer_inputs(
    config: dict, frames: int, size: int, device: str, dtype: torch.dtype, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A batched-CFG call's inputs: [2, F_lat, C, size/8, size/8] latents, 450 text tokens."""
    g = torch.Generator().manual_seed(seed)
    lat = ((frames - 1) // 4 + 1, size // 8, size // 8)
    tensors = {
        "hidden_states": torch.randn(2, lat[0], 16, *lat[1:], generator=g),
        "inpaint_latents": torch.randn(2, lat[0], 17, *lat[1:], generator=g),
        "encoder_hidden_states": torch.randn(2, 450, config["text_embed_dim"], generator=g) * 0.1,
    }
    out = {k: v.to(device=device, dtype=dtype) for k, v in tensors.items()}
    out["timestep"] = torch.tensor([999, 500], device=device)
    return out


@pytest.fixture(scope="module")
def mid_transformer() -> Droplet3DTransformer3DModel:
    """Random weights (seeded) in float32 on the CPU; tests copy it where they need it."""
    torch.manual_seed(0)
    return Droplet3DTransformer3DModel.from_config(MID_CONFIG).eval().requires_grad_(False)


def run(
    model: Droplet3DTransformer3DModel,
    inputs: dict[str, torch.Tensor],
    priority: tuple[SDPBackend, ...] | None = CUDA_SDPA_PRIORITY,
) -> torch.Tensor:
    device = inputs["hidden_states"].device
    with torch.no_grad(), attention_backends(device, priority):
        return model(**inputs)[0].float()


@pytest.fixture()
def strict_fp32():
    """No TF32 in matrix products or convolutions, so float32 on the GPU is float32."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[needs_cuda, pytest.mark.cuda])])
def test_fused_qkv_computes_the_same_function(device: str) -> None:
    torch.manual_seed(1)
    config = {**MID_CONFIG, "num_attention_heads": 4}  # small enough for the CPU
    model = Droplet3DTransformer3DModel.from_config(config).to(device).eval().requires_grad_(False)
    inputs = transformer_inputs(config, 5, 32, device, torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = run(model, inputs)
    model.fuse_qkv_projections()
    assert all(block.attn1.to_qkv is not None for block in model.transformer_blocks)
    fused = run(model, inputs)
    assert rel_err(fused, plain) < 1e-5
    # The published parameter names still hold the published values (views into the fused weight).
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    model.unfuse_qkv_projections()
    assert torch.equal(run(model, inputs), plain)


@pytest.mark.cuda
@needs_cuda
def test_cuda_float32_matches_cpu(mid_transformer: Droplet3DTransformer3DModel, strict_fp32: None) -> None:
    cpu_in = transformer_inputs(MID_CONFIG, 9, 64, "cpu", torch.float32)
    cuda_in = {k: v.cuda() for k, v in cpu_in.items()}
    on_cuda = Droplet3DTransformer3DModel.from_config(MID_CONFIG).eval().requires_grad_(False)
    on_cuda.load_state_dict(mid_transformer.state_dict())
    err = rel_err(run(on_cuda.cuda(), cuda_in), run(mid_transformer, cpu_in))
    print(f"fp32 CUDA vs CPU: rel err {err:.2e}")
    assert err < 1e-4, err


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("backend", ["cudnn", "flash", "efficient", "priority"])
def test_bf16_attention_backends_within_bf16_noise_of_fp32(
    mid_transformer: Droplet3DTransformer3DModel, strict_fp32: None, backend: str
) -> None:
    """Each fused attention kernel we may pick, in bf16, against the float32 model on the GPU."""
    priority = {
        "cudnn": (SDPBackend.CUDNN_ATTENTION,),
        "flash": (SDPBackend.FLASH_ATTENTION,),
        "efficient": (SDPBackend.EFFICIENT_ATTENTION,),
        "priority": CUDA_SDPA_PRIORITY,
    }[backend]
    fp32 = Droplet3DTransformer3DModel.from_config(MID_CONFIG).eval().requires_grad_(False)
    fp32.load_state_dict(mid_transformer.state_dict())
    fp32 = fp32.cuda()
    reference = run(fp32, transformer_inputs(MID_CONFIG, 9, 64, "cuda", torch.float32), priority=None)
    bf16 = fp32.to(torch.bfloat16)
    inputs = transformer_inputs(MID_CONFIG, 9, 64, "cuda", torch.bfloat16)
    err = rel_err(run(bf16, inputs, priority), reference)
    bf16.fuse_qkv_projections()
    err_fused = rel_err(run(bf16, inputs, priority), reference)
    print(f"bf16 {backend} vs fp32: rel err {err:.2e}, fused q/k/v {err_fused:.2e}")
    assert err < 2e-2, err
    assert err_fused < 2e-2, err_fused


def small_config(ckpt: Path, image: Path, **overrides: object) -> GenerateConfig:
    base = dict(
        ckpt=ckpt, image=image, prompt=USER_PROMPT, frames=9, height=64, width=64, steps=3, device="cuda",
        align_max_area=32 * 32, align_steps=2, align_auto_resize=False, progress=False,
    )  # fmt: skip
    base.update(overrides)
    return GenerateConfig(**base)


@pytest.mark.cuda
@needs_cuda
def test_bf16_pipeline_within_bf16_noise_of_fp32(tiny_ckpt: Path, reference_dir: Path) -> None:
    image = reference_dir / "ref_image.png"
    fp32 = generate(small_config(tiny_ckpt, image, dtype="float32"))
    bf16 = generate(small_config(tiny_ckpt, image))  # auto: bfloat16 on CUDA
    assert bf16.record["dtype"] == "bfloat16" and fp32.record["dtype"] == "float32"
    a, b = bf16.frames.astype(np.float64), fp32.frames.astype(np.float64)
    psnr = 10 * np.log10(255**2 / max(np.mean((a - b) ** 2), 1e-12))
    print(f"bf16 vs fp32 frames, tiny checkpoint, 3 steps: PSNR {psnr:.1f} dB")
    assert psnr > 25, psnr
    assert bf16.record["peak_gpu_memory_gb"] is not None
    assert bf16.record["speedups"][0].startswith("sdpa:cudnn_attention"), bf16.record["speedups"]


@pytest.fixture(scope="module")
def full_ckpt(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint plus a tiny FLUX.1-Kontext-dev and LoRA, for --view-align."""
    from tiny_flux import TRANSFORMER_CONFIG, build_tiny_kontext, build_tiny_lora

    root = tmp_path_factory.mktemp("full") / "Droplet3D-5B"
    shutil.copytree(tiny_ckpt, root)
    build_tiny_kontext(root)
    build_tiny_lora(root / "pytorch_lora_weights.safetensors", TRANSFORMER_CONFIG)
    return root


@pytest.mark.cuda
@needs_cuda
def test_offload_modes_give_the_same_video(full_ckpt: Path, reference_dir: Path) -> None:
    """none / model / sequential place weights differently but must compute the same frames,
    view alignment included (Kontext has its own offload)."""
    image = reference_dir / "ref_image.png"
    runs = {
        mode: generate(small_config(full_ckpt, image, offload=mode, view_align=True, dtype="float32"))
        for mode in ("none", "model", "sequential")
    }
    for mode in ("model", "sequential"):
        np.testing.assert_array_equal(
            np.asarray(runs[mode].aligned_image), np.asarray(runs["none"].aligned_image), err_msg=mode
        )
        diff = np.abs(runs[mode].frames.astype(int) - runs["none"].frames.astype(int)).max()
        assert diff <= 1, (mode, diff)
        assert runs[mode].record["peak_gpu_memory_gb"] is not None


def test_released_text_encoder_is_gone_and_placement_still_works(tiny_ckpt: Path) -> None:
    """generate() drops the T5 after encoding on CUDA; the pipeline must keep working without it."""
    from droplet3d.checkpoint import resolve_checkpoint
    from droplet3d.generate import load_pipeline

    pipe = load_pipeline(resolve_checkpoint(tiny_ckpt), torch.float32, torch.device("cpu"), "none")
    pipe.release_text_encoder()
    assert pipe.text_encoder is None and pipe.components["text_encoder"] is None
    pipe.to("cpu")
    pipe.maybe_free_model_hooks()
    assert pipe.device == torch.device("cpu")


@pytest.mark.cuda
@needs_cuda
def test_loaded_pipeline_runs_on_cuda_without_cpu_tensors(tiny_ckpt: Path) -> None:
    """Every weight and buffer of a CUDA pipeline is on the GPU (a stray CPU tensor would be slow
    or fail only at full size)."""
    from droplet3d.checkpoint import resolve_checkpoint
    from droplet3d.generate import load_pipeline

    pipe = load_pipeline(resolve_checkpoint(tiny_ckpt), torch.bfloat16, torch.device("cuda"), "none")
    for name in ("text_encoder", "transformer", "vae"):
        module = getattr(pipe, name)
        stray = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if not t.is_cuda]
        assert not stray, (name, stray[:3])
