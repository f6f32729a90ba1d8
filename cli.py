"""The `droplet3d` command: one Typer app whose subcommands chain the three stages.

Each command is declared by the option groups it takes (`runs.options`: every option defined once, with
its default, bounds and help) and receives one typed instance of each; its body is one call into the
layers below (`runs` for what spans both stages, `droplet3d` and `recon` for the stages). Every command
follows the same contract:

- everything is validated before the slow work; bad input is one `error:` line on stderr with exit code
  2, never a traceback;
- outputs are assembled in a staging folder beside --out and moved into place only once complete
  (`runs.output`: removed on failure, Ctrl-C or SIGTERM, and by the next run if the process was killed);
- --out never overlaps an input, is locked against a second writer, is re-checked at the moment of
  replacing, is written through when it is a symlink, and gets umask permissions.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import typer
from typer.core import TyperGroup

from runs.errors import CLICK_EXCEPTION, USAGE_ERROR, UsageError, warn
from runs.options import (
    GENERATION_ONLY,
    Backend,
    BatchFolders,
    BatchInputs,
    Common,
    DemoFolders,
    Export,
    Fit,
    GenerateFolders,
    Generation,
    Inputs,
    Orbit,
    PosesFolders,
    Prepare,
    ReconstructFolders,
    RunFit,
    RunFolders,
    ViewOptions,
    is_required,
    values,
)
from runs.output import check_out_dir, real_out, refuse_overlap, staged_output
from runs.params import generate_config, generate_output_bytes, group_of
from runs.progress import progress_lines_when_piped
from runs.stages import logger, run_folder, run_stages_of


class OneLineErrors(TyperGroup):
    """Typer's group, but a bad option value is one `error:` line (exit 2), like every other error.

    Typer draws click's usage errors in a multi-line box; scripts and people grepping logs get the same
    single line as for the errors our commands raise.
    """

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except USAGE_ERROR as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # Typer's own test: it printed the help
                sys.exit(exc.exit_code)
            typer.secho(f"error: {exc.format_message()}", fg=typer.colors.RED, err=True)
            sys.exit(exc.exit_code)
        except CLICK_EXCEPTION as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    name="droplet3d",
    help="Image + dense text -> 360-degree orbit video (Droplet3D) -> Gaussian splats and meshes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Image + dense text -> 360-degree orbit video (Droplet3D) -> Gaussian splats and meshes.

    Stages: `generate` (needs the Droplet3D-5B weights and, in practice, a CUDA GPU), `poses`,
    `reconstruct` (any orbit video with known circular poses), or `run` for all three. `demo`
    shows the reconstruction on a bundled orbit with no weights at all.
    """


EXIT_USAGE = 2
DEBUG_ENV = "DROPLET3D_DEBUG"
P = ParamSpec("P")
R = TypeVar("R")


def fail(message: str) -> None:
    """Print a one-line error and exit with code 2 (no traceback)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(EXIT_USAGE)


def guarded(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn the stages' user-facing errors into a one-line message and exit code 2."""
    from droplet3d.errors import Droplet3DError
    from recon.errors import ReconError

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            with progress_lines_when_piped():
                return fn(*args, **kwargs)
        except (UsageError, Droplet3DError, ReconError) as exc:
            fail(str(exc))
            raise AssertionError("unreachable") from exc
        except OSError as exc:  # a full or read-only disk, a vanished file: not a bug to trace
            if os.environ.get(DEBUG_ENV):
                raise
            where = f" ({exc.filename})" if exc.filename else ""
            fail(f"{exc.strerror or exc}{where}; set {DEBUG_ENV}=1 for the traceback")
            raise AssertionError("unreachable") from exc

    return wrapper


