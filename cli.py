"""The `droplet3d` command: one Typer app whose subcommands chain the three stages.

Only this module knows about both stage packages (`droplet3d` for generation, `recon` for poses,
fitting and export); they never import each other. Every subcommand follows the same contract:
bad input is reported in one line on stderr with exit code 2, and outputs are assembled in a
temporary sibling folder that is moved into place only once complete, so an interrupted or failed
run never leaves a half-written `--out` behind.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ParamSpec, TypeVar

import typer

app = typer.Typer(
    name="droplet3d",
    help="Image + dense text -> 360-degree orbit video (Droplet3D) -> Gaussian splats and meshes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_USAGE = 2
P = ParamSpec("P")
R = TypeVar("R")


class CLIError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


def fail(message: str) -> None:
    """Print a one-line error and exit with code 2 (no traceback)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(EXIT_USAGE)


def warn(message: str) -> None:
    typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse to clobber a non-empty output folder unless asked to."""
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CLIError(f"--out {out} exists and is not empty; pass --overwrite to replace it")


@contextlib.contextmanager
def staged_output(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; move it to `out` only if the block succeeds.

    The temporary folder lives in the same parent so the final rename is atomic on one filesystem.
    """
    check_out_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def guarded(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn the stages' user-facing errors into a one-line message and exit code 2."""
    from droplet3d.errors import Droplet3DError
    from recon.errors import ReconError

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (CLIError, Droplet3DError, ReconError) as exc:
            fail(str(exc))
            raise AssertionError("unreachable") from exc

    return wrapper


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
