"""`droplet3d batch`: many images or orbits to assets, one `run` folder per manifest row.

The command (options, help) lives in cli.py with the others; `runs.manifest` reads the manifest and
turns each row into `run`'s stages with the same option registry and bounds; this module runs the rows
on a backend:

- local: one after another in this process (a GPU is busy with one generation at a time anyway);
- ray: each row a task on a Ray cluster, in actors that keep the video model loaded between rows.

Every row goes through `runs.stages.run_folder`, so a row is resumable exactly as `run` is, and
re-running a batch skips what is done. A row's failure is recorded and the others go on; batch.json and
summary.csv are rewritten after every row, so a killed batch leaves an honest record too.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import gc
import json
import math
import os
import signal
import socket
import sys
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import typer

from runs.errors import UsageError, warn
from runs.manifest import (
    BATCH_STATE,
    SUMMARY,
    RowError,
    RowJob,
    RowOptions,
    RowPlanner,
    read_manifest,
)
from runs.output import (
    STAGING_INFIX,
    check_resumable_out,
    make_parent,
    out_lock,
    real_out,
    refuse_overlap,
    terminate_as_exit,
)
from runs.stages import run_folder

EXIT_ROWS_FAILED = 1  # 2 stays "the command line or the manifest is wrong"; 1 is "some rows failed"
MAX_ERROR_CHARS = 300  # summary.csv holds one readable line per row; batch.json keeps a crash's traceback
BACKENDS = ("local", "ray")
# How long Ray may take to start the row workers (imports, a node joining) before we say why not.
RAY_WORKER_START_TIMEOUT_S = 600.0
RAY_HINT = "pip install 'droplet3d[ray]'"

DONE, UP_TO_DATE, FAILED, PENDING = "done", "up to date", "failed", "pending"
SUMMARY_COLUMNS = (
    "row", "id", "kind", "status", "error", "seconds", "generate_s", "reconstruct_s", "psnr", "ssim",
    "gaussians", "faces",
)  # fmt: skip


@dataclass
class RowResult:
    """The outcome of one row, as batch.json and summary.csv record it."""

    row: int
    """The row's position in the manifest."""
    id: str
    """The row's id (or `row-N` when it has none)."""
    kind: str | None = None
    """generate or reconstruct; None when the row could not be read."""
    status: str = PENDING
    """done (ran now), up to date (nothing to redo), failed, or pending (not run yet)."""
    error: str | None = None
    """Why it failed, in one line."""
    seconds: float | None = None
    """Wall seconds of the row, checks included."""
    stage_seconds: dict[str, float] = field(default_factory=dict)
    """Wall seconds of each stage that ran this time."""
    psnr: float | None = None
    """Mean training PSNR in dB, from the asset's report.json."""
    ssim: float | None = None
    """Mean training SSIM, from report.json."""
    gaussians: int | None = None
    """Gaussians in the fitted splats, from report.json."""
    faces: int | None = None
    """Faces of the exported mesh, from report.json."""
    warnings: list[str] = field(default_factory=list)
    """Warnings the row's stages gave (a truncated prompt, say)."""
    traceback: str | None = None
    """The traceback of a crash (an error that is not a user error), for a bug report."""
    worker: str | None = None
    """host:pid of the process that ran the row."""

    def summary(self) -> dict[str, object]:
        """The row's line of summary.csv."""
        fields = {**asdict(self), **{f"{k}_s": round(v, 2) for k, v in self.stage_seconds.items()}}
        if self.seconds is not None:
            fields["seconds"] = round(self.seconds, 2)
        return {name: fields.get(name) for name in SUMMARY_COLUMNS}


