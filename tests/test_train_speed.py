"""The training-speed study (scripts/studies/): interleaved update timings, ratios, memory, its
docs block."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, STUDIES, row


def run(*args):
    return subprocess.run([sys.executable, os.path.join(STUDIES, "train_speed.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO)


@pytest.mark.slow
def test_times_every_model_on_the_same_batches_and_writes_the_readme_block(toy_data, tmp_path):
    out = tmp_path / "speed"
    proc = run("--data", toy_data[1], "--out", out, "--shapes", "tiny", "--updates", "2",
               "--warmup", "1", "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "train_speed.json").read_text())
    rows = {r["model"]: r for r in data["rows"]}
    assert set(rows) == {"stock float", "fullyqt --no-quant", "fullyqt 8-bit", "fullyqt 4-bit",
                         "fullyqt 4-bit mse", "fullyqt 8-bit, torch ops",
                         "fullyqt 8-bit, saved codes"}
    stock = rows["stock float"]
    assert stock["update_vs_stock"] == stock["valid_vs_stock"] == stock["peak_vs_stock"] == 1
    for r in rows.values():
        assert r["sec_per_update"] > 0 and r["valid_sec"] > 0 and r["peak_mib"] > 0
        assert r["live_peak_mib"] > 0
        # one set of batches for all: the same target words per update
        assert r["words_per_second"] * r["sec_per_update"] == pytest.approx(
            stock["words_per_second"] * stock["sec_per_update"])
    md = (out / "train_speed.md").read_text()
    assert md.count("| tiny |") == 7
    # each table row shows its model's measured time per update
    for line in md.splitlines():
        if line.startswith("| tiny |"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert float(cells[2]) == pytest.approx(rows[cells[1]]["sec_per_update"], abs=5e-4)
    # run into a benchmark's folder, its table joins that report
    from fullyqt.bench.report import write_report

    report = open(write_report(str(out), [row("float")], {"preset": "t"})["md"]).read()
    assert "## Training speed" in report
    assert sum(line.startswith("| tiny |") for line in report.splitlines()) == 7
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- results:begin -->\nkept\n<!-- results:end -->\n"
                      "<!-- train-speed:begin -->\nold\n<!-- train-speed:end -->\nz\n")
    cmd = [sys.executable, "-m", "fullyqt.bench.readme", out / "train_speed.json", readme]
    assert subprocess.run(cmd, capture_output=True, cwd=REPO).returncode == 0
    text = readme.read_text()
    assert "old" not in text and "kept" in text
    assert [line for line in text.splitlines() if line.startswith("| tiny |")] == [
        line for line in md.splitlines() if line.startswith("| tiny |")]
    # a second run of the same kind goes into a block of its own
    readme.write_text(text + "<!-- train-speed-bible:begin -->\nold2\n<!-- train-speed-bible:end -->\n")
    assert subprocess.run(cmd + ["--block", "train-speed-bible"], capture_output=True,
                          cwd=REPO).returncode == 0
    second = readme.read_text()
    assert "old2" not in second and second.startswith(text.split("<!-- train-speed:end -->")[0])
    assert second.count("| tiny | fullyqt 8-bit |") == 2


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["--shapes", "huge"],
     "--shapes: got 'huge'; allowed: a comma list of tiny, cpu-small, base, big"),
    (["--updates", "0"], "argument --updates: got '0'; allowed: an integer >= 1"),
    (["--data", "/nonexistent"], "--data /nonexistent: not a binarized data directory"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    proc = run("--out", tmp_path / "out", *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_two_process_benchmark_rows_ratios_and_report(toy_data, tmp_path):
    """fairseq-train on one process and torchrun on two: rates read from the real logs."""
    out = tmp_path / "two"
    proc = subprocess.run([sys.executable, os.path.join(STUDIES, "two_process.py"), "--data",
                           toy_data[1], "--out", out, "--shape", "tiny", "--updates", "10",
                           "--max-tokens", "1000"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "two_process.json").read_text())
    rows = {(r["model"], r["processes"]): r for r in data["rows"]}
    assert set(rows) == {(m, p) for m in ("fullyqt 8-bit", "fullyqt --no-quant") for p in (1, 2)}
    for (model, processes), r in rows.items():
        assert (r["wps_vs_one"] == 1) == (processes == 1)
        assert r["ups"] > 0 and r["threads"] * processes == 2
        logged = (out / "logs" / f"{model.replace(' ', '_')}-{processes}.log").read_text()
        assert ("range_sync_ms" in logged) == (model == "fullyqt 8-bit" and processes == 2)
        assert (r["range_sync_ms"] is not None) == (model == "fullyqt 8-bit" and processes == 2)
    sync = rows[("fullyqt 8-bit", 2)]
    assert 0 < sync["sync_share"] < 1
    from fullyqt.bench.report import write_report

    md = (out / "two_process.md").read_text()
    report = open(write_report(str(out), [row("float")], {"preset": "t"})["md"]).read()
    assert "## Two-process training" in report
    table = [line for line in md.splitlines() if line.startswith("| fullyqt")]
    assert len(table) == 4
    assert sum(line.startswith("| fullyqt") for line in report.splitlines()) == 4


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["--updates", "0"], "argument --updates: got '0'; allowed: an integer >= 1"),
    (["--shape", "huge"], "argument --shape: invalid choice: 'huge'"),
    (["--data", "/nonexistent"], "--data /nonexistent: not a binarized data directory"),
])
def test_two_process_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    proc = subprocess.run([sys.executable, os.path.join(STUDIES, "two_process.py"), "--out",
                           tmp_path / "out", *args], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()
