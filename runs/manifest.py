"""A batch manifest (CSV or JSON Lines, one row per asset) -> checked jobs, one run folder each.

Each row's extra columns are options of `droplet3d batch`, parsed by that command's own click
parameters (`RowOptions`, handed over by the CLI), so a row cannot set what the command line could not.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runs.errors import CLICK_EXCEPTION, UsageError
from runs.stages import RunStages, run_stages_of

BATCH_STATE = "batch.json"
SUMMARY = "summary.csv"
MANIFEST_KINDS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# A row's id names its folder: one path component, no hidden names (ours start with a dot).
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
RESERVED_IDS = frozenset({BATCH_STATE, SUMMARY})
# The row's own fields; any other column is an option of `batch`, set for that row only.
ROW_FIELDS = ("id", "image", "prompt", "prompt_file", "video")
# Options that belong to the batch as a whole (where and how it runs), never to one row.
BATCH_ONLY_OPTIONS = frozenset(
    {"manifest", "out", "overwrite", "quiet", "backend", "address", "gpus_per_row", "cpus_per_row"}
)
# Paths in a row, relative to the manifest's folder.
ROW_PATHS = frozenset({"image", "prompt_file", "video", "ckpt", "config"})
GENERATE, RECONSTRUCT = "generate", "reconstruct"


@dataclass(frozen=True)
class RowOptions:
    """How a row's option columns are read: the CLI's own parameters for `batch`."""

    command: Any
    """The click command of `droplet3d batch`: its parameters parse and bound each column."""
    generation_only: frozenset[str]
    """Options only generation reads: a row with a video that sets one is a mistake worth saying."""


# --------------------------------------------------------------------------- the manifest
@dataclass
class ManifestRow:
    """One row of the manifest as written."""

    number: int
    """1-based position among the rows (a JSONL line number, or a CSV record after the header)."""
    values: dict[str, str]
    """Column -> text; empty cells are left out (not given)."""
    problem: str | None = None
    """Why the row could not even be read (bad JSON), or None."""


def read_manifest(path: Path) -> list[ManifestRow]:
    """The rows of a CSV (with a header) or JSONL manifest; an unreadable file is a one-line error."""
    kind = MANIFEST_KINDS.get(path.suffix.lower())
    if kind is None:
        raise UsageError(f"manifest {path} must be .csv or .jsonl, got {path.suffix or 'no suffix'}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a spreadsheet's byte-order mark is no column
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read manifest {path}: {exc}") from exc
    rows = read_csv(text, path) if kind == "csv" else read_jsonl(text)
    if not rows:
        raise UsageError(f"manifest {path} has no rows")
    return rows


def read_csv(text: str, path: Path) -> list[ManifestRow]:
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or "id" not in [name.strip() for name in reader.fieldnames]:
        raise UsageError(f"manifest {path} needs a header row with an id column")
    rows = []
    for number, record in enumerate(reader, start=1):
        if not any((value or "").strip() for value in record.values() if isinstance(value, str)):
            continue  # a blank line in a spreadsheet export
        extra = record.pop(None, None)  # type: ignore[call-overload]
        values = {key.strip(): value.strip() for key, value in record.items() if value and value.strip()}
        problem = f"{len(extra)} more cells than the header has columns" if extra else None
        rows.append(ManifestRow(number, values, problem))
    return rows


def read_jsonl(text: str) -> list[ManifestRow]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            rows.append(ManifestRow(number, {}, f"line {number} is not JSON ({exc.msg})"))
            continue
        if not isinstance(data, dict):
            rows.append(ManifestRow(number, {}, f"line {number} is not a JSON object"))
            continue
        values, problem = {}, None
        for key, value in data.items():
            if value is None:
                continue
            if isinstance(value, (dict, list)):
                problem = f"{key} must be a single value, got {type(value).__name__}"
            # Text, as a CSV cell would be, so both formats go through the command line's parsing.
            values[str(key)] = json.dumps(value) if isinstance(value, bool) else str(value)
        rows.append(ManifestRow(number, values, problem))
    return rows


# --------------------------------------------------------------------------- rows -> jobs
@dataclass
class RowJob:
    """One row, checked and ready to run: sent as is to a Ray worker, so plain data only."""

    number: int
    """The row's position in the manifest."""
    id: str
    """The row's id, its folder's name."""
    kind: str
    """generate (image + prompt -> video -> asset) or reconstruct (a given orbit -> asset)."""
    out: Path
    """The row's run folder, DIR/ID."""
    stages: RunStages
    """What `run` does for this row."""
    inputs: dict[str, Path | None]
    """The row's input files, which its folder must not overlap."""
    overwrite: bool
    """Replace a row folder that is not a run folder."""


