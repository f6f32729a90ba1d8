"""The Droplet3D image+text -> orbit video pipeline: T5, inpaint DiT, causal 3D VAE, DDIM, CFG.

Numerically it follows the released reference flow step for step (the conformance tests compare
the first transformer call, the final latents and the decoded frames with fixtures produced by
the reference). Differences, all deliberate:

- noise augmentation of the conditioning frame is drawn from the seeded generator (reproducible);
- the VAE's surplus leading frames are reported so callers can drop them (85 requested frames
  decode to 88, the first 3 being copies of frame 0);
- no hidden global state: everything a run needs is an argument.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKLCogVideoX, DDIMScheduler, DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import T5EncoderModel, T5Tokenizer

from droplet3d.conditioning import add_noise_augmentation, masked_video, resize_mask
from droplet3d.constants import MAX_TEXT_TOKENS
from droplet3d.transformer import Droplet3DTransformer3DModel

QUALITY_SUFFIX = (
    "The video is of high quality, and the view is very clear. High quality, masterpiece, best quality, "
    "highres, ultra-detailed, fantastic."
)

# The order in which PyTorch's fused attention kernels are tried on CUDA. The joint text+video
# attention (22978 tokens, 48 heads x 64 at 85 frames, 512x512) is over half of a step's FLOPs. On an
# H100, cuDNN's fused attention runs it at 436 TFLOP/s, FlashAttention-2 at 327 and the
# memory-efficient kernel at 140 (a whole step: 2.36 s, 2.78 s, 5.04 s; benchmarks/RESULTS.md, "GPU").
# PyTorch 2.11 already tries cuDNN first there; other versions and cards may not, so the order is
# pinned. A backend that cannot take a shape or dtype (float32) is skipped for the next one.
CUDA_SDPA_PRIORITY: tuple[SDPBackend, ...] = (
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
)


@contextmanager
def attention_backends(device: torch.device, priority: Sequence[SDPBackend] | None) -> Iterator[None]:
    """Prefer `priority`'s attention kernels on CUDA; on the CPU change nothing (stays bit-exact)."""
    if device.type != "cuda" or not priority:
        yield
        return
    try:
        context = sdpa_kernel(list(priority), set_priority=True)
    except TypeError:  # torch < 2.6 has no priority order; the backends stay allowed in its own order
        context = sdpa_kernel(list(priority))
    with context:
        yield


def full_prompt(prompt: str) -> str:
    """The user prompt with the reference's quality suffix appended."""
    return prompt + " " + QUALITY_SUFFIX


@dataclass
class PipelineOutput:
    """frames: [1, 3, F_decoded, H, W] in [0, 1] float32; the first `surplus_frames` are not the orbit."""

    frames: torch.Tensor
    latents: torch.Tensor  # [1, F_lat, 16, H/8, W/8], before decoding
    surplus_frames: int


StepCallback = Callable[[int, int, dict[str, torch.Tensor]], None]


