"""Block movement pruning: masks and their gradient, block shapes, the schedule, zeros that stay
zero under quantization, the penalty under any criterion, saved scores."""
import argparse
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fullyqt.quant.packed_state import pack_state, unpack_state
from fullyqt.export.stock import stock_state_dict
from fullyqt.prune.blocks import BlockShape, PruneOptionError
from fullyqt.prune.masked_weight import BlockMaskedWeight
from fullyqt.prune.options import PruneConfig
from fullyqt.prune.pruner import Pruner
from fullyqt.prune.schedule import Schedule
from fullyqt.prune.scores import BlockScores
from fullyqt.quant.config import QuantConfig
from fullyqt.quant.grid import Grid
from fullyqt.quant.linear import QuantLinear
from tests.conftest import build_model, sample_batch

PRUNE = ["--prune-method", "sigmoid", "--prune-attn-block", "16x16", "--max-update", "100",
         "--warmup-updates", "10"]


def _config(method="sigmoid", density=None, threshold=0.1):
    args = argparse.Namespace(prune_method=method, prune_density=density, max_update=100,
                              warmup_updates=0, prune_threshold=threshold, lr=[1e-3])
    return PruneConfig.from_args(args)


def _masked_linear(rows, cols, block, bits=None, method="sigmoid", **kw):
    layer = QuantLinear(cols, rows, qcfg=QuantConfig(bits, bits))
    pruner = Pruner(_config(method, **kw))
    tiles = (rows // block[0], cols // block[1])
    scores = BlockScores(tiles, 1.0)
    layer.source = BlockMaskedWeight(scores, block, pruner)
    layer.weight_quant.symmetric = True
    return layer, scores, pruner


def test_mask_and_score_gradient_match_a_hand_computation():
    layer, scores, pruner = _masked_linear(8, 6, (4, 3))
    pruner.threshold.fill_(0.5)
    pruner._sync()
    with torch.no_grad():
        scores.raw.copy_(torch.tensor([[1.0, -1.0], [-2.0, 0.5]]))  # sigmoid > 0.5 where > 0
    x = torch.randn(5, 6)
    y = layer(x)
    keep = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    w_ref = layer.weight.detach().clone().requires_grad_(True)
    mask = keep.repeat_interleave(4, 0).repeat_interleave(3, 1)
    y_ref = F.linear(x, w_ref * mask, layer.bias.detach())
    assert torch.allclose(y, y_ref, atol=1e-6)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (y_ref * g).sum().backward()
    # straight-through: each block's score gets sum(dL/dW' * W) over the block
    masked_grad = (g.t() @ x)  # dL/dW'
    expect = (masked_grad * layer.weight.detach()).view(2, 4, 2, 3).sum((1, 3))
    assert torch.allclose(scores.raw.grad, expect, atol=1e-5)
    assert torch.allclose(layer.weight.grad, w_ref.grad, atol=1e-6)  # = dL/dW' * mask
    assert torch.equal(layer.weight.grad[mask == 0], torch.zeros(int((mask == 0).sum())))


def test_topk_keeps_the_highest_scores_of_each_matrix():
    layer, scores, pruner = _masked_linear(8, 8, (2, 2), method="topk", density=0.25)
    pruner.set_num_updates(100)  # end of the schedule: density 0.25 -> 4 of 16 blocks
    with torch.no_grad():
        scores.raw.copy_(torch.arange(16.0).view(4, 4))
    m = layer.source.block_mask()
    assert m.sum() == 4 and torch.equal(m.view(-1)[12:], torch.ones(4))


@pytest.mark.parametrize("text,shape,ok", [("32x32", (64, 128), True), ("24x24", (64, 64), False),
                                           ("row", (512, 128), True), ("16x40", (64, 96), False)])
def test_block_shapes_that_do_not_divide_are_refused(text, shape, ok):
    block = BlockShape.parse("--prune-attn-block", text, allow_row=True)
    if ok:
        r, c = block.tiles(shape, "m")
        assert r * (block.rows) == shape[0]
    else:
        with pytest.raises(PruneOptionError, match=rf"block {text} does not divide m \("):
            block.tiles(shape, "m")


@pytest.mark.parametrize("text", ["32", "0x32", "ax4", "row"])
def test_bad_attention_block_text_is_one_error(text):
    with pytest.raises(PruneOptionError, match="allowed: RxC"):
        BlockShape.parse("--prune-attn-block", text, allow_row=False)


def test_a_block_that_does_not_fit_the_model_is_refused_when_building(toy_data):
    with pytest.raises(PruneOptionError, match=r"block 24x24 does not divide "
                                               r"encoder.layers.0.self_attn.q_proj \(64x64\)"):
        build_model(toy_data[1], *PRUNE, "--prune-attn-block", "24x24")


def test_schedule_values_at_given_updates():
    s = Schedule(warmup=10, cooldown=20, total=100)  # ramp over updates 10..80
    assert s.rising(0.1, 0) == 0 and s.rising(0.1, 10) == 0
    assert s.rising(0.1, 45) == pytest.approx(0.1 * (1 - 0.5**3))
    assert s.rising(0.1, 80) == pytest.approx(0.1) and s.rising(0.1, 99) == pytest.approx(0.1)
    assert s.falling(0.3, 10) == 1.0
    assert s.falling(0.3, 24) == pytest.approx(1 - 0.7 * (1 - 0.8**3))
    assert s.falling(0.3, 100) == pytest.approx(0.3)


@pytest.mark.parametrize("bits", [8, 4])
def test_pruned_weights_stay_exactly_zero_when_quantized(bits):
    layer, scores, pruner = _masked_linear(32, 16, (8, 4), bits=bits)
    pruner.threshold.fill_(0.5)
    pruner._sync()
    with torch.no_grad():
        scores.raw.copy_(torch.randn(4, 4))
        layer.weight.mul_(3).add_(0.2)  # off-centre rows
    mask = layer.source.element_mask(layer)
    assert 0 < mask.sum() < mask.numel()
    q = layer.dequantized_weights()["weight"]
    assert torch.equal(q[mask == 0], torch.zeros(int((mask == 0).sum())))
    # the integer form of those zeros is the zero code, and a reload keeps the same grid
    codes, grid = layer.weight_quant.codes(layer.source.masked(layer).detach())
    assert torch.equal(codes[mask == 0], torch.full_like(codes[mask == 0], grid.offset))
    restored = grid.restore(codes)
    again = Grid.spanning(restored, bits, "row", symmetric=True)
    assert torch.equal(again.lo, grid.lo) and torch.equal(again.hi, grid.hi)
    x = torch.randn(3, 16)
    assert torch.allclose(layer(x), F.linear(x, q, layer.bias), atol=1e-5)


def _trained_step_model(toy_data, *extra):
    model, task, args = build_model(toy_data[1], *PRUNE, "--quant-bits", "8", *extra)
    model.train()
    model.set_num_updates(60)  # mid-ramp: threshold and penalty weight > 0
    with torch.no_grad():
        for s in model.pruner.scores["attn"] + model.pruner.scores["ffn"]:
            s.raw.copy_(torch.randn_like(s.raw) * 2 / s.scale)  # scores ~ N(0, 2)
    return model, task, args


def test_penalty_gradient_equals_adding_it_to_the_loss(toy_data):
    model, task, args = _trained_step_model(toy_data)
    batch = sample_batch(task, "train")
    from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

    def loss_of(out):
        lprobs = model.get_normalized_probs(out, log_probs=True).view(-1, out[0].size(-1))
        loss, _ = label_smoothed_nll_loss(lprobs, batch["target"].view(-1), 0.1,
                                          ignore_index=task.tgt_dict.pad())
        return loss

    before = copy.deepcopy(model.state_dict())  # the forward moves the activation ranges
    torch.manual_seed(3)
    loss_of(model(**batch["net_input"])).backward()
    injected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.load_state_dict(before)
    pruner, model.pruner = model.pruner, None  # plain forward, penalty added by hand
    torch.manual_seed(3)
    loss = loss_of(model(**batch["net_input"]))
    model.pruner = pruner
    (loss + batch["ntokens"] * pruner._values[2] * pruner.penalty()).backward()
    for a, p in zip(injected, model.parameters()):
        assert torch.allclose(a, p.grad, rtol=1e-4, atol=1e-6)
    assert any(s.raw.grad.abs().sum() > 0 for s in pruner.scores["attn"])


def test_stock_export_has_zeros_and_no_pruning_state(toy_data):
    model, _, _ = _trained_step_model(toy_data)
    model.eval()
    stock = stock_state_dict(model)
    assert not [k for k in stock if "source" in k or k.startswith("pruner")]
    pruned = 0
    for _, label, layer in model.pruner.matrices:
        mask = layer.source.element_mask(layer)
        w = stock[label + ".weight"]
        assert torch.equal(w[mask == 0], torch.zeros(int((mask == 0).sum())))
        assert float(layer.source.kept(layer)) == float(mask.sum())  # counted from the blocks
        pruned += int((mask == 0).sum())
    assert pruned > 0


def test_integer_export_of_a_pruned_model_loads_back_identically(toy_data):
    model, task, _ = _trained_step_model(toy_data)
    batch = sample_batch(task)
    model.eval()
    packed = pack_state(model, 8)
    unpack_state(packed, 8)
    again, _, _ = build_model(toy_data[1], *PRUNE, "--quant-bits", "8")
    again.load_state_dict(packed)
    again.eval()
    with torch.no_grad():
        assert torch.equal(again(**batch["net_input"])[0], model(**batch["net_input"])[0])


def test_options_contradictions_are_one_error(toy_data):
    with pytest.raises(PruneOptionError, match="topk needs --prune-density"):
        build_model(toy_data[1], *PRUNE, "--prune-method", "topk")
    with pytest.raises(PruneOptionError, match="--prune-density 0.5 applies to"):
        build_model(toy_data[1], *PRUNE, "--prune-density", "0.5")
    with pytest.raises(PruneOptionError, match="sigmoid with --fp16: the loss scaling"):
        PruneConfig.from_args(argparse.Namespace(prune_method="sigmoid", fp16=True,
                                                 max_update=100, lr=[1e-3]))
    with pytest.raises(PruneOptionError, match="leave no ramp"):
        build_model(toy_data[1], *PRUNE, "--prune-warmup-updates", "60",
                    "--prune-cooldown-updates", "40")


def test_multiply_adds_of_a_step_and_a_sentence_counted_by_hand():
    from fullyqt.prune.macs import Dims, sentence_macs, step_macs

    d = Dims(width=4, head_dim=2, vocab=10, encoder=[(2, 8)], decoder=[(1, 2, 6)])
    # self q,k,v,out 4*4*2 = 32, 3 keys: 2*3*2 = 12; cross q,out 2*4*4 = 32, 5 keys: 2*5*4 = 40;
    # FFN 2*4*6 = 48; output 4*10
    assert step_macs(d, 3, 5) == {"decoder_layers": 32 + 12 + 32 + 40 + 48,
                                  "output_projection": 40}
    encoder = 5 * (4 * 4 * 4 + 2 * 5 * 4 + 2 * 4 * 8)
    cross_kv = 2 * 5 * 4 * 4
    steps = (32 + 4 + 72 + 48 + 40) + (32 + 8 + 72 + 48 + 40)
    assert sentence_macs(d, 5, 2) == encoder + cross_kv + steps


def _numpy_block_norms(w, block):
    w = w.detach().double().numpy()
    r, c = block
    return np.array([[np.sqrt((w[i:i + r, j:j + c] ** 2).sum()) for j in range(0, w.shape[1], c)]
                     for i in range(0, w.shape[0], r)])


def test_magnitude_score_init_ranks_blocks_by_their_norms_once(toy_data):
    model, task, _ = build_model(toy_data[1], *PRUNE[2:], "--prune-method", "topk",
                                 "--prune-density", "0.25", "--prune-score-init", "magnitude")
    model.train()
    model.set_num_updates(100)  # end of the schedule: a quarter of the blocks kept
    batch = sample_batch(task, "train")
    model(**batch["net_input"])
    layer = model.encoder.layers[0]
    norms = _numpy_block_norms(layer.self_attn.k_proj.weight, (16, 16))
    keep = norms.reshape(-1) >= np.sort(norms.reshape(-1))[-norms.size // 4]
    mask = layer.self_attn.k_proj.source.block_mask().detach().numpy().reshape(-1)
    assert np.array_equal(mask == 1, keep)
    z = (norms - norms.mean()) / norms.std(ddof=1)
    assert np.allclose(layer.self_attn.k_proj.source.scores.scores().detach().numpy(), z,
                       atol=1e-5)
    # an FFN unit: its fc1 row and fc2 column together
    unit = np.sqrt((layer.fc1.weight.detach().double().numpy() ** 2).sum(1)
                   + (layer.fc2.weight.detach().double().numpy() ** 2).sum(0))
    ffn_scores = layer.fc1.source.scores.scores().detach().numpy().reshape(-1)
    assert np.array_equal(np.argsort(ffn_scores), np.argsort(unit))
    # once only: a later forward, or a reloaded model, keeps the scores it has
    with torch.no_grad():
        layer.fc1.source.scores.raw.fill_(0.25)
    model(**batch["net_input"])
    assert torch.equal(layer.fc1.source.scores.raw, torch.full_like(layer.fc1.source.scores.raw,
                                                                     0.25))
    state = copy.deepcopy(model.state_dict())
    fresh, _, _ = build_model(toy_data[1], *PRUNE[2:], "--prune-method", "topk",
                              "--prune-density", "0.25", "--prune-score-init", "magnitude")
    fresh.load_state_dict(state)
    fresh.train()
    fresh(**batch["net_input"])
    assert torch.equal(fresh.encoder.layers[0].fc1.source.scores.raw,
                       layer.fc1.source.scores.raw)


def test_unknown_score_init_is_one_error(toy_data, capsys):
    with pytest.raises(SystemExit):
        build_model(toy_data[1], *PRUNE, "--prune-score-init", "norm")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].endswith("error: --prune-score-init: got 'norm'; allowed: zero, magnitude")


def test_pooled_topk_counts_over_all_matrices_and_keeps_one_of_each():
    from fullyqt.prune.scores import keep_top_shared

    a = torch.tensor([[0.9, 0.1], [0.8, 0.7]])
    b = torch.tensor([0.6, 0.5, 0.4])
    c = torch.tensor([[-1.0], [-0.5]])
    # 9 scores at density 0.3: ceil(2.7) = 3 kept, each matrix's best (0.9, 0.6, -0.5)
    got = keep_top_shared([a, b, c], 0.3)
    assert got[0].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert got[1].tolist() == [1.0, 0.0, 0.0]
    assert got[2].tolist() == [[0.0], [1.0]]
    # at 0.5, 5 kept: the three best, then the two largest of the rest (0.8, 0.7), both in a
    got = keep_top_shared([a, b, c], 0.5)
    assert got[0].tolist() == [[1.0, 0.0], [1.0, 1.0]]
    assert got[1].tolist() == [1.0, 0.0, 0.0] and got[2].tolist() == [[0.0], [1.0]]
    assert keep_top_shared([b], 0.5)[0].tolist() == [1.0, 1.0, 0.0]
