"""Find and check a `Droplet3D-5B/` folder as published, without loading its 30 GB of weights.

Layout (the release, read offline from a local folder):

    Droplet3D-5B/
      model_index.json
      scheduler/scheduler_config.json
      text_encoder/config.json + model.safetensors | model.safetensors.index.json + shards
      tokenizer/spiece.model, tokenizer_config.json, special_tokens_map.json (no tokenizer.json)
      transformer/config.json + diffusion_pytorch_model.safetensors (or sharded with an index)
      vae/config.json + diffusion_pytorch_model.safetensors (or sharded with an index)
      FLUX.1-Kontext-dev/                     (only for --view-align)
      pytorch_lora_weights.safetensors        (only for --view-align)

Checking reads only JSON files and safetensors headers, so `droplet3d info --ckpt` can say what
is missing or mismatched in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from droplet3d.errors import Droplet3DError
from droplet3d.release_files import read_json, weight_files

KONTEXT_DIR = "FLUX.1-Kontext-dev"
LORA_FILE = "pytorch_lora_weights.safetensors"


@dataclass(frozen=True)
class CheckpointPaths:
    """Resolved paths of one checkpoint folder."""

    root: Path

    @property
    def transformer(self) -> Path:
        return self.root / "transformer"

    @property
    def vae(self) -> Path:
        return self.root / "vae"

    @property
    def text_encoder(self) -> Path:
        return self.root / "text_encoder"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def scheduler(self) -> Path:
        return self.root / "scheduler"

    @property
    def kontext(self) -> Path:
        return self.root / KONTEXT_DIR

    @property
    def lora(self) -> Path:
        return self.root / LORA_FILE


@dataclass
class CheckReport:
    """Problems found in a checkpoint folder; empty `problems` means it will load."""

    root: Path
    problems: list[str] = field(default_factory=list)
    found: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


# safetensors layout: an 8-byte little-endian header length, a JSON header, then the tensor bytes.
SAFETENSORS_LENGTH_BYTES = 8
MAX_SAFETENSORS_HEADER = 100 * 1024**2  # the format's own limit


def check_safetensors(path: Path) -> None:
    """Raise naming `path` unless its header parses and the file holds every byte the header lists.

    A 0-byte or truncated download fails here in milliseconds instead of deep inside loading.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(SAFETENSORS_LENGTH_BYTES), "little")
        if size < SAFETENSORS_LENGTH_BYTES or not 0 < length <= min(MAX_SAFETENSORS_HEADER, size):
            raise Droplet3DError(f"{path} is not a safetensors file (empty or truncated header)")
        try:
            header = json.loads(handle.read(length))
        except (ValueError, UnicodeDecodeError) as exc:
            raise Droplet3DError(f"{path} is not a safetensors file (unreadable header)") from exc
    if not isinstance(header, dict):
        raise Droplet3DError(f"{path} is not a safetensors file (header is not an object)")
    ends = [
        info["data_offsets"][1]
        for name, info in header.items()
        if name != "__metadata__" and isinstance(info, dict) and len(info.get("data_offsets", [])) == 2
    ]
    needed = SAFETENSORS_LENGTH_BYTES + length + max(ends, default=0)
    if size < needed:
        raise Droplet3DError(f"{path} is truncated: {size} bytes, its header describes {needed}")


def checked_weight_files(folder: Path, stem: str) -> list[Path]:
    """weight_files(), each checked to be a complete safetensors file."""
    files = weight_files(folder, stem)
    for file in files:
        check_safetensors(file)
    return files


def check_scheduler(folder: Path) -> None:
    """Build the scheduler from its config, as generate does (a bogus beta_schedule fails here)."""
    from droplet3d.models import load_scheduler

    try:
        load_scheduler(folder)
    except Droplet3DError:
        raise
    except Exception as exc:  # diffusers raises NotImplementedError, ValueError, TypeError...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        config = folder / "scheduler_config.json"
        raise Droplet3DError(f"{config} does not describe a scheduler: {first}") from exc


def check_tokenizer_model(path: Path) -> None:
    """Parse the SentencePiece model (a few hundred KB) so a garbage file is named as such."""
    _require(path)
    try:
        import sentencepiece
    except ImportError as exc:
        raise Droplet3DError("the tokenizer needs the packages sentencepiece and protobuf") from exc
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(path.read_bytes())
    except Exception as exc:  # sentencepiece raises RuntimeError or OSError with multi-line text
        raise Droplet3DError(
            f"{path} is not a SentencePiece model (damaged, or not the released file)"
        ) from exc


def _require(path: Path) -> None:
    if not path.exists():
        raise Droplet3DError(f"checkpoint is incomplete: missing {path}")


