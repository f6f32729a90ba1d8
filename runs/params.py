"""A command's parameter values -> each stage's options, and the prompt.

`run` and a batch row hand their parameters here by name; `group_of` makes the option groups of them
(None means "not given": the preset, generation.json or config file decides).
"""

from __future__ import annotations

from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from droplet3d.constants import MAX_TEXT_TOKENS
from runs.errors import UsageError
from runs.output import MIN_FREE_BYTES

if TYPE_CHECKING:
    from droplet3d.generate import GenerateConfig

# The input-preparation options: every command that generates (generate, run, batch) takes all of them.
PREPARE_NAMES = ("background", "remove_background", "segmenter", "recentre", "fill")
Group = TypeVar("Group")


def group_of(group: type[Group], params: dict[str, Any]) -> Group:
    """The option group `group` (a `runs.options` dataclass) of a command's or a batch row's parameters,
    by its fields' names."""
    return group(**{f.name: params[f.name] for f in dataclass_fields(group)})  # type: ignore[arg-type]


def generate_config(params: dict[str, object]) -> GenerateConfig:
    """The GenerateConfig of a command's parameters (those named like its fields)."""
    from droplet3d.generate import GenerateConfig  # noqa: F811 - imported lazily: torch is slow to import

    names = {f.name for f in dataclass_fields(GenerateConfig)} - {"prompt", "progress"}
    return GenerateConfig(
        prompt=read_prompt(params["prompt"], params["prompt_file"]),  # type: ignore[arg-type]
        progress=not params["quiet"],
        **{k: v for k, v in params.items() if k in names},  # type: ignore[arg-type]
    )


# Upper bound of the bytes per frame pixel `generate` writes: a lossless PNG of noise is about the raw
# RGB size (3 bytes), orbit.mp4 is far smaller; 4 leaves room for generation.json and the input images.
OUTPUT_BYTES_PER_PIXEL = 4


def generate_output_bytes(config: GenerateConfig) -> int:
    """Disk space `generate` needs for its outputs, checked before the slow work starts."""
    return MIN_FREE_BYTES + config.frames * config.height * config.width * OUTPUT_BYTES_PER_PIXEL


# A prompt file is read whole and recorded in generation.json; 450 T5 tokens are about 2-3 KB of English.
MAX_PROMPT_FILE_BYTES = 64 * 1024


def read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    """Exactly one of --prompt / --prompt-file."""
    if (prompt is None) == (prompt_file is None):
        raise UsageError("give exactly one of --prompt or --prompt-file")
    if prompt_file is not None:
        try:
            if prompt_file.stat().st_size > MAX_PROMPT_FILE_BYTES:
                raise UsageError(
                    f"--prompt-file {prompt_file} is {prompt_file.stat().st_size / 1024:.0f} KB; the text "
                    f"encoder reads {MAX_TEXT_TOKENS} tokens (a few KB), so at most "
                    f"{MAX_PROMPT_FILE_BYTES // 1024} KB are accepted"
                )
            return prompt_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read --prompt-file {prompt_file}: {exc}") from exc
    return prompt or ""
