"""Exports stopped at any moment leave nothing the next run keeps: temporary files and folders
live beside the output under the writer's process id; SIGTERM cleans up as an error does; what a
kill -9 left is removed by the next export into that folder.  Exports get the user's umask."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from fullyqt.checkpoint import SCRATCH
from fullyqt.export.cli import export
from tests.conftest import BIN, build_model


@pytest.fixture(scope="module")
def checkpoint(toy_data, tmp_path_factory):
    """A small 8-bit checkpoint saved as fairseq-train saves one (no training: speed)."""
    model, task, args = build_model(toy_data[1], "--quant-bits", "8")
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint_last.pt"
    torch.save({"args": args, "model": model.state_dict(), "extra_state": {"epoch": 1},
                "optimizer_history": [{"criterion_name": "CrossEntropyCriterion",
                                       "optimizer_name": "Adam", "num_updates": 0,
                                       "lr_scheduler_state": {"best": None}}],
                "last_optimizer_state": None}, path)
    return path


def _dead_pid():
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)
    return int(proc.stdout)


def _scratch(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith(SCRATCH))


def test_litter_of_a_killed_export_is_removed_and_files_get_the_umask(checkpoint, tmp_path):
    dead, alive = f"{SCRATCH}{_dead_pid()}-abc.pt", f"{SCRATCH}{os.getpid()}-def.pt"
    (tmp_path / dead).write_bytes(b"half a checkpoint")
    (tmp_path / f"{SCRATCH}{_dead_pid()}-ghi").mkdir()  # a converter's half-written folder
    (tmp_path / alive).write_bytes(b"another export, still running")
    umask = os.umask(0o027)
    try:
        out = export(str(checkpoint), "int8", str(tmp_path / "model.int8.pt"))
    finally:
        os.umask(umask)
    assert _scratch(tmp_path) == [alive]
    assert os.stat(out).st_mode & 0o777 == 0o640


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill-9"])
def test_an_export_stopped_mid_write_leaves_nothing_kept(checkpoint, toy_data, tmp_path, sig):
    pytest.importorskip("ctranslate2")
    out = tmp_path / "ct2"
    cmd = [os.path.join(BIN, "fullyqt-export"), str(checkpoint), "--format", "ctranslate2",
           "--out", str(out), "--data", str(toy_data[1])]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not _scratch(tmp_path) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert _scratch(tmp_path), "the export finished before it could be stopped"
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert not out.exists()
    if sig == signal.SIGTERM:
        assert proc.returncode == 143 and _scratch(tmp_path) == []
    else:
        assert _scratch(tmp_path)  # what kill -9 leaves ...
    export(str(checkpoint), "ctranslate2", str(out), data=str(toy_data[1]))
    assert _scratch(tmp_path) == [] and (out / "model.bin").is_file()  # ... the next run removes


def test_a_full_disk_is_one_line_and_leaves_nothing(checkpoint, tmp_path, monkeypatch, capsys):
    from fullyqt.export import cli

    def full_disk(obj, f, *args, **kwargs):
        with open(f, "wb") as h:
            h.write(b"PK partly")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0\n"
                           "frame #0: c10::ThrowEnforceNotMet")

    monkeypatch.setattr(torch, "save", full_disk)
    out = tmp_path / "model.int8.pt"
    with pytest.raises(SystemExit) as stop:
        cli.main([str(checkpoint), "--format", "int8", "--out", str(out)])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"fullyqt-export: error: writing {out}: the file could not be written whole: is the "
        "disk full? (")
    free = int(lines[0].split("? (")[1].split(" bytes free")[0].replace(",", ""))
    assert abs(free - shutil.disk_usage(tmp_path).free) < 1 << 30
    assert lines[0].endswith("torch said: [enforce fail at inline_container.cc:626] . "
                             "unexpected pos 64 vs 0)")
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_data_of_another_dictionary_is_one_line(checkpoint, toy_data, tmp_path):
    from fullyqt.checkpoint import CheckpointError
    from tests.conftest import cli

    raw, other = toy_data[0], tmp_path / "bin"
    cli("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--trainpref",
        raw / "train", "--destdir", other, "--joined-dictionary", "--nwordssrc", "8",
        "--workers", "1")
    with pytest.raises(CheckpointError, match=(
            f"{checkpoint}: its weights do not fit the model built from its options and the "
            f"dictionaries in {other} \\(size mismatch for .*embed_tokens.weight")):
        export(str(checkpoint), "int8", str(tmp_path / "m.pt"), data=str(other))
    assert not (tmp_path / "m.pt").exists()
