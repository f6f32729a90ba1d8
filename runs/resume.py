"""`run.json`: what a run folder already holds, so re-running resumes instead of redoing."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from runs.output import STAGING_INFIX

# --------------------------------------------------------------------------- run (resumable)
RUN_STATE = "run.json"


def fingerprint(data: object) -> str:
    """A stable hash of JSON-able parameters: equal parameters, equal fingerprint."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def folder_digest(folder: Path) -> str:
    """Hash of every file's name and bytes under `folder` (what a later stage consumes)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def path_digest(path: Path) -> str:
    """Hash of a file's name and bytes, or of a folder's files (`folder_digest`)."""
    if path.is_dir():
        return folder_digest(path)
    return hashlib.sha256(path.name.encode() + path.read_bytes()).hexdigest()


@dataclass
class RunState:
    """`run.json`: the fingerprint of the inputs each finished stage was made from."""

    path: Path
    stages: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, out: Path) -> RunState:
        path = out / RUN_STATE
        try:
            stages = json.loads(path.read_text()).get("stages", {}) if path.is_file() else {}
        except (OSError, ValueError):
            stages = {}  # a damaged state file only costs a redo
        return cls(path, stages if isinstance(stages, dict) else {})

    def mark(self, stage: str, key: str) -> None:
        self.stages[stage] = key
        self._save()

    def forget(self, stage: str) -> None:
        """Drop a stage before redoing it: a run killed mid-stage must not look finished."""
        if self.stages.pop(stage, None) is not None:
            self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"stages": self.stages}, indent=2))
        tmp.replace(self.path)


def remove_run_leftovers(out: Path) -> None:
    """Staging folders a killed `run` left inside its folder (call with the run's lock held)."""
    for leftover in out.glob(".*" + STAGING_INFIX + "*"):
        shutil.rmtree(leftover, ignore_errors=True)
