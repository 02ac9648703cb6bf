"""A checkpoint made by an earlier fullyqt (``tests/fixtures/legacy``, see its script) loads
with today's code and computes what the code that made it computed: the same state-dict layout,
the same teacher-forced logits bit for bit, the same translations, on every kernel path."""
import os

import pytest
import torch

from fullyqt.checkpoint import load_model
from tests.conftest import USER_DIR, cli
from tests.legacy_batch import padded_batch, read_lines

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "legacy")
CKPT = os.path.join(FIXTURE, "checkpoint.pt")


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


@pytest.mark.parametrize("kernels", ["exact", "fake"])
def test_logits_are_those_the_old_code_computed(expected, kernels):
    model = load_model(CKPT, FIXTURE, quant_kernels=kernels)
    with torch.no_grad():
        logits = model(**padded_batch(model, read_lines(os.path.join(FIXTURE, "test.src"))))[0]
    assert torch.equal(logits, expected[f"logits_{kernels}"])


def test_int8_export_made_today_computes_the_old_export_logits(expected, int8_export):
    hub = _hub(int8_export)
    model = hub.models[0]
    with torch.no_grad():
        logits = model(**padded_batch(model, read_lines(os.path.join(FIXTURE, "test.src"))))[0]
    assert torch.equal(logits, expected["logits_int8_export"])


@pytest.mark.parametrize("name", ["exact", "fake", "int8_export"])
def test_translations_are_those_the_old_code_made(expected, int8_export, name):
    path = int8_export if name == "int8_export" else CKPT
    hub = _hub(path, **({"quant_kernels": "fake"} if name == "fake" else {}))
    lines = read_lines(os.path.join(FIXTURE, "test.src"))
    assert hub.translate(lines, beam=5) == expected[f"translations_{name}"]


def test_coverage_lists_the_points_the_old_code_listed():
    import json

    proc = cli("fullyqt-coverage", CKPT, "--data", FIXTURE, "--json")
    with open(os.path.join(FIXTURE, "coverage.jsonl")) as f:
        old = [json.loads(line) for line in f]
    assert [json.loads(line) for line in proc.stdout.splitlines()] == old