class Droplet3DPipeline(DiffusionPipeline):
    """Holds the five components; diffusers supplies device placement and CPU offload hooks."""

    model_cpu_offload_seq = "text_encoder->transformer->vae"

    def __init__(
        self,
        tokenizer: T5Tokenizer,
        text_encoder: T5EncoderModel,
        vae: AutoencoderKLCogVideoX,
        transformer: Droplet3DTransformer3DModel,
        scheduler: DDIMScheduler,
    ) -> None:
        super().__init__()
        self.register_modules(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            transformer=transformer,
            scheduler=scheduler,
        )
        # Attention kernel order for CUDA runs (benchmarks override it to compare backends).
        self.sdpa_priority: Sequence[SDPBackend] | None = CUDA_SDPA_PRIORITY
        self.vae_scale_spatial = 2 ** (len(vae.config.block_out_channels) - 1)
        self.vae_scale_temporal = vae.config.temporal_compression_ratio

    def release_text_encoder(self) -> None:
        """Drop the text encoder once the prompts are encoded, freeing its memory on the spot.

        Moving T5-XXL's 9.5 GB back to the CPU instead took 6.5 s on an H100 machine (pageable
        copies into freshly faulted pages), 5% of a whole generation; nothing needs it again.
        """
        self.register_modules(text_encoder=None)

    # ---------------------------------------------------------------- text
    def tokenize(
        self, prompts: list[str], max_tokens: int = MAX_TEXT_TOKENS
    ) -> tuple[torch.Tensor, list[str]]:
        """T5 ids [B, max_tokens] (padded/truncated) and, per prompt, the text lost to truncation."""
        ids = self.tokenizer(
            prompts, padding="max_length", max_length=max_tokens, truncation=True, return_tensors="pt"
        ).input_ids
        dropped = []
        for prompt in prompts:
            full = self.tokenizer(prompt, truncation=False).input_ids
            dropped.append(self.tokenizer.decode(full[max_tokens - 1 : -1]) if len(full) > max_tokens else "")
        return ids, dropped

    @torch.no_grad()
    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """T5 hidden states [B, L, C_text] in the text encoder's dtype."""
        return self.text_encoder(ids.to(self._execution_device))[0]

    # ---------------------------------------------------------------- conditioning
    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int, int]:
        channels = self.vae.config.latent_channels
        lat_frames = (frames - 1) // self.vae_scale_temporal + 1
        return (1, lat_frames, channels, height // self.vae_scale_spatial, width // self.vae_scale_spatial)

    @torch.no_grad()
    def encode_condition(
        self,
        video: torch.Tensor,
        mask: torch.Tensor,
        noise_aug_strength: float,
        generator: torch.Generator | None,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """Inpaint latents [1, F_lat, 17, h, w] from video [1, 3, F, H, W] in [0,1], mask [1, 1, F, H, W]."""
        device = self._execution_device
        pixels, mask01 = masked_video(video.to(device), mask.to(device))
        if self.transformer.config.add_noise_in_inpaint_model:
            pixels = add_noise_augmentation(pixels, noise_aug_strength, generator)
        scale = self.vae.config.scaling_factor
        video_latents = self.vae.encode(pixels.to(self.vae.dtype))[0].mode() * scale  # [1, 16, F_lat, h, w]
        mask_latents = resize_mask(1 - mask01, video_latents.shape) * scale  # [1, 1, F_lat, h, w]
        inpaint = torch.cat([mask_latents.to(video_latents), video_latents], dim=1)
        return inpaint.permute(0, 2, 1, 3, 4).to(dtype)

    # ---------------------------------------------------------------- main loop
    @torch.no_grad()
    def __call__(
        self,
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor | None,
        video: torch.Tensor,
        mask: torch.Tensor,
        num_inference_steps: int = 50,
        guidance_scale: float = 6.0,
        noise_aug_strength: float = 0.0563,
        generator: torch.Generator | None = None,
        callback: StepCallback | None = None,
        decode: bool = True,
    ) -> PipelineOutput:
        """Denoise from seeded noise to the orbit video.

        prompt_embeds / negative_prompt_embeds: [1, L, C_text]; video [1, 3, F, H, W] in [0, 1];
        mask [1, 1, F, H, W] in {0, 255}. `callback(step, timestep, tensors)` sees the transformer
        inputs and output of each step (tests use it to compare the first call with the reference).
        """
        device = self._execution_device
        dtype = prompt_embeds.dtype
        frames, height, width = video.shape[2:]
        do_cfg = guidance_scale > 1.0
        text = torch.cat([negative_prompt_embeds, prompt_embeds]) if do_cfg else prompt_embeds

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps

        # The initial noise is drawn first, as in the reference, so the same seed gives the same noise.
        latents = randn_tensor(
            self.latent_shape(frames, height, width), generator=generator, device=device, dtype=dtype
        )
        latents = latents * self.scheduler.init_noise_sigma
        inpaint = self.encode_condition(video, mask, noise_aug_strength, generator, dtype)
        inpaint_in = torch.cat([inpaint] * 2) if do_cfg else inpaint

        for i, t in enumerate(self.progress_bar(timesteps)):
            # Conditional and unconditional branches run as one batch of 2: one call per step.
            model_in = torch.cat([latents] * 2) if do_cfg else latents
            model_in = self.scheduler.scale_model_input(model_in, t)
            timestep = t.expand(model_in.shape[0])
            with attention_backends(latents.device, self.sdpa_priority):
                noise_pred = self.transformer(
                    hidden_states=model_in,
                    encoder_hidden_states=text,
                    timestep=timestep,
                    inpaint_latents=inpaint_in,
                )[0].float()
            if callback is not None:
                callback(
                    i,
                    int(t),
                    {
                        "hidden_states": model_in,
                        "encoder_hidden_states": text,
                        "timestep": timestep,
                        "inpaint_latents": inpaint_in,
                        "output": noise_pred,
                    },
                )
            if do_cfg:
                uncond, cond = noise_pred.chunk(2)
                noise_pred = uncond + guidance_scale * (cond - uncond)
            latents = self.scheduler.step(
                noise_pred, t, latents, eta=0.0, generator=generator, return_dict=False
            )[0]
            latents = latents.to(dtype)

        if not decode:
            self.maybe_free_model_hooks()
            return PipelineOutput(frames=torch.empty(0), latents=latents, surplus_frames=0)
        decoded = self.decode_latents(latents)
        self.maybe_free_model_hooks()
        return PipelineOutput(frames=decoded, latents=latents, surplus_frames=decoded.shape[2] - frames)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """[1, F_lat, 16, h, w] -> [1, 3, F_decoded, H, W] in [0, 1] float32 on the CPU."""
        z = (1 / self.vae.config.scaling_factor) * latents.permute(0, 2, 1, 3, 4)
        frames = self.vae.decode(z.to(self.vae.dtype)).sample
        return (frames / 2 + 0.5).clamp(0, 1).float().cpu()
