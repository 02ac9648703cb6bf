"""Each linear layer's wired input quantizer (``QuantLinear.input_grid``, set when the model is
built) is the one whose output the layer really receives: checked with hooks, for every
registered architecture and the structural options, in training, full-sequence evaluation and
incremental decoding.  Dropout is 0 here (it is applied before its quantizer; the grid check
in ``test_coverage.py`` covers training with dropout)."""
import pytest
import torch
from fairseq.models import ARCH_MODEL_REGISTRY

from fullyqt.quant.linear import QuantLinear
from fullyqt.quant.quantizer import ActivationQuantizer
from tests.conftest import build_model, sample_batch

SMALL = ["--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim",
         "64", "--decoder-ffn-embed-dim", "64", "--encoder-layers", "2", "--decoder-layers", "2",
         "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
         "--dropout", "0", "--attention-dropout", "0", "--activation-dropout", "0"]
ARCHS = sorted(a for a, m in ARCH_MODEL_REGISTRY.items() if a.startswith("fullyqt_transformer"))
VARIANTS = {
    "post-norm": [],
    "pre-norm": ["--encoder-normalize-before", "--decoder-normalize-before"],
    "pre-norm, no final decoder norm": ["--decoder-normalize-before", "--no-decoder-final-norm"],
    "layernorm-embedding": ["--layernorm-embedding"],
    "unshared, projected decoder output": ["--decoder-embed-dim", "24",
                                           "--decoder-output-dim", "40"],
}
CASES = [(arch, "post-norm") for arch in ARCHS] + [
    ("fullyqt_transformer_tiny", v) for v in VARIANTS if v != "post-norm"]


class Recorder:
    """Hooks: each activation quantizer's latest output, and each linear's inputs."""

    def __init__(self, model):
        self.latest, self.inputs, self.handles = {}, [], []
        for m in model.modules():
            if isinstance(m, ActivationQuantizer):
                self.handles.append(m.register_forward_hook(self._produced))
        for name, m in model.named_modules():
            if isinstance(m, QuantLinear):
                self.handles.append(m.register_forward_pre_hook(self._consumed(name)))

    def _produced(self, module, _inputs, out):
        self.latest[module] = out.detach().clone()

    def _consumed(self, name):
        def hook(module, inputs):
            x = inputs[0].detach()
            sources = [q for q, out in self.latest.items() if _receives(x, out)]
            self.inputs.append((name, module, sources))
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def _receives(x, out):
    """x is out, except where fairseq zeroed padding positions (x * (1 - padding_mask))."""
    for candidate in (out, out.transpose(0, 1) if out.dim() > 1 else out):  # batch/time major
        if candidate.shape == x.shape and bool(((x == candidate) | (x == 0)).all()) and bool(
                (x == candidate).float().mean() > 0.5):
            return True
    return False


def check(rec):
    assert rec.inputs
    for name, linear, sources in rec.inputs:
        wired = linear.input_grid
        if linear.input_quant is not None:
            assert wired is linear.input_quant, name  # its own quantizer, applied inside
        elif wired is None:
            assert not sources, (name, "wired to nothing but receives a quantizer's output")
        else:
            assert wired in sources, (name, "does not receive its wired quantizer's output")


def _model(toy_data, arch, extra):
    args = ["--arch", arch, *SMALL, *extra]
    if "--decoder-embed-dim" not in " ".join(extra):
        args.append("--share-all-embeddings")
    model, task, _ = build_model(toy_data[1], "--quant-bits", "8", arch_args=args)
    return model, sample_batch(task, n=6)


@pytest.mark.parametrize("arch,variant", CASES)
def test_every_linear_receives_its_wired_quantizer(toy_data, arch, variant):
    model, batch = _model(toy_data, arch, VARIANTS[variant])
    if "projected" in variant:
        assert model.decoder.project_out_dim is not None
    net = batch["net_input"]
    model.train()
    rec = Recorder(model)
    model(**net)[0].sum().backward()  # training: ranges move, padding masked
    check(rec)
    assert {m for _, m, _ in rec.inputs} == {m for m in model.modules()
                                             if isinstance(m, QuantLinear)}
    rec.inputs.clear()
    model.eval()
    with torch.no_grad():
        model(**net)  # full-sequence evaluation (exact kernels)
        check(rec)
        rec.inputs.clear()
        enc = model.encoder(net["src_tokens"], net["src_lengths"])
        state = {}
        prev = net["prev_output_tokens"][:, :4]
        for t in range(prev.size(1)):  # incremental decoding
            model.decoder(prev[:, : t + 1], encoder_out=enc, incremental_state=state)
        check(rec)
    rec.remove()


def test_the_check_catches_a_wrong_wire(toy_data):
    model, batch = _model(toy_data, "fullyqt_transformer_tiny", [])
    fc1 = model.encoder.layers[0].fc1
    fc1.feed_from(model.encoder.layers[0].final_layer_norm.output_quant)  # the wrong one
    model.train()
    rec = Recorder(model)
    model(**batch["net_input"])
    with pytest.raises(AssertionError, match="encoder.layers.0.fc1"):
        check(rec)
