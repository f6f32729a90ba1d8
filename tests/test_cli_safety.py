"""Output safety: no --out ever destroys an input or a file the user made; no leftovers; no races."""

from __future__ import annotations

import os
import signal
import stat
from collections import namedtuple
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import pytest
from conftest import USER_PROMPT, assert_user_error
from recon_helpers import orbit_frames
from typer.testing import CliRunner

import cli
import runs.output
import runs.stages
from cli import app
from runs.stages import RunOutcome

runner = CliRunner()
FRAME_COUNT = 8
FRAME_SIZE = 32


@pytest.fixture(scope="module")
def frame_images() -> np.ndarray:
    return orbit_frames(FRAME_COUNT, FRAME_SIZE, supersample=1)


@pytest.fixture()
def frames_dir(frame_images: np.ndarray, tmp_path: Path) -> Path:
    folder = tmp_path / "shoot" / "frames"
    folder.mkdir(parents=True)
    for i, frame in enumerate(frame_images):
        iio.imwrite(folder / f"{i:05d}.png", frame)
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def poses(input_path: Path, out: Path, *extra: str) -> Any:
    return runner.invoke(app, ["poses", str(input_path), "--out", str(out), *extra])


@pytest.mark.parametrize(
    ("where", "needle"),
    [("input", "is the input"), ("parent", "contains the input"), ("inside", "lies inside the input")],
)
def test_out_overlapping_the_input_is_refused_even_with_overwrite(
    frames_dir: Path, where: str, needle: str
) -> None:
    (frames_dir.parent / "notes.txt").write_text("the user's other file")
    before = snapshot(frames_dir.parent)
    out = {"input": frames_dir, "parent": frames_dir.parent, "inside": frames_dir / "poses"}[where]
    result = poses(frames_dir, out, "--overwrite")
    assert_user_error(result, None, needle)
    assert snapshot(frames_dir.parent) == before


