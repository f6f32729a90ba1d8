"""Output-folder safety for every command that writes a folder.

--out never overlaps an input, is locked against a second writer, is assembled in a staging folder
beside it and moved into place only once complete (removed on failure, Ctrl-C or SIGTERM, and by the
next run if the process was killed), is re-checked at the moment of replacing, is written through when
it is a symlink, and gets umask permissions.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from runs.errors import UsageError

# --------------------------------------------------------------------------- output safety
# Our own scratch names beside (or, for `run`, inside) an output folder. Anything matching them
# belongs to us: a crashed or killed run leaves them behind and the next run for the same --out
# removes them while it holds that --out's lock.
STAGING_INFIX = ".partial-"
LOCK_SUFFIX = ".lock"
# Room every command needs beyond its outputs (reports, previews, the mp4 muxer's buffers).
MIN_FREE_BYTES = 64 * 1024**2
FULL_PERMISSIONS = 0o777


def staging_prefix(out: Path) -> str:
    return f".{out.name}{STAGING_INFIX}"


def is_scratch(path: Path) -> bool:
    """Whether `path` is one of our staging folders or lock files (never user data)."""
    name = path.name
    return name.startswith(".") and (STAGING_INFIX in name or name.endswith(LOCK_SUFFIX))


def real_out(out: Path) -> Path:
    """The folder --out names, as an absolute path; a symlink is followed so we write through it.

    Staging happens beside the real folder (the rename must stay on one filesystem) and the link keeps
    pointing at the new contents. A link to a file, or a loop, is a one-line error.
    """
    out = Path(os.path.abspath(out))
    if not out.is_symlink():
        return out
    try:
        target = out.resolve(strict=False)
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop on Python < 3.13
        raise UsageError(f"--out {out} is a symlink that cannot be resolved: {exc}") from exc
    if target.exists() and not target.is_dir():
        raise UsageError(f"--out {out} is a symlink to {target}, which is not a folder")
    return target


def refuse_overlap(out: Path, inputs: dict[str, Path | None]) -> None:
    """An --out that is, contains or lies inside an input would destroy that input on replace."""
    target = real_out(out)
    for label, path in inputs.items():
        if path is None:
            continue
        source = Path(path).resolve()
        if target == source:
            raise UsageError(f"--out {out} is the {label} {path}; choose another output folder")
        if target in source.parents:
            raise UsageError(f"--out {out} contains the {label} {path}; choose another output folder")
        if source in target.parents:
            raise UsageError(f"--out {out} lies inside the {label} {path}; choose another output folder")
    if target == Path.cwd().resolve() or target in Path.cwd().resolve().parents:
        raise UsageError(f"--out {out} is the current folder or contains it; choose another output folder")


def user_entries(folder: Path) -> list[Path]:
    """What a folder holds apart from our own leftovers."""
    return [p for p in folder.iterdir() if not is_scratch(p)]


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse to clobber a non-empty output folder unless asked to."""
    out = real_out(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    if out.is_dir() and user_entries(out) and not overwrite:
        raise UsageError(f"--out {out} exists and is not empty; pass --overwrite to replace it")


def check_resumable_out(out: Path, overwrite: bool, state_file: str) -> None:
    """A folder holding `state_file` (run.json, batch.json) is resumed; any other non-empty folder needs
    --overwrite, and is removed here. A folder holding only our own leftovers (staging folders of a killed
    run) counts as resumable. Call with the lock on `out` held: the replacing happens here.
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    if out.is_dir() and user_entries(out) and not (out / state_file).is_file():
        if not overwrite:
            raise UsageError(
                f"--out {out} is not empty and holds no {state_file}; pass --overwrite to replace it"
            )
        shutil.rmtree(out)


def make_parent(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output's parent folder {folder}: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def out_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on --out (a `.NAME.lock` file beside it) so two writers cannot race.

    flock locks vanish with their process, so a killed run never leaves a stuck lock. The lock file is
    removed on release; a waiter that locked the removed inode notices (the inode differs) and retries.
    """
    import fcntl

    lock = out.parent / f".{out.name}{LOCK_SUFFIX}"
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise UsageError(f"cannot write in {out.parent}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise UsageError(
                f"--out {out} is being written by another droplet3d process; wait for it"
            ) from exc
        try:
            current = os.stat(lock).st_ino
        except FileNotFoundError:
            current = -1
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        os.close(fd)


@contextlib.contextmanager
def terminate_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit while outputs are staged, so cleanup runs as it does on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def remove_stale_staging(out: Path) -> None:
    """Delete staging folders an earlier, killed run left for this --out (call with the lock held)."""
    for leftover in out.parent.glob(staging_prefix(out) + "*"):
        shutil.rmtree(leftover, ignore_errors=True)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_staging(out: Path) -> Path:
    """A fresh staging folder beside `out`, with the permissions a plain mkdir would give."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix=staging_prefix(out), dir=out.parent))
    except OSError as exc:
        raise UsageError(f"cannot write in {out.parent}: {exc.strerror or exc}") from exc
    os.chmod(tmp, FULL_PERMISSIONS & ~current_umask())  # mkdtemp makes 0700
    return tmp


def check_free_space(folder: Path, need_bytes: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise UsageError(
            f"not enough free space in {folder}: {free / 1024**2:.0f} MiB free, "
            f"about {need_bytes / 1024**2:.0f} MiB needed"
        )


def publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished `tmp` to `out`, deciding about --overwrite again at this very moment.

    Without --overwrite the rename itself is the check: POSIX replaces only an empty folder, so a file
    the user put in --out meanwhile makes it fail, and the result is kept beside --out instead.
    """
    if overwrite and out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} became a file while this ran; it was left untouched")
    old = None
    if overwrite and out.is_dir():
        old = out.parent / f"{staging_prefix(out)}old-{os.getpid()}"
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError as exc:
        if old is not None:
            os.rename(old, out)
            raise
        kept = out.with_name(f"{out.name}.new-{os.getpid()}")
        os.rename(tmp, kept)
        raise UsageError(
            f"--out {out} was filled by someone else while this ran and was left untouched; "
            f"the result is in {kept}"
        ) from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_output(
    out: Path, overwrite: bool, need_bytes: int = MIN_FREE_BYTES, lock: bool = True
) -> Iterator[Path]:
    """Yield a staging folder beside `out`; move it to `out` only if the block succeeds.

    The staging folder lives in the same parent so the final rename is atomic on one filesystem. It is
    removed on any failure, Ctrl-C or SIGTERM; the lock keeps a second writer away (`lock=False` when
    the caller already holds a lock covering `out`, as `run` does for its stage folders).
    """
    out = real_out(out)
    check_out_dir(out, overwrite)
    make_parent(out.parent)
    with out_lock(out) if lock else contextlib.nullcontext(), terminate_as_exit():
        remove_stale_staging(out)
        tmp = make_staging(out)
        try:
            check_free_space(out.parent, need_bytes)
            yield tmp
            publish(tmp, out, overwrite)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
