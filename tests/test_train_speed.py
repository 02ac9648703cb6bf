"""The training-speed benchmark: interleaved update timings, ratios, memory, its README block."""
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


def run(*args):
    return subprocess.run([sys.executable, "-m", "fullyqt.bench.train_speed", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO)


def test_times_every_model_on_the_same_batches_and_writes_the_readme_block(toy_data, tmp_path):
    out = tmp_path / "speed"
    proc = run("--data", toy_data[1], "--out", out, "--shapes", "tiny", "--updates", "2",
               "--warmup", "1", "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "train_speed.json").read_text())
    rows = {r["model"]: r for r in data["rows"]}
    assert set(rows) == {"stock float", "fullyqt --no-quant", "fullyqt 8-bit", "fullyqt 4-bit"}
    stock = rows["stock float"]
    for r in rows.values():
        assert r["sec_per_update"] > 0 and r["valid_sec"] > 0 and r["peak_mib"] > 0
        assert r["update_vs_stock"] == pytest.approx(r["sec_per_update"] / stock["sec_per_update"])
        assert r["valid_vs_stock"] == pytest.approx(r["valid_sec"] / stock["valid_sec"])
        assert r["peak_vs_stock"] == pytest.approx(r["peak_mib"] / stock["peak_mib"])
        # one set of batches for all: the same target words per update
        assert r["words_per_second"] * r["sec_per_update"] == pytest.approx(
            stock["words_per_second"] * stock["sec_per_update"])
    md = (out / "train_speed.md").read_text()
    assert md.count("| tiny |") == 4 and "| tiny | fullyqt 8-bit |" in md
    # run into a benchmark's folder, its table joins that report
    from fullyqt.bench.report import write_report
    from tests.test_bench import row

    report = open(write_report(str(out), [row("float")], {"preset": "t"})["md"]).read()
    assert "## Training speed" in report
    assert [line for line in report.splitlines() if line.startswith("| tiny |")] == [
        line for line in md.splitlines() if line.startswith("| tiny |")]
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- results:begin -->\nkept\n<!-- results:end -->\n"
                      "<!-- train-speed:begin -->\nold\n<!-- train-speed:end -->\nz\n")
    cmd = [sys.executable, "-m", "fullyqt.bench.readme", out / "train_speed.json", readme]
    assert subprocess.run(cmd, capture_output=True, cwd=REPO).returncode == 0
    text = readme.read_text()
    assert "old" not in text and "kept" in text
    assert [line for line in text.splitlines() if line.startswith("| tiny |")] == [
        line for line in md.splitlines() if line.startswith("| tiny |")]


@pytest.mark.parametrize("args,message", [
    (["--shapes", "huge"], "--shapes: got 'huge'; allowed: a comma list of tiny, cpu-small, base"),
    (["--updates", "0"], "argument --updates: got '0'; allowed: an integer >= 1"),
    (["--data", "/nonexistent"], "--data /nonexistent: not a binarized data directory"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    proc = run("--out", tmp_path / "out", *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()
