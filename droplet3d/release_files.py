"""Reading a released checkpoint's files: its JSON configs and which safetensors hold a component.

Its own module because both sides need it: `droplet3d.models` reads configs and weights with it, and
`droplet3d.checkpoint` (which checks a folder by building the models empty) reads the same files. With
these two functions in `checkpoint`, the two modules imported each other.
"""

from __future__ import annotations

import json
from pathlib import Path

from droplet3d.errors import Droplet3DError


def weight_files(folder: Path, stem: str) -> list[Path]:
    """The safetensors files holding `stem` weights: one file, or every shard named by the index.

    Raises Droplet3DError naming the first missing file.
    """
    single = folder / f"{stem}.safetensors"
    index = folder / f"{stem}.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise Droplet3DError(f"{index}: 'weight_map' must be an object of tensor name -> shard file")
        shards = sorted({folder / name for name in weight_map.values()})
        for shard in shards:
            if not shard.is_file():
                raise Droplet3DError(
                    f"checkpoint is incomplete: missing shard {shard} (listed in {index.name})"
                )
        return shards
    raise Droplet3DError(f"checkpoint is incomplete: missing {single} (or a sharded {index.name})")


def read_json(path: Path) -> dict:
    """A checkpoint JSON file, which must hold an object (a list or a number is a broken file)."""
    if not path.is_file():
        raise Droplet3DError(f"checkpoint is incomplete: missing {path}")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise Droplet3DError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise Droplet3DError(f"{path} must hold a JSON object, not a {type(data).__name__}")
    return data
