"""Kronecker layers end to end: a dense teacher -> a factorized 8-bit student trained in two
distillation stages (hidden states, then predictions) -> generate -> int8 / stock exports."""
import os

import pytest
import torch

from fullyqt.quant.packed_state import unbundle
from tests.conftest import TINY, TRAIN, USER_DIR, cli

_CRITERION = TRAIN.index("--criterion")
FLAGS = TRAIN[:_CRITERION] + TRAIN[_CRITERION + 4:]
KRON = ["--kron-layers", "ffn,attn,embed", "--kron-factor", "4", "--quant-bits", "8",
        "--disable-validation", "--max-update", "40", "--log-interval", "20"]


def _stage(data, save, init, teacher, *kd):
    return cli("fairseq-train", data, "--user-dir", USER_DIR, "--save-dir", save, *FLAGS, *TINY,
               *KRON, "--finetune-from-model", init, "--criterion", "fullyqt_distill",
               "--teacher-path", teacher, *kd)


@pytest.fixture(scope="module")
def student(toy_data, teacher, tmp_path_factory):
    root = tmp_path_factory.mktemp("kron")
    first = _stage(toy_data[1], root / "hidden", teacher, teacher, "--kd-weight", "0",
                   "--kd-hidden-weight", "1")
    second = _stage(toy_data[1], root / "logits", root / "hidden" / "checkpoint_last.pt",
                    teacher, "--kd-weight", "0.9", "--kd-temperature", "2")
    return (root / "logits" / "checkpoint_last.pt", first.stdout + first.stderr,
            second.stdout + second.stderr)


def _hypotheses(data, ckpt):
    out = cli("fairseq-generate", data, "--user-dir", USER_DIR,
              "--path", ckpt, "--beam", "3", "--batch-size", "64",
              "--required-batch-size-multiple", "1", "--gen-subset", "test", "--cpu").stdout
    return sorted(line for line in out.splitlines() if line.startswith("H-"))


@pytest.mark.slow
def test_first_stage_starts_from_the_teachers_nearest_factors(student):
    _, first, second = student
    inits = [ln for ln in first.splitlines() if "initialised from the dense weight" in ln]
    # 2 encoder layers of 4 projections, 2 decoder layers of 8, 4 x 2 FFN matrices; the shared
    # embedding under its two names and the output projection
    assert len(inits) == 2 * 4 + 2 * 8 + 4 * 2 + 3
    assert all(0 < float(ln.rsplit(" ", 1)[1]) < 1 for ln in inits)
    assert "kron: factorized matrices hold" in first
    assert "initialised from the dense weight" not in second  # stage 2 loads the factors


@pytest.mark.slow
def test_student_translates_and_its_int8_export_decodes_identically(toy_data, student, tmp_path,
                                                                    trained_8bit):
    ckpt, _, _ = student
    state = torch.load(ckpt, map_location="cpu")["model"]
    assert "encoder.layers.0.fc1.source.a" in state and "encoder.layers.0.fc1.weight" not in state
    exact = _hypotheses(toy_data[1], ckpt)
    n_test = sum(1 for _ in open(toy_data[0] / "test.src"))
    assert len(exact) == n_test
    int8 = tmp_path / "kron.int8.pt"
    cli("fullyqt-export", ckpt, "--format", "int8", "--out", int8)
    assert _hypotheses(toy_data[1], int8) == exact
    stock = tmp_path / "kron.stock.pt"
    cli("fullyqt-export", ckpt, "--format", "fairseq", "--out", stock)
    weights = torch.load(stock, map_location="cpu")["model"]
    assert tuple(weights["encoder.layers.0.fc1.weight"].shape) == (128, 64)  # multiplied out
    assert len(_hypotheses(toy_data[1], stock)) == n_test  # a stock transformer
    # the factors are the size win: smaller than the int8 export of the same model held dense
    dense = tmp_path / "dense.int8.pt"
    cli("fullyqt-export", trained_8bit, "--format", "int8", "--out", dense)
    matrices = lambda path: sum(t.numel() for k, t in unbundle(torch.load(  # noqa: E731
        path, map_location="cpu")["model"]).items() if k.endswith("@codes"))
    assert matrices(int8) < matrices(dense) / 3
    assert os.path.getsize(int8) < os.path.getsize(dense)


@pytest.mark.slow
def test_a_float_kronecker_model_ships_as_float16_factors(toy_data, teacher, student, tmp_path):
    """--format float16 keeps a float model's factors at half their bytes; loading widens them
    back; a quantized model is refused (its integer export keeps the trained grids)."""
    from fairseq import checkpoint_utils

    flags = [f for f in KRON if f not in ("--quant-bits", "8")]
    cli("fairseq-train", toy_data[1], "--user-dir", USER_DIR, "--save-dir", tmp_path / "float",
        *FLAGS, *TINY, *flags, "--no-quant", "--max-update", "10", "--finetune-from-model", teacher,
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1")
    ckpt = tmp_path / "float" / "checkpoint_last.pt"
    half, stock = tmp_path / "model.fp16.pt", tmp_path / "model.stock.pt"
    cli("fullyqt-export", ckpt, "--format", "float16", "--out", half)
    cli("fullyqt-export", ckpt, "--format", "fairseq", "--out", stock)
    trained = torch.load(ckpt, map_location="cpu")["model"]
    shipped = unbundle(torch.load(half, map_location="cpu")["model"])
    assert shipped["encoder.layers.0.fc1.source.a"].dtype == torch.float16
    nbytes = lambda sd: sum(t.numel() * t.element_size() for t in sd.values())  # noqa: E731
    assert nbytes(shipped) < 0.5 * nbytes(trained) + 1024
    assert os.path.getsize(half) < 0.25 * os.path.getsize(stock)  # factors, at 2 bytes each
    (model,), _ = checkpoint_utils.load_model_ensemble([str(half)])
    loaded = model.state_dict()
    for k, v in trained.items():
        if v.is_floating_point() and k in loaded:
            assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v.half().to(v.dtype)), k
    assert len(_hypotheses(toy_data[1], half)) == sum(1 for _ in open(toy_data[0] / "test.src"))
    refused = cli("fullyqt-export", student[0], "--format", "float16", "--out",
                  tmp_path / "q.pt", check=False)
    assert refused.returncode == 2 and "--format float16: the model was trained quantization-" \
        "aware (8-bit weights); ship it as --format int8/int6/int4" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "q.pt").exists()
