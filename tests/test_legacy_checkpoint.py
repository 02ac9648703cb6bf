"""A checkpoint made by an earlier fullyqt (``tests/fixtures/legacy``, see its script) loads
with today's code and computes what the code that made it computed: the same state-dict layout,
the same teacher-forced fake-quant logits bit for bit (exact evaluation: see its test), the same
translations, on every kernel path."""
import os

import pytest
import torch

from fullyqt.checkpoint import load_model
from tests.conftest import CKPT, FIXTURE, USER_DIR, cli
from tests.legacy_batch import padded_batch, read_lines



@pytest.fixture(scope="module")
def expected():
    return torch.load(os.path.join(FIXTURE, "expected.pt"))


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("legacy") / "model.int8.pt"
    cli("fullyqt-export", CKPT, "--format", "int8", "--out", out, "--data", FIXTURE)
    return str(out)


def _hub(path, **overrides):
    from fairseq.models.transformer import TransformerModel

    return TransformerModel.from_pretrained(os.path.dirname(path),
                                            checkpoint_file=os.path.basename(path),
                                            data_name_or_path=FIXTURE, user_dir=USER_DIR,
                                            **overrides)


def test_state_dict_layout_is_unchanged():
    saved = torch.load(CKPT)["model"]
    model = load_model(CKPT, FIXTURE)
    now = model.state_dict()
    assert sorted(now) == sorted(saved)
    assert all(now[k].shape == saved[k].shape and now[k].dtype == saved[k].dtype for k in now)


def _logits(model):
    with torch.no_grad():
        return model(**padded_batch(model, read_lines(os.path.join(FIXTURE, "test.src"))))[0]


def test_fake_quant_logits_are_those_the_old_code_computed(expected):
    assert torch.equal(_logits(load_model(CKPT, FIXTURE, quant_kernels="fake")),
                       expected["logits_fake"])


@pytest.mark.slow
def test_exact_logits_moved_only_where_attention_products_became_exact(expected, int8_export):
    """Since issue 13 item 3, exact evaluation computes Q·Kᵀ, P·V and the softmax sum from
    integer codes (the old code multiplied floats there): a few logits move by about one
    quantizer step, none changes its argmax, and the int8 export still computes exact's bits."""
    exact = _logits(load_model(CKPT, FIXTURE))
    old = expected["logits_exact"]
    assert torch.equal(old, expected["logits_int8_export"])  # what the old code shipped
    moved = exact != old
    assert 0 < moved.float().mean() < 0.10
    assert (exact - old).abs().max() <= 0.05 * old.abs().max()
    assert torch.equal(exact.argmax(-1), old.argmax(-1))
    assert torch.equal(_logits(_hub(int8_export).models[0]), exact)


@pytest.mark.parametrize("name", ["exact", "fake", "int8_export"])
def test_translations_are_those_the_old_code_made(expected, int8_export, name):
    path = int8_export if name == "int8_export" else CKPT
    hub = _hub(path, **({"quant_kernels": "fake"} if name == "fake" else {}))
    lines = read_lines(os.path.join(FIXTURE, "test.src"))
    assert hub.translate(lines, beam=5) == expected[f"translations_{name}"]


@pytest.mark.slow
def test_coverage_lists_the_points_the_old_code_listed():
    import json

    proc = cli("fullyqt-coverage", CKPT, "--data", FIXTURE, "--json")
    with open(os.path.join(FIXTURE, "coverage.jsonl")) as f:
        old = [json.loads(line) for line in f]
    assert [json.loads(line) for line in proc.stdout.splitlines()] == old
