"""Progress written to a pipe or a file is a few whole lines, not thousands of carriage returns."""

from __future__ import annotations

import io
from pathlib import Path

from conftest import USER_PROMPT
from tqdm.auto import tqdm
from typer.testing import CliRunner

import runs.progress
from cli import app

runner = CliRunner()
STEPS = 1000
MOST_LINES = 100 // runs.progress.PROGRESS_LINE_PERCENT + 1  # 0%, 5%, ..., 100%


def test_a_piped_bar_prints_a_line_per_step() -> None:
    log = io.StringIO()
    with runs.progress.progress_lines_when_piped():
        for _ in tqdm(range(STEPS), file=log, mininterval=0, desc="fit", leave=False):
            pass
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) <= MOST_LINES and "100%" in lines[-1], lines
    assert all(line.startswith("fit:") for line in lines)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_keeps_the_live_bar_and_the_patch_is_undone() -> None:
    from tqdm import std

    before = std.tqdm.display
    screen = FakeTerminal()
    with runs.progress.progress_lines_when_piped():
        for _ in tqdm(range(10), file=screen, mininterval=0):
            pass
    assert "\r" in screen.getvalue()
    assert std.tqdm.display is before


def test_generate_output_in_a_log_has_no_carriage_returns(
    tiny_ckpt: Path, reference_dir: Path, tmp_path: Path
) -> None:
    args = ["generate", "--ckpt", str(tiny_ckpt), "--image", str(reference_dir / "ref_image.png"),
            "--prompt", USER_PROMPT, "--out", str(tmp_path / "out"), "--frames", "5", "--height", "32",
            "--width", "32", "--steps", "4", "--device", "cpu"]  # fmt: skip
    result = runner.invoke(app, args)  # not --quiet: the bars are on, CliRunner's streams are no tty
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output
    denoise = [line for line in result.output.splitlines() if line.startswith("denoise")]
    assert denoise and "100%" in denoise[-1] and len(denoise) <= MOST_LINES


def test_quiet_generate_prints_only_its_result(tiny_ckpt: Path, reference_dir: Path, tmp_path: Path) -> None:
    args = ["generate", "--ckpt", str(tiny_ckpt), "--image", str(reference_dir / "ref_image.png"),
            "--prompt", USER_PROMPT, "--out", str(tmp_path / "out"), "--frames", "5", "--height", "32",
            "--width", "32", "--steps", "1", "--device", "cpu", "--quiet"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [line for line in result.output.splitlines() if "wrote" in line]
