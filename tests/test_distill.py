"""Knowledge distillation: the losses against hand computations, the frozen teacher, the layer
map, option and teacher errors, end-to-end fairseq-train runs, the distilled-corpus command."""
import argparse
import json
import math
import os
import shutil

import pytest
import torch
from fairseq.data import Dictionary
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion

from fullyqt.checkpoint import file_sha256
from fullyqt.distill import corpus
from fullyqt.distill.layer_map import evenly_spaced, parse_layer_map, resolve
from fullyqt.distill.losses import soft_target_loss, state_mse
from fullyqt.distill.teacher import DistillError, load_teacher
from fullyqt.errors import UserError
from tests.conftest import (TEACHER_ARCH, TRAIN, USER_DIR, build_model, cli, sample_batch,
                            train)

# fairseq-train flags without the criterion (each test names its own)
_CRITERION = TRAIN.index("--criterion")
FLAGS = TRAIN[:_CRITERION] + TRAIN[_CRITERION + 4:]

# A fullyqt student of another width and depth: 1+3 layers of width 32.
STUDENT_ARCH = ["--arch", "fullyqt_transformer_tiny", "--encoder-embed-dim", "32",
                "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
                "--decoder-ffn-embed-dim", "64", "--encoder-layers", "1", "--decoder-layers", "3",
                "--share-all-embeddings"]


def distill_setup(data, teacher_path, *extra, arch=STUDENT_ARCH):
    model, task, args = build_model(data, "--criterion", "fullyqt_distill", "--teacher-path",
                                    teacher_path, *extra, arch_args=arch)
    return model, task, task.build_criterion(args)


# ----- the losses, computed by hand -----

def _kl_by_hand(student_row, teacher_row, t):
    def softmax(row):
        e = [math.exp(x / t) for x in row]
        return [x / sum(e) for x in e]

    p, q = softmax(teacher_row), softmax(student_row)
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)) * t * t


def test_soft_target_loss_matches_hand_computation_and_skips_padding():
    student = torch.tensor([[[1.0, 0.0, -1.0], [0.5, 0.5, 2.0], [9.0, -9.0, 0.0]]])
    teacher = torch.tensor([[[0.0, 2.0, 0.0], [1.0, -1.0, 0.0], [-9.0, 9.0, 0.0]]])
    valid = torch.tensor([[True, True, False]])  # the last position is padding
    for t in (1.0, 2.0, 0.5):
        expected = sum(_kl_by_hand(student[0, i].tolist(), teacher[0, i].tolist(), t)
                       for i in range(2))
        got = soft_target_loss(student, teacher, valid, t).item()
        assert got == pytest.approx(expected, rel=1e-5), t
    assert soft_target_loss(teacher, teacher, valid, 2.0).item() == pytest.approx(0, abs=1e-6)


