"""A feature defined here plugs into the model with no edit elsewhere: low-rank FFN weights
(``W = U V``) with an option of their own.  Registered, it builds through fairseq's parser,
trains a step, exports to the integer format and reloads to the same numbers; the stock export
drops its option."""
import argparse

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fullyqt.checkpoint import load_model
from fullyqt.export.cli import export
from fullyqt.export.stock import stock_args
from fullyqt.quant.inference import set_kernels
from fullyqt.feature import Feature, register_feature, unregister_feature
from fullyqt.quant.integer_form import IntegerMatmul
from fullyqt.quant.weight_source import WeightSource, tensor_version

from tests.conftest import build_model, sample_batch


class LowRankWeight(WeightSource):
    """``u (out, r) @ v (r, in)``: ``u`` on the layer's weight quantizer, ``v`` on its own, and
    the intermediate product on an activation grid, so the integer form is two integer
    matmuls."""

    def __init__(self, out_features, in_features, rank, qcfg):
        super().__init__()
        self.u = nn.Parameter(torch.randn(out_features, rank) * 0.3)
        self.v = nn.Parameter(torch.randn(rank, in_features) * 0.3)
        self.v_quant = qcfg.weight()
        self.mid_quant = qcfg.act()

    def quantized_tensors(self, layer):
        return {"source.u": (self.u, layer.weight_quant), "source.v": (self.v, self.v_quant)}

    def dense_weights(self, layer):
        return {"weight": layer.weight_quant(self.u) @ self.v_quant(self.v)}

    def linear(self, layer, x, bias, valid=None):
        z = self.mid_quant(F.linear(x, self.v_quant(self.v).to(x.dtype)),
                           None if valid is None else valid.reshape(-1))
        return F.linear(z, layer.weight_quant(self.u).to(x.dtype), bias)

    def integer_form(self, layer, input_grid):
        first = IntegerMatmul(*self.v_quant.codes(self.v.detach()), input_grid)
        second = IntegerMatmul(*layer.weight_quant.codes(self.u.detach()), self.mid_quant.grid,
                               None if layer.bias is None else layer.bias.detach())
        return nn.Sequential(first, second)

    def version(self, layer):
        mid = self.mid_quant
        return (tensor_version(self.u) + tensor_version(self.v)
                + (mid.lo._version, mid.hi._version, mid._initialized))


class LowRank(Feature):
    name = "lowrank"
    order = 15

    def add_args(self, parser):
        parser.add_argument("--lowrank-rank", type=int, metavar="R",
                            help="hold every encoder FFN matrix as a rank-R product")

    def config(self, args):
        return getattr(args, "lowrank_rank", None)

    def attach(self, model, rank):
        if rank is None:
            return
        for layer in model.encoder.layers:
            for fc in (layer.fc1, layer.fc2):
                fc.source = LowRankWeight(fc.out_features, fc.in_features, rank,
                                          model.encoder.qcfg)
                del fc.weight


@pytest.fixture
def lowrank():
    register_feature(LowRank())
    yield
    unregister_feature("lowrank")


@pytest.mark.slow
def test_a_feature_defined_in_a_test_trains_exports_and_reloads(lowrank, toy_data, tmp_path):
    model, task, args = build_model(toy_data[1], "--quant-bits", "8", "--lowrank-rank", "4")
    fc1 = model.encoder.layers[0].fc1
    assert isinstance(fc1.source, LowRankWeight) and not hasattr(fc1, "weight")
    batch = sample_batch(task, "train")
    model.train()
    u_before = fc1.source.u.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    logits = model(**batch["net_input"])[0]
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch["target"].reshape(-1),
                           ignore_index=task.target_dictionary.pad())
    loss.backward()
    optimizer.step()
    assert not torch.equal(fc1.source.u.detach(), u_before)  # the factors train
    with torch.no_grad():
        model(**batch["net_input"])  # activation ranges after the step
    ckpt = tmp_path / "checkpoint_last.pt"
    torch.save({"args": args, "model": model.state_dict(), "extra_state": {"epoch": 1},
                "optimizer_history": [{"criterion_name": "CrossEntropyCriterion",
                                       "optimizer_name": "SGD", "num_updates": 1,
                                       "lr_scheduler_state": {"best": None}}],
                "last_optimizer_state": None}, ckpt)
    out = export(str(ckpt), "int8", str(tmp_path / "model.int8.pt"))
    reloaded = load_model(out, quant_kernels="exact")
    assert isinstance(reloaded.encoder.layers[1].fc2.source, LowRankWeight)
    model.eval()
    with torch.no_grad():
        expect = model(**batch["net_input"])[0]
        got = reloaded(**batch["net_input"])[0]
    assert torch.equal(got, expect)
    # exact evaluation runs the source's integer form, float fake quantization the float
    # product: they agree but for the odd value rounded to a neighbouring step
    set_kernels(reloaded, "fake")
    with torch.no_grad():
        fake = reloaded(**batch["net_input"])[0]
    assert 0 < (fake - got).abs().mean() <= 1e-3 * got.abs().mean()
    assert "lowrank_rank" not in vars(stock_args(argparse.Namespace(**vars(args))))
