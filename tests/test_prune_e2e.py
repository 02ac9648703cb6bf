"""Pruning end to end: fairseq-train with masks, resume, compact, generate, int8 export, and the
"filled" fine-tune of the compact model."""
import argparse
import json
import os
import shutil

import pytest
import torch

from fullyqt.checkpoint import model_args
from fullyqt.prune.schedule import Schedule
from fullyqt.prune.shapes import CompactShapes
from tests.conftest import TINY, USER_DIR, cli, make_trainer, sample_batch, train

PRUNE = ["--prune-method", "sigmoid", "--prune-attn-block", "16x16", "--prune-score-lr", "0.3",
         "--prune-warmup-updates", "20", "--prune-cooldown-updates", "30", "--max-update", "150",
         "--quant-bits", "8", "--disable-validation", "--log-interval", "50"]


@pytest.fixture(scope="module")
def pruned(toy_data, tmp_path_factory):
    """Trained with a stop inside the density ramp and a resume: (final checkpoint, log of the
    resumed run, a copy of the run directory as it was at the stop)."""
    save = tmp_path_factory.mktemp("pruned")
    train(toy_data[1], save, *TINY, *PRUNE, "--max-epoch", "5")  # stops at update 75
    stopped = tmp_path_factory.mktemp("pruned-stopped")
    shutil.copy(save / "checkpoint_last.pt", stopped / "checkpoint_last.pt")
    proc = train(toy_data[1], save, *TINY, *PRUNE)
    return save / "checkpoint_last.pt", proc.stdout + proc.stderr, stopped


def _scores(path):
    state = torch.load(path, map_location="cpu")["model"]
    return {k: v for k, v in state.items() if ".source." in k or k.startswith("pruner.")}


@pytest.mark.slow
def test_log_shows_densities_and_what_is_left(pruned):
    _, log, _ = pruned
    assert "attn_density" in log and "ffn_density" in log and "prune_penalty" in log
    line = [x for x in log.splitlines() if "prune: update 100" in x][0]
    assert "heads enc" in line and "dec-cross" in line and "ffn enc" in line


def test_resume_continues_the_schedule_from_the_saved_scores(toy_data, pruned):
    """fairseq's own resume is not bit-exact on CPU (a float model drifts too), so this checks
    what pruning adds: the scores, masks and schedule position come back as saved."""
    final_path, log, stopped = pruned
    saved = torch.load(stopped / "checkpoint_last.pt", map_location="cpu")
    at = saved["optimizer_history"][-1]["num_updates"]
    assert 20 < at < 120  # inside the ramp
    trainer, model = make_trainer(toy_data[1], stopped, *PRUNE[:-3])
    assert trainer.get_num_updates() == at
    state = model.state_dict()
    for k, v in _scores(stopped / "checkpoint_last.pt").items():
        assert torch.equal(state[k], v), k
    schedule = Schedule(warmup=20, cooldown=30, total=150)
    # as saved: the threshold of the last update trained (fairseq numbers it at - 1); the
    # resumed run's first update sets the one of update ``at``
    assert model.pruner._values[0] == pytest.approx(schedule.rising(0.1, at - 1))
    masks = [layer.source.element_mask(layer) for _, _, layer in model.pruner.matrices]
    assert 0 < sum(float(m.sum()) for m in masks) < sum(m.numel() for m in masks)
    assert f"@ {at} updates)" in log  # resumed, not restarted
    final = _scores(final_path)
    assert float(final["pruner.threshold"]) == pytest.approx(0.1)


def _hypotheses(data, ckpt):
    out = cli("fairseq-generate", data, "--user-dir", USER_DIR, "--path", ckpt, "--beam", "3",
              "--batch-size", "64", "--required-batch-size-multiple", "1", "--gen-subset",
              "test", "--cpu").stdout
    hyps = sorted(line for line in out.splitlines() if line.startswith("H-"))
    assert len(hyps) > 50
    return hyps