def test_soft_target_loss_and_gradient_match_autograd_in_float64():
    """The loss's own backward against autograd through log-softmaxes in float64, at the
    recipes' temperatures and one below 1, padding rows getting no gradient."""
    torch.manual_seed(0)
    student = (torch.randn(3, 7, 500) * 4).requires_grad_()
    teacher = torch.randn(3, 7, 500) * 4
    valid = torch.arange(7)[None, :] < torch.tensor([[7], [4], [1]])
    for t in (1.0, 2.0, 0.5):
        reference = student.detach().double().requires_grad_()
        log_q = torch.log_softmax(reference / t, -1)
        log_p = torch.log_softmax(teacher.double() / t, -1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        (kl[valid].sum() * t * t).backward()
        student.grad = None
        loss = soft_target_loss(student, teacher, valid, t)
        loss.backward()
        assert loss.item() == pytest.approx((kl[valid].sum() * t * t).item(), rel=1e-5), t
        torch.testing.assert_close(student.grad.double(), reference.grad, rtol=1e-4,
                                   atol=1e-6)
        assert student.grad[~valid].abs().max() == 0


def test_state_mse_averages_over_real_positions_only():
    s = torch.tensor([[[1.0, 3.0]], [[0.0, 0.0]], [[100.0, 100.0]]])  # time x batch x dim
    t = torch.tensor([[[0.0, 1.0]], [[2.0, 0.0]], [[0.0, 0.0]]])
    valid = torch.tensor([[True], [True], [False]])
    expected = (((1 + 4) / 2) + ((4 + 0) / 2)) / 2
    assert state_mse(s, t, valid).item() == pytest.approx(expected)


@pytest.mark.slow
def test_criterion_mixes_cross_entropy_and_soft_targets(toy_data, teacher):
    data = toy_data[1]
    model, task, criterion = distill_setup(data, teacher, "--kd-weight", "0.3", "--no-quant",
                                           "--kd-temperature", "2", "--label-smoothing", "0.1")
    model.eval()  # no dropout: the reference below sees the same logits
    sample = sample_batch(task)
    pad = task.target_dictionary.pad()
    assert sample["target"].eq(pad).any()  # the batch has padding
    loss, sample_size, log = criterion(model, sample)

    reference_ce = LabelSmoothedCrossEntropyCriterion(task, False, 0.1)
    ce, _, _ = reference_ce(model, sample)
    teacher_model = load_teacher(str(teacher), task)
    with torch.no_grad():
        s_logits = model(**sample["net_input"])[0]
        t_logits = teacher_model(**sample["net_input"])[0]
    kd = 0.0
    for b, row in enumerate(sample["target"].tolist()):
        for i, token in enumerate(row):
            if token != pad:
                kd += _kl_by_hand(s_logits[b, i].tolist(), t_logits[b, i].tolist(), 2.0)
    assert sample_size == sample["ntokens"]
    assert log["kd_loss"].item() == pytest.approx(kd, rel=1e-4)
    assert loss.item() == pytest.approx(0.7 * ce.item() + 0.3 * kd, rel=1e-4)


# ----- the teacher is frozen and kept apart -----

def test_teacher_gets_no_gradient_and_stays_out_of_the_criterion_state(toy_data, teacher):
    model, task, criterion = distill_setup(toy_data[1], teacher, "--kd-hidden-weight", "1")
    sample = sample_batch(task)
    loss, _, log = criterion(model, sample)
    loss.backward()
    t = criterion.teacher.model
    assert not t.training
    assert all(p.grad is None and not p.requires_grad for p in t.parameters())
    assert any(p.grad is not None for p in model.parameters())
    # widths differ (32 vs 64): only the two projections are the criterion's own parameters
    names = sorted(n for n, _ in criterion.named_parameters())
    assert names == ["projections.decoder.bias", "projections.decoder.weight",
                     "projections.encoder.bias", "projections.encoder.weight"]
    assert all(p.grad is not None for p in criterion.parameters())
    assert log["hidden_loss"].item() > 0


def test_teacher_follows_the_student_dtype(toy_data, teacher):
    model, task, criterion = distill_setup(toy_data[1], teacher, "--kd-hidden-weight", "1")
    model.double()
    criterion.double()
    loss, _, _ = criterion(model, sample_batch(task))
    assert next(criterion.teacher.model.parameters()).dtype == torch.float64


# ----- the layer map -----

def test_layer_map_even_spacing_and_explicit_maps():
    assert evenly_spaced(3, 3) == [1, 2, 3]
    assert evenly_spaced(3, 6) == [2, 4, 6]
    assert evenly_spaced(1, 6) == [6]
    assert evenly_spaced(4, 6) == [2, 3, 4, 6]  # round half to even: 1.5 -> 2, 4.5 -> 4
    assert evenly_spaced(6, 3) == [1, 1, 2, 2, 3, 3]  # deeper: each teacher layer twice
    assert evenly_spaced(3, 2) == [1, 2, 2]
    assert resolve("encoder", None, 2, 4) == [(0, 0), (1, 2), (2, 4)]
    assert parse_layer_map("--kd-layer-map", "2,4,6") == ([2, 4, 6], [2, 4, 6])
    assert parse_layer_map("--kd-layer-map", "1,1:auto") == ([1, 1], None)
    assert resolve("decoder", [3, 1], 2, 3) == [(0, 0), (1, 3), (2, 1)]
    with pytest.raises(UserError, match="has 2 entries for a student with 3 encoder layers"):
        resolve("encoder", [1, 2], 3, 6)
    with pytest.raises(UserError, match="teacher layer 7 does not exist; the teacher has 6"):
        resolve("decoder", [7], 1, 6)
    for bad in ("0,1", "a,b", "1:2:3", ""):
        if bad == "":
            assert parse_layer_map("--kd-layer-map", bad) == (None, None)
            continue
        with pytest.raises(UserError, match="--kd-layer-map: got"):
            parse_layer_map("--kd-layer-map", bad)


def test_hidden_pairs_follow_the_layer_map(toy_data, teacher):
    _, _, criterion = distill_setup(toy_data[1], teacher, "--kd-hidden-weight", "1",
                                    "--kd-layer-map", "1:2,2,1")
    assert criterion._pairs == {"encoder": [(0, 0), (1, 1)],
                                "decoder": [(0, 0), (1, 2), (2, 2), (3, 1)]}
    _, _, criterion = distill_setup(toy_data[1], teacher, "--kd-hidden-weight", "1")
    assert criterion._pairs == {"encoder": [(0, 0), (1, 2)],  # deeper: ceil(i * 2 / 3)
                                "decoder": [(0, 0), (1, 1), (2, 2), (3, 2)]}


# ----- errors -----

@pytest.mark.slow
def test_dictionary_mismatch_is_refused_naming_both_sizes(toy_data, teacher, tmp_path):
    raw = toy_data[0]
    other = tmp_path / "bin"
    cli("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--trainpref",
        raw / "train", "--validpref", raw / "valid", "--destdir", other, "--joined-dictionary",
        "--nwordssrc", "8", "--workers", "1")
    sizes = [len(Dictionary.load(str(d / "dict.src.txt"))) for d in (toy_data[1], other)]
    assert sizes[0] != sizes[1]
    with pytest.raises(DistillError, match=f"source dictionary has {sizes[0]} entries, the "
                                           f"data's has {sizes[1]}"):
        distill_setup(other, teacher)


def _with_data(checkpoint, data, out):
    """A copy of ``checkpoint`` recording ``data`` as the directory it was trained on."""
    state = torch.load(checkpoint, weights_only=False)
    cfg = state["cfg"]
    task = cfg["task"]
    if isinstance(task, dict):
        task["data"] = str(data)
    else:
        task.data = str(data)
    if getattr(cfg.get("model"), "data", None) is not None:
        cfg["model"].data = str(data)
    torch.save(state, out)
    return out


def test_a_teacher_on_a_permuted_dictionary_of_the_same_size_is_refused(toy_data, teacher,
                                                                        tmp_path):
    other = tmp_path / "permuted"
    shutil.copytree(toy_data[1], other)
    for name in ("dict.src.txt", "dict.tgt.txt"):
        lines = (other / name).read_text().splitlines(keepends=True)
        lines[2], lines[5] = lines[5], lines[2]
        (other / name).write_text("".join(lines))
    moved = _with_data(teacher, other, tmp_path / "teacher.pt")
    nspecial = Dictionary.load(str(toy_data[1] / "dict.src.txt")).nspecial
    swapped = [ln.split(" ", 1)[0] for ln in (other / "dict.src.txt").read_text().splitlines()]
    with pytest.raises(DistillError, match=(
            f"its source dictionary \\({other}/dict.src.txt\\) differs from the "
            f"data's at entry {nspecial + 2}: '{swapped[2]}' against '{swapped[5]}'")):
        distill_setup(toy_data[1], moved)
    proc = cli("fairseq-train", toy_data[1], "--user-dir", USER_DIR, *FLAGS, *STUDENT_ARCH,
               "--max-update", "1", "--save-dir", tmp_path / "s", "--criterion",
               "fullyqt_distill", "--teacher-path", moved, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "differs from the data's at entry" in proc.stderr.strip().splitlines()[-1]
    distill_setup(toy_data[1], _with_data(teacher, toy_data[1], tmp_path / "same.pt"))


@pytest.mark.slow
def test_teacher_errors_are_one_line(toy_data, teacher, tmp_path):
    lm = tmp_path / "lm.pt"
    torch.save({"model": {}, "args": argparse.Namespace(arch="transformer_lm")}, lm)
    base = [toy_data[1], "--user-dir", USER_DIR, *FLAGS, *STUDENT_ARCH, "--max-update", "1",
            "--save-dir", tmp_path / "s"]
    cases = {
        (): "--criterion fullyqt_distill needs --teacher-path CKPT",
        ("--teacher-path", tmp_path / "missing.pt"): "missing.pt: no such file",
        ("--teacher-path", tmp_path): f"{tmp_path}: a directory, not a checkpoint file",
        ("--teacher-path", lm): "'transformer_lm' is not a translation (encoder-decoder) model",
        ("--teacher-path", teacher, "--kd-temperature", "0"):
            "--kd-temperature: got '0'; allowed: a number > 0",
        ("--teacher-path", teacher, "--kd-hidden-weight", "1", "--kd-layer-map", "3"):
            "encoder teacher layer 3 does not exist; the teacher has 2 encoder layers",
    }
    for extra, message in cases.items():
        proc = cli("fairseq-train", *base, "--criterion", "fullyqt_distill", *extra, check=False)
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, (extra, proc.stderr)
        assert last.startswith("fairseq-train: error: ") and message in last, (extra, last)
    proc = cli("fairseq-train", *base, "--criterion", "cross_entropy", "--kd-weight", "0.5",
               check=False)
    lines = [ln for ln in proc.stderr.splitlines() if "tensorboardX" not in ln]
    assert proc.returncode == 2 and lines == [
        "fairseq-train: error: --kd-weight applies to --criterion fullyqt_distill only"], lines


# ----- end to end through fairseq-train -----

@pytest.mark.slow
def test_fairseq_train_4bit_student_with_hidden_kd_resumes(toy_data, teacher, tmp_path):
    data = toy_data[1]
    kd = ["--criterion", "fullyqt_distill", "--teacher-path", teacher, "--kd-weight", "0.9",
          "--kd-temperature", "2", "--kd-hidden-weight", "1", "--quant-bits", "4",
          "--log-format", "json", "--log-interval", "5", "--disable-validation"]
    run = [data, "--user-dir", USER_DIR, "--save-dir", tmp_path / "kd", *FLAGS,
           *STUDENT_ARCH, *kd, "--update-freq", "2"]
    first = cli("fairseq-train", *run, "--max-update", "20")
    assert '"kd_loss"' in first.stdout and '"hidden_loss"' in first.stdout
    assert '"teacher_share"' in first.stdout
    second = cli("fairseq-train", *run, "--max-update", "30")
    assert "Loaded checkpoint" in second.stdout + second.stderr
    state = torch.load(tmp_path / "kd" / "checkpoint_last.pt")
    assert state["optimizer_history"][-1]["num_updates"] == 30
    assert sorted(state["criterion"]) == ["projections.decoder.bias",
                                          "projections.decoder.weight",
                                          "projections.encoder.bias",
                                          "projections.encoder.weight"]
    # the student's weights are those of a model trained without distillation
    plain = tmp_path / "plain"
    train(data, plain, *STUDENT_ARCH, "--quant-bits", "4", "--max-update", "1",
          "--disable-validation")
    plain_state = torch.load(plain / "checkpoint_last.pt")
    assert sorted(state["model"]) == sorted(plain_state["model"])
    # and the checkpoint decodes
    gen = cli("fairseq-generate", data, "--user-dir", USER_DIR, "--path",
              tmp_path / "kd" / "checkpoint_last.pt", "--gen-subset", "valid", "--beam", "2",
              "--batch-size", "64", "--required-batch-size-multiple", "1", "--cpu")
    assert "Translated 200 sentences" in gen.stdout + gen.stderr


@pytest.mark.slow
def test_finetune_4bit_from_the_teacher_with_kd(toy_data, teacher, tmp_path):
    """Same shape as the teacher: no projection, the student starts from its weights."""
    same = ["--arch", "fullyqt_transformer_tiny", *TEACHER_ARCH[2:]]
    cli("fairseq-train", toy_data[1], "--user-dir", USER_DIR, "--save-dir", tmp_path, *FLAGS,
        *same, "--criterion", "fullyqt_distill", "--teacher-path", teacher, "--quant-bits", "4",
        "--finetune-from-model", teacher, "--max-update", "10", "--disable-validation")
    state = torch.load(tmp_path / "checkpoint_last.pt")
    assert "criterion" not in state or not state["criterion"]


# ----- sequence-level distillation data -----

def _read_targets(directory):
    from fairseq.data import data_utils

    ds = data_utils.load_indexed_dataset(os.path.join(directory, "train.src-tgt.tgt"), None)
    return [ds[i].tolist() for i in range(len(ds))]


@pytest.mark.slow
def _interrupted(monkeypatch, args, after):
    """``fullyqt-distill-data`` interrupted (Ctrl-C) once ``after`` sentences are translated."""
    real_add, calls = corpus.Parts.add, {"n": 0}

    def add_then_stop(self, sentence_id, tokens):
        calls["n"] += 1
        if calls["n"] > after:
            raise KeyboardInterrupt
        real_add(self, sentence_id, tokens)

    monkeypatch.setattr(corpus.Parts, "add", add_then_stop)
    with pytest.raises(KeyboardInterrupt):
        corpus.run(args)
    monkeypatch.setattr(corpus.Parts, "add", real_add)


def test_distilled_corpus_is_the_teachers_beam_output_and_resumes(toy_data, teacher, tmp_path,
                                                                  monkeypatch):
    data = toy_data[1]
    args = [str(teacher), str(data), "--beam", "2", "--batch-size", "100", "--threads", "1",
            "--no-progress-bar"]
    fresh = tmp_path / "fresh"
    corpus.run(args + ["--out", str(fresh)])

    stopped = tmp_path / "stopped"
    monkeypatch.setattr(corpus, "PART_SENTENCES", 100)
    _interrupted(monkeypatch, args + ["--out", str(stopped)], after=1050)
    assert not stopped.exists()
    partial = tmp_path / "stopped.partial"
    assert len(list(partial.glob("part-*.pt"))) == 11  # ten full parts and the flushed rest
    summary = corpus.run(args + ["--out", str(stopped)])
    assert not partial.exists()
    assert summary["sentences"] == 4000

    assert _read_targets(stopped) == _read_targets(fresh)
    for name in ("dict.src.txt", "dict.tgt.txt", "valid.src-tgt.tgt.bin",
                 "train.src-tgt.src.bin"):
        assert (fresh / name).read_bytes() == (data / name).read_bytes(), name
    # the targets are the teacher's translations: fairseq-generate with the same beam
    gen = cli("fairseq-generate", data, "--user-dir", USER_DIR, "--path", teacher,
              "--gen-subset", "train", "--beam", "2",
              "--batch-size", "100", "--required-batch-size-multiple", "1", "--cpu",
              "--max-len-a", "1.2", "--max-len-b", "10")
    tgt_dict = Dictionary.load(str(data / "dict.tgt.txt"))
    ours = {i: tgt_dict.string(torch.tensor(row)) for i, row in enumerate(_read_targets(fresh))}
    theirs = {}
    for line in gen.stdout.splitlines():
        if line.startswith("H-"):
            head, _, text = line.split("\t")
            theirs[int(head[2:])] = text
    assert len(theirs) == 4000
    same = sum(ours[i] == theirs[i] for i in theirs)
    assert same >= 0.99 * 4000, same

    with pytest.raises(UserError, match="already exists"):
        corpus.run(args + ["--out", str(fresh)])
    # a fairseq-train run reads the new directory
    train(fresh, tmp_path / "student", *STUDENT_ARCH, "--max-update", "2", "--disable-validation")


def test_distilled_corpus_refuses_changed_settings_on_resume(toy_data, teacher, tmp_path):
    out = tmp_path / "out"
    partial = tmp_path / "out.partial"
    partial.mkdir()
    (partial / "settings.json").write_text(
        json.dumps({"beam": 4, "teacher_sha256": file_sha256(teacher)}))
    with pytest.raises(UserError, match="beam 4 then, 2 now"):
        corpus.run([str(teacher), str(toy_data[1]), "--beam", "2", "--out", str(out)])


def test_distilled_corpus_names_a_missing_split_or_data(toy_data, teacher, tmp_path):
    with pytest.raises(UserError, match=f"--subset nosuch: not in {toy_data[1]}"):
        corpus.run([str(teacher), str(toy_data[1]), "--subset", "nosuch", "--out",
                    str(tmp_path / "a")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty: not a binarized data directory"):
        corpus.run([str(teacher), str(tmp_path / "empty"), "--out", str(tmp_path / "b")])
    assert sorted(os.listdir(tmp_path)) == ["empty"]


def test_distilled_corpus_refuses_a_teacher_replaced_at_the_same_path(toy_data, teacher,
                                                                      tmp_path, monkeypatch):
    """Killed, the teacher file replaced by another model, rerun: no corpus of two teachers."""
    path = tmp_path / "teacher.pt"
    shutil.copy(teacher, path)
    args = [str(path), str(toy_data[1]), "--subset", "valid", "--beam", "2", "--batch-size",
            "16", "--threads", "1", "--no-progress-bar", "--out", str(tmp_path / "out")]
    monkeypatch.setattr(corpus, "PART_SENTENCES", 16)
    _interrupted(monkeypatch, args, after=40)
    assert list((tmp_path / "out.partial").glob("part-*.pt"))
    other = torch.load(teacher, weights_only=False)
    with torch.no_grad():
        for t in other["model"].values():
            t.mul_(1.01)
    torch.save(other, path)
    with pytest.raises(UserError, match=f"{path}: not the teacher that made the translations"):
        corpus.run(args)
    summary = corpus.run(args + ["--restart"])
    assert summary["sentences"] == len((toy_data[0] / "valid.src").read_text().splitlines())


def test_distilled_corpus_in_shards_merges_into_the_unsharded_directory(toy_data, teacher,
                                                                        tmp_path):
    """Shards translate alternate batches (as separate processes or machines would); the merge
    writes the same files as one run, byte for byte."""
    args = [str(teacher), str(toy_data[1]), "--subset", "valid", "--beam", "2", "--batch-size",
            "16", "--threads", "1", "--no-progress-bar"]
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    corpus.run(args + ["--out", str(whole)])
    with pytest.raises(UserError, match="--shard-id 3: allowed 0 to 2"):
        corpus.run(args + ["--out", str(sharded), "--num-shards", "3", "--shard-id", "3"])
    counts = [corpus.run(args + ["--out", str(sharded), "--num-shards", "3", "--shard-id", str(i)])
              ["sentences"] for i in (0, 2)]
    with pytest.raises(UserError, match=r"no shard folder .*sharded\.shard-1-of-3"):
        corpus.run(args + ["--out", str(sharded), "--merge-shards", "3"])
    (tmp_path / "sharded.shard-1-of-3").mkdir()
    with pytest.raises(UserError, match=r"sharded\.shard-1-of-3 not finished"):
        corpus.run(args + ["--out", str(sharded), "--merge-shards", "3"])
    counts.append(corpus.run(args + ["--out", str(sharded), "--num-shards", "3", "--shard-id", "1"])
                  ["sentences"])
    assert all(c > 0 for c in counts) and sum(counts) == 200
    corpus.run(args + ["--out", str(sharded), "--merge-shards", "3"])
    assert sorted(p.name for p in sharded.iterdir()) == sorted(p.name for p in whole.iterdir())
    for path in whole.iterdir():
        if path.name != "distill.json":
            assert (sharded / path.name).read_bytes() == path.read_bytes(), path.name
    summaries = [json.loads((d / "distill.json").read_text()) for d in (whole, sharded)]
    for s in summaries:
        del s["translate_seconds"]
    assert summaries[0] == summaries[1]
    assert not list(tmp_path.glob("sharded.shard-*"))
