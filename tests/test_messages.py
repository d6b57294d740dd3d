"""Errors read as one line in the user's terms: no raw errno text, checkpoints with code named as such."""

from __future__ import annotations

import errno
import os

import torch
from typer.testing import CliRunner

from damage_smp.checkpoints import CheckpointError, load_checkpoint
from damage_smp.cli import app
from damage_smp.console import describe_os_error


def test_os_errors_name_the_file_and_the_fix():
    text = describe_os_error(OSError(errno.EROFS, "Read-only file system", "/mnt/scans/out"))
    assert text == "/mnt/scans/out: Read-only file system; the file system is read-only; write somewhere else " \
                   "(another --out / --out-dir)"  # fmt: skip
    assert "[Errno" not in describe_os_error(FileExistsError(errno.EEXIST, "File exists", "x"))
    assert describe_os_error(FileExistsError("our own message")) == "our own message"


def test_cli_never_prints_errno(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(app, ["synth", str(blocker / "sample"), "--n", "2", "--size", "64x64"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "[Errno" not in result.output and "Not a directory" in result.output


class Evil:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def test_a_checkpoint_with_code_is_called_that_and_nothing_runs(tmp_path, capfd):
    path = tmp_path / "best.pt"
    torch.save({"model": {}, "payload": Evil()}, path)
    try:
        load_checkpoint(path)
    except CheckpointError as e:
        message = str(e)
    assert "pickled Python code" in message and "nothing from the file was run" in message
    assert "corrupt" not in message
    assert "should-never-run" not in capfd.readouterr().out


def test_a_truncated_checkpoint_is_called_corrupt(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"model": {"w": torch.zeros(100)}}, path)
    path.write_bytes(path.read_bytes()[:100])
    try:
        load_checkpoint(path)
    except CheckpointError as e:
        assert "corrupt or truncated" in str(e)
