"""The user's errors and warnings: what the CLI prints as one line."""

from __future__ import annotations

import typer

# Typer vendors click privately; these are the public typer.BadParameter's base classes.
USAGE_ERROR: type[Exception] = typer.BadParameter.__bases__[0]
CLICK_EXCEPTION: type[Exception] = USAGE_ERROR.__bases__[0]


class UsageError(Exception):
    """A problem the user can fix (a path, an option, a folder); printed as one line, exit code 2."""


def warn(message: str) -> None:
    typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)