@pytest.mark.slow
def test_compact_translates_like_the_masked_model_and_exports_to_int8(toy_data, pruned,
                                                                       tmp_path):
    ckpt = pruned[0]
    compact = tmp_path / "compact.pt"
    cli("fullyqt-export", ckpt, "--format", "compact", "--out", compact)
    args = model_args(torch.load(compact, map_location="cpu"))
    assert args.prune_method is None and args.prune_compact_shapes
    masked = _hypotheses(toy_data[1], ckpt)
    assert _hypotheses(toy_data[1], compact) == masked
    from fairseq.models.transformer import TransformerModel

    hubs = [TransformerModel.from_pretrained(str(p.parent), checkpoint_file=p.name,
                                             data_name_or_path=str(toy_data[1]),
                                             user_dir=USER_DIR) for p in (ckpt, compact)]
    assert hubs[1].models[0].encoder.layers[0].fc1.out_features < 128  # really compact
    assert hubs[0].translate("w5 w6 w7 w8", beam=3) == hubs[1].translate("w5 w6 w7 w8", beam=3)
    int8 = tmp_path / "compact.int8.pt"
    cli("fullyqt-export", compact, "--format", "int8", "--out", int8)
    assert os.path.getsize(int8) < os.path.getsize(compact) / 2
    assert _hypotheses(toy_data[1], int8) == masked
    cli("fullyqt-export", compact, "--format", "ctranslate2", "--out", tmp_path / "ct2")
    config = json.loads((tmp_path / "ct2" / "config.json").read_text())
    assert config["add_source_eos"] and (tmp_path / "ct2" / "model.bin").stat().st_size > 0
    proc = cli("fullyqt-export", compact, "--format", "fairseq", "--out", tmp_path / "s.pt",
               check=False)
    assert proc.returncode == 2 and "per-layer head counts" in proc.stderr
    assert not (tmp_path / "s.pt").exists()


