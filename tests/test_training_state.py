"""Resuming keeps the quantizer state and trains on as if never stopped; fine-tuning starts
quantizers fresh from a float model."""
import json
import shutil

import pytest
import torch
from fullyqt.quant.quantizer import Quantizer
from tests.conftest import TINY, TRAIN, USER_DIR, cli, make_trainer, train


def quantizer_state(model):
    names = {n for n, m in model.named_modules() if isinstance(m, Quantizer)}
    return {k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[0] in names}


def losses(stdout):
    out = {}
    for line in stdout.splitlines():
        if "train_inner" in line and '"num_updates"' in line:
            rec = json.loads(line[line.index("{"):])
            out[int(rec["num_updates"])] = float(rec["loss"])
    return out


@pytest.mark.slow
def test_resume_restores_ranges_counter_and_loss(toy_data, tmp_path):
    data = toy_data[1]
    common = ("--quant-bits", "8", "--disable-validation", "--log-format", "json",
              "--log-interval", "1")
    first = train(data, tmp_path, *TINY, *common, "--max-update", "60")
    saved = torch.load(tmp_path / "checkpoint_last.pt")
    saved_q = {k: v for k, v in saved["model"].items() if k.endswith((".lo", ".hi"))}
    assert len(saved_q) > 50

    trainer, model = make_trainer(data, tmp_path, "--quant-bits", "8", "--max-update", "70")
    assert trainer.get_num_updates() == 60
    restored = quantizer_state(model)
    for k, v in saved_q.items():
        assert torch.equal(restored[k], v), k

    second = train(data, tmp_path, *TINY, *common, "--max-update", "70")
    before, after = losses(first.stdout), losses(second.stdout)
    assert sorted(after) == list(range(61, 71)), sorted(after)
    mean_before = sum(before[u] for u in range(51, 61)) / 10
    mean_after = sum(after[u] for u in range(61, 71)) / 10
    assert mean_after < mean_before * 1.1, (mean_before, mean_after)


@pytest.mark.slow
def test_a_run_resumed_in_a_later_epoch_ends_with_the_weights_of_one_never_stopped(toy_data,
                                                                                tmp_path):
    """fairseq makes a translation task's batches from the epoch a process starts in; the
    fullyqt model has them made per epoch, so a resume after the first epoch (dropout on) sees
    the batches, seeds and state of the uninterrupted run."""
    flags = (*TINY, "--quant-bits", "8", "--disable-validation", "--max-update", "40",
             "--save-interval-updates", "10", "--keep-interval-updates", "-1")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    train(toy_data[1], whole, *flags)
    middle = torch.load(whole / "checkpoint_2_20.pt", weights_only=False)
    assert middle["extra_state"]["train_iterator"]["epoch"] == 2  # a later epoch, part-way
    assert middle["extra_state"]["train_iterator"]["iterations_in_epoch"] > 0
    resumed.mkdir()
    shutil.copyfile(whole / "checkpoint_2_20.pt", resumed / "checkpoint_last.pt")
    train(toy_data[1], resumed, *flags)
    a, b = (torch.load(d / "checkpoint_last.pt", weights_only=False) for d in (whole, resumed))
    assert b["optimizer_history"][-1]["num_updates"] == 40
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.mark.slow
def test_finetune_quantized_from_float_transformer(toy_data, tmp_path):
    data = toy_data[1]
    float_dir, qat_dir = tmp_path / "float", tmp_path / "qat"
    stock = ["--arch", "transformer", "--encoder-embed-dim", "64", "--decoder-embed-dim", "64",
             "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128",
             "--encoder-layers", "2", "--decoder-layers", "2", "--encoder-attention-heads", "4",
             "--decoder-attention-heads", "4", "--share-all-embeddings"]
    train(data, float_dir, *stock, "--max-update", "20", "--disable-validation", user_dir=False)
    float_state = torch.load(float_dir / "checkpoint_last.pt")["model"]

    trainer, model = make_trainer(data, qat_dir, "--quant-bits", "8", "--max-update", "25",
                                  "--finetune-from-model", str(float_dir / "checkpoint_last.pt"))
    assert trainer.get_num_updates() == 0
    own = model.state_dict()
    for k, v in float_state.items():
        assert torch.equal(own[k], v), k
    fresh = quantizer_state(model)
    assert fresh and not any(bool(v) for k, v in fresh.items() if k.endswith("initialized"))

    train(data, qat_dir, *TINY, "--quant-bits", "8", "--max-update", "25",
          "--disable-validation", "--finetune-from-model", float_dir / "checkpoint_last.pt")
    tuned = torch.load(qat_dir / "checkpoint_last.pt")["model"]
    assert bool(tuned["encoder.layers.0.self_attn.q_quant.initialized"])


