"""fullyqt-compress: each recipe end to end through the real CLIs on the toy task (tiny lengths),
the commands it runs against --dry-run's, a killed run resumed, and every refusal."""
import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch

from conftest import BIN, USER_DIR, cli
from fullyqt.compress import recipe as recipes

TINY_RUN = ["--updates", "8", "--threads", "1"]


def compress(*args, check=True):
    return cli("fullyqt-compress", *args, check=check)


def updates_of(checkpoint) -> int:
    return int(torch.load(checkpoint, map_location="cpu", weights_only=False)[
        "optimizer_history"][-1]["num_updates"])


def generate(checkpoint, data, *extra):
    """fairseq-generate's hypotheses of the test split, by sentence id."""
    proc = cli("fairseq-generate", data, "--user-dir", USER_DIR, "--path", checkpoint,
               "--gen-subset", "test", "--beam", "2", "--batch-size", "64",
               "--required-batch-size-multiple", "1", "--cpu", *extra)
    hyps = [line.split("\t") for line in proc.stdout.splitlines() if line.startswith("H-")]
    return {int(h[0][2:]): h[2] for h in hyps}


@pytest.fixture(scope="module")
def int8_run(toy_data, teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("compress") / "int8"
    args = [teacher, toy_data[1], "--recipe", "int8", "--out", out, *TINY_RUN]
    dry = compress(*args, "--dry-run")
    assert not out.exists()
    run = compress(*args)
    return out, dry.stdout.splitlines(), run.stdout


def test_the_commands_run_are_the_dry_runs(int8_run):
    out, dry, _ = int8_run
    assert dry and all(line.startswith(("fairseq-train ", "fullyqt-export ")) for line in dry)
    logs = [out / "stages" / "1-qat8" / "train.log", out / "logs" / "export-int8.log",
            out / "logs" / "export-ctranslate2.log"]
    ran = [p.read_text().splitlines()[0] for p in logs]
    assert ran == ["$ " + line for line in dry]
    assert (out / "commands.sh").read_text().splitlines() == dry


def test_int8_recipe_ships_files_that_load_and_a_report(int8_run, toy_data):
    out, _, stdout = int8_run
    assert "stage 1/1 qat8: starting, 2 updates" in stdout
    stage = out / "stages" / "1-qat8" / "checkpoint_last.pt"
    report = json.loads((out / "report.json").read_text())
    assert report["stages"][0]["updates"] == updates_of(stage) == 2
    assert report["shipped"]["int8"]["bytes"] == os.path.getsize(out / "model.int8.pt")
    # the integer export translates as the trained checkpoint's exact integer evaluation
    assert generate(out / "model.int8.pt", toy_data[1]) == generate(
        stage, toy_data[1], "--model-overrides", "{'quant_kernels': 'exact'}")
    names = [s["name"] for s in report["systems"]]
    assert names == ["input", "input → CTranslate2 int8", "result", "result → CTranslate2"]
    result = report["systems"][2]
    assert result["path"] == str(out / "model.int8.pt") and result["delta"] is not None
    assert set(report["goals"]) == {"bleu_delta", "bytes_ratio", "ct2_speed_ratio"}
    ctranslate2 = pytest.importorskip("ctranslate2")
    translator = ctranslate2.Translator(str(out / "ct2"), device="cpu")
    assert translator.translate_batch([["w1", "w2", "w3"]])[0].hypotheses[0]


@pytest.mark.parametrize("name", ["int4", "fast", "shallow", "smallest"])
def test_recipe_end_to_end(name, toy_data, teacher, tmp_path):
    recipe = recipes.load(name)
    out = tmp_path / name
    compress(teacher, toy_data[1], "--recipe", name, "--out", out, *TINY_RUN, "--no-eval")
    stages = sorted(os.listdir(out / "stages"))
    assert stages == [f"{k}-{s.name}" for k, s in enumerate(recipe.stages, 1)]
    for k, s in enumerate(recipe.stages, 1):
        assert updates_of(out / "stages" / stages[k - 1] / "checkpoint_last.pt") == s.length(8)
    for fmt in recipe.ship:
        if fmt == "ctranslate2":
            ctranslate2 = pytest.importorskip("ctranslate2")
            translator = ctranslate2.Translator(str(out / "ct2"), device="cpu")
            assert translator.translate_batch([["w1", "w2", "w3"]])[0].hypotheses
        else:
            assert len(generate(out / f"model.{fmt}.pt", toy_data[1])) == 200
    report = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == [s.name for s in recipe.stages]
    assert report["systems"] == []


def same_weights(a, b) -> bool:
    a, b = (torch.load(p, map_location="cpu", weights_only=False)["model"] for p in (a, b))
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def test_a_killed_run_resumes_bit_exactly_and_a_finished_one_is_reused(toy_data, teacher,
                                                                      tmp_path):
    """fairseq resumes mid-epoch at the saved batch with the per-update seeds, so the resumed
    stage ends with the weights of a run that was never stopped (on CPU, here)."""
    out = tmp_path / "run"
    args = [teacher, toy_data[1], "--recipe", "int8", "--out", out, "--updates", "200",
            "--no-eval"]
    stage = out / "stages" / "1-qat8"
    proc = subprocess.Popen([os.path.join(BIN, "fullyqt-compress"), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (stage / "checkpoint_last.pt").exists() and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    assert proc.returncode != 0 and not (stage / "done.json").exists()
    before = updates_of(stage / "checkpoint_last.pt")
    assert 0 < before < 50
    rerun = compress(*args)
    assert "stage 1/1 qat8: resuming, 50 updates" in rerun.stdout
    assert updates_of(stage / "checkpoint_last.pt") == 50
    assert generate(out / "model.int8.pt", toy_data[1])
    whole = tmp_path / "uninterrupted"
    compress(*[whole if x == out else x for x in args])
    assert same_weights(stage / "checkpoint_last.pt",
                        whole / "stages" / "1-qat8" / "checkpoint_last.pt")
    assert same_weights(out / "model.int8.pt", whole / "model.int8.pt")
    again = compress(*args)
    assert "stage 1/1 qat8: finished earlier (50 updates), reused" in again.stdout
    assert "export int8: model.int8.pt (made earlier)" in again.stdout


def _refused(args, out, message):
    proc = compress("--out", out, *args, check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert last.startswith("fullyqt-compress: error: ") and message in last, last
    return proc


def test_refusals_in_one_line_with_nothing_written(toy_data, teacher, trained_8bit, tmp_path):
    data = toy_data[1]
    out = tmp_path / "out"
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    _refused([text, data, "--recipe", "int8"], out, "not a PyTorch checkpoint")
    _refused([trained_8bit, data, "--recipe", "int8"], out, "already quantized (8 bits)")
    _refused([teacher, data, "--recipe", "nosuch"], out,
             "--recipe 'nosuch': allowed: fast, int4, int8, shallow, smallest")
    _refused([teacher, data, "--recipe", "int8", "--updates", "0"], out,
             "--updates: got 0; allowed: an integer >= 1")
    other = tmp_path / "other-dict"
    cli("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--trainpref",
        toy_data[0] / "train", "--validpref", toy_data[0] / "valid", "--destdir", other,
        "--joined-dictionary", "--nwordssrc", "8", "--workers", "1")
    _refused([teacher, other, "--recipe", "int8"], out, "not trained on the dictionaries of")
    no_test = tmp_path / "no-test"
    shutil.copytree(data, no_test, ignore=shutil.ignore_patterns("test.*"))
    _refused([teacher, no_test, "--recipe", "int8"], out, "no test split")
    assert not out.exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine\n")
    _refused([teacher, data, "--recipe", "int8"], busy, "not a fullyqt-compress run")
    assert os.listdir(busy) == ["keep.txt"]


def test_another_run_in_the_directory_is_refused_naming_the_difference(int8_run, toy_data,
                                                                       teacher):
    out = int8_run[0]
    listing = sorted(os.listdir(out))
    _refused([teacher, toy_data[1], "--recipe", "int4", *TINY_RUN], out,
             "holds a run with recipe 'int8'; this command has 'int4'")
    _refused([teacher, toy_data[1], "--recipe", "int8", "--updates", "9"], out,
             "holds a run with updates 8; this command has 9")
    _refused([teacher, toy_data[1], "--recipe", "int8", *TINY_RUN, "--", "--max-tokens", "999"],
             out, "holds a run with fairseq-train arguments []; this command has "
             "['--max-tokens', '999']")
    assert sorted(os.listdir(out)) == listing


def test_recipes_load_and_a_malformed_one_is_refused(tmp_path):
    for name in recipes.names():
        recipe = recipes.load(name)
        assert recipe.stages and recipe.ship and recipe.goals and recipe.follows
        for stage in recipe.stages:
            length = stage.length(1000)
            assert all(0 < v < length for k, v in stage.options(1000).items()
                       if k in stage.scaled)
    shutil.copy(os.path.join(recipes.RECIPE_ROOT, "common.yaml"), tmp_path)
    (tmp_path / "bad.yaml").write_text("stages:\n  - name: a\n    updates: -1\nship: [int8]\n")
    with pytest.raises(recipes.RecipeError, match="stage a: updates: got -1; allowed: a "
                                                  "multiple of the base length > 0"):
        recipes.load("bad", str(tmp_path))
    (tmp_path / "bad.yaml").write_text("stages:\n  - name: a\n    updates: 1\nship: [onnx]\n")
    with pytest.raises(recipes.RecipeError, match=r"ship \['onnx'\]: allowed"):
        recipes.load("bad", str(tmp_path))
