"""Nothing the user has is lost: a full disk keeps the last good checkpoint, writes are atomic, loads are safe.

(NaN loss and kill -9 + --resume are in tests/test_train.py.)
"""

from __future__ import annotations

import ast
import errno
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import damage_smp
from damage_smp.checkpoints import CheckpointError, copy_checkpoint, load_checkpoint, save_checkpoint
from damage_smp.cli import app
from damage_smp.images import WriteError, atomic_copy, atomic_write_bytes, write_image
from damage_smp.runs import write_csv, write_json, write_text

TINY = ["--encoder", "resnet18", "--encoder-weights", "none", "--samples-per-epoch", "4", "--batch-size", "4",
        "--crop-size", "64", "--tile", "64", "--num-workers", "0", "--device", "cpu"]  # fmt: skip
PACKAGE = Path(damage_smp.__file__).parent


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".*.tmp"))


class FullDisk:
    """Makes fsync fail with ENOSPC, as a full disk does, for the atomic helpers' temp files once ``when(path)``
    is true for one of them; from then on every such write fails (the disk stays full) until ``free()``."""

    def __init__(self, monkeypatch, when):
        self.full, self.when, self.names, self.failed = False, when, {}, []
        real_mkstemp, real_fsync = tempfile.mkstemp, os.fsync

        def mkstemp(*args, **kwargs):
            fd, name = real_mkstemp(*args, **kwargs)
            self.names[fd] = Path(name)
            return fd, name

        def fsync(fd):
            name = self.names.get(fd)
            if name is not None and (self.full or self.when(name)):
                self.full = True
                self.failed.append(name)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_fsync(fd)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
        monkeypatch.setattr(os, "fsync", fsync)
        self.monkeypatch = monkeypatch

    def free(self) -> None:
        self.monkeypatch.undo()


# ============================================================================================ full disk
@pytest.mark.parametrize("fills_at", ["checkpoint", "curves"])
def test_a_full_disk_during_training_keeps_the_last_checkpoint(tiny_manifest, tmp_path, monkeypatch, fills_at):
    """checkpoint: epoch 2's last.pt save fails (epoch 1's is on disk: history.csv follows it);
    curves: epoch 1's curves.png fails, just after its last.pt was saved. Both keep last.pt at epoch 1."""
    run = tmp_path / "exp/full"
    if fills_at == "checkpoint":
        disk = FullDisk(monkeypatch, lambda name: name.name.startswith(".last.pt.") and (run / "history.csv").exists())
        expected = ("last.pt", "No space left on device", "previous last.pt is intact", "disk space")
    else:
        disk = FullDisk(monkeypatch, lambda name: name.name.startswith(".curves.png."))
        expected = ("curves.png", "No space left on device", "last.pt is intact", "disk space")
    args = ["train", "--manifest", tiny_manifest, "--out-dir", tmp_path / "exp", "--name", "full", "--epochs", "2"]
    result = CliRunner().invoke(app, [str(a) for a in args] + TINY)

    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    line = errors[0]
    for word in (*expected, f"--resume {run}"):
        assert word in line, f"{word!r} not in {line}"
    assert disk.failed[0].name.startswith(f".{expected[0]}.")  # the disk filled where intended

    assert load_checkpoint(run / "checkpoints/last.pt")["epoch"] == 1  # the previous checkpoint, whole
    assert load_checkpoint(run / "checkpoints/best.pt")["epoch"] == 1
    assert temp_files(run) == []
    assert list(np.loadtxt(run / "history.csv", delimiter=",", skiprows=1, usecols=0, ndmin=1)) == [1]

    # space freed: the command the message gives finishes the run
    disk.free()
    resumed = CliRunner().invoke(app, ["train", "--resume", str(run), "--epochs", "2", "--num-workers", "0"])
    assert resumed.exit_code == 0, resumed.output
    final = torch.load(run / "checkpoints/last.pt", weights_only=True)  # what training saves loads safely
    assert final["epoch"] == 2 and set(final) >= {"model", "optimizer", "scheduler", "scaler", "rng", "history"}
    assert json.loads((run / "state.json").read_text())["status"] == "finished"
    assert temp_files(run) == []


