"""The plugin through fairseq's own command-line tools, on the generated reversal task."""
import pytest
import torch

from fullyqt.eval.bleu import corpus_bleu, hypotheses_from_generate
from tests.conftest import TINY, USER_DIR, cli, train


class Payload:
    """Stands for any class a checkpoint should not be able to make torch.load instantiate."""


def bleu_of(data, ckpt, raw):
    out = cli("fairseq-generate", data, "--user-dir", USER_DIR, "--path", ckpt, "--beam", "5",
              "--batch-size", "64", "--required-batch-size-multiple", "1", "--cpu",
              "--gen-subset", "test")
    refs = (raw / "test.tgt").read_text().splitlines()
    return corpus_bleu(hypotheses_from_generate(out.stdout.splitlines(), len(refs)), refs)[0]


@pytest.mark.slow
def test_train_generate_bleu_far_above_untrained(toy_data, trained_8bit, tmp_path):
    raw, data = toy_data
    train(data, tmp_path, *TINY, "--quant-bits", "8", "--max-update", "1", "--lr", "1e-7",
          "--disable-validation")
    untrained = bleu_of(data, tmp_path / "checkpoint_last.pt", raw)
    trained = bleu_of(data, trained_8bit, raw)
    assert trained > 60 and untrained < 5, (trained, untrained)


def test_checkpoint_holds_quantizer_state(trained_8bit):
    state = torch.load(trained_8bit)  # weights_only default: works because the plugin allowlists
    model = state["model"]
    lo = model["encoder.layers.0.self_attn.q_quant.lo"]
    hi = model["encoder.layers.0.self_attn.q_quant.hi"]
    assert bool(model["encoder.layers.0.self_attn.q_quant.initialized"]) and lo < hi
    args = state["cfg"]["model"]
    assert args.arch == "fullyqt_transformer_tiny" and args.quant_bits == 8


@pytest.mark.slow
def test_interactive_translates(toy_data, trained_8bit):
    raw, data = toy_data
    src = "w1 w2 w3 w4"
    out = cli("fairseq-interactive", data, "--user-dir", USER_DIR, "--path", trained_8bit,
              "--beam", "5", "--cpu", "--source-lang", "src", "--target-lang", "tgt",
              input=src + "\n")
    hyp = [line.split("\t")[2] for line in out.stdout.splitlines() if line.startswith("D-")]
    assert hyp == ["W4 W3 W2 W1"]


def test_from_pretrained_translates(toy_data, trained_8bit):
    from fairseq.models.transformer import TransformerModel

    from fullyqt.models.fullyqt_transformer import FullyQTTransformerModel

    hub = TransformerModel.from_pretrained(
        str(trained_8bit.parent), checkpoint_file=trained_8bit.name,
        data_name_or_path=str(toy_data[1]), user_dir=USER_DIR)
    assert isinstance(hub.models[0], FullyQTTransformerModel)
    assert hub.translate("w5 w6 w7", beam=5) == "W7 W6 W5"


def test_refuses_arbitrary_pickles(tmp_path):
    """The allowlist is narrow: a checkpoint carrying another class still fails to load."""
    import pytest

    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "x": Payload()}, path)
    with pytest.raises(Exception, match="Unsupported global|weights_only"):
        torch.load(path)