# --------------------------------------------------------------------------- commands from option groups
def finite(value: float | None) -> float | None:
    """Option callback: nan and inf pass click's range checks (every comparison is False)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}")
    return value


def typer_parameter(f: dataclasses.Field, annotation: Any) -> inspect.Parameter:
    """The Typer parameter of one `runs.options` field: its flags, default, bounds, help and panel."""
    meta = f.metadata
    default = ... if is_required(f) else f.default
    if meta["argument"]:
        info = typer.Argument(default, help=meta["help"])
    else:
        info = typer.Option(
            default, *meta["flags"], min=meta["low"], max=meta["high"], help=meta["help"],
            callback=finite if meta["finite"] else None, rich_help_panel=meta["panel"],
            show_default=meta["show_default"],
        )  # fmt: skip
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


def command(*groups: type, **settings: Any) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register the decorated function as a command whose options are the fields of `groups`.

    The function takes one instance of each group, in order; Typer sees a signature built from the
    groups' fields (so an option is declared once, in `runs.options`, for every command that takes it).
    """

    def register(fn: Callable[..., None]) -> Callable[..., None]:
        members = [(dataclasses.fields(group), typing.get_type_hints(group)) for group in groups]

        def invoke(**given: Any) -> None:
            fn(*(group_of(group, given) for group in groups))

        invoke.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [typer_parameter(f, hints[f.name]) for fs, hints in members for f in fs]
        )
        invoke.__name__, invoke.__doc__ = fn.__name__, fn.__doc__
        app.command(fn.__name__, **settings)(guarded(invoke))
        return fn

    return register


# --------------------------------------------------------------------------- the commands
@command(GenerateFolders, Inputs, Generation, Prepare, Common, no_args_is_help=True)
def generate(
    folders: GenerateFolders, inputs: Inputs, gen: Generation, prep: Prepare, common: Common
) -> None:
    """Generate an 85-frame 360-degree orbit video from one image and a dense text description."""
    from droplet3d.generate import generate as run_generate
    from droplet3d.generate import validate as validate_generate
    from droplet3d.generate import write_outputs

    config = generate_config(values(inputs, gen, prep, common))
    out = folders.out
    refuse_overlap(out, {"image": inputs.image, "checkpoint": inputs.ckpt, "prompt file": inputs.prompt_file,
                         "segmenter": prep.segmenter})  # fmt: skip
    validate_generate(config)
    check_out_dir(out, folders.overwrite)
    with staged_output(out, folders.overwrite, generate_output_bytes(config)) as tmp:
        result = run_generate(config, warn=warn)
        write_outputs(result, tmp, fps=gen.fps, progress=not common.quiet)
    typer.echo(f"wrote {len(result.frames)} frames to {out / 'frames'} and {out / 'orbit.mp4'}")


@app.command()
@guarded
def info(
    ckpt: Path | None = typer.Option(
        None,
        help="Also check this Droplet3D-5B folder: files, configs and weight shapes (no weights loaded).",
    ),
    view_align: bool = typer.Option(True, help="With --ckpt: also require FLUX.1-Kontext-dev/ and the LoRA."),
) -> None:
    """Versions, device, gsplat kernel status, and an offline check of a checkpoint folder."""
    from runs.environment import environment_lines

    for line in environment_lines():
        typer.echo(line)
    if ckpt is None:
        return
    from droplet3d.checkpoint import check_checkpoint

    report = check_checkpoint(ckpt, view_align=view_align)
    for component, summary in report.found.items():
        typer.echo(f"{component:>15}: {summary}")
    if not report.ok:
        for problem in report.problems:
            typer.secho(f"problem: {problem}", fg=typer.colors.RED, err=True)
        raise UsageError(f"checkpoint {ckpt} has {len(report.problems)} problem(s), listed above")
    typer.echo(f"checkpoint {ckpt}: OK")


@command(PosesFolders, Orbit, no_args_is_help=True)
def poses(folders: PosesFolders, orbit: Orbit) -> None:
    """Known circular poses for an orbit: images/ + transforms.json (nerfstudio, OpenGL camera-to-world)."""
    from recon import api
    from recon.options import PosesRequest

    refuse_overlap(folders.out, {"input": folders.input, "config file": orbit.config})
    with staged_output(folders.out, folders.overwrite) as tmp:
        summary = api.poses(PosesRequest(folders.input, orbit), tmp, log=lambda _m: None)
    if "summary" in summary["orbit_estimate"]:
        typer.echo(summary["orbit_estimate"]["summary"])
    out = folders.out
    typer.echo(f"wrote {summary['frames']} posed frames to {out / 'images'} and {out / 'transforms.json'}")


