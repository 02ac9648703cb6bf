"""Benchmark: configs, the report writer, and the smoke preset end to end."""
import json
import os
from dataclasses import replace
import subprocess
import sys

import pytest
from fairseq import options

from fullyqt.bench.config import ConfigError, load_preset, presets
from fullyqt.bench.report import write_report
from fullyqt.eval.bleu import corpus_bleu
from fullyqt.eval.significance import compare, interval_text
from tests.conftest import REPO, STUDIES, USER_DIR, build_model, row


@pytest.mark.slow
@pytest.mark.parametrize("preset", presets())
def test_every_config_parses_into_fairseq_args(preset, toy_data):
    loaded = load_preset(preset)
    for exp in loaded.variants + loaded.extra_variants:
        parser = options.get_training_parser()
        args = options.parse_args_and_arch(
            parser, [str(toy_data[1]), "--user-dir", USER_DIR, *exp.flags()])
        assert args.arch == exp.train["arch"]
        if exp.bits:  # weight bits: what the model's size and its integer export follow
            assert (args.quant_weight_bits or args.quant_bits) == exp.bits


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["smoke", "cpu-small", "wmt-base"])
def test_configs_build_models(preset, toy_data):
    for exp in load_preset(preset).variants:
        model, _, _ = build_model(toy_data[1], *exp.flags(), arch_args=[])
        n_quant = sum(1 for n, m in model.named_modules()
                      if n.endswith("_quant") and getattr(m, "bits", None) is not None)
        assert (n_quant > 0) == (exp.bits is not None), exp.name