# --------------------------------------------------------------------------- running one row
def one_line(text: str) -> str:
    """A message on one line of at most MAX_ERROR_CHARS characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 3] + "..."


class RowWorker:
    """Runs rows one after another in one process, keeping the video pipeline loaded between them.

    The local backend uses one in the batch's own process; the Ray backend makes one Ray actor of it per
    row slot, so each worker loads the 5B model once, not once per row.
    """

    def __init__(self) -> None:
        from droplet3d.generate import PipelineCache

        self.pipelines = PipelineCache()

    def where(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    def check_out(self, out: str, probe: str) -> str | None:
        """Why this worker cannot write the batch folder (it must be the driver's, shared), or None."""
        folder = Path(out)
        if not (folder / probe).is_file():
            return f"{folder} there is not the batch folder this machine sees (no shared storage)"
        test = folder / f"{probe}-{os.getpid()}"
        try:
            test.write_text("ok")
            test.unlink()
        except OSError as exc:
            return f"cannot write in {folder}: {exc.strerror or exc}"
        return None

    def run_row(self, job: RowJob) -> RowResult:
        """Run one row through `run`'s resumable stages; any failure becomes the row's result."""
        from droplet3d.errors import Droplet3DError
        from recon.errors import ReconError

        result = RowResult(job.number, job.id, job.kind, worker=self.where())
        start = time.perf_counter()
        try:
            outcome = run_folder(
                job.out, job.stages, job.overwrite, True, job.inputs, self.generator(result.warnings),
                say=lambda _message: None,
            )  # fmt: skip
        except (UsageError, Droplet3DError, ReconError) as exc:
            result.status, result.error = FAILED, one_line(str(exc))
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            result.status, result.error = FAILED, one_line(f"{exc.strerror or exc}{where}")
        except Exception as exc:  # a crash: recorded with its traceback, and the batch goes on
            result.status, result.error = FAILED, one_line(f"{type(exc).__name__}: {exc}")
            result.traceback = traceback.format_exc()
        else:
            result.status = DONE if outcome.seconds else UP_TO_DATE
            result.stage_seconds = {k: round(v, 2) for k, v in outcome.seconds.items()}
            quality(result, outcome.report)
        result.seconds = round(time.perf_counter() - start, 2)
        if result.status == FAILED:
            free_memory()  # an out-of-memory row must not starve the next one
            with contextlib.suppress(OSError):
                job.out.rmdir()  # the row folder, if the row failed before writing anything in it
        return result

    def generator(self, warnings: list[str]) -> Callable[[Any], Any]:
        """`generate` for run_folder: this worker's loaded pipeline, warnings kept in the row's record."""
        import droplet3d.generate

        def generate(config: Any) -> Any:
            # Looked up at call time: tests replace droplet3d.generate.generate with a fast fake.
            return droplet3d.generate.generate(config, warn=warnings.append, pipelines=self.pipelines)

        return generate


def quality(result: RowResult, report: dict[str, Any]) -> None:
    """Copy the quality figures of an asset's report.json into its row's result."""
    with contextlib.suppress(KeyError, TypeError, ValueError):
        result.psnr = round(float(report["psnr"]["mean"]), 3)
    with contextlib.suppress(KeyError, TypeError, ValueError):
        result.ssim = round(float(report["ssim"]["mean"]), 4)
    with contextlib.suppress(KeyError, TypeError, ValueError):
        result.gaussians = int(report["gaussians"])
    with contextlib.suppress(KeyError, TypeError, ValueError):
        result.faces = int(report["mesh"]["faces"])


def free_memory() -> None:
    gc.collect()
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        sys.modules["torch"].cuda.empty_cache()


# --------------------------------------------------------------------------- the record
@dataclass
class BatchRecord:
    """batch.json and summary.csv, rewritten whole after every row so a killed batch is recorded too."""

    out: Path
    """The batch folder."""
    manifest: Path
    """The manifest the rows came from."""
    backend: str
    """local or ray."""
    rows: list[RowResult]
    """Every row's result so far, in manifest order."""
    started: str = field(default_factory=lambda: now())
    """When this run of the batch began (ISO 8601, UTC)."""
    finished: str | None = None
    """When it ended; None while it runs (or if it was killed)."""

    def update(self, result: RowResult) -> None:
        index = next(i for i, row in enumerate(self.rows) if row.row == result.row)
        self.rows[index] = result
        self.save()

    def counts(self) -> dict[str, int]:
        statuses = [row.status for row in self.rows]
        return {status: statuses.count(status) for status in (DONE, UP_TO_DATE, FAILED, PENDING)}

    def failed(self) -> list[RowResult]:
        return [row for row in self.rows if row.status == FAILED]

    def save(self) -> None:
        state = {
            "manifest": str(self.manifest), "backend": self.backend, "started": self.started,
            "finished": self.finished, "counts": self.counts(), "rows": [asdict(row) for row in self.rows],
        }  # fmt: skip
        write_atomically(self.out / BATCH_STATE, json.dumps(state, indent=2))
        lines: list[str] = []

        class Lines:
            def write(self, text: str) -> None:
                lines.append(text)

        writer = csv.DictWriter(Lines(), fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(row.summary() for row in self.rows)
        write_atomically(self.out / SUMMARY, "".join(lines))


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}{STAGING_INFIX}{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


# --------------------------------------------------------------------------- the batch
@dataclass
class Backend:
    """Where the rows run (the batch-only options)."""

    name: str
    """local or ray."""
    address: str
    """Ray: local, auto or HOST:PORT."""
    gpus_per_row: float | None
    """Ray: GPUs per row; None = 1 when the cluster has GPUs, else 0."""
    cpus_per_row: float
    """Ray: CPU cores per row."""


def run_batch(manifest: Path, out: Path, params: dict[str, Any], rows_options: RowOptions) -> int:
    """Run every row of `manifest` into `out`/ID; returns how many rows failed.

    `params` are the batch command's parameter values (every row's defaults), `rows_options` how a row's
    own option columns are parsed.
    """
    backend = Backend(params["backend"], params["address"], params["gpus_per_row"], params["cpus_per_row"])
    if backend.name not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend.name!r}")
    if backend.name == "local" and params["gpus_per_row"] is not None:
        warn("--gpus-per-row applies to --backend ray; the local backend runs rows one at a time")
    if not manifest.is_file():
        raise UsageError(f"manifest {manifest} does not exist")
    rows = read_manifest(manifest)
    refuse_overlap(out, {"manifest": manifest, "config file": params["config"]})
    out = real_out(out)
    make_parent(out.parent)
    with out_lock(out), terminate_as_exit():
        check_resumable_out(out, params["overwrite"], BATCH_STATE)
        out.mkdir(exist_ok=True)
        planner = RowPlanner(rows_options, params, manifest.resolve().parent, out)
        jobs, results = [], []
        for row in rows:
            try:
                jobs.append(planner.plan(row))
                results.append(RowResult(row.number, jobs[-1].id, jobs[-1].kind))
            except RowError as exc:
                row_id = row.values.get("id") or f"row-{row.number}"
                results.append(RowResult(row.number, row_id, status=FAILED, error=one_line(str(exc))))
        record = BatchRecord(out, manifest.resolve(), backend.name, results)
        record.save()
        with row_bar(len(rows), params["quiet"]) as advance:
            for result in record.rows:
                if result.status == FAILED:
                    advance(result)

            def finished(result: RowResult) -> None:
                record.update(result)
                advance(result)

            if backend.name == "ray":
                run_on_ray(jobs, out, backend, finished)
            else:
                worker = RowWorker()
                for job in jobs:
                    finished(worker.run_row(job))
        record.finished = now()
        record.save()
    report(record, params["quiet"])
    return len(record.failed())


@contextlib.contextmanager
def row_bar(total: int, quiet: bool) -> Iterator[Callable[[RowResult], None]]:
    """A progress bar over the rows; yields the function that counts one finished row."""
    from tqdm.auto import tqdm

    failed = 0
    with tqdm(total=total, desc="batch", unit="row", disable=quiet, file=sys.stderr) as bar:

        def advance(result: RowResult) -> None:
            nonlocal failed
            failed += result.status == FAILED
            bar.set_postfix(failed=failed, last=result.id, refresh=False)
            bar.update(1)

        yield advance


def report(record: BatchRecord, quiet: bool) -> None:
    """The summary lines: counts, each failure in one line, where the records are."""
    counts = record.counts()
    summary = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    typer.echo(f"{len(record.rows)} rows: {summary}")
    for row in record.failed():
        typer.secho(f"failed: row {row.row} ({row.id}): {row.error}", fg=typer.colors.RED, err=True)
    typer.echo(f"{BATCH_STATE:>11}: {record.out / BATCH_STATE}")
    typer.echo(f"{SUMMARY:>11}: {record.out / SUMMARY}")


# --------------------------------------------------------------------------- Ray
def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise UsageError(f"--backend ray needs Ray: {RAY_HINT}") from exc
    return ray


@contextlib.contextmanager
def ray_session(address: str) -> Iterator[Any]:
    """Connect to Ray (starting a private instance for `local`), and disconnect after.

    Ray already initialised in this process (a Python caller, or the tests) is used as it is and left
    running.
    """
    import logging

    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    # ray.init replaces the process's SIGTERM/SIGINT handlers; ours (staging clean-up) come back after.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise UsageError(f"cannot connect to Ray at --address {address}: {one_line(str(exc))}") from exc
    try:
        yield ray
    finally:
        ray.shutdown()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def row_slots(ray: Any, backend: Backend) -> tuple[int, float]:
    """How many rows can run at once on the cluster's live nodes, and the GPUs each row gets."""
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    has_gpus = any(node.get("GPU", 0) > 0 for node in nodes)
    gpus = backend.gpus_per_row if backend.gpus_per_row is not None else (1.0 if has_gpus else 0.0)
    slots = 0
    for node in nodes:
        fits = [node.get("CPU", 0) / backend.cpus_per_row if backend.cpus_per_row else math.inf,
                node.get("GPU", 0) / gpus if gpus else math.inf]  # fmt: skip
        slots += int(min(fits)) if min(fits) != math.inf else 1
    if slots == 0:
        raise UsageError(
            f"no Ray node offers {backend.cpus_per_row:g} CPUs and {gpus:g} GPUs for a row; lower "
            f"--cpus-per-row or --gpus-per-row"
        )
    return slots, gpus


def run_on_ray(
    jobs: list[RowJob], out: Path, backend: Backend, finished: Callable[[RowResult], None]
) -> None:
    """Each row a task on a Ray actor; a row whose worker died is retried once, then recorded failed.

    Actors (not plain tasks) so that a worker keeps the video model loaded from row to row. Each actor
    gets one row at a time, so a dying worker takes only its own row down, and the rows spread evenly.
    """
    if not jobs:
        return
    with ray_session(backend.address) as ray:
        slots, gpus = row_slots(ray, backend)
        # max_restarts=-1: a dead worker's actor is started again for the rows that follow;
        # max_task_retries=1: the row it was running runs once more, then its error is final.
        actor_class = ray.remote(
            num_cpus=backend.cpus_per_row, num_gpus=gpus, max_restarts=-1, max_task_retries=1
        )(RowWorker)
        actors = [actor_class.remote() for _ in range(min(slots, len(jobs)))]
        check_workers_write(ray, actors, out)
        pending, running = deque(jobs), {}
        idle = list(actors)
        while pending or running:
            while pending and idle:
                actor, job = idle.pop(), pending.popleft()
                running[actor.run_row.remote(job)] = (actor, job)
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                actor, job = running.pop(ref)
                idle.append(actor)
                finished(ray_result(ray, ref, job))


def ray_result(ray: Any, ref: Any, job: RowJob) -> RowResult:
    """The row's result, or a failure saying how Ray lost it."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayActorError as exc:
        error = f"its Ray worker died twice (the row was retried once): {one_line(str(exc))}"
    except ray.exceptions.RayError as exc:
        error = f"Ray: {one_line(str(exc))}"
    return RowResult(job.number, job.id, job.kind, status=FAILED, error=one_line(error))


def check_workers_write(ray: Any, actors: list[Any], out: Path) -> None:
    """Refuse (one line) when a worker does not see the batch folder as shared, writable storage."""
    probe = out / f".probe{STAGING_INFIX}{uuid.uuid4().hex}"  # scratch: a killed batch's is removed
    probe.write_text("the batch's own folder")
    try:
        refs = [actor.check_out.remote(str(out), probe.name) for actor in actors]
        where = [actor.where.remote() for actor in actors]
        try:
            problems = ray.get(refs, timeout=RAY_WORKER_START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError as exc:
            raise UsageError(
                f"the Ray workers did not start within {RAY_WORKER_START_TIMEOUT_S:.0f} s; check the "
                f"cluster (`ray status`)"
            ) from exc
        for problem, host in zip(problems, ray.get(where), strict=True):
            if problem:
                raise UsageError(
                    f"a Ray worker on {host.split(':')[0]} cannot use --out: {problem}; on a cluster --out "
                    f"must be shared storage mounted at the same path on every node"
                )
    finally:
        probe.unlink(missing_ok=True)