@pytest.mark.slow
def test_ctranslate2_model_of_a_compact_model_scores_like_it(toy_data, pruned, tmp_path):
    """CTranslate2 (float32) against the compact model's own float weights, unpadded: forced
    decoding gives the same log-probabilities, so padding heads and per-layer FFN sizes are
    exact."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from fullyqt.checkpoint import load_model_and_task
    from fullyqt.export.ctranslate2_compact import convert_compact
    from fullyqt.export.stock import stock_state_dict

    compact = tmp_path / "compact.pt"
    cli("fullyqt-export", pruned[0], "--format", "compact", "--out", compact)
    model, task = load_model_and_task(str(compact))
    args = model_args(torch.load(compact, map_location="cpu"))
    convert_compact(model, args, task, str(tmp_path / "ct2"), quantization="float32")
    reference = task.build_model(argparse.Namespace(**{**vars(args), "no_quant": True,
                                                       "quant_bits": None}))
    reference.load_state_dict(stock_state_dict(model), strict=False)
    reference.eval()
    shapes = CompactShapes.parse(args.prune_compact_shapes)
    assert len({s.heads for s in shapes.encoder}) > 1 or len(
        {s.ffn for s in shapes.decoder}) > 1  # per-layer shapes really differ

    translator = ctranslate2.Translator(str(tmp_path / "ct2"), device="cpu")
    d = task.target_dictionary
    batch = sample_batch(task, "test", n=6)
    src = batch["net_input"]["src_tokens"]
    for i in range(src.size(0)):
        s_ids = [t for t in src[i].tolist() if t != d.pad()][:-1]  # eos added by CT2
        t_ids = [t for t in batch["target"][i].tolist() if t != d.pad()][:-1]
        ct2 = translator.score_batch([[d[t] for t in s_ids]], [[d[t] for t in t_ids]])[0]
        with torch.no_grad():
            out = reference(torch.tensor([s_ids + [d.eos()]]), torch.tensor([len(s_ids) + 1]),
                            torch.tensor([[d.eos()] + t_ids]))
            lprobs = reference.get_normalized_probs(out, log_probs=True)[0]
        ours = lprobs.gather(1, torch.tensor(t_ids + [d.eos()])[:, None]).flatten()
        assert torch.allclose(torch.tensor(ct2.log_probs), ours, atol=1e-3), i


@pytest.mark.slow
def test_multiply_adds_counted_as_ctranslate2_pads_heads_match_the_padded_model(pruned,
                                                                               tmp_path):
    """The speed bound of a compact model in CTranslate2 counts the heads its export pads in:
    counted from the compact shapes, equal to the multiply-adds of the padded model the export
    builds."""
    from fullyqt.checkpoint import load_model_and_task
    from fullyqt.export.ctranslate2_compact import padded_float_model
    from fullyqt.prune.macs import ct2_padded, dims_of, sentence_macs

    compact = tmp_path / "compact.pt"
    cli("fullyqt-export", pruned[0], "--format", "compact", "--out", compact)
    model, task = load_model_and_task(str(compact))
    args = model_args(torch.load(compact, map_location="cpu"))
    own = dims_of(model)
    padded = dims_of(padded_float_model(model, args, task)[0])
    assert ct2_padded(own) == padded
    assert padded != own  # the fixture's per-layer head counts differ: something is padded
    assert sentence_macs(padded, 7, 5) > sentence_macs(own, 7, 5)


@pytest.mark.slow
def test_compact_model_fine_tunes_filled(toy_data, pruned, tmp_path):
    compact = tmp_path / "compact.pt"
    cli("fullyqt-export", pruned[0], "--format", "compact", "--out", compact)
    save = tmp_path / "filled"
    train(toy_data[1], save, *TINY, "--quant-bits", "8", "--finetune-from-model", compact,
          "--max-update", "10", "--disable-validation")
    filled = torch.load(save / "checkpoint_last.pt", map_location="cpu")
    shapes = model_args(torch.load(compact, map_location="cpu")).prune_compact_shapes
    assert model_args(filled).prune_compact_shapes == shapes
    assert not [k for k in filled["model"] if ".source." in k]


@pytest.mark.slow
def test_a_masked_checkpoint_needs_its_pruning_options(toy_data, pruned, tmp_path):
    proc = cli("fairseq-train", toy_data[1], "--save-dir", tmp_path, "--user-dir", USER_DIR,
               *TINY, "--quant-bits", "8", "--finetune-from-model", pruned[0], "--max-update",
               "5", "--cpu", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "2000",
               check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "fairseq-train: error: the checkpoint holds pruning masks but the model is built "
        "without --prune-method")
    # another block shape: fairseq's "cannot load" names the checkpoint and the first mismatch
    proc = cli("fairseq-train", toy_data[1], "--save-dir", tmp_path, "--user-dir", USER_DIR,
               *TINY, *PRUNE[:2], "--prune-attn-block", "32x32", *PRUNE[4:],
               "--finetune-from-model", pruned[0], "--cpu", "--optimizer", "adam", "--lr",
               "1e-3", "--max-tokens", "2000", check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert last.startswith(f"fairseq-train: error: {pruned[0]}: its weights do not fit the "
                           "model these options build (size mismatch for "), last


@pytest.mark.slow
def test_compact_export_says_when_the_masks_removed_nothing(toy_data, tmp_path):
    """Density 1 at the end: the masked model is whole, and the export says so."""
    train(toy_data[1], tmp_path, *TINY, "--prune-method", "topk", "--prune-density", "1",
          "--prune-attn-block", "head", "--max-update", "6", "--warmup-updates", "1",
          "--quant-bits", "8", "--disable-validation")
    out = tmp_path / "model.compact.pt"
    proc = cli("fullyqt-export", tmp_path / "checkpoint_last.pt", "--format", "compact",
               "--out", out)
    assert "masks removed no head and no FFN unit" in proc.stderr
    shapes = CompactShapes.parse(model_args(torch.load(out, weights_only=False))
                                 .prune_compact_shapes)
    assert {s.ffn for s in shapes.encoder + shapes.decoder} == {128}