@pytest.mark.slow
def test_bad_preset_name_lists_the_allowed_ones():
    with pytest.raises(ConfigError, match="'nope'.*cpu-small"):
        load_preset("nope")
    proc = subprocess.run([sys.executable, "-m", "fullyqt.bench", "--preset", "nope", "--out",
                           "/tmp/unused-fullyqt"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "preset 'nope': allowed:" in proc.stderr


@pytest.mark.slow
def test_out_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "report.md").write_text("a file")
    proc = subprocess.run([sys.executable, "-m", "fullyqt.bench", "--preset", "smoke", "--out",
                           tmp_path / "report.md"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith(
        f"error: --out {tmp_path / 'report.md'}: a file; give a directory (new, or a finished "
        "run's to reuse its training)")


@pytest.mark.slow
def test_missing_data_directory_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "fullyqt.bench", "--preset", "wmt-base",
                           "--data", str(tmp_path / "missing"), "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"python -m fullyqt.bench: error: --data {tmp_path / 'missing'}: not a prepared data "
        "directory (missing ")
    assert not out.exists()


@pytest.mark.slow
def test_unknown_variant_is_one_line_before_any_data_is_prepared(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "fullyqt.bench", "--out", str(out),
                           "--variants", "float,nosuch"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "python -m fullyqt.bench: error: --variants: nosuch: not a variant (allowed: float, ")
    assert not out.exists()  # the built-in corpus was not prepared first
    proc = subprocess.run([sys.executable, "-m", "fullyqt.bench", "--out", str(out),
                           "--variants", ""], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
        "python -m fullyqt.bench: error: --variants '': names no variant; give a comma list of "
        "the preset's variants, or leave the option out to run the main job")
    assert not out.exists()


def test_bad_kernel_size_in_a_preset_is_named(tmp_path):
    import shutil

    shutil.copytree(os.path.join(REPO, "configs", "smoke"), tmp_path / "smoke")
    (tmp_path / "smoke" / "preset.yaml").write_text(
        "variants: [float]\nkernel_sizes: [cpu-small, huge]\n")
    with pytest.raises(ConfigError, match=r"kernel_sizes \['huge'\]: allowed: tiny, cpu-small, base"):
        load_preset("smoke", root=str(tmp_path))


@pytest.mark.parametrize("value", ["0", "forty", "2.5", "true"])
def test_bad_length_cap_in_a_preset_is_named(tmp_path, value):
    import shutil

    shutil.copytree(os.path.join(REPO, "configs", "smoke"), tmp_path / "smoke")
    (tmp_path / "smoke" / "preset.yaml").write_text(f"variants: [float]\nmax_len: {value}\n")
    with pytest.raises(ConfigError, match=r"max_len .*: allowed: an integer >= 1"):
        load_preset("smoke", root=str(tmp_path))


def test_experiment_files_inherit_through_a_chain(tmp_path):
    from fullyqt.bench.config import load_experiment

    exp = load_experiment(os.path.join(REPO, "configs", "cpu-small"), "fullyqt8-finetune")
    control = load_experiment(os.path.join(REPO, "configs", "cpu-small"), "float-finetune")
    assert (exp.finetune_from, exp.match_updates, exp.update_fraction) == ("float", "float", 0.25)
    assert exp.baseline == "float-finetune" and exp.bits == 8 and control.bits is None
    assert exp.description != control.description  # descriptions are not inherited
    # the control differs from the quantized run in the architecture and quant options only
    assert {k: v for k, v in exp.train.items() if k not in ("arch", "quant-bits")} == \
        {k: v for k, v in control.train.items() if k != "arch"}
    (tmp_path / "a.yaml").write_text("inherit: b.yaml\n")
    (tmp_path / "b.yaml").write_text("inherit: a.yaml\n")
    with pytest.raises(ConfigError, match=r"inherit cycle through a.yaml -> b.yaml -> a.yaml"):
        load_experiment(str(tmp_path), "a")


def test_a_baseline_outside_the_preset_is_named(tmp_path):
    import shutil

    shutil.copytree(os.path.join(REPO, "configs", "smoke"), tmp_path / "smoke")
    (tmp_path / "smoke" / "preset.yaml").write_text("variants: [float, fullyqt8-finetune]\n")
    with pytest.raises(ConfigError, match=r"fullyqt8-finetune.yaml refers to 'float-finetune'"):
        load_preset("smoke", root=str(tmp_path))


def _preset(root, files: dict, main: str, studies: str = "[]", study_files: dict = None):
    """A preset ``p`` under ``root``: experiment files in ``root/p``, studies in
    ``root/studies/p``."""
    for folder, group in ((root / "p", files), (root / "studies" / "p", study_files or {})):
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in group.items():
            (folder / f"{name}.yaml").write_text(text)
    (root / "p" / "preset.yaml").write_text(f"variants: {main}\nextra_variants: {studies}\n")
    return load_preset("p", root=str(root))


def test_experiments_inherit_across_the_main_job_and_its_studies(tmp_path):
    files = {"common": "train: {lr: 0.002, criterion: label_smoothed_cross_entropy}\n",
             "float": "inherit: common.yaml\ntrain: {arch: transformer}\n",
             "float-finetune": "inherit: common.yaml\nfinetune_from: float\n"
                               "update_fraction: 0.25\ntrain: {arch: transformer, lr: 0.0005}\n"}
    studies = {"q8": "inherit: float-finetune.yaml\nbaseline: float-finetune\n"
                     "train: {arch: fullyqt_transformer, quant-bits: 8}\n",
               "q8-kd": "inherit: float-finetune.yaml\nbaseline: float-finetune\n"
                        "teacher: float\ntrain: {arch: fullyqt_transformer, quant-bits: 8, "
                        "criterion: fullyqt_distill, kd-weight: 0.5}\n"}
    preset = _preset(tmp_path, files, "[float, float-finetune]", "[q8, q8-kd]", studies)
    by_name = {v.name: v for v in preset.variants + preset.extra_variants}
    kd, plain = by_name["q8-kd"], by_name["q8"]
    assert kd.teacher == "float" and kd.update_fraction == 0.25 and kd.finetune_from == "float"
    assert kd.train == {"lr": 0.0005, "criterion": "fullyqt_distill", "arch":
                        "fullyqt_transformer", "quant-bits": 8, "kd-weight": 0.5}
    assert {k for k in kd.train if kd.train.get(k) != plain.train.get(k)} == {"criterion",
                                                                             "kd-weight"}
    # a main-job variant may not depend on one that only --full-grid runs
    (tmp_path / "p" / "float-finetune.yaml").write_text(files["float-finetune"] + "teacher: q8\n")
    with pytest.raises(ConfigError, match=r"float-finetune.yaml refers to 'q8', not a variant of "
                                          r"this preset's grid"):
        load_preset("p", root=str(tmp_path))
    # inherit goes at most two files deep
    (tmp_path / "p" / "float-finetune.yaml").write_text("inherit: float.yaml\n")
    with pytest.raises(ConfigError, match=r"q8.yaml: inherits float-finetune.yaml -> float.yaml "
                                          r"-> common.yaml: allowed: at most 2 files deep"):
        load_preset("p", root=str(tmp_path))


def test_the_goals_are_data_of_the_preset_and_the_run(tmp_path):
    """Verdicts follow the goals the run was given (the shipped file, a preset's overrides),
    which its results.json keeps."""
    from fullyqt.bench.config import load_goals

    shipped = load_goals()
    rows = [row("float"), row("fullyqt4-kd", bits=4, bleu=28.5, teacher="float")]

    def report(goals):
        return open(write_report(str(tmp_path), rows, {"preset": "t"}, goals=goals)["md"]).read()

    assert "(4-bit goal, ≥ -2: met)" in report(shipped)
    assert "(4-bit goal, ≥ -1: not met)" in report({**shipped, "distilled_4bit_bleu": -1.0})
    assert json.loads((tmp_path / "results.json").read_text())["goals"]["distilled_4bit_bleu"] == -1
    files = {"float": "train: {arch: transformer}\n"}
    preset = _preset(tmp_path, files, "[float]")
    assert preset.goals == shipped
    (tmp_path / "p" / "preset.yaml").write_text("variants: [float]\ngoals: {native_speed: 1.5}\n")
    assert load_preset("p", root=str(tmp_path)).goals == {**shipped, "native_speed": 1.5}
    for bad, message in (("{native_sped: 1.5}", "goal 'native_sped': allowed: distilled_4bit_bleu"),
                         ("{native_speed: fast}", "goal native_speed: 'fast': allowed: a number")):
        (tmp_path / "p" / "preset.yaml").write_text(f"variants: [float]\ngoals: {bad}\n")
        with pytest.raises(ConfigError, match=message):
            load_preset("p", root=str(tmp_path))


def test_the_shipped_presets_keep_inherit_shallow_and_teachers_named():
    for name in ("cpu-small", "smoke", "wmt-base", "wmt-big"):
        preset = load_preset(name)  # raises on a chain deeper than two files
        grid = preset.variants + preset.extra_variants
        names = {v.name for v in grid}
        for v in grid:
            assert v.teacher is None or (v.teacher in names and v.train["criterion"]
                                         == "fullyqt_distill"), v.name
            assert v.distill_data is None or v.distill_data in names, v.name


def test_each_variant_is_judged_against_the_model_trained_like_it():
    from fullyqt.bench.__main__ import control_of
    from fullyqt.bench.config import Experiment

    def exp(name, **kw):
        return Experiment(name, "", kw.pop("train", {}), **kw)

    q8 = {"arch": "fullyqt_transformer", "quant-bits": 8}
    # a quantized or sequence-level-distilled model against its control, taught or not
    assert control_of(exp("q8", train=q8, baseline="float-finetune"), {}) == "float-finetune"
    assert control_of(exp("q8-kd", train=q8, baseline="float-finetune", teacher="float"),
                      {}) == "float-finetune"
    assert control_of(exp("small-seqkd", baseline="small", distill_data="float"), {}) == "small"
    # a float student of a teacher against the float model fine-tuned the same way without one
    assert control_of(exp("float-kd", baseline="float-finetune", teacher="float"),
                      {}) == "float-finetune"
    # a pruned float model against its dense model; a pruned quantized one against its control
    pruned = {"dense": "float-finetune"}
    assert control_of(exp("pruned", teacher="float-finetune"), pruned) == "float-finetune"
    assert control_of(exp("pruned8", train=q8, baseline="fullyqt8"), {"dense": "x"}) == "fullyqt8"
    # a float model trained on references alone has no control
    assert control_of(exp("float-teacher"), {}) is None
    assert control_of(exp("float"), {}) is None


@pytest.mark.slow
def test_kernel_timing_cli_names_a_bad_size():
    proc = subprocess.run([sys.executable, "-m", "fullyqt.bench.kernels", "--sizes", "huge"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--sizes: got 'huge'; allowed: tiny, cpu-small, base, big" in proc.stderr


@pytest.mark.slow
def test_kernel_timing_cli_names_a_bad_length():
    proc = subprocess.run([sys.executable, "-m", "fullyqt.bench.kernels", "--sizes", "tiny",
                           "--length", "-3"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--length: got -3; allowed: an integer >= 0" in proc.stderr


def test_end_to_end_search_gives_every_model_hypotheses_of_the_asked_length():
    """Random weights would stop hypotheses anywhere: the timed search makes every one exactly
    ``length`` tokens, then EOS, so every model does the same work; the table reports it."""
    from fullyqt.bench import kernels

    models, d = kernels._models(kernels.SIZES["tiny"], USER_DIR)
    for model in models.values():
        hyps, seconds = kernels.fixed_length_search(model, d, batch=3, beam=2, src_len=5,
                                                    length=4)
        assert len(hyps) == 3 and seconds > 0
        for sentence in hyps:
            assert len(sentence) == 2  # the beam's hypotheses, all finished at the cap
            for h in sentence:
                assert h["tokens"].tolist()[4:] == [d.eos()] and d.eos() not in h["tokens"][:4]
    row = {"size": "tiny", **kernels.SIZES["tiny"], "params": 1, "rounds": 1, "length": 4,
           **{f"{k} ms": 2.0 for k in models}, "float tok/s": 300.0,
           "fake-quant tok/s": 200.0, "int8 kernels tok/s": 450.0}
    text = "\n".join(kernels.markdown([row], 2))
    assert "every hypothesis made 4 tokens long" in text
    assert "| tiny | 300 | 200 | 450 | 1.50x | 2.25x |" in text
    row = {k: v for k, v in row.items() if "tok/s" not in k}
    assert "Beam search end to end" not in "\n".join(kernels.markdown([row], 2))


def test_report_writer(tmp_path):
    rows = [row("float"), row("fullyqt8", bits=8, bleu=29.5, model_bytes=1100,
                              tokens_per_second=80.0, sec_per_update=1.3)]
    paths = write_report(str(tmp_path), rows, {"preset": "test"})
    data = json.loads(open(paths["json"]).read())
    assert [r["variant"] for r in data["rows"]] == ["float", "fullyqt8"]
    assert data["rows"][1]["size_vs_float"] == pytest.approx(0.275)
    assert data["rows"][1]["time_per_update_vs_float"] == pytest.approx(1.3)
    md = open(paths["md"]).read()
    assert "| fullyqt8 | 8 | 29.50 | 1,000 | 1,100 | 0.28x | 80 | 10 | 1.30x |" in md
    assert "does not hold for `fullyqt8`: 29.50 vs `float` 30.00 (-0.50)" in md
    rows.append(replace(rows[1], variant="float → CT2 int8 (PTQ)", kind="deploy", bleu=29.0))
    rows.append(replace(rows[1], variant="fullyqt8 → CT2 int8", kind="deploy", bleu=29.4))
    md = open(write_report(str(tmp_path), rows, {"preset": "test"})["md"]).read()
    assert "`fullyqt8 → CT2 int8` vs CTranslate2 int8 PTQ of `float`: 29.40 vs 29.00 (+0.40)" in md
    # a fine-tuned model is judged against its float control, trained the same way
    rows.append(replace(rows[0], variant="float-finetune", bleu=31.0))
    rows.append(replace(rows[0], variant="float-finetune → CT2 int8 (PTQ)", kind="deploy",
                        bleu=30.8))
    rows.append(replace(rows[1], variant="fullyqt8-finetune", bleu=30.9,
                        baseline="float-finetune"))
    rows.append(replace(rows[1], variant="fullyqt8-finetune → CT2 int8", kind="deploy",
                        bleu=30.85, baseline="float-finetune"))
    md = open(write_report(str(tmp_path), rows, {"preset": "test"})["md"]).read()
    assert "does not hold for `fullyqt8-finetune`: 30.90 vs `float-finetune` 31.00 (-0.10)" in md
    assert ("`fullyqt8-finetune → CT2 int8` vs CTranslate2 int8 PTQ of `float-finetune`: "
            "30.85 vs 30.80 (+0.05)") in md
    assert md.count("vs CTranslate2 int8 PTQ") == 2  # PTQ rows are not compared with each other
    assert "for `fullyqt8 → CT2 int8`" not in md
    # a distilled 4-bit model against its teacher (the 2.0-BLEU goal) and its float control
    rows.append(replace(rows[1], variant="fullyqt4-kd", bits=4, bleu=28.5, teacher="float",
                        baseline="float-finetune", teacher_share=0.25))
    md = open(write_report(str(tmp_path), rows, {"preset": "test"})["md"]).read()
    assert ("`fullyqt4-kd` distilled from `float`: 28.50 vs the teacher's 30.00 (-1.50) (4-bit "
            "goal, ≥ -2: met); its control `float-finetune` (float, same recipe) 31.00 "
            "(-2.50); the teacher's forward pass takes 25% of update time.") in md
    # a pruned model's control is the dense model it was pruned from
    rows.append(replace(rows[0], variant="pruned-kd", bleu=29.0, teacher="float-finetune",
                        baseline="float", dense="float"))
    md = open(write_report(str(tmp_path), rows, {"preset": "test"})["md"]).read()
    assert ("its control `float` (the dense model it was pruned from) 30.00 (-1.00)") in md
    assert open(paths["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    from fullyqt.bench.report import rewrite

    before = open(paths["md"]).read()
    rewrite(str(tmp_path))  # the report is rebuilt from results.json alone
    assert open(paths["md"]).read() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pareto.png", "report.md",
                                                          "results.json"]


def study(out, script, *args):
    """Run ``scripts/studies/SCRIPT`` on a finished benchmark folder."""
    proc = subprocess.run([sys.executable, os.path.join(STUDIES, script), str(out), *args],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]


def detokenized(path):
    """{sentence id: D- line text} of a fairseq-generate log."""
    hyps = {}
    for line in open(path, encoding="utf-8"):
        if line.startswith("D-"):
            sid, _score, text = line.rstrip("\n").split("\t", 2)
            hyps[int(sid[2:])] = text
    return hyps


def same_share(a, b):
    return sum(a[i] == b[i] for i in b) / len(b)


def md_text(out):
    return (out / "report.md").read_text()


@pytest.mark.slow
def test_smoke_preset_end_to_end(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-m", "fullyqt.bench", "--preset", "smoke", "--out",
                           str(out), "--threads", "1"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    data = json.loads((out / "results.json").read_text())
    rows = {r["variant"]: r for r in data["rows"]}
    assert {"float", "fullyqt8", "float-finetune", "fullyqt8-finetune", "fullyqt8 int8 native",
            "float → CT2 int8 (PTQ)", "fullyqt8 → CT2 int8", "float-finetune → CT2 int8 (PTQ)",
            "fullyqt8-finetune → CT2 int8"} <= set(rows)
    # the fake-quant row decodes with exact integer arithmetic: the int8 kernels agree bit for bit
    native = rows["fullyqt8 int8 native"]
    assert native["same_as_fake_quant"] == 1.0
    assert native["bleu"] == rows["fullyqt8"]["bleu"]
    # the agreements the row reports, counted again from the fairseq-generate logs on disk
    logs = out / "checkpoints" / "fullyqt8"
    exact = detokenized(logs / "generate.txt")
    assert len(exact) == 60
    assert native["same_as_fake_quant"] == same_share(detokenized(logs / "generate.int8.txt"),
                                                      exact)
    assert native["float_matmul_same_as_fake_quant"] == same_share(
        detokenized(logs / "generate.fake.txt"), exact)
    assert "--quant-kernels fake" in md_text(out)
    # the decode profile study of the run: float, fake-quant and integer export
    study(out, "decode_profile.py")
    profile = json.loads((out / "decode_profile.json").read_text())["rows"]
    shares = [sum(v for k, v in p.items() if k not in ("model", "tokens", "wall_ms"))
              for p in profile]
    assert len(shares) == 3 and all(0.95 < x < 1.05 for x in shares)
    assert profile[2]["model"] == "fullyqt8 int8 export" and profile[2]["int8_matmul"] >= 0
    assert rows["fullyqt8"]["num_updates"] == rows["float"]["num_updates"]  # matched updates
    assert rows["fullyqt8-finetune"]["num_updates"] == round(rows["float"]["num_updates"] / 4)
    assert rows["float-finetune"]["num_updates"] == rows["fullyqt8-finetune"]["num_updates"]
    assert "for `fullyqt8-finetune`" in md_text(out) and "vs `float-finetune`" in md_text(out)
    # the interval compares the two logs the rows were scored from
    refs = (out / "data" / "raw" / "test.tgt").read_text(encoding="utf-8").rstrip("\n")
    refs = refs.split("\n")
    in_order = lambda name: [text for _, text in sorted(detokenized(  # noqa: E731
        out / "checkpoints" / name / "generate.txt").items())]
    again = compare(in_order("fullyqt8-finetune"), in_order("float-finetune"), refs)
    assert rows["fullyqt8-finetune"]["vs_control_interval"] == [again.low, again.high]
    assert rows["fullyqt8-finetune"]["bleu"] - rows["float-finetune"]["bleu"] == pytest.approx(
        again.delta, abs=1e-9)
    assert rows["float"].get("vs_control_interval") is None
    assert "95% paired-bootstrap interval" in md_text(out)
    # the int8 recipe, run by fullyqt-compress on the float model: its result row is the BLEU
    # of its own fairseq-generate log
    recipe = rows["recipe int8: result"]
    hyps = [t for _, t in sorted(detokenized(
        out / "recipes" / "int8" / "eval" / "result.generate.txt").items())]
    assert recipe["bleu"] == pytest.approx(corpus_bleu(hyps, refs)[0], abs=1e-9)
    assert recipe["num_updates"] == 2 and "recipe int8: result → CTranslate2 (CT2)" in rows
    # the README's results block: each recipe's rows and its goals as its report states them
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- recipes:begin -->\nold\n<!-- recipes:end -->\nb\n")
    subprocess.run([sys.executable, "-m", "fullyqt.bench.readme", str(out / "results.json"),
                    str(readme), "--section", "recipes"], check=True, cwd=REPO)
    block = readme.read_text().split("<!-- recipes:begin -->")[1].split("<!-- recipes:end -->")[0]
    report = json.loads((out / "recipes" / "int8" / "report.json").read_text())
    assert "old" not in block and f"| `int8`: result | {recipe['bleu']:.2f} |" in block
    assert f"commit `{data['meta']['commit']}`" in block
    for goal in report["goals"].values():
        assert f"{goal['reached']:.3f}, {'met' if goal['met'] else '**missed**'}" in block
    assert rows["fullyqt8"]["model_bytes"] < 0.35 * rows["float"]["model_bytes"]
    assert all(r["tokens_per_second"] > 0 and 0 <= r["bleu"] <= 100 for r in rows.values())
    assert data["meta"]["test sentences"] == 60
    assert all(r["scored"] == 60 for r in rows.values() if r["kind"] != "recipe")
    assert "Sentences scored: all 60 test sentences in every row." in md_text(out)
    md = (out / "report.md").read_text()
    assert "| fullyqt8 |" in md and "## Where decode time goes" in md
    assert "its section: python scripts/studies/pruning_report.py" in proc.stdout
    assert "## Model time per decoding step by size" in md
    step = data["decoder_step"][0]
    assert step["size"] == "cpu-small" and all(
        step[k] > 0 for k in ("float ms", "fake-quant ms", "int8 kernels ms"))
    assert "[float] update" in proc.stdout  # progress is shown
    # the preset's length cap reaches beam search: no hypothesis is longer (+ EOS)
    cap = load_preset("smoke").max_len
    assert data["meta"]["hypotheses cut at (target tokens)"] == cap
    scores = [line.split("\t")[1].split() for line in (
        out / "checkpoints" / "float" / "generate.txt").read_text().splitlines()
        if line.startswith("P-")]
    assert len(scores) == 60 and max(map(len, scores)) == cap + 1
    # distillation: word-level from the float model, sequence-level on its translations
    assert rows["fullyqt8-kd"]["teacher"] == "float"
    assert rows["fullyqt8-kd"]["num_updates"] == rows["fullyqt8-finetune"]["num_updates"]
    assert "`fullyqt8-kd` distilled from `float`" in md
    distilled = json.loads((out / "data" / "distilled-float" / "distill.json").read_text())
    assert distilled["sentences"] == 3000 and distilled["beam"] == 5
    assert rows["seqkd"]["teacher"] == "float" and rows["seqkd"]["baseline"] == "float"
    # pruning: trained masked, evaluated compacted against the dense model it started from
    pruned = rows["pruned"]
    assert pruned["dense"] == "float" and pruned["layer_params"] <= pruned["dense_layer_params"]
    assert len(pruned["heads"]["enc"]) == 1 and len(pruned["ffn"]["dec"]) == 1
    assert "pruned → CT2 int8 (PTQ)" in rows
    # the "filled" step: the compact model trained on keeps its shapes and its dense model
    filled = rows["pruned-filled"]
    assert filled["dense"] == "float" and filled["heads"] == pruned["heads"]
    assert filled["ffn"] == pruned["ffn"] and filled["layer_params"] == pruned["layer_params"]
    # judged against its dense model: the paired interval is of its hypotheses against float's
    for r in (pruned, filled):
        want = compare(in_order(r["variant"]), in_order("float"), refs)
        assert r["baseline"] == "float" and r["vs_control_interval"] == [want.low, want.high]
    # the pruning study's section of the run
    study(out, "pruning_report.py", "--threads", "1")
    step, step_filled = json.loads((out / "pruning.json").read_text())["records"]
    md = (out / "report.md").read_text()
    assert step["vs_dense_interval"] == pruned["vs_control_interval"]
    assert step["variant"] == "pruned" and step["dense_ms"]["decoder_layers_ms"] > 0
    assert step_filled["variant"] == "pruned-filled" and step_filled["dense"] == "float"
    assert step["sentence_bound"] >= 1 and 0 < step["output_share"] < 1
    # CTranslate2 on equal work: both exports timed on the same forced shapes
    equal = step["ct2_equal_ms"]
    assert equal["dense"] > 0 and equal["compact"] > 0 and equal["src_len"] >= 1
    assert 1 <= step["ct2_sentence_bound"] <= step["sentence_bound"] + 1e-9
    assert f"beam 5 forced to {equal['tgt_len']} target tokens" in md
    assert "## Pruning" in md and "Pruning goal" in md
    assert f"95% interval {interval_text(*pruned['vs_control_interval'])}" in md
    # a page's block of the pruning section is the report's, generated from pruning.json
    readme = out / "README.md"
    readme.write_text("x\n<!-- pruning:begin -->\n<!-- pruning:end -->\n")
    subprocess.run([sys.executable, "-m", "fullyqt.bench.readme", str(out / "pruning.json"),
                    str(readme)], check=True, cwd=REPO)
    block = readme.read_text().split("<!-- pruning:begin -->")[1]
    report_rows = [line for line in md.split("## Pruning")[1].splitlines()
                   if line.startswith("| pruned")]
    assert len(report_rows) == 2 and all(line in block for line in report_rows)
    assert "Pruning goal" in block


def test_a_results_row_round_trips_and_names_what_it_does_not_know():
    from fullyqt.bench.row import Row

    r = row("pruned", heads={"enc": [2, 1]}, vs_control_interval=[-1.0, 0.5], dense="float")
    assert Row.from_json(json.loads(json.dumps(r.to_json()))) == r
    with pytest.raises(ValueError, match=r"row 'x': unknown fields \['bleu_score'\]"):
        Row.from_json({**row("x").to_json(), "bleu_score": 1.0})
    with pytest.raises(ValueError, match=r"row 'x': kind 'shipped': allowed: trained, deploy"):
        row("x", kind="shipped")


def test_report_states_how_many_sentences_each_row_scored(tmp_path):
    full = row("float", scored=60)
    meta = {"preset": "test", "test sentences": 60}
    md = open(write_report(str(tmp_path), [full], meta)["md"]).read()
    assert "Sentences scored: all 60 test sentences in every row." in md
    short = row("fullyqt8", bits=8, scored=59)
    md = open(write_report(str(tmp_path), [full, short], meta)["md"]).read()
    assert "Sentences scored: fewer than the 60 test sentences for `fullyqt8` 59." in md


@pytest.mark.slow
def test_readme_block_is_generated_from_results(tmp_path):
    rows = [row("float"), row("fullyqt4-kd", bits=4, bleu=28.75, model_bytes=600,
                              tokens_per_second=80.0, num_updates=3, sec_per_update=1.5,
                              baseline="float", teacher="float",
                              vs_control_interval=[-2.0, -0.5])]
    paths = write_report(str(tmp_path), rows, {"preset": "p", "date": "d", "machine": "m",
                                               "test sentences": 60})
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:begin -->\nold numbers\n<!-- results:end -->\nrest\n")
    cmd = [sys.executable, "-m", "fullyqt.bench.readme", paths["json"], str(readme)]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
    text = readme.read_text()
    assert text.startswith("intro\n<!-- results:begin -->\n") and text.endswith(
        "<!-- results:end -->\nrest\n")
    assert "old numbers" not in text
    assert ("| fullyqt4-kd | 4 | 28.75 | -1.25 [-2.00, -0.50] vs `float`; -1.25 vs teacher "
            "`float` | 0.15x | 80 | 3 | 1.50x |") in text
    assert "| float | float | 30.00 | – | 1.00x | 100 | 10 | 1.00x |" in text
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
    assert readme.read_text() == text  # a rerun changes nothing
    readme.write_text(text + "<!-- results-4bit:begin -->\n<!-- results-4bit:end -->\n")
    subprocess.run(cmd + ["--block", "results-4bit"], check=True, cwd=REPO, capture_output=True)
    second = readme.read_text().split("<!-- results-4bit:begin -->")[1]
    assert "| fullyqt4-kd | 4 | 28.75 |" in second  # a second run's table in its own block
    assert readme.read_text().startswith(text)
    readme.write_text("no markers\n")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "needs one '<!-- results:begin -->' line before one" in proc.stderr
    assert readme.read_text() == "no markers\n"
    readme.write_text("<!-- recipes:begin -->\n<!-- recipes:end -->\n")
    proc = subprocess.run(cmd + ["--section", "recipes"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "the run has no recipe rows" in proc.stderr


def test_the_studies_index_lists_every_study_once():
    folder = os.path.join(REPO, "configs", "studies")
    with open(os.path.join(folder, "README.md"), encoding="utf-8") as f:
        listed = [line.split("`")[1] for line in f if line.startswith("- `")]
    files = sorted(n[:-5] for n in os.listdir(os.path.join(folder, "cpu-small"))
                   if n.endswith(".yaml"))
    assert sorted(listed) == files
    main = load_preset("cpu-small")
    assert {v.name for v in main.extra_variants} == set(files)  # --full-grid runs them all
    assert len(os.listdir(os.path.join(REPO, "configs", "cpu-small"))) <= 15