@command(ReconstructFolders, Orbit, Fit, Export, Common, no_args_is_help=True)
def reconstruct(folders: ReconstructFolders, orbit: Orbit, fit: Fit, export: Export, common: Common) -> None:
    """Fit Gaussian splats to an orbit with known poses and export splats, meshes and a turntable preview."""
    from recon import api
    from recon.options import ReconstructRequest

    request = ReconstructRequest(folders.input, orbit, fit, export, common.device)
    refuse_overlap(folders.out, {"input": folders.input, "config file": orbit.config})
    with staged_output(folders.out, folders.overwrite) as tmp:
        report = api.reconstruct(request, tmp, progress=not common.quiet, log=logger(common.quiet))
    print_outputs(folders.out, report)


@command(DemoFolders, Export, Common)
def demo(folders: DemoFolders, export: Export, common: Common) -> None:
    """Reconstruct the bundled example orbit (no weights needed): textured .glb, .ply and a preview."""
    from recon import api

    with staged_output(folders.out, folders.overwrite) as tmp:
        report = api.demo(tmp, common.device, not common.quiet, logger(common.quiet), export)
    print_outputs(folders.out, report)


@command(RunFolders, Inputs, Generation, Prepare, Orbit, RunFit, Export, Common, no_args_is_help=True)
def run(
    folders: RunFolders, inputs: Inputs, gen: Generation, prep: Prepare, orbit: Orbit, fit: RunFit,
    export: Export, common: Common,
) -> None:  # fmt: skip
    """Image + text -> orbit video -> splats and meshes, in one command.

    Re-running with the same --out resumes: a stage whose outputs exist and whose inputs and
    parameters are unchanged is skipped; a changed parameter redoes that stage and what follows.
    """
    stages = run_stages_of(values(inputs, gen, prep, orbit, fit, export, common))
    inputs_ = {"image": inputs.image, "checkpoint": inputs.ckpt, "prompt file": inputs.prompt_file,
               "config file": orbit.config, "segmenter": prep.segmenter}  # fmt: skip
    outcome = run_folder(folders.out, stages, folders.overwrite, common.quiet, inputs_)
    out = real_out(folders.out)
    typer.echo(f"video: {out / 'video' / 'orbit.mp4'}")
    print_outputs(out / "asset", outcome.report)


@command(BatchFolders, BatchInputs, Generation, Prepare, Orbit, RunFit, Export, Common, Backend,
         no_args_is_help=True)  # fmt: skip
def batch(
    folders: BatchFolders, inputs: BatchInputs, gen: Generation, prep: Prepare, orbit: Orbit, fit: RunFit,
    export: Export, common: Common, backend: Backend,
) -> None:  # fmt: skip
    """Many images or orbits to assets: each manifest row through `run`'s resumable stages.

    A row that fails (missing file, bad option, out of memory, a crash) is recorded in batch.json and
    summary.csv and the others go on; the exit code is 1 when any row failed. Re-running skips the
    rows that are done.
    """
    from runs.batch import EXIT_ROWS_FAILED, run_batch
    from runs.manifest import RowOptions

    params = values(folders, inputs, gen, prep, orbit, fit, export, common, backend)
    rows = RowOptions(typer.main.get_command(app).commands["batch"], GENERATION_ONLY)  # type: ignore[attr-defined]
    if run_batch(folders.manifest, folders.out, params, rows):
        raise typer.Exit(EXIT_ROWS_FAILED)


@command(ViewOptions, no_args_is_help=True)
def view(options: ViewOptions) -> None:
    """Serve a folder's viewer page on 127.0.0.1 and print its URL; Ctrl-C stops.

    viewer.html also opens on its own from the file system (double-click), offline; a batch folder gets
    an index of its rows here.
    """
    from runs.view import serve

    serve(options.folder, options.port, typer.echo, options.open_browser)


def print_outputs(out: Path, report: dict[str, object]) -> None:
    estimate = report.get("orbit_estimate")
    if isinstance(estimate, dict) and "summary" in estimate:
        typer.echo(estimate["summary"])
    if "gaussians" in report:
        psnr = report["psnr"]["mean"]  # type: ignore[index]
        typer.echo(f"{report['gaussians']} gaussians, mean training PSNR {psnr:.2f} dB")
    names = ("mesh.glb", "splats.ply", "splats.splat", "splats.compressed.ply", "mesh.ply", "mesh.obj",
             "mesh.mtl", "preview.mp4", "viewer.html", "report.json")  # fmt: skip
    for name in names:
        if (out / name).is_file():
            typer.echo(f"{name:>12}: {out / name}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