def test_out_as_the_current_folder_inside_the_input_is_refused(
    frames_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(frames_dir)
    before = snapshot(frames_dir)
    assert_user_error(poses(frames_dir, Path("."), "--overwrite"), None, "--out")
    assert snapshot(frames_dir) == before


def test_generate_refuses_an_out_holding_its_image_or_checkpoint(
    tiny_ckpt: Path, reference_dir: Path, tmp_path: Path
) -> None:
    image = tmp_path / "in" / "panda.png"
    image.parent.mkdir()
    image.write_bytes((reference_dir / "ref_image.png").read_bytes())
    prompt_file = tmp_path / "in" / "panda.txt"
    prompt_file.write_text(USER_PROMPT)
    base = ["generate", "--ckpt", str(tiny_ckpt), "--image", str(image), "--overwrite", "--device", "cpu"]
    for out, needle in [(image.parent, "contains the image"), (tiny_ckpt / "x", "inside the checkpoint")]:
        result = runner.invoke(app, [*base, "--prompt", USER_PROMPT, "--out", str(out)])
        assert_user_error(result, None, needle)
    result = runner.invoke(app, [*base, "--prompt-file", str(prompt_file), "--out", str(prompt_file)])
    assert_user_error(result, None, "prompt file")
    assert image.is_file() and prompt_file.read_text() == USER_PROMPT


def test_a_second_writer_is_refused_while_the_lock_is_held(frames_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "poses"
    with runs.output.out_lock(out):
        assert_user_error(poses(frames_dir, out), out, "another droplet3d process")
    assert poses(frames_dir, out).exit_code == 0  # released
    assert not list(tmp_path.glob(".poses.lock")), "the lock file is removed on release"


def test_a_file_the_user_adds_meanwhile_is_never_deleted(
    frames_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recon import api

    out = tmp_path / "poses"
    out.mkdir()  # empty: allowed without --overwrite
    real_poses = api.poses

    def poses_while_the_user_writes(*args: Any, **kwargs: Any) -> dict[str, Any]:
        (out / "mine.txt").write_text("keep me")
        return real_poses(*args, **kwargs)

    monkeypatch.setattr(api, "poses", poses_while_the_user_writes)
    result = poses(frames_dir, out)
    assert_user_error(result, None, "left untouched", "the result is in")
    assert (out / "mine.txt").read_text() == "keep me"
    kept = list(tmp_path.glob("poses.new-*"))
    assert len(kept) == 1 and (kept[0] / "transforms.json").is_file()
    assert not list(tmp_path.glob(".poses.partial-*"))


def test_out_symlink_is_written_through(frames_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "real"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    assert poses(frames_dir, link).exit_code == 0
    assert link.is_symlink() and (target / "transforms.json").is_file()
    # Again with --overwrite: still a link, still pointing at the fresh contents.
    result = poses(frames_dir, link, "--overwrite")
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and (link / "transforms.json").is_file()
    # A dangling link creates its target.
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "later")
    assert poses(frames_dir, dangling).exit_code == 0 and (tmp_path / "later" / "transforms.json").is_file()


def test_out_symlink_to_a_file_or_a_loop_is_a_clean_error(frames_dir: Path, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    link = tmp_path / "link"
    link.symlink_to(afile)
    assert_user_error(poses(frames_dir, link, "--overwrite"), None, "not a folder")
    assert afile.read_text() == "x"
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert_user_error(poses(frames_dir, loop), None, "--out")


def test_sigterm_removes_the_staging_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit), runs.output.staged_output(out, overwrite=False) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        os.kill(os.getpid(), signal.SIGTERM)
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "the handler is restored"


def test_leftovers_of_a_killed_run_are_removed_by_the_next(frames_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "poses"
    leftover = tmp_path / ".poses.partial-killed"
    (leftover / "images").mkdir(parents=True)
    other = tmp_path / ".other.partial-running"  # another --out's staging: not ours to touch
    other.mkdir()
    assert poses(frames_dir, out).exit_code == 0
    assert not leftover.exists() and other.exists()


def test_a_run_folder_holding_only_leftovers_resumes(
    tiny_ckpt: Path, reference_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    (out / ".asset.partial-killed" / "images").mkdir(parents=True)
    (out / ".video.partial-killed").mkdir()
    stages: list[Path] = []
    monkeypatch.setattr(runs.stages, "run_stages", lambda out, *a, **k: stages.append(out) or RunOutcome({}))
    args = ["run", "--ckpt", str(tiny_ckpt), "--image", str(reference_dir / "ref_image.png"),
            "--prompt", USER_PROMPT, "--out", str(out)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert stages == [out] and not list(out.iterdir())


def test_outputs_follow_the_umask(frames_dir: Path, tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        assert poses(frames_dir, tmp_path / "poses").exit_code == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "poses").stat().st_mode) == 0o755


def test_no_free_space_is_found_before_the_slow_work(
    tiny_ckpt: Path, reference_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import droplet3d.generate

    def never(*_a: Any, **_k: Any) -> None:
        raise AssertionError("generation must not start")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(droplet3d.generate, "generate", never)
    monkeypatch.setattr(runs.output.shutil, "disk_usage", lambda _p: usage(10**9, 10**9, 1024))
    out = tmp_path / "out"
    args = ["generate", "--ckpt", str(tiny_ckpt), "--image", str(reference_dir / "ref_image.png"),
            "--prompt", USER_PROMPT, "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert_user_error(runner.invoke(app, args), out, "not enough free space")


def test_an_unwritable_out_is_found_before_the_slow_work(frames_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = blocker / "poses"
    assert_user_error(poses(frames_dir, out), None, "cannot create")


POLL_SECONDS = 0.2
GIVE_UP_SECONDS = 300  # only bounds a hang; nothing asserts how long anything takes


def test_sigterm_during_a_real_reconstruct_leaves_nothing(frame_images: np.ndarray, tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    from recon_helpers import write_video

    video = write_video(tmp_path / "orbit.mp4", np.concatenate([frame_images] * 2))
    out = tmp_path / "asset"
    repo = Path(cli.__file__).parent
    env = {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "cli", "reconstruct", str(video), "--out", str(out), "--device", "cpu",
               "--iterations", "100000", "--quiet"]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + GIVE_UP_SECONDS
        # Wait until the fit is under way: the poses are written into the staging folder first.
        while not list(tmp_path.glob(".asset.partial-*/transforms.json")):
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            assert time.monotonic() < deadline, "the reconstruction never started"
            time.sleep(POLL_SECONDS)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=GIVE_UP_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM
    assert not out.exists() and not list(tmp_path.glob(".asset.*")), list(tmp_path.iterdir())