class RowError(Exception):
    """Why a row cannot run, found before running it."""


@dataclass
class RowPlanner:
    """Turns manifest rows into jobs with the batch command's own options, bounds and checks.

    A row's extra columns are options of `batch` (named as the parameter, fit_seed, or as the flag,
    fit-seed), parsed by the same click parameters as the command line, so a row cannot set what the
    command line could not.
    """

    rows: RowOptions
    """How option columns are parsed (the batch command's parameters)."""
    shared: dict[str, Any]
    """The batch command's parameter values: every row's defaults."""
    base: Path
    """The manifest's folder: relative paths in rows start there."""
    out: Path
    """The batch folder."""
    seen: set[str] = field(default_factory=set)
    """Ids planned so far (an id may appear once)."""

    def plan(self, row: ManifestRow) -> RowJob:
        if row.problem:
            raise RowError(row.problem)
        row_id = row.values.get("id", "")
        if not ID_PATTERN.fullmatch(row_id) or row_id in RESERVED_IDS:
            raise RowError(
                f"id {row_id!r} must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or "
                f"digit (it names the row's folder)"
            )
        if row_id in self.seen:
            raise RowError(f"id {row_id!r} appears more than once")
        self.seen.add(row_id)
        values = {key.replace("-", "_"): value for key, value in row.values.items()}
        has_image, has_video = "image" in values, "video" in values
        if has_image == has_video:
            raise RowError("give either image (with prompt or prompt_file) or video")
        options = self.options(values, generating=has_image)
        params = {**self.shared, **options, "quiet": True}  # the batch draws one bar over the rows
        out = self.out / row_id
        if has_video:
            video = self.path(values["video"])
            stages = run_stages_of(params, video=video)
            inputs = {"video": video, "config file": params["config"]}
            return RowJob(row.number, row_id, RECONSTRUCT, out, stages, inputs, params["overwrite"])
        if params["ckpt"] is None:
            raise RowError("this row generates from an image: give --ckpt")
        params["image"] = self.path(values["image"])
        params["prompt"] = values.get("prompt")
        params["prompt_file"] = self.path(values["prompt_file"]) if "prompt_file" in values else None
        try:
            stages = run_stages_of(params)  # reads the prompt file
        except UsageError as exc:
            message = str(exc).replace("--prompt-file", "prompt_file").replace("--prompt", "prompt")
            raise RowError(message) from exc
        inputs = {
            "image": params["image"], "checkpoint": params["ckpt"], "prompt file": params["prompt_file"],
            "config file": params["config"], "segmenter": params["segmenter"],
        }  # fmt: skip
        return RowJob(row.number, row_id, GENERATE, out, stages, inputs, params["overwrite"])

    def options(self, values: dict[str, str], generating: bool) -> dict[str, Any]:
        """The row's option columns, parsed and bounded as on the command line."""
        command = self.rows.command
        params = {param.name: param for param in command.params}
        context = command.context_class(command)
        parsed: dict[str, Any] = {}
        for key, text in values.items():
            if key in ROW_FIELDS:
                continue
            if key not in params or key in BATCH_ONLY_OPTIONS:
                raise RowError(f"column {key!r} is not an option a row can set (see droplet3d batch --help)")
            if not generating and key in self.rows.generation_only:
                raise RowError(f"column {key!r} is a generation option, and this row has a video")
            if key in ROW_PATHS:
                parsed[key] = self.path(text)
                continue
            try:
                parsed[key] = params[key].process_value(context, text)
            except CLICK_EXCEPTION as exc:
                raise RowError(f"{key}={text!r}: {exc.format_message()}") from exc
        return parsed

    def path(self, text: str) -> Path:
        path = Path(text).expanduser()
        return path if path.is_absolute() else self.base / path