def _file_checks(paths: CheckpointPaths, view_align: bool) -> list[Callable[[], object]]:
    """One callable per required file or file group; each raises Droplet3DError naming what is wrong."""
    checks: list[Callable[[], object]] = [
        lambda: check_scheduler(paths.scheduler),
        lambda: read_json(paths.transformer / "config.json"),
        lambda: checked_weight_files(paths.transformer, "diffusion_pytorch_model"),
        lambda: _check_vae_blocks(read_json(paths.vae / "config.json"), paths.vae / "config.json"),
        lambda: checked_weight_files(paths.vae, "diffusion_pytorch_model"),
        lambda: read_json(paths.text_encoder / "config.json"),
        lambda: checked_weight_files(paths.text_encoder, "model"),
        lambda: check_tokenizer_model(paths.tokenizer / "spiece.model"),
        lambda: read_json(paths.tokenizer / "tokenizer_config.json"),
    ]
    if view_align:
        checks += [lambda: _require(paths.kontext / "model_index.json"), lambda: _require(paths.lora)]
    return checks


def _root(root: Path) -> CheckpointPaths:
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise Droplet3DError(f"checkpoint {root} is a file, not the Droplet3D-5B folder")
    if not root.is_dir():
        raise Droplet3DError(
            f"checkpoint folder {root} does not exist (download Droplet3D-5B, pass its path)"
        )
    return CheckpointPaths(root)


def resolve_checkpoint(root: Path, view_align: bool = False) -> CheckpointPaths:
    """Check the files the generation stack reads exist; raise naming the first missing one."""
    paths = _root(root)
    for check in _file_checks(paths, view_align):
        check()
    return paths


def _check_vae_blocks(config: dict, path: Path) -> None:
    from droplet3d.vae import KNOWN_BLOCK_TYPES

    for key in ("down_block_types", "up_block_types"):
        unknown = [name for name in config.get(key, []) if name not in KNOWN_BLOCK_TYPES]
        if unknown:
            raise Droplet3DError(f"{path}: unknown {key} {unknown}; expected Droplet3D*/CogVideoX* blocks")


def header_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from safetensors headers (reads a few KB per file, no tensor data)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open handles are not dicts
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def compare_shapes(
    component: str, expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]
) -> list[str]:
    """Describe missing, unexpected and mis-shaped tensors in a few lines."""
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if missing:
        problems.append(f"{component}: {len(missing)} tensors missing, e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{component}: {len(unexpected)} unexpected tensors, e.g. {unexpected[:3]}")
    for key in wrong[:3]:
        problems.append(f"{component}: {key} has shape {found[key]}, config implies {expected[key]}")
    if len(wrong) > 3:
        problems.append(f"{component}: {len(wrong) - 3} more tensors with mismatched shapes")
    return problems


def check_checkpoint(root: Path, view_align: bool = False) -> CheckReport:
    """Full offline check: files present, configs readable, weight names/shapes match the configs.

    Builds each model on the meta device (no memory) and compares its parameter shapes with the
    safetensors headers.
    """
    report = CheckReport(Path(root))
    try:
        paths = _root(root)
    except Droplet3DError as exc:
        report.problems.append(str(exc))
        return report
    for check in _file_checks(paths, view_align):
        try:
            check()
        except Droplet3DError as exc:
            report.problems.append(str(exc))
    if report.problems:
        return report

    from accelerate import init_empty_weights
    from transformers import T5Config, T5EncoderModel

    from droplet3d.models import build_transformer, build_vae

    builders = {
        "transformer": (lambda: build_transformer(paths.transformer), "diffusion_pytorch_model"),
        "vae": (lambda: build_vae(paths.vae), "diffusion_pytorch_model"),
        "text_encoder": (
            lambda: T5EncoderModel(T5Config.from_pretrained(paths.text_encoder)),
            "model",
        ),
    }
    for component, (build, stem) in builders.items():
        folder = paths.root / component
        try:
            with init_empty_weights():
                model = build()
            expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            # T5 ties the encoder's token embedding to `shared`; the file may hold either name.
            if component == "text_encoder":
                expected.pop("encoder.embed_tokens.weight", None)
            found = header_shapes(weight_files(folder, stem))
            if component == "text_encoder":
                found.pop("encoder.embed_tokens.weight", None)
            report.problems += compare_shapes(component, expected, found)
            report.found[component] = f"{len(found)} tensors, {type(model).__name__}"
        except Exception as exc:  # any failure here is a finding to report, not a crash
            report.problems.append(f"{component}: {exc}")
    return report
