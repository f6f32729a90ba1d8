"""The Droplet3D 5B video transformer (a CogVideoX-Fun style inpaint DiT).

The blocks are diffusers' `CogVideoXBlock`s, so fused projections, attention backends and
`torch.compile` apply unchanged. What diffusers' own `CogVideoXTransformer3DModel` cannot do is
run the released config, because the released weights were trained with the reference's
positional embedding, which has two quirks we reproduce exactly:

1. The sin-cos table is built once for the config's latent grid (`sample_frames` x
   `sample_height` x `sample_width`) and trilinearly resized (align_corners=False) to the actual
   latent grid, keeping the config's number of latent frames, then truncated to the frames used.
2. The text part of the table is `table[:, :text_len]` of a buffer whose first
   `max_text_seq_length` (226) rows are zeros. With 450 T5 tokens the text therefore receives 226
   zero rows followed by the first 224 rows of the *un-interpolated* video table.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0, FusedCogVideoXAttnProcessor2_0
from diffusers.models.embeddings import TimestepEmbedding, Timesteps, get_3d_sincos_pos_embed
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNorm
from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock
from torch import nn


class Droplet3DPatchEmbed(nn.Module):
    """Text projection plus a 2D patchify conv applied frame by frame (no positional embedding here)."""

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int, text_embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True)
        self.text_proj = nn.Linear(text_embed_dim, embed_dim)

    def forward(self, text_embeds: torch.Tensor, video_latents: torch.Tensor) -> torch.Tensor:
        # text_embeds: [B, L, C_text]; video_latents: [B, F, C, H, W] -> [B, L + F*(H/p)*(W/p), D]
        text_tokens = self.text_proj(text_embeds)
        batch, frames, channels, height, width = video_latents.shape
        patches = self.proj(video_latents.reshape(-1, channels, height, width))  # [B*F, D, H/p, W/p]
        patches = patches.view(batch, frames, *patches.shape[1:]).flatten(3).transpose(2, 3)  # [B, F, HW, D]
        return torch.cat([text_tokens, patches.flatten(1, 2)], dim=1).contiguous()


class Droplet3DTransformer3DModel(ModelMixin, ConfigMixin):
    """Loads `Droplet3D-5B/transformer/` as published (same parameter names as the reference)."""

    _supports_gradient_checkpointing = True
    _no_split_modules = ["CogVideoXBlock", "Droplet3DPatchEmbed"]

    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 48,
        attention_head_dim: int = 64,
        in_channels: int = 33,
        out_channels: int | None = 16,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        time_embed_dim: int = 512,
        text_embed_dim: int = 4096,
        num_layers: int = 42,
        dropout: float = 0.0,
        attention_bias: bool = True,
        sample_width: int = 64,
        sample_height: int = 64,
        sample_frames: int = 85,
        patch_size: int = 2,
        temporal_compression_ratio: int = 4,
        max_text_seq_length: int = 226,
        activation_fn: str = "gelu-approximate",
        timestep_activation_fn: str = "silu",
        norm_elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
        spatial_interpolation_scale: float = 1.875,
        temporal_interpolation_scale: float = 1.0,
        use_rotary_positional_embeddings: bool = False,
        add_noise_in_inpaint_model: bool = False,
    ) -> None:
        super().__init__()
        if use_rotary_positional_embeddings:
            raise ValueError("Droplet3D checkpoints use sin-cos positional embeddings, not rotary ones")
        inner_dim = num_attention_heads * attention_head_dim
        out_channels = out_channels or in_channels

        self.patch_embed = Droplet3DPatchEmbed(patch_size, in_channels, inner_dim, text_embed_dim)
        self.embedding_dropout = nn.Dropout(dropout)

        # [1, max_text + T_cfg*Hc*Wc, D]: zeros for the text slots, the config-grid table after them.
        grid_t = (sample_frames - 1) // temporal_compression_ratio + 1
        grid_h, grid_w = sample_height // patch_size, sample_width // patch_size
        table = get_3d_sincos_pos_embed(
            inner_dim,
            (grid_w, grid_h),
            grid_t,
            spatial_interpolation_scale,
            temporal_interpolation_scale,
            output_type="pt",
        ).flatten(0, 1)
        pos_embedding = torch.zeros(1, max_text_seq_length + table.shape[0], inner_dim)
        pos_embedding[:, max_text_seq_length:] = table
        self.register_buffer("pos_embedding", pos_embedding, persistent=False)
        self._pos_grid = (grid_t, grid_h, grid_w)

        self.time_proj = Timesteps(inner_dim, flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(inner_dim, time_embed_dim, timestep_activation_fn)

        self.transformer_blocks = nn.ModuleList(
            [
                CogVideoXBlock(
                    dim=inner_dim,
                    num_attention_heads=num_attention_heads,
                    attention_head_dim=attention_head_dim,
                    time_embed_dim=time_embed_dim,
                    dropout=dropout,
                    activation_fn=activation_fn,
                    attention_bias=attention_bias,
                    norm_elementwise_affine=norm_elementwise_affine,
                    norm_eps=norm_eps,
                )
                for _ in range(num_layers)
            ]
        )
        self.norm_final = nn.LayerNorm(inner_dim, norm_eps, norm_elementwise_affine)
        self.norm_out = AdaLayerNorm(
            embedding_dim=time_embed_dim,
            output_dim=2 * inner_dim,
            norm_elementwise_affine=norm_elementwise_affine,
            norm_eps=norm_eps,
            chunk_dim=1,
        )
        self.proj_out = nn.Linear(inner_dim, patch_size * patch_size * out_channels)
        self.gradient_checkpointing = False

    # ---------------------------------------------------------------- speed (CUDA)
    @torch.no_grad()
    def fuse_qkv_projections(self) -> None:
        """Compute q, k and v with one matrix product per block instead of three.

        Same maths; on a GPU the sums may be ordered differently (bf16 noise). The separate
        `to_q/to_k/to_v` weights become views into the fused weight, so no memory is added and the
        state dict keeps its published names.
        """
        for block in self.transformer_blocks:
            attn = block.attn1
            if getattr(attn, "to_qkv", None) is not None:
                continue
            trainable = attn.to_q.weight.requires_grad
            attn.fuse_projections()
            attn.to_qkv.requires_grad_(trainable)
            dim = attn.to_q.weight.shape[0]
            for i, name in enumerate(("to_q", "to_k", "to_v")):
                proj = getattr(attn, name)
                rows = slice(i * dim, (i + 1) * dim)
                proj.weight = nn.Parameter(attn.to_qkv.weight[rows], requires_grad=trainable)
                if proj.bias is not None:
                    proj.bias = nn.Parameter(attn.to_qkv.bias[rows], requires_grad=trainable)
            attn.set_processor(FusedCogVideoXAttnProcessor2_0())

    def unfuse_qkv_projections(self) -> None:
        """Back to three projections (the reference's order of operations)."""
        for block in self.transformer_blocks:
            attn = block.attn1
            if getattr(attn, "to_qkv", None) is not None:
                attn.set_processor(CogVideoXAttnProcessor2_0())
                del attn.to_qkv  # to_q/k/v keep their views, which keep the storage alive
                attn.fused_projections = False

    def compile_blocks(self, **options: object) -> None:
        """`torch.compile` each transformer block (regional compilation).

        The 42 blocks share one class and one set of shapes, so one graph is compiled and reused;
        compiling the whole model would unroll all of them and take far longer. Elementwise work
        (modulation, gating, qk-norm, GELU) gets fused; the matrix products and attention are
        unchanged library kernels. `options` go to `torch.compile` (e.g. `mode=`).
        """
        for block in self.transformer_blocks:
            block.compile(**options)

    def positional_embedding(self, text_len: int, frames: int, height: int, width: int) -> torch.Tensor:
        """The reference's table for `text_len` tokens and a [frames, height, width] latent grid.

        Returns [1, text_len + frames*(height/p)*(width/p), D]. `text_len` beyond the 226 zero slots
        reads into the un-interpolated video table, exactly as the released weights expect.
        """
        p = self.config.patch_size
        grid_t, grid_h, grid_w = self._pos_grid
        if frames > grid_t:
            raise ValueError(
                f"{frames} latent frames exceed the {grid_t} the checkpoint's positional table was built for"
            )
        table = self.pos_embedding
        dim = table.shape[-1]
        video = table[:, self.config.max_text_seq_length :].view(1, grid_t, grid_h, grid_w, dim)
        video = F.interpolate(
            video.permute(0, 4, 1, 2, 3),
            size=(grid_t, height // p, width // p),
            mode="trilinear",
            align_corners=False,
        )
        video = video.permute(0, 2, 3, 4, 1).reshape(1, -1, dim)
        seq_len = frames * (height // p) * (width // p)
        return torch.cat([table[:, :text_len], video[:, :seq_len]], dim=1)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        inpaint_latents: torch.Tensor | None = None,
        return_dict: bool = False,
    ) -> tuple[torch.Tensor]:
        """Predict v for latents [B, F, 16, H, W], text [B, L, C_text], inpaint latents [B, F, 17, H, W]."""
        batch, frames, channels, height, width = hidden_states.shape
        p = self.config.patch_size

        t_emb = self.time_proj(timestep).to(dtype=hidden_states.dtype)
        emb = self.time_embedding(t_emb)  # [B, time_embed_dim]

        if inpaint_latents is not None:
            hidden_states = torch.cat([hidden_states, inpaint_latents], dim=2)
        tokens = self.patch_embed(encoder_hidden_states, hidden_states)
        text_len = encoder_hidden_states.shape[1]
        pos = self.positional_embedding(text_len, frames, height, width)
        tokens = self.embedding_dropout(tokens + pos.to(device=tokens.device, dtype=tokens.dtype))

        text_states, video_states = tokens[:, :text_len], tokens[:, text_len:]
        for block in self.transformer_blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                video_states, text_states = self._gradient_checkpointing_func(
                    block, video_states, text_states, emb, None
                )
            else:
                video_states, text_states = block(
                    hidden_states=video_states, encoder_hidden_states=text_states, temb=emb
                )

        video_states = self.norm_final(video_states)
        video_states = self.norm_out(video_states, temb=emb)
        video_states = self.proj_out(video_states)  # [B, F*(H/p)*(W/p), p*p*C_out]

        out = video_states.reshape(batch, frames, height // p, width // p, -1, p, p)
        out = out.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)  # [B, F, C_out, H, W]
        return (out,)
