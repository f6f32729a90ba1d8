"""Presets and `--config FILE`: where every orbit / fitting / meshing value comes from.

All files share one JSON schema (any subset of the keys; keys starting with "_" are comments)::

    {"preset": "fast" | "quality", "orbit": {OrbitConfig keys}, "fit": {FitConfig keys},
     "mesh": {MeshConfig keys and ExportConfig keys}}

The "mesh" section holds both how the surface is extracted (`recon.mesh.MeshConfig`) and how the asset
is written (`recon.asset.ExportConfig`: faces, texture_size, vertex_colors, splat_format, ...); each key
goes to the dataclass that has it.

Precedence, lowest first: dataclass defaults < built-in presets (`recon/assets/orbit_droplet3d.json`, and
`recon_<preset>.json`) < the input's own record (a generate folder's generation.json "orbit") <
`--config FILE` < command-line options. The built-in presets are package data, so a non-editable
install finds them; `configs/` in the repository holds user-facing copies (a test keeps them equal).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from recon.asset import ExportConfig
from recon.errors import ReconError
from recon.fit import FitConfig
from recon.mesh import MeshConfig
from recon.poses import OrbitConfig

PRESETS = ("fast", "quality")
SECTIONS = ("preset", "orbit", "fit", "mesh")


def asset_path(name: str) -> Path:
    """A file shipped in recon/assets (works from a source tree and from an installed wheel)."""
    return Path(str(resources.files("recon") / "assets" / name))


def read_config(path: Path) -> dict[str, Any]:
    """Read and check a config file (schema in the module docstring)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ReconError(f"config file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ReconError(f"cannot read config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ReconError(f"config file {path}: expected a JSON object")
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ReconError(
            f"config file {path}: unknown section(s) {', '.join(unknown)} (known: {', '.join(SECTIONS)})"
        )
    for section in ("orbit", "fit", "mesh"):
        if section in data and not isinstance(data[section], dict):
            raise ReconError(f"config file {path}: '{section}' must be an object")
        if section in data:
            data[section] = {k: v for k, v in data[section].items() if not k.startswith("_")}
    if "preset" in data and data["preset"] not in PRESETS:
        raise ReconError(f"config file {path}: preset must be one of {', '.join(PRESETS)}")
    return data


def default_orbit() -> OrbitConfig:
    """The Droplet3D orbit preset."""
    return OrbitConfig().updated(read_config(asset_path("orbit_droplet3d.json"))["orbit"], "orbit preset")


@dataclass
class Settings:
    orbit: OrbitConfig
    fit: FitConfig
    mesh: MeshConfig
    preset: str
    export: ExportConfig = field(default_factory=ExportConfig)
    # The "mesh" keys a config file gave: kept as given, where the presets' follow the fit
    # (`recon.mesh.MeshConfig.following`).
    mesh_given: frozenset[str] = frozenset()
    # The export keys a config file or the command line gave: kept as given, where the defaults follow the
    # frames (`recon.asset.ExportConfig.following`).
    export_given: frozenset[str] = frozenset()


EXPORT_KEYS = frozenset(f.name for f in fields(ExportConfig))


def split_mesh_section(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A "mesh" section's keys for MeshConfig and for ExportConfig (unknown keys stay with MeshConfig,
    whose error then lists them)."""
    return (
        {k: v for k, v in data.items() if k not in EXPORT_KEYS},
        {k: v for k, v in data.items() if k in EXPORT_KEYS},
    )


def resolve_orbit(
    config: dict[str, Any] | None, hints: dict[str, Any] | None, cli: dict[str, Any] | None
) -> OrbitConfig:
    """Preset < input hints < config file < command line (None means "not given")."""
    orbit = default_orbit()
    orbit = orbit.updated(hints or {}, "generation.json orbit")
    orbit = orbit.updated((config or {}).get("orbit", {}), "config orbit")
    orbit = orbit.updated({k: v for k, v in (cli or {}).items() if v is not None}, "orbit option")
    return orbit.validate()


def resolve_settings(
    config_file: Path | dict[str, Any] | None,
    hints: dict[str, Any] | None = None,
    orbit_cli: dict[str, Any] | None = None,
    fit_cli: dict[str, Any] | None = None,
    preset: str | None = None,
    default_preset: str = "fast",
    export_cli: dict[str, Any] | None = None,
) -> Settings:
    """Every setting for a reconstruction (precedence in the module docstring). `config_file` is a path,
    or the file as `read_config` returned it (a caller that needs it too reads it once)."""
    if isinstance(config_file, dict):
        config = config_file
    else:
        config = read_config(config_file) if config_file is not None else {}
    orbit = resolve_orbit(config, hints, orbit_cli)
    name = preset or config.get("preset") or default_preset
    if name not in PRESETS:
        raise ReconError(f"--preset must be one of {', '.join(PRESETS)}, got {name!r}")
    data = read_config(asset_path(f"recon_{name}.json"))
    fit = FitConfig().updated(data.get("fit", {}), f"{name} preset fit")
    preset_mesh, preset_export = split_mesh_section(data.get("mesh", {}))
    config_mesh, config_export = split_mesh_section(config.get("mesh", {}))
    mesh = MeshConfig().updated(preset_mesh, f"{name} preset mesh")
    export = ExportConfig().updated(preset_export, f"{name} preset mesh")
    fit = fit.updated(config.get("fit", {}), "config fit")
    mesh = mesh.updated(config_mesh, "config mesh")
    export = export.updated(config_export, "config mesh")
    fit = fit.updated({k: v for k, v in (fit_cli or {}).items() if v is not None}, "fit option")
    export_cli_given = {k: v for k, v in (export_cli or {}).items() if v is not None}
    export = export.updated(export_cli_given, "export option")
    fit = fit.validate()
    return Settings(
        orbit, fit, mesh.validate(), name, export.validate(), frozenset(config_mesh),
        frozenset(config_export) | frozenset(export_cli_given),
    )  # fmt: skip