# ============================================================================================ atomic writes
WRITERS = {
    "atomic_write_bytes": lambda p: atomic_write_bytes(p, b"new bytes"),
    "write_text": lambda p: write_text(p, "new text"),
    "write_json": lambda p: write_json(p, {"new": 1}),
    "write_csv": lambda p: write_csv(p, [{"a": 1}]),
    "write_image": lambda p: write_image(p.with_suffix(".png"), np.zeros((8, 8, 3), np.uint8)),
    "save_checkpoint": lambda p: save_checkpoint(p, {"model": {"w": torch.zeros(2)}}),
    "atomic_copy": lambda p: atomic_copy(p.with_name("source.bin"), p),
    "copy_checkpoint": lambda p: copy_checkpoint(p.with_name("source.bin"), p),
}


@pytest.mark.parametrize("writer", WRITERS, ids=list(WRITERS))
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch, writer):
    target = tmp_path / "checkpoints/old.pt"
    target.parent.mkdir()
    (target.parent / "source.bin").write_bytes(b"source")
    path = target.with_suffix(".png") if writer == "write_image" else target
    path.write_bytes(b"the user's old content")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    FullDisk(monkeypatch, when=lambda name: True)

    with pytest.raises(WriteError) as err:
        WRITERS[writer](target)
    message = str(err.value)
    assert str(path) in message and "No space left on device" in message and "disk space" in message
    assert "\n" not in message and err.value.errno == errno.ENOSPC
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing changed or left


def test_a_read_only_folder_is_named_with_the_fix(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(WriteError, match="not writable") as err:
        write_json(tmp_path / "metrics.json", {})
    assert str(tmp_path / "metrics.json") in str(err.value)


# The only places that may open a file for writing, and why. Everything else writes through the atomic helpers
# (images.atomic_write_bytes / atomic_copy / write_image, runs.write_json / write_csv / write_text /
# save_checkpoint / copy_checkpoint), into memory buffers first where a library wants a file object.
ALLOWED = {
    ("images.py", "_atomic_file", "fdopen"): "the atomic helper itself: temp file, fsync, rename",
    ("decode_cache.py", "DecodeCache._store", "open"): "a cache entry: temp file + os.replace, re-decoded if lost",
    ("decode_cache.py", "DecodeCache._store", "save"): "np.save into that temp file",
    ("weights.py", "mapped_lite0_weights", "save"): "safetensors.torch.save returns bytes, for atomic_write_bytes",
    ("report/__init__.py", "report", "write_text"): "a file in a temp staging folder that is renamed into place",
    ("export.py", "write_torchscript", "save"): "into export's hidden staging file, renamed into place after parity",
}
ALWAYS_WRITES = {"imwrite", "tofile", "copyfile", "copy2", "copytree", "move"}
TARGET_WRITES = {"save", "savez", "savez_compressed", "savefig", "to_csv", "to_json", "to_parquet", "to_excel",
                 "to_pickle", "dump"}  # fmt: skip
WRITE_MODE = set("wax+")


def write_calls(source: str) -> list[tuple[str, str, int]]:
    """(enclosing function, call name, line) of every call in a module that writes a file directly."""
    found, stack = [], []

    class Visitor(ast.NodeVisitor):
        def visit_FunctionDef(self, node):
            stack.append(node.name)
            self.generic_visit(node)
            stack.pop()

        visit_AsyncFunctionDef = visit_FunctionDef
        visit_ClassDef = visit_FunctionDef

        def visit_Call(self, node):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            base = node.func.value if isinstance(node.func, ast.Attribute) else None
            base_name = getattr(base, "id", "")
            if _writes(node, name, base_name):
                found.append((".".join(stack) or "<module>", name, node.lineno))
            self.generic_visit(node)

    Visitor().visit(ast.parse(source))
    return found


def _writes(node: ast.Call, name: str, base_name: str) -> bool:
    if name in ("open", "fdopen"):
        builtin = isinstance(node.func, ast.Name) or base_name in ("os", "io", "gzip", "bz2", "lzma")
        # open(path, mode) / os.fdopen(fd, mode); Path.open(mode) (but Image.open(path) reads)
        mode = (node.args[1] if len(node.args) > 1 else None) if builtin else (node.args[0] if node.args else None)
        mode = mode or next((k.value for k in node.keywords if k.arg == "mode"), None)
        if mode is None:
            return False  # the default mode reads
        if isinstance(mode, ast.Constant) and isinstance(mode.value, str):
            return bool(WRITE_MODE & set(mode.value))
        return builtin  # a mode computed at run time: assume it writes
    if name == "copy":
        return base_name == "shutil"
    if name in ("write_text", "write_bytes"):  # Path's, not the atomic runs.write_text
        return isinstance(node.func, ast.Attribute) and base_name not in ("runs", "images")
    if name in ALWAYS_WRITES:
        return True
    if name in TARGET_WRITES:
        if name in ("to_csv", "to_json") and not node.args and not any(k.arg == "path_or_buf" for k in node.keywords):
            return False  # returns a string
        return not any(_in_memory(a) for a in [*node.args, *(k.value for k in node.keywords)])
    return False


def _in_memory(arg: ast.expr) -> bool:
    """A BytesIO/StringIO buffer: a name with 'buf' in it, or a BytesIO()/StringIO() call."""
    if isinstance(arg, ast.Name):
        return "buf" in arg.id.lower()
    if isinstance(arg, ast.Call):
        callee = arg.func.attr if isinstance(arg.func, ast.Attribute) else getattr(arg.func, "id", "")
        return callee in ("BytesIO", "StringIO")
    return False


def test_every_file_write_in_the_package_goes_through_the_atomic_helpers():
    offenders, used = [], set()
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE))
        for func, name, line in write_calls(path.read_text(encoding="utf-8")):
            key = (rel, func, name)
            if key in ALLOWED:
                used.add(key)
            else:
                offenders.append(f"damage_smp/{rel}:{line} {func}(): {name}(...)")
    assert not offenders, (
        "write files through images.atomic_write_bytes / atomic_copy / write_image or runs.write_json / "
        "write_csv / write_text / save_checkpoint (into a BytesIO first), not directly:\n" + "\n".join(offenders)
    )
    assert used == set(ALLOWED), f"stale allowlist entries: {set(ALLOWED) - used}"


