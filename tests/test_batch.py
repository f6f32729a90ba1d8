"""`droplet3d batch`: rows through `run`'s resumable stages, failures isolated, local and Ray backends.

The reconstruct rows are real but tiny (8 frames of 32 px, 10 steps at 16 px, a coarse mesh); the
generate rows use the tiny checkpoint. The tests of row checking and of a killed batch replace the
reconstruction with a fast fake that writes every file `run` checks, as tests/test_run_resume.py does.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trimesh
import typer.main
from conftest import USER_PROMPT, assert_user_error
from recon_helpers import orbit_frames, write_video
from typer.testing import CliRunner

import runs.batch as batch
from cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
TINY_RECON = {
    "fit": {"init_points": 200, "hull_resolution": 16},
    "mesh": {"voxels": 24, "render_size": 32, "extra_views": 0},
}
TINY_ARGS = ["--iterations", "10", "--resolution", "16", "--faces", "200", "--vertex-colors",
             "--device", "cpu", "--quiet"]  # fmt: skip
ASSET_FILES = (
    "report.json",
    "transforms.json",
    "splats.ply",
    "mesh.glb",
    "mesh.ply",
    "mesh.obj",
    "preview.mp4",
)
KILL_ROWS = 4
FAKE_SECONDS = 0.5  # one fake reconstruction: long enough to kill a batch between two rows


@pytest.fixture(scope="module")
def orbits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with two small orbit videos, the tiny reconstruction config and a 3-row manifest."""
    folder = tmp_path_factory.mktemp("orbits")
    frames = orbit_frames(8, 32)
    write_video(folder / "a.mp4", frames)
    write_video(folder / "b.mp4", frames[::-1].copy())
    (folder / "tiny.json").write_text(json.dumps(TINY_RECON))
    with (folder / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "video", "elevation"])
        writer.writerow(["a", "a.mp4", ""])
        writer.writerow(["b", "b.mp4", "20"])  # a per-row option
        writer.writerow(["broken", "missing.mp4", ""])
    return folder


def batch_args(orbits: Path, out: Path, *extra: str) -> list[str]:
    return ["batch", str(orbits / "manifest.csv"), "--out", str(out), "--config", str(orbits / "tiny.json"),
            *TINY_ARGS, *extra]  # fmt: skip


