"""One definition per option, one device rule for both stages, no private diffusers override."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import typer.main

from cli import app
from droplet3d.errors import Droplet3DError
from droplet3d.generate import resolve_device as generate_device
from recon.errors import ReconError
from recon.raster import resolve_device as recon_device

# `--out` names a different folder in every command, and `run --overwrite` replaces only a folder that is
# not a run folder: those two are meant to differ.
PER_COMMAND = {"--out", "--overwrite"}


def _definitions() -> dict[str, dict[str, tuple[Any, ...]]]:
    """option -> command -> (help, default, bounds, checks) as the user sees them."""
    group = typer.main.get_command(app)
    seen: dict[str, dict[str, tuple[Any, ...]]] = {}
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        if name == "info":  # a diagnostic: its --ckpt is optional and --view-align means "also check"
            continue
        for param in command.params:
            for opt in param.opts:
                if opt.startswith("--"):
                    seen.setdefault(opt, {})[name] = (
                        param.help,
                        param.default,
                        param.min,
                        param.max,
                        param.callback is not None,
                    )
    return seen


def test_an_option_means_the_same_in_every_command() -> None:
    shared = {opt: per for opt, per in _definitions().items() if len(per) > 1 and opt not in PER_COMMAND}
    assert {"--elevation", "--frames", "--iterations", "--device"} <= set(shared)
    for opt, per_command in shared.items():
        if opt == "--seed":  # generation's seed; reconstruct accepts it as the old spelling of --fit-seed
            per_command = {k: v for k, v in per_command.items() if k != "reconstruct"}
        assert len(set(per_command.values())) == 1, (opt, per_command)


CUDA_CASES = [
    # (value, cuda available, device count, expected device or None for a user error)
    ("auto", False, 0, "cpu"), ("auto", True, 2, "cuda"), ("cpu", True, 2, "cpu"), ("CPU", False, 0, "cpu"),
    ("cuda", True, 1, "cuda"), ("cuda", False, 0, None), ("cuda:0", True, 1, "cuda:0"),
    ("cuda:1", True, 2, "cuda:1"), ("cuda:1", True, 1, None), ("cuda:1", False, 0, None),
    ("cuda:x", True, 2, None), ("tpu", True, 1, None), ("", False, 0, "cpu"),
]  # fmt: skip


@pytest.mark.parametrize(("value", "available", "count", "expected"), CUDA_CASES)
def test_both_resolve_device_functions_behave_the_same(
    value: str, available: bool, count: int, expected: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    outcomes = []
    for resolve, error in ((generate_device, Droplet3DError), (recon_device, ReconError)):
        try:
            outcomes.append(str(resolve(value)))
        except error as exc:
            outcomes.append(f"error: {exc}")
    assert outcomes[0] == outcomes[1]
    if expected is None:
        assert (
            outcomes[0].startswith("error:") and "--device" in outcomes[0] or "unknown device" in outcomes[0]
        )
    else:
        assert outcomes[0] == expected


def test_the_pipeline_uses_diffusers_public_device_api() -> None:
    from droplet3d.pipeline import Droplet3DPipeline

    assert "_execution_device" not in vars(Droplet3DPipeline), "no override of a private diffusers property"
    assert "execution_device" not in vars(Droplet3DPipeline)


def test_the_fits_seed_is_fit_seed_everywhere_and_reconstruct_keeps_its_old_flag() -> None:
    group = typer.main.get_command(app)
    for name in ("reconstruct", "run", "batch"):
        (param,) = [p for p in group.commands[name].params if "--fit-seed" in p.opts]  # type: ignore[attr-defined]
        assert param.name == "fit_seed", name
    reconstruct = group.commands["reconstruct"]  # type: ignore[attr-defined]
    for flag in ("--fit-seed", "--seed"):
        context = reconstruct.make_context("reconstruct", ["orbit.mp4", "--out", "o", flag, "7"])
        assert context.params["fit_seed"] == 7, flag
