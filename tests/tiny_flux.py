"""Build a tiny random-weight `FLUX.1-Kontext-dev/` folder and a matching view-alignment LoRA.

The real Kontext checkpoint is ~24 GB and cannot be downloaded in tests, so we write one with the
same layout (model_index.json plus the seven component folders, each via `save_pretrained`) and the
same classes, only a few layers deep, and let the real `FluxKontextPipeline.from_pretrained` and
`load_lora_weights` read it. Everything is built offline: the CLIP tokenizer from a byte-level vocab
written here, the T5 tokenizer from the reference fixture's tiny SentencePiece model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxKontextPipeline,
    FluxTransformer2DModel,
)
from safetensors.torch import save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
T5_TOKENIZER = FIXTURES / "tiny-droplet3d" / "tokenizer"

CLIP_MAX_LENGTH = 77  # the real CLIP-L tokenizer's; the pipeline pads prompts to it
T5_DIM = 32

# in_channels = 4 * latent_channels: Flux packs 2x2 latent patches into the token dimension.
# sum(axes_dims_rope) must equal attention_head_dim.
TRANSFORMER_CONFIG = {
    "patch_size": 1,
    "in_channels": 16,
    "out_channels": None,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": T5_DIM,
    "pooled_projection_dim": 32,
    "guidance_embeds": True,  # Kontext-dev is guidance-distilled, as is the real one
    "axes_dims_rope": (4, 6, 6),
}

VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 32,
    "scaling_factor": 0.3611,  # Flux VAE's values; the pipeline reads both
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "mid_block_add_attention": True,
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (the alphabet of the BPE vocab)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def _clip_tokenizer(folder: Path) -> CLIPTokenizer:
    """A character-level CLIP BPE tokenizer: every byte alone and as a word end, plus the specials."""
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=CLIP_MAX_LENGTH
    )


def build_tiny_kontext(root: Path, seed: int = 0) -> Path:
    """Write `root/FLUX.1-Kontext-dev/` (random weights, seeded) in the released layout; return it."""
    folder = Path(root) / "FLUX.1-Kontext-dev"
    torch.manual_seed(seed)
    scratch = Path(root) / ".tiny_flux_tokenizer_src"
    tokenizer = _clip_tokenizer(scratch)
    clip_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH,
        projection_dim=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    tokenizer_2 = T5TokenizerFast.from_pretrained(T5_TOKENIZER)
    t5_config = T5Config(
        vocab_size=len(tokenizer_2),
        d_model=T5_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
    )
    pipe = FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        vae=AutoencoderKL(**VAE_CONFIG),
        text_encoder=CLIPTextModel(clip_config),
        tokenizer=tokenizer,
        text_encoder_2=T5EncoderModel(t5_config),
        tokenizer_2=tokenizer_2,
        transformer=FluxTransformer2DModel(**TRANSFORMER_CONFIG),
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    shutil.rmtree(scratch)
    return folder


def lora_targets(num_layers: int, num_single_layers: int) -> list[str]:
    """Module paths (inside the transformer) that the tiny LoRA adapts: the attention projections."""
    targets = []
    for i in range(num_layers):
        for proj in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
            targets.append(f"transformer_blocks.{i}.attn.{proj}")
    for i in range(num_single_layers):
        for proj in ("to_q", "to_k", "to_v"):
            targets.append(f"single_transformer_blocks.{i}.attn.{proj}")
    return targets


def build_tiny_lora(path: Path, transformer_config: dict, rank: int = 4, seed: int = 1) -> Path:
    """Write a diffusers-format Flux LoRA (`transformer.<module>.lora_A/lora_B.weight`) at `path`.

    B is non-zero (unlike a freshly initialised LoRA) so applying the adapter visibly changes the
    transformer's output; tests rely on that to prove the LoRA is really loaded.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    inner = transformer_config["num_attention_heads"] * transformer_config["attention_head_dim"]
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    targets = lora_targets(transformer_config["num_layers"], transformer_config["num_single_layers"])
    for module in targets:
        state[f"transformer.{module}.lora_A.weight"] = torch.randn(rank, inner, generator=gen) * 0.5
        state[f"transformer.{module}.lora_B.weight"] = torch.randn(inner, rank, generator=gen) * 0.5
    save_file(state, str(path))
    return path