@pytest.mark.slow
def test_training_with_int8_kernels_validates_and_resumes(toy_data, tmp_path):
    """--quant-kernels int8 names the decoding arithmetic: training and validation never see
    integer modules (they evaluate exactly), so the checkpoint and the optimizer state keep the
    float model's layout and a resumed run goes on."""
    from fullyqt.quant.native import Int8Linear

    data = toy_data[1]
    common = (*TINY, "--quant-bits", "8", "--quant-kernels", "int8", "--log-format", "json",
              "--log-interval", "1")
    train(data, tmp_path, *common, "--max-update", "20")  # with validation after the epoch
    first = torch.load(tmp_path / "checkpoint_last.pt")
    assert "decoder.output_projection.weight" in first["model"]
    second = train(data, tmp_path, *common, "--max-update", "30")
    assert sorted(losses(second.stdout)) == list(range(21, 31))
    trainer, model = make_trainer(data, tmp_path, "--quant-bits", "8", "--quant-kernels", "int8",
                                  "--max-update", "30")
    assert trainer.get_num_updates() == 30
    assert not any(isinstance(m, Int8Linear) for m in model.modules())


@pytest.mark.slow
def test_mse_ranges_are_kept_by_the_checkpoint_and_resume(toy_data, tmp_path):
    """--quant-act-range is saved with the model's arguments: fairseq-generate's loader builds
    mse observers again; a resumed run (given its flags, as fairseq resumes) does too; both hold
    the saved ranges."""
    from fairseq import checkpoint_utils

    from fullyqt.quant.quantizer import ActivationQuantizer

    flags = ("--quant-bits", "4", "--quant-act-range", "mse", "--disable-validation")
    train(toy_data[1], tmp_path, *TINY, *flags, "--max-update", "20")
    saved = torch.load(tmp_path / "checkpoint_last.pt")["model"]
    (loaded,), _ = checkpoint_utils.load_model_ensemble([str(tmp_path / "checkpoint_last.pt")])
    trainer, resumed = make_trainer(toy_data[1], tmp_path, *flags, "--max-update", "30")
    for model in (loaded, resumed):
        quantizers = [m for m in model.modules() if isinstance(m, ActivationQuantizer)]
        assert quantizers and {q.observer for q in quantizers} == {"mse"}
        state = model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in saved.items() if k.endswith(".hi"))


@pytest.mark.slow
def test_a_cut_short_checkpoint_is_named_with_the_one_to_resume_from(toy_data, tmp_path):
    """A kill while fairseq copies its newest checkpoint to checkpoint_last.pt (empty or
    truncated): resuming names the file and the complete checkpoint to restore."""
    flags = [*TINY, "--quant-bits", "8", "--max-update", "4", "--disable-validation",
             "--save-interval-updates", "2"]
    train(toy_data[1], tmp_path, *flags)
    last, whole = tmp_path / "checkpoint_last.pt", tmp_path / "checkpoint_1_4.pt"
    assert whole.is_file()
    data = last.read_bytes()
    for cut, what in ((b"", "empty (0 bytes)"), (data[:len(data) // 2], "cut short")):
        last.write_bytes(cut)
        proc = cli("fairseq-train", toy_data[1], "--save-dir", tmp_path, *TRAIN, *flags,
                   "--user-dir", USER_DIR, "--max-update", "6", check=False)
        line = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert line.startswith(f"fairseq-train: error: {last}: {what}") and line.endswith(
            f"the newest complete one beside it is {whole}: resume from it with "
            f"`cp {whole} {last}` and the same command"), line
    proc = cli("fairseq-generate", toy_data[1], "--user-dir", USER_DIR, "--path", last,
               "--cpu", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"{last}: cut short" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_run_restarted_with_other_options_names_them_in_one_line(toy_data, tmp_path):
    """A float run's folder rerun with --kron-layers: the saved optimizer state cannot fit."""
    train(toy_data[1], tmp_path, *TINY, "--no-quant", "--max-update", "2",
          "--disable-validation")
    last = tmp_path / "checkpoint_last.pt"
    proc = cli("fairseq-train", toy_data[1], "--save-dir", tmp_path, *TRAIN, *TINY,
               "--no-quant", "--kron-layers", "ffn", "--kron-factor", "4", "--user-dir",
               USER_DIR, "--max-update", "4", "--disable-validation", check=False)
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert line.startswith(f"fairseq-train: error: {last}: its optimizer state does not fit "
                           "the model these options build (--kron-layers None then, ffn now; "
                           "--kron-factor None then, 4.0 now)"), line
    assert line.endswith(f"(--finetune-from-model {last} starts from its weights)")
    assert torch.load(last, weights_only=False)["optimizer_history"][-1]["num_updates"] == 2