def rows(out: Path) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in json.loads((out / "batch.json").read_text())["rows"]}


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def local_batch(orbits: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("local") / "batch"
    return out, runner.invoke(app, batch_args(orbits, out))


def test_local_batch_makes_two_assets_records_one_failure_and_resumes(local_batch: tuple[Path, Any]) -> None:
    out, result = local_batch
    assert result.exit_code == batch.EXIT_ROWS_FAILED, result.output
    assert "Traceback" not in result.output
    assert "failed: row 3 (broken): video" in result.output and "missing.mp4 does not exist" in result.output
    for row_id in ("a", "b"):
        for name in ASSET_FILES:
            assert (out / row_id / "asset" / name).is_file(), (row_id, name)
        assert (out / row_id / "run.json").is_file()
        assert len(trimesh.load(out / row_id / "asset" / "mesh.glb", force="mesh").faces) > 0
    assert not (out / "broken").exists(), "a row that failed before writing leaves no folder"
    record = rows(out)
    assert [record[i]["status"] for i in ("a", "b", "broken")] == ["done", "done", "failed"]
    assert "missing.mp4 does not exist" in record["broken"]["error"]
    report = json.loads((out / "b" / "asset" / "report.json").read_text())
    assert report["orbit"]["elevation"] == 20, "the row's own option"
    assert record["b"]["psnr"] == round(report["psnr"]["mean"], 3) and record["b"]["gaussians"] > 0
    assert record["a"]["stage_seconds"]["reconstruct"] > 0
    with (out / "summary.csv").open() as handle:
        summary = {row["id"]: row for row in csv.DictReader(handle)}
    assert summary["broken"]["status"] == "failed" and "missing.mp4" in summary["broken"]["error"]
    assert float(summary["a"]["reconstruct_s"]) > 0 and float(summary["a"]["psnr"]) > 0
    assert json.loads((out / "batch.json").read_text())["counts"] == {
        "done": 2, "up to date": 0, "failed": 1, "pending": 0
    }  # fmt: skip


def test_rerunning_a_batch_redoes_nothing(orbits: Path, local_batch: tuple[Path, Any]) -> None:
    out, _ = local_batch
    before = {row_id: mtimes(out / row_id) for row_id in ("a", "b")}
    again = runner.invoke(app, batch_args(orbits, out))
    assert again.exit_code == batch.EXIT_ROWS_FAILED, again.output
    assert {row_id: mtimes(out / row_id) for row_id in ("a", "b")} == before
    record = rows(out)
    assert [record[i]["status"] for i in ("a", "b", "broken")] == ["up to date", "up to date", "failed"]
    assert record["a"]["psnr"] is not None, "an up-to-date row still reports its asset's figures"


def test_ray_backend_gives_the_same_outputs(
    orbits: Path, local_batch: tuple[Path, Any], tmp_path: Path
) -> None:
    """`--backend ray --address local`: the batch starts its own Ray instance, places the rows, stops Ray
    and gives the process its signal handlers back."""
    ray = pytest.importorskip("ray")
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    out = tmp_path / "ray"
    args = batch_args(orbits, out, "--backend", "ray", "--address", "local", "--cpus-per-row", "1")
    result = runner.invoke(app, args)
    assert result.exit_code == batch.EXIT_ROWS_FAILED, result.output
    assert not ray.is_initialized(), "the batch's own Ray instance is stopped"
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
    local, remote = rows(local_batch[0]), rows(out)
    for row_id in ("a", "b", "broken"):
        same = ("status", "error", "psnr", "ssim", "gaussians", "faces", "kind")
        expected = {k: local[row_id][k] for k in same}
        if row_id != "broken":
            expected["status"] = "done"
        assert {k: remote[row_id][k] for k in same} == expected, row_id
    workers = {remote[row_id]["worker"] for row_id in ("a", "b")}
    assert all(worker.split(":")[1] != str(os.getpid()) for worker in workers), "rows ran in Ray workers"
    for row_id in ("a", "b"):
        assert sorted(p.name for p in (out / row_id / "asset").iterdir()) == sorted(
            p.name for p in (local_batch[0] / row_id / "asset").iterdir()
        )


def test_a_worker_that_does_not_see_the_batch_folder_is_named(tmp_path: Path) -> None:
    worker = batch.RowWorker()
    assert "no shared storage" in (worker.check_out(str(tmp_path), ".probe-missing") or "")
    (tmp_path / ".probe").write_text("x")
    assert worker.check_out(str(tmp_path), ".probe") is None


# --------------------------------------------------------------------------- with a fake reconstruction
def fake_reconstruct(request: Any, out: Path, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Every file `run` checks, made in a moment (after FAKE_SECONDS, to leave time for a kill)."""
    import imageio.v3 as iio

    video = request.input_path
    time.sleep(float(os.environ.get("FAKE_RECONSTRUCT_SECONDS", "0")))
    (out / "images").mkdir()
    iio.imwrite(out / "images" / "00000.png", np.zeros((8, 8, 3), np.uint8))
    (out / "transforms.json").write_text(json.dumps({"frames": [{"file_path": "images/00000.png"}]}))
    mesh = trimesh.creation.box()
    for name in ("mesh.glb", "mesh.ply", "mesh.obj", "splats.ply"):
        mesh.export(out / name)
    iio.imwrite(out / "preview.mp4", np.zeros((4, 32, 32, 3), np.uint8), fps=8)
    files = {"splats": "splats.ply", "mesh": {"glb": "mesh.glb", "obj": "mesh.obj", "ply": "mesh.ply"}}
    report = {"frames": 1, "files": files, "psnr": {"mean": 20.0}, "ssim": {"mean": 0.5}, "gaussians": 8,
              "mesh": {"faces": len(mesh.faces)}, "input": str(video)}  # fmt: skip
    (out / "report.json").write_text(json.dumps(report))
    return report


def install_fake_reconstruct() -> None:
    """For a batch run in a subprocess (the killed batch)."""
    from recon import api

    api.reconstruct = fake_reconstruct


@pytest.fixture()
def reconstructions(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Replace the reconstruction with the fake; the list grows by each reconstructed input."""
    from recon import api

    calls: list[Path] = []

    def counting(request: Any, out: Path, *args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(Path(request.input_path))
        return fake_reconstruct(request, out, *args, **kwargs)

    monkeypatch.setattr(api, "reconstruct", counting)
    return calls


def write_jsonl(path: Path, rows: list[dict[str, Any] | str]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_a_generate_row_on_the_tiny_checkpoint_loads_the_model_once(
    tiny_ckpt: Path, reference_dir: Path, tmp_path: Path, reconstructions: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import droplet3d.generate

    loads = []
    real_load = droplet3d.generate.load_pipeline
    monkeypatch.setattr(droplet3d.generate, "load_pipeline", lambda *a: loads.append(1) or real_load(*a))
    image = reference_dir / "ref_image.png"
    (tmp_path / "prompt.txt").write_text(USER_PROMPT)
    manifest = write_jsonl(tmp_path / "rows.jsonl", [
        {"id": "first", "image": str(image), "prompt": USER_PROMPT},
        {"id": "again", "image": str(image), "prompt_file": "prompt.txt"},  # relative to the manifest
        {"id": "both", "image": str(image), "prompt": USER_PROMPT, "prompt_file": "prompt.txt"},
    ])  # fmt: skip
    out = tmp_path / "out"
    args = ["batch", str(manifest), "--out", str(out), "--ckpt", str(tiny_ckpt), "--frames", "9", "--height",
            "64", "--width", "64", "--steps", "2", "--device", "cpu", "--quiet"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == batch.EXIT_ROWS_FAILED, result.output
    record = rows(out)
    assert [record[i]["status"] for i in ("first", "again")] == ["done"] * 2
    assert record["first"]["kind"] == "generate" and record["first"]["stage_seconds"]["generate"] > 0
    assert "exactly one of prompt or prompt_file" in record["both"]["error"]
    assert len(loads) == 1, "one worker loads the video model once for all its rows"
    frames = {i: sorted((out / i / "video" / "frames").glob("*.png")) for i in ("first", "again")}
    assert len(frames["first"]) == 9 and (out / "first" / "video" / "generation.json").is_file()
    same = [a.read_bytes() == b.read_bytes() for a, b in zip(frames["first"], frames["again"], strict=True)]
    assert all(same), "a reused pipeline generates exactly what a fresh one does"
    assert sorted(p.name for p in reconstructions) == ["video"] * 2


def test_bad_rows_are_recorded_and_the_rest_go_on(tmp_path: Path, reconstructions: list[Path]) -> None:
    video = tmp_path / "orbit.mp4"
    video.write_bytes(b"any bytes: the reconstruction is a fake")
    manifest = write_jsonl(tmp_path / "rows.jsonl", [
        {"id": "good", "video": "orbit.mp4", "iterations": 50, "full_turn": True},
        {"id": "zero", "video": "orbit.mp4", "iterations": 0},
        {"id": "typo", "video": "orbit.mp4", "iteration": 50},
        {"id": "genopt", "video": "orbit.mp4", "steps": 5},
        {"id": "batchopt", "video": "orbit.mp4", "backend": "ray"},
        {"id": "../escape", "video": "orbit.mp4"},
        {"id": "good", "video": "orbit.mp4"},
        {"id": "neither"},
        {"id": "nockpt", "image": "orbit.mp4", "prompt": "x"},
        "{not json",
        {"id": "nan", "video": "orbit.mp4", "elevation": "nan"},
    ])  # fmt: skip
    out = tmp_path / "out"
    result = runner.invoke(app, ["batch", str(manifest), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == batch.EXIT_ROWS_FAILED, result.output
    assert "Traceback" not in result.output
    record = json.loads((out / "batch.json").read_text())["rows"]
    errors = {row["row"]: row["error"] for row in record}
    assert errors[1] is None and record[0]["status"] == "done"
    expected = {
        2: "iterations='0'", 3: "'iteration' is not an option", 4: "generation option",
        5: "'backend' is not an option", 6: "names the row's folder", 7: "more than once",
        8: "either image", 9: "give --ckpt", 10: "not JSON", 11: "finite",
    }  # fmt: skip
    for number, needle in expected.items():
        assert needle in (errors[number] or ""), (number, errors[number])
    assert len(reconstructions) == 1
    assert len([line for line in result.output.splitlines() if line.startswith("failed:")]) == 10


def test_batch_level_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    manifest = write_jsonl(tmp_path / "rows.jsonl", [{"id": "a", "video": "v.mp4"}])
    out = tmp_path / "out"
    cases = [
        (["batch", str(tmp_path / "none.csv"), "--out", str(out)], "does not exist"),
        (["batch", str(tmp_path / "rows.txt"), "--out", str(out)], "must be .csv or .jsonl"),
        (["batch", str(manifest), "--out", str(out), "--backend", "slurm"], "--backend must be one of"),
        (["batch", str(manifest), "--out", str(out), "--cpus-per-row", "-1"], "--cpus-per-row"),
    ]
    (tmp_path / "rows.txt").write_text("id\n")
    for args, needle in cases:
        assert_user_error(runner.invoke(app, args), out, needle)
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_user_error(runner.invoke(app, ["batch", str(manifest), "--out", str(out)]), None, "--overwrite")
    assert (out / "notes.txt").read_text() == "mine"


def test_a_killed_batch_finishes_the_remaining_rows_only(tmp_path: Path, reconstructions: list[Path]) -> None:
    for i in range(KILL_ROWS):
        (tmp_path / f"v{i}.mp4").write_bytes(f"orbit {i}".encode())
    manifest = write_jsonl(
        tmp_path / "rows.jsonl", [{"id": f"r{i}", "video": f"v{i}.mp4"} for i in range(KILL_ROWS)]
    )
    out = tmp_path / "out"
    code = (f"import sys; sys.path[:0] = [{str(ROOT / 'tests')!r}, {str(ROOT)!r}]; import test_batch; "
            "test_batch.install_fake_reconstruct(); import cli; cli.main()")  # fmt: skip
    env = {**os.environ, "FAKE_RECONSTRUCT_SECONDS": str(FAKE_SECONDS), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", code, "batch", str(manifest), "--out", str(out), "--device", "cpu", "--quiet"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if (out / "batch.json").is_file() and any(r["status"] == "done" for r in rows(out).values()):
                break
            time.sleep(0.05)
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    record = rows(out)
    done = [row_id for row_id, row in record.items() if row["status"] == "done"]
    assert 1 <= len(done) < KILL_ROWS and record[f"r{KILL_ROWS - 1}"]["status"] == "pending"
    before = {row_id: mtimes(out / row_id) for row_id in done}
    result = runner.invoke(app, ["batch", str(manifest), "--out", str(out), "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in reconstructions) == sorted(
        f"v{i}.mp4" for i in range(KILL_ROWS) if f"r{i}" not in done
    ), "only the rows that had not finished"
    assert {row_id: mtimes(out / row_id) for row_id in done} == before
    statuses = {row_id: row["status"] for row_id, row in rows(out).items()}
    assert statuses == {f"r{i}": "up to date" if f"r{i}" in done else "done" for i in range(KILL_ROWS)}
    assert not [p for p in out.rglob("*") if ".partial-" in p.name], "the killed row's staging is gone"


def _option_names(command: str) -> set[str]:
    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    return {opt for param in click_command.params for opt in param.opts if opt.startswith("--")}


def test_batch_exposes_every_option_of_run_a_row_does_not_name() -> None:
    per_row = {"--image", "--prompt", "--prompt-file"}  # a row's own fields
    assert not (_option_names("run") - per_row) - _option_names("batch")
    assert {"--backend", "--address", "--gpus-per-row", "--cpus-per-row"} <= _option_names("batch")


class FakeRay:
    """The part of the `ray` module the batch's placement and result handling read."""

    def __init__(self, nodes: list[dict[str, Any]], error: Exception | None = None) -> None:
        import ray.exceptions

        self.exceptions = ray.exceptions
        self._nodes, self._error = nodes, error

    def nodes(self) -> list[dict[str, Any]]:
        return self._nodes

    def get(self, ref: Any) -> Any:
        if self._error is not None:
            raise self._error
        return ref


def _backend(cpus: float, gpus: float | None) -> batch.Backend:
    return batch.Backend("ray", "local", gpus, cpus)


def test_rows_are_placed_by_the_live_nodes_cpus_and_gpus() -> None:
    pytest.importorskip("ray")
    nodes = [{"Alive": True, "Resources": {"CPU": 8.0, "GPU": 2.0}},
             {"Alive": True, "Resources": {"CPU": 4.0}},
             {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]  # fmt: skip
    # A cluster with GPUs: one GPU per row by default, so the GPU node holds 2 rows and the CPU-only one none.
    assert batch.row_slots(FakeRay(nodes), _backend(1.0, None)) == (2, 1.0)
    # Half a GPU and 2 CPUs per row: the GPU node fits 4 rows; without GPUs a node is bound by its CPUs.
    assert batch.row_slots(FakeRay(nodes), _backend(2.0, 0.5)) == (4, 0.5)
    assert batch.row_slots(FakeRay(nodes), _backend(2.0, 0.0)) == (6, 0.0)
    with pytest.raises(batch.UsageError, match="cpus-per-row"):
        batch.row_slots(FakeRay(nodes), _backend(16.0, 0.0))


def test_a_row_whose_ray_worker_died_is_a_failed_row_with_the_reason() -> None:
    pytest.importorskip("ray")
    import ray.exceptions

    job = batch.RowJob(3, "cat", "reconstruct", Path("out/cat"), None, {}, False)  # type: ignore[arg-type]
    died = batch.ray_result(FakeRay([], ray.exceptions.RayActorError()), "ref", job)
    assert (died.row, died.id, died.status) == (3, "cat", batch.FAILED)
    assert "worker died" in died.error
    other = batch.ray_result(FakeRay([], ray.exceptions.GetTimeoutError("too slow")), "ref", job)
    assert other.status == batch.FAILED and other.error.startswith("Ray: ") and "too slow" in other.error
    done = batch.RowResult(3, "cat", "reconstruct", status=batch.DONE)
    assert batch.ray_result(FakeRay([]), done, job) is done