@pytest.mark.parametrize(
    "code",
    [
        'open(p, "w").write(s)', 'Path(p).open("wb")', "p.write_text(s)", "cv2.imwrite(str(p), a)",
        "torch.save(state, p)", "df.to_csv(p, index=False)", "fig.savefig(p)", "shutil.copyfile(a, b)",
        "json.dump(d, f)", "np.save(p, a)", "image.save(p)", 'open(p, mode="a")',
    ],
)  # fmt: skip
def test_the_scan_catches_direct_writes(code):
    assert [name for _, name, _ in write_calls(f"def f():\n    {code}\n")], code


@pytest.mark.parametrize(
    "code",
    [
        "open(p)", 'open(p, "rb")', "torch.save(state, buf)", "fig.savefig(buf, format='png')",
        "df.to_csv(index=False)", "torch.save(state, io.BytesIO())", "a.copy()", 'Path(p).open("r")',
        "write_text(p, s)", "Image.open(p)",
    ],
)  # fmt: skip
def test_the_scan_lets_reads_and_in_memory_writes_through(code):
    assert write_calls(f"def f():\n    {code}\n") == [], code


# ============================================================================================ safe loads
class _Payload:
    """Unpickling this creates a file: proof that a checkpoint load ran code from the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_with_a_pickled_object_is_refused_and_runs_nothing(tmp_path):
    marker, path = tmp_path / "code-ran", tmp_path / "checkpoints/best.pt"
    path.parent.mkdir()
    torch.save({"model": {"w": torch.zeros(1)}, "epoch": 1, "extra": _Payload(marker)}, path)

    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and "not a readable checkpoint" in message and "weights_only" in message
    assert "retrain" in message and "\n" not in message
    assert not marker.exists()
