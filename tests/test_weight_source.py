"""A new kind of weight is one ``WeightSource`` subclass: exact evaluation, the int8 kernels, the
integer and stock exports and the coverage listing take it without an edit.  And the step/code
arithmetic lives in ``quant/grid.py`` alone."""
import os
import re

import torch
import torch.nn.functional as F

from fullyqt.quant.packed_state import pack_state, unpack_state
from fullyqt.export.stock import stock_state_dict
from fullyqt.quant.native import Int8Linear, to_native_int8
from fullyqt.quant.coverage import quantization_points
from fullyqt.quant.integer_form import IntegerMatmul
from fullyqt.quant.weight_source import WeightSource, tensor_version
from tests.conftest import REPO, build_model, sample_batch


class RowMaskedWeight(WeightSource):
    """The layer's weight with a fixed set of rows zeroed (a stand-in for a pruning mask)."""

    def __init__(self, keep: torch.Tensor):
        super().__init__()
        self.register_buffer("keep", keep.float()[:, None])

    def _masked(self, layer):
        return layer.weight * self.keep

    def quantized_tensors(self, layer):
        return {"weight": (self._masked(layer), layer.weight_quant)}

    def dense_weights(self, layer):
        return {"weight": layer.weight_quant(self._masked(layer))}

    def linear(self, layer, x, bias, valid=None):
        return F.linear(x, layer.weight_quant(self._masked(layer)).to(x.dtype), bias)

    def integer_form(self, layer, input_grid):
        codes, grid = layer.weight_quant.codes(self._masked(layer).detach())
        return IntegerMatmul(codes, grid, input_grid, layer.bias)

    def version(self, layer):
        return tensor_version(layer.weight) + tensor_version(self.keep)


def _model_with_masked_fc1(toy_data):
    model, task, _ = build_model(toy_data[1], "--quant-bits", "8")
    fc1 = model.encoder.layers[0].fc1
    keep = torch.arange(fc1.out_features) % 2 == 0
    fc1.source = RowMaskedWeight(keep)
    batch = sample_batch(task)
    model.train()
    with torch.no_grad():
        model(**batch["net_input"])  # ranges
    return model.eval(), fc1, keep, batch


def test_a_new_source_runs_exact_and_int8_alike(toy_data):
    import copy

    model, fc1, keep, batch = _model_with_masked_fc1(toy_data)
    with torch.no_grad():
        x = fc1.input_grid(torch.randn(5, fc1.in_features))  # an input on its wired grid
        fc1.set_kernels("fake")
        fake = fc1(x)
        fc1.set_kernels("exact")
        exact = fc1(x)
    assert torch.equal(fake[:, ~keep], fc1.bias.detach()[~keep].expand(5, -1))  # rows masked
    assert (exact - fake).abs().max() <= 1e-4 * fake.abs().max()
    native = copy.deepcopy(model)
    to_native_int8(native)
    assert isinstance(native.encoder.layers[0].fc1, Int8Linear)
    with torch.no_grad():
        assert torch.equal(native.encoder.layers[0].fc1(x), exact)
        assert torch.equal(native(**batch["net_input"])[0], model(**batch["net_input"])[0])


def test_exports_and_coverage_ask_the_source(toy_data):
    model, fc1, keep, _ = _model_with_masked_fc1(toy_data)
    name = "encoder.layers.0.fc1.weight"
    with torch.no_grad():
        masked_q = fc1.weight_quant(fc1.weight * keep[:, None])
    state = pack_state(model, 8)
    unpack_state(state, 8)
    assert torch.equal(fc1.weight_quant(state[name]), masked_q)
    assert not state[name][~keep].any()
    assert torch.equal(stock_state_dict(model)[name], masked_q)
    point = next(p for p in quantization_points(model)
                 if p.name == "encoder.layers.0.fc1.weight_quant")
    masked = fc1.weight.detach() * keep[:, None]
    assert (point.lo, point.hi) == (float(masked.min()), float(masked.max()))


def test_steps_and_codes_are_computed_in_the_grid_module_only():
    """Rounding to a grid and the 2^b level count appear nowhere else in the quantization code
    (the benchmark's report rounds its numbers, which is not quantization)."""
    pattern = re.compile(r"\bround_?\(|2\s*\*\*")
    offenders = []
    for part in ("quant", "export", "models", "feature.py"):
        offenders += _matches(os.path.join(REPO, "fullyqt", part), pattern)
    assert not offenders, offenders


def _matches(top, pattern):
    found = []
    for root, _, files in ([(os.path.dirname(top), None, [os.path.basename(top)])]
                           if top.endswith(".py") else os.walk(top)):
        for f in files:
            path = os.path.join(root, f)
            if not f.endswith(".py") or path.endswith(os.path.join("quant", "grid.py")):
                continue
            with open(path) as fh:
                found += [f"{path}:{i}" for i, line in enumerate(fh, 1) if pattern.search(line)]
    return found


def test_exact_evaluation_follows_weights_written_through_data(toy_data):
    """fairseq's optimizers write ``p.data``, which no version counter sees: after a step and
    the trainer's ``train()``/``eval()``, the cached integer forms, quantized weights and masks
    are made anew (the model computes what a fresh copy loaded from its state does)."""
    extra = ["--quant-bits", "8", "--quant-kernels", "exact", "--prune-method", "topk",
             "--prune-density", "0.5", "--prune-attn-block", "head", "--max-update", "10",
             "--prune-topk-scope", "stack"]
    model, task, _ = build_model(toy_data[1], *extra)
    model.set_num_updates(10)
    batch = sample_batch(task, "train")
    model.train()
    with torch.no_grad():
        model(**batch["net_input"])  # activation ranges
    model.eval()
    with torch.no_grad():
        before = model(**batch["net_input"])[0]
        g = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            p.data.add_(torch.randn(p.shape, generator=g) * (0.5 if "raw" in name else 0.05))
    model.train()
    model.eval()
    layer = model.decoder.layers[0].fc1
    form = layer.integer_form()
    model.eval()  # fairseq's validation: eval() again at every batch keeps what was built
    assert layer.integer_form() is form
    fresh, _, _ = build_model(toy_data[1], *extra)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    with torch.no_grad():
        after, expect = model(**batch["net_input"])[0], fresh(**batch["net_input"])[0]
    assert not torch.equal(before, expect)
    assert torch.equal(after, expect)
