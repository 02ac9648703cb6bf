"""Quantizer numerics against an independent integer reference, gradients, EMA state."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fullyqt.quant import fused
from fullyqt.quant.fake_quant import fake_quantize
from fullyqt.quant.grid import Grid, byte_code_values, fake_quantize_frozen
from fullyqt.quant.quantizer import ActivationQuantizer, WeightQuantizer


def int_reference(x: np.ndarray, bits: int, buckets: str):
    """Quantize to integers and dequantize in float64 numpy, one (min, max) per bucket."""
    x = x.astype(np.float64)
    rows = x.reshape(x.shape[0], -1) if buckets == "row" else x.reshape(1, -1)
    lo = rows.min(axis=1, keepdims=True)
    hi = rows.max(axis=1, keepdims=True)
    levels = 2**bits - 1
    scale = np.maximum(hi - lo, 1e-8) / levels
    q = np.clip(np.rint((rows - lo) / scale), 0, levels).astype(np.int64)
    assert q.min() >= 0 and q.max() <= levels
    return (q * scale + lo).reshape(x.shape), q.reshape(x.shape)


@pytest.mark.parametrize("bits", [2, 4, 6, 8, 16])
@pytest.mark.parametrize("buckets", ["row", "tensor"])
def test_weight_quantizer_matches_integer_reference(bits, buckets):
    w = torch.randn(12, 20, dtype=torch.float64) * torch.linspace(0.1, 3, 12)[:, None]
    ref, q_ref = int_reference(w.numpy(), bits, buckets)
    out = WeightQuantizer(bits, buckets)(w)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-9 * max(1, np.abs(ref).max()))
    per_row = [len(np.unique(r)) for r in out.numpy()]
    assert max(per_row) <= 2**bits
    if buckets == "row":  # each row has its own grid: its min and max are represented exactly
        np.testing.assert_allclose(out.min(1).values, w.min(1).values, atol=1e-12)
        np.testing.assert_allclose(out.max(1).values, w.max(1).values, atol=1e-12)


def test_integer_codes_and_round_half_to_even():
    lo, hi = torch.tensor(0.0), torch.tensor(3.0)  # 2 bits: step 1
    x = torch.tensor([-1.0, 0.5, 1.5, 2.5, 4.0])
    assert Grid(lo, hi, 2).codes(x).tolist() == [0, 0, 2, 2, 3]


def test_gradient_is_one_inside_and_zero_outside_the_range():
    q = ActivationQuantizer(4)
    q.observe(torch.tensor([-1.0, 1.0]))
    q.eval()
    x = torch.tensor([-2.0, -1.0, -0.3, 0.0, 0.7, 1.0, 1.5], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [0, 1, 1, 1, 1, 1, 0]


def test_weight_gradient_flows_straight_through():
    w = torch.randn(4, 5, requires_grad=True)
    (WeightQuantizer(4)(w) * torch.arange(20.0).view(4, 5)).sum().backward()
    assert torch.equal(w.grad, torch.arange(20.0).view(4, 5))


def test_ema_update_then_eval_freeze():
    q = ActivationQuantizer(8, momentum=0.9)
    q.train()
    q(torch.tensor([-1.0, 2.0]))  # first observation copies the range
    assert (float(q.lo), float(q.hi)) == (-1.0, 2.0)
    q(torch.tensor([-3.0, 4.0]))
    assert float(q.lo) == pytest.approx(0.9 * -1 + 0.1 * -3)
    assert float(q.hi) == pytest.approx(0.9 * 2 + 0.1 * 4)
    q.eval()
    before = (float(q.lo), float(q.hi))
    out = q(torch.tensor([-100.0, 100.0]))
    assert (float(q.lo), float(q.hi)) == before
    assert out.tolist() == pytest.approx(list(before))  # clipped to the frozen range


def test_unsigned_quantizer_fixes_zero():
    q = ActivationQuantizer(4, unsigned=True)
    x = torch.relu(torch.randn(100))
    out = q(x)
    assert float(q.lo) == 0.0
    assert (out[x == 0] == 0).all()
    assert len(torch.unique(out)) <= 16


def test_padding_is_ignored_when_ranges_are_updated():
    q = ActivationQuantizer(8)
    x = torch.tensor([[1.0, 2.0], [50.0, -50.0]])  # second row is padding
    q(x, valid=torch.tensor([True, False]))
    assert (float(q.lo), float(q.hi)) == (1.0, 2.0)
    q(torch.full((2, 2), 7.0), valid=torch.tensor([False, False]))  # all padding: no update
    assert (float(q.lo), float(q.hi)) == (1.0, 2.0)


@pytest.mark.parametrize("bits", [2, 8])
def test_constant_inputs_give_finite_outputs(bits):
    for q in (ActivationQuantizer(bits), WeightQuantizer(bits, "row"),
              WeightQuantizer(bits, "tensor")):
        x = torch.full((3, 4), 0.25, requires_grad=True)
        out = q(x)
        assert torch.isfinite(out).all() and torch.allclose(out, x)
        out.sum().backward()
        assert torch.isfinite(x.grad).all()
    zeros = ActivationQuantizer(bits)(torch.zeros(5))
    assert torch.equal(zeros, torch.zeros(5))


def test_state_dict_round_trip():
    q = ActivationQuantizer(6, unsigned=False)
    q(torch.randn(50))
    q(torch.randn(50) * 3)
    fresh = ActivationQuantizer(6)
    fresh.load_state_dict(q.state_dict())
    assert set(q.state_dict()) == {"active", "lo", "hi", "initialized"}
    for k, v in q.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)
    fresh.eval(), q.eval()
    x = torch.randn(100) * 4
    assert torch.equal(fresh(x), q(x))


def test_start_update_keeps_float_until_reached():
    q = ActivationQuantizer(2, start_update=10)
    x = torch.randn(64)
    assert torch.equal(q(x), x) and not bool(q.initialized)
    q.set_num_updates(9)
    assert torch.equal(q(x), x)
    q.set_num_updates(10)
    y = torch.randn(64) * 5
    out = q(y)  # ranges start from the live statistics at this point
    assert (float(q.lo), float(q.hi)) == (float(y.min()), float(y.max()))
    assert len(torch.unique(out)) <= 4


def test_bad_bucket_name_is_refused():
    with pytest.raises(ValueError, match="'column'.*row, tensor"):
        WeightQuantizer(8, "column")


def test_unclipped_gradient_passes_outside_the_range_but_values_stay_clipped():
    q = ActivationQuantizer(4, clip_gradient=False)
    q.observe(torch.tensor([-1.0, 1.0]))
    q.eval()
    x = torch.tensor([-2.0, 0.3, 1.5], requires_grad=True)
    out = q(x)
    out.sum().backward()
    assert x.grad.tolist() == [1, 1, 1]
    assert out[0] == -1.0 and out[2] == 1.0


def test_layer_norm_denominator_is_straight_through():
    from fullyqt.quant.config import QuantConfig
    from fullyqt.quant.layer_norm import QuantLayerNorm

    ln = QuantLayerNorm(8, qcfg=QuantConfig(8, 8))
    assert not ln.denominator_quant.clip_gradient
    assert ln.numerator_quant.clip_gradient and ln.output_quant.clip_gradient


def test_an_unquantized_layer_norm_is_the_plain_formula():
    from fullyqt.quant.config import QuantConfig
    from fullyqt.quant.layer_norm import QuantLayerNorm

    torch.manual_seed(0)
    ln = QuantLayerNorm(16, qcfg=QuantConfig(None, None))
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.5, 0.5)
    x = torch.randn(5, 3, 16) * 3 + 1
    xd = x.double()
    ref = ((xd - xd.mean(-1, keepdim=True)) / (xd.var(-1, unbiased=False, keepdim=True)
                                               + 1e-5).sqrt()) * ln.weight.double() + ln.bias.double()
    out = ln(x)
    assert out.dtype == x.dtype and torch.allclose(out.double(), ref, atol=1e-5)
    quantized = QuantLayerNorm(16, qcfg=QuantConfig(8, 8))  # the quantized chain: on a grid
    quantized.train()
    big = torch.randn(40, 10, 16)
    quantized(big)
    assert len(torch.unique(quantized(big))) <= 256 < len(torch.unique(ln(big)))


def _graph_names(t: torch.Tensor, depth: int = 4) -> set:
    names, nodes = set(), [t.grad_fn]
    for _ in range(depth):
        nodes = [n for node in nodes if node is not None for n, _ in node.next_functions]
        names |= {type(n).__name__ for n in nodes if n is not None}
    return names | {type(t.grad_fn).__name__}


@pytest.mark.skipif(fused.kernel() is None, reason="no C compiler: the kernel does not build")
def test_layer_norm_kernel_backward_matches_the_autograd_chain():
    """A CPU training step's layer norm (the chain outside autograd, one kernel pass backward)
    against the same module run as torch ops under autograd: values and ranges bit for bit,
    gradients to float rounding, with clipped values, padding rows and the time-major view of
    batch-major memory that fairseq's residual stream is."""
    from fullyqt.quant.config import QuantConfig
    from fullyqt.quant.layer_norm import QuantLayerNorm
    from fullyqt.quant.padding import PaddingContext

    torch.manual_seed(0)
    pad = PaddingContext()
    kernel_ln, chain_ln = (QuantLayerNorm(64, qcfg=QuantConfig(8, 8), pad=pad) for _ in range(2))
    with torch.no_grad():
        kernel_ln.weight.uniform_(0.5, 1.5)
        kernel_ln.bias.uniform_(-0.5, 0.5)
    chain_ln.load_state_dict(kernel_ln.state_dict())
    for step, scale in enumerate([1.0, 1.0, 3.0, 0.5]):  # a wider batch than the range: clips
        batch_major = torch.randn(6, 50, 64) * scale + torch.randn(6, 50, 1)
        valid = torch.rand(50, 6) > 0.2  # (time, batch)
        grad = torch.randn(50, 6, 64)
        got = []
        for ln, torch_ops in ((kernel_ln, False), (chain_ln, True)):
            x = batch_major.clone().transpose(0, 1).requires_grad_(True)
            ln.zero_grad()
            with fused.switched_off(torch_ops), pad.tokens(valid.t()):
                out = ln(x)
            out.backward(grad)
            got.append((out.detach(), x.grad, ln.weight.grad, ln.bias.grad,
                        ln.numerator_quant.lo.clone(), ln.output_quant.hi.clone(), out))
        (out_k, *grads_k, lo_k, hi_k, graph_k), (out_c, *grads_c, lo_c, hi_c, graph_c) = got
        if step > 0:  # ranges initialized: the kernel path runs
            assert "_QuantLayerNormTrainingBackward" in _graph_names(graph_k)
        assert "_QuantLayerNormTrainingBackward" not in _graph_names(graph_c)
        assert torch.equal(out_k, out_c) and out_k.stride() == out_c.stride()
        assert torch.equal(lo_k, lo_c) and torch.equal(hi_k, hi_c)
        for a, b in zip(grads_k, grads_c):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
        if scale == 3.0:  # the output's range clipped: its mask took part in the bias's gradient
            assert not torch.allclose(grads_c[2], grad.sum((0, 1)))


@pytest.mark.skipif(fused.kernel() is None, reason="no C compiler: the kernel does not build")
@pytest.mark.parametrize("dim", [128, 5, 100, 1000])
def test_layer_norm_kernel_evaluation_equals_the_chain(monkeypatch, dim):
    """Evaluation on frozen ranges in one kernel pass gives the torch-op chain's values bit for
    bit (contiguous rows and the time-major view of batch-major memory, clipped values
    included; rows shorter than a vector, and of no whole number of them), so does the two-pass
    path taken where torch's summation order is unknown, and hooks on a quantizer send the layer
    norm back to the chain."""
    from fullyqt.quant.config import QuantConfig
    from fullyqt.quant.layer_norm import QuantLayerNorm

    torch.manual_seed(0)
    ln = QuantLayerNorm(dim, qcfg=QuantConfig(8, 8))
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.5, 0.5)
    for _ in range(3):
        ln(torch.randn(200, dim))
    ln.eval()
    runs = []
    real = fused.layer_norm_evaluate
    monkeypatch.setattr(fused, "layer_norm_evaluate", lambda *a: runs.append(1) or real(*a))
    batch_major = torch.randn(7, 30, dim) * 3  # wider than the ranges: clipped
    for x in (batch_major.reshape(-1, dim), batch_major, batch_major.transpose(0, 1)):
        with torch.no_grad():
            got = ln(x)
            with fused.switched_off():
                want = ln(x)
            with monkeypatch.context() as m:
                m.setitem(fused._LANES, dim, 0)  # torch's order unknown: the two passes
                two_pass = ln(x)
        assert torch.equal(got, want) and got.stride() == want.stride()
        assert torch.equal(two_pass, want)
    assert len(runs) == 6
    seen = []
    handle = ln.quotient_quant.register_forward_hook(lambda q, i, out: seen.append(out))
    with torch.no_grad():
        ln(batch_major)
    handle.remove()
    assert len(seen) == 1 and len(runs) == 6


@pytest.mark.skipif(fused.kernel() is None, reason="no C compiler: the kernel does not build")
def test_layer_norm_kernel_evaluation_takes_torchs_square_root():
    """torch's square root (MKL's) is not always the correctly rounded one: a row whose two
    roundings of its root lie across a boundary of the denominator's grid still gives the
    chain's values, since the kernel path takes torch's root."""
    from fullyqt.quant.config import QuantConfig
    from fullyqt.quant.layer_norm import QuantLayerNorm

    torch.manual_seed(0)
    ln = QuantLayerNorm(128, qcfg=QuantConfig(8, 8))
    ln(torch.randn(200, 128))
    ln.eval()
    x = torch.randn(400, 128)
    with torch.no_grad(), fused.switched_off():
        num = ln.numerator_quant(x - x.mean(-1, keepdim=True))
        var = num.pow(2).mean(-1) + ln.eps
    torch_root, rounded_root = var.sqrt(), var.double().sqrt().float()
    apart = (torch_root != rounded_root).nonzero().flatten()
    if len(apart) == 0:
        pytest.skip("torch's square root is correctly rounded on these rows here")
    i = apart[0].item()
    pair = torch.stack([torch_root[i], rounded_root[i]])
    step = 1e-3
    for shift in range(64):  # slide the grid until a boundary falls between the two roots
        lo = pair.min().item() - 100.5 * step + shift * 2e-8
        with torch.no_grad():
            ln.denominator_quant.lo.fill_(lo)
            ln.denominator_quant.hi.fill_(lo + 255 * step)
            with fused.switched_off():
                den = ln.denominator_quant(pair)
        if den[0] != den[1]:
            break
    assert den[0] != den[1]
    with torch.no_grad():
        grids = ln._frozen_grids(x[i:i + 1])[1:]
        by_root = [fused.layer_norm_output(num[i:i + 1], root[i:i + 1, None], ln._frozen_gain(),
                                           ln.bias.float(), grids)
                   for root in (torch_root, rounded_root)]
        assert not torch.equal(*by_root)  # the row tells the two roots apart
        got = ln(x[i:i + 1])
        with fused.switched_off():
            want = ln(x[i:i + 1])
    assert torch.equal(got, want)


@pytest.mark.skipif(fused.kernel() is None, reason="no C compiler: the kernel does not build")
def test_row_means_follow_torchs_summation_order():
    """The kernels' row means equal ``Tensor.mean``'s bits at the vector width the probe finds,
    on rows of values of very different magnitudes (where any other order of the additions
    rounds differently), long enough for torch's cascade to close several levels; a width in
    another order does not, so the probe can tell."""
    torch.manual_seed(1)
    for cols in (3, 8, 128, 131, 512, 20000):
        x = torch.randn(64, cols) * torch.randn(64, cols).mul(4).exp()
        lanes = fused.sum_lanes(cols)
        assert lanes > 0
        mean, square_mean = fused.row_means(x, lanes)
        assert torch.equal(mean, x.mean(-1)) and torch.equal(square_mean, x.pow(2).mean(-1))
        exact = x.double().sum(-1) / cols
        assert torch.allclose(mean.double(), exact, rtol=1e-5, atol=1e-6 * x.abs().max().item())
    x = torch.randn(64, 512).mul(torch.randn(64, 512).mul(4).exp())
    others = [w for w in (1, 4, 8, 16) if w != fused.sum_lanes(512)]
    assert not any(torch.equal(fused.row_means(x, w)[0], x.mean(-1)) for w in others)


@pytest.mark.parametrize("unsigned", [False, True])
def test_frozen_codes_are_the_codes_of_the_frozen_values(unsigned):
    """Exact evaluation's codes of a quantizer's output in one kernel pass equal the torch ops'
    codes of its fake-quantized values, clipped values included."""
    q = ActivationQuantizer(8, unsigned=unsigned)
    q(torch.randn(400) * 2)
    q.eval()
    x = torch.randn(30, 4, 17) * 5
    got = q.frozen_codes(x)
    with fused.switched_off():
        want = torch.round((torch.clamp(q(x), q.lo, q.hi) - q.lo) / q.grid.step())
    assert torch.equal(got, want) and want.min() == 0 and want.max() == 255


def test_relu_is_left_to_a_zero_based_frozen_range():
    """In evaluation the unsigned quantizer after ReLU clamps at 0 as ReLU does: ReLU is skipped
    and the values are Q(relu(x)) exactly; in training, with gradients or hooks it runs."""
    from fullyqt.quant.activation import QuantActivation
    from fullyqt.quant.config import QuantConfig

    act = QuantActivation("relu", qcfg=QuantConfig(8, 8))
    act(torch.randn(100, 16) * 2)
    calls = []
    act.fn = lambda t: calls.append(1) or torch.relu(t)
    act.eval()
    x = torch.randn(20, 16) * 3
    x[0, :3] = torch.tensor([-0.0, 0.0, float("nan")])
    with torch.no_grad():
        got = act(x)
    want = act.quant(torch.relu(x))
    assert not calls and torch.equal(got.nan_to_num(7.0), want.nan_to_num(7.0))
    handle = act.quant.register_forward_pre_hook(lambda q, i: None)
    with torch.no_grad():
        act(x)
    handle.remove()
    act(x.requires_grad_(True))
    assert len(calls) == 2


def test_flags_follow_a_loaded_state_dict():
    q = ActivationQuantizer(8, start_update=5)
    trained = ActivationQuantizer(8, start_update=5)
    trained.set_num_updates(7)
    trained(torch.randn(10))
    q.load_state_dict(trained.state_dict())
    q.eval()
    assert q.enabled and bool(q.initialized)
    assert len(torch.unique(q(torch.randn(1000)))) <= 256


@pytest.mark.parametrize("bits", [4, 8])
def test_inference_path_is_bit_identical_to_training_arithmetic(bits):
    q = ActivationQuantizer(bits)
    q(torch.randn(64, 32) * 3)
    q.eval()
    x = torch.randn(16, 32) * 4
    with torch.no_grad():
        fast = q(x)
    assert torch.equal(fast, fake_quantize(Grid(q.lo, q.hi, bits), x))
    with torch.no_grad():  # a changed range is picked up, not served from the cache
        q.hi.mul_(0.5)
        assert torch.equal(q(x), fake_quantize(Grid(q.lo, q.hi, bits), x))


def _reference_fake_quantize(x, lo, hi, bits, clip_gradient=True):
    """The textbook chain, unfused: clamp, scale, round, rescale; gradient through the clamp."""
    s = (hi - lo).clamp_min(1e-8) / (2**bits - 1)
    xc = torch.clamp(x, lo, hi) if clip_gradient else x
    xq = torch.round((torch.clamp(x.detach(), lo, hi) - lo) / s) * s + lo
    return xq + (xc - xc.detach())


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("clip_gradient", [True, False])
@pytest.mark.parametrize("case", ["random", "clipped", "constant", "padded", "per-row"])
def test_fused_fake_quantize_equals_the_unfused_reference(bits, clip_gradient, case):
    x = torch.randn(6, 33) * 2
    lo, hi = torch.tensor(-1.5), torch.tensor(2.0)
    if case == "clipped":
        x = x * 10  # most values beyond the range
    elif case == "constant":
        x, lo, hi = torch.full((6, 33), 0.7), torch.tensor(0.7), torch.tensor(0.7)
    elif case == "padded":
        x[:, 20:] = 0.0
    elif case == "per-row":
        lo, hi = x.amin(1, keepdim=True) * 0.8, x.amax(1, keepdim=True) * 0.9
    upstream = torch.randn(6, 33)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    fused = fake_quantize(Grid(lo, hi, bits), a, clip_gradient)
    ref = _reference_fake_quantize(b, lo, hi, bits, clip_gradient)
    assert torch.equal(fused, ref)
    (fused * upstream).sum().backward()
    (ref * upstream).sum().backward()
    assert torch.equal(a.grad, b.grad)
    if case == "clipped" and clip_gradient:
        assert (a.grad == 0).any() and (a.grad != 0).any()


def _straightforward_fake_quant(x, lo, hi, bits):
    """Value and straight-through gradient mask written out op by op (float32, as the model)."""
    step = (hi - lo).clamp_min(1e-8) / (2**bits - 1)
    clamped = torch.minimum(torch.maximum(x, lo), hi)
    value = torch.round((clamped - lo) / step) * step + lo
    return value, ((x >= lo) & (x <= hi)).float()


@pytest.mark.parametrize("bits", [4, 8])
def test_fused_fake_quant_values_and_gradients_equal_the_straightforward_ones(bits):
    torch.manual_seed(bits)
    cases = {"clipped": torch.randn(64, 33) * 4, "constant": torch.full((7, 5), 0.37),
             "padded": torch.cat([torch.randn(10, 8), torch.zeros(6, 8)])}
    for name, x in cases.items():
        q = ActivationQuantizer(bits)
        q.observe(x[: len(x) // 2])  # a range narrower than x: some values are clipped
        q.eval()
        x = x.clone().requires_grad_(True)
        g = torch.randn_like(x)
        with torch.enable_grad():
            (q(x) * g).sum().backward()
        value, inside = _straightforward_fake_quant(x.detach(), q.lo, q.hi, bits)
        assert torch.equal(q(x.detach()), value), name
        assert torch.equal(x.grad, g * inside), name
    w = (torch.randn(16, 24) * torch.linspace(0.1, 2, 16)[:, None]).requires_grad_(True)
    g = torch.randn_like(w)
    (WeightQuantizer(bits, "row")(w) * g).sum().backward()
    lo, hi = w.detach().aminmax(dim=1, keepdim=True)
    value, inside = _straightforward_fake_quant(w.detach(), lo, hi, bits)
    assert torch.equal(WeightQuantizer(bits, "row")(w.detach()), value)
    assert inside.all() and torch.equal(w.grad, g)  # its own range clips nothing


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("per_row", [False, True])
def test_one_pass_kernel_equals_the_straightforward_ops_on_large_tensors(bits, per_row,
                                                                         two_threads):
    """The C kernel (many chunks, two threads; NaN and infinities included) against the ops
    written out, values, masks and the gradient through the autograd function."""
    if fused.kernel() is None:
        pytest.skip("no C compiler on this machine: the torch ops run instead")
    torch.manual_seed(bits)
    x = torch.randn(300, 701) * torch.linspace(0.5, 4, 300)[:, None]
    x[0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    if per_row:
        lo, hi = x[:, 3:].amin(1, keepdim=True) * 0.7, x[:, 3:].amax(1, keepdim=True) * 0.8
    else:
        lo, hi = torch.tensor(-2.5), torch.tensor(3.0)
    step = (hi - lo).clamp_min(1e-8) / (2**bits - 1)
    value, inside = _straightforward_fake_quant(x, lo, hi, bits)
    assert fused.applies(x, lo)
    out, mask, codes = fused.fake_quantize(x, lo, hi, step, True, codes=True)
    torch.testing.assert_close(out, value, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(mask, inside.bool()) and (~mask).any() and mask.any()
    assert codes is None  # a NaN has no code: autograd keeps the floats
    rows = slice(1, None)  # without the NaN: byte codes that give the values back, bit for bit
    lo_r, hi_r, step_r = (t[rows] if per_row else t for t in (lo, hi, step))
    out, _, codes = fused.fake_quantize(x[rows], lo_r, hi_r, step_r, False, codes=True)
    k = torch.round((torch.clamp(x[rows], lo_r, hi_r) - lo_r) / step_r)
    assert codes.dtype == torch.uint8 and torch.equal(codes.long(), k.long())
    assert torch.equal(byte_code_values(codes, lo_r, step_r, torch.float32), value[rows])
    frozen = fake_quantize_frozen(x, *((lo, hi, step) if per_row else
                                       (lo.item(), hi.item(), step.item())))
    torch.testing.assert_close(frozen, value, rtol=0, atol=0, equal_nan=True)
    a = x.clone().requires_grad_(True)
    g = torch.randn_like(x)
    (fake_quantize(Grid(lo, hi, bits), a) * g).sum().backward()
    assert torch.equal(a.grad, g * inside)


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_one_pass_centred_codes_equal_the_ops_written_out(bits, two_threads):
    """int8 codes and row sums for an integer matmul, against round/clamp in float64 numpy."""
    if fused.kernel() is None:
        pytest.skip("no C compiler on this machine: the torch ops run instead")
    torch.manual_seed(bits)
    x = torch.randn(513, 300) * 4  # values beyond both ends of the grid
    grid = Grid(torch.tensor(-2.0), torch.tensor(3.5), bits)
    affine = grid.centred_code_affine()
    codes, sums = fused.centred_codes(x, affine)
    scale_inv, shift, cmin, cmax = affine
    scaled = (x * scale_inv).numpy().astype(np.float32) - np.float32(shift)  # float32 steps
    expected = np.clip(np.rint(scaled.astype(np.float64)), cmin, cmax)
    assert codes.dtype == torch.int8 and np.array_equal(codes.numpy(), expected)
    assert np.array_equal(sums.numpy(), expected.sum(1)) and expected.min() == cmin
    assert fused.centred_codes(x.t(), affine) is None  # not contiguous: the torch ops run


def test_one_pass_kernel_takes_a_transposed_activation_as_it_lies(two_threads):
    """A (T, B, C) activation transposed from (B, T, C): quantized over its memory in order,
    values and gradient as the ops written out, in x's own layout."""
    if fused.kernel() is None:
        pytest.skip("no C compiler on this machine: the torch ops run instead")
    x = (torch.randn(24, 37, 128) * 3).transpose(0, 1)
    lo, hi = torch.tensor(-2.0), torch.tensor(2.5)
    assert not x.is_contiguous() and fused.applies(x, lo)
    a = x.clone(memory_format=torch.preserve_format).requires_grad_(True)
    g = torch.randn(x.shape)
    out = fake_quantize(Grid(lo, hi, 8), a)
    (out * g).sum().backward()
    value, inside = _straightforward_fake_quant(x, lo, hi, 8)
    assert out.stride() == x.stride() and torch.equal(out, value)
    assert torch.equal(a.grad, g * inside)


@pytest.mark.parametrize("row_width", [1, 7, 300])
def test_one_pass_range_of_the_valid_rows(row_width, two_threads):
    """The observers' (min, max) over non-padding entries, against numpy on the valid rows;
    no valid row gives +-inf, a NaN gives NaN."""
    if fused.kernel() is None:
        pytest.skip("no C compiler on this machine: the torch ops run instead")
    torch.manual_seed(row_width)
    x = torch.randn(90, 40, row_width) * 3
    valid = torch.rand(90, 40) > 0.3
    x[~valid] = 1e6  # padding holds anything
    lo, hi = fused.masked_min_max(x, valid)
    kept = x.numpy()[valid.numpy()]
    assert (lo.item(), hi.item()) == (kept.min(), kept.max())
    assert fused.masked_min_max(x, None)[1].item() == 1e6
    assert [v.item() for v in fused.masked_min_max(x, torch.zeros_like(valid))] == [
        float("inf"), float("-inf")]
    # as fairseq hands them over: (T, B, C) and a (T, B) mask, both transposed views
    lo_t, hi_t = fused.masked_min_max(x.transpose(0, 1), valid.t())
    assert (lo_t.item(), hi_t.item()) == (kept.min(), kept.max())
    x[valid.nonzero()[5].tolist()] = float("nan")
    assert all(v.isnan() for v in fused.masked_min_max(x, valid))


@pytest.mark.slow
def test_kernel_is_switched_off_by_the_environment(tmp_path):
    """``FULLYQT_FUSED_QUANT=0``: no kernel, and the quantizers give the same values."""
    code = ("import sys, torch; from fullyqt.quant import fused; from fullyqt.quant.grid import "
            "Grid; from fullyqt.quant.fake_quant import fake_quantize; torch.manual_seed(0); "
            "x = torch.randn(50, 40) * 2;"
            "print(fused.kernel() is not None);"
            "torch.save(fake_quantize(Grid(torch.tensor(-1.), torch.tensor(1.5), 4), x), "
            "sys.argv[1])")
    used, values = [], []
    for flag in ("0", "1"):
        path = tmp_path / f"{flag}.pt"
        done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                              text=True, env={**os.environ, "FULLYQT_FUSED_QUANT": flag},
                              check=True)
        used.append(done.stdout.split()[-1])
        values.append(torch.load(path))
    assert used == ["False", str(fused.kernel() is not None)]
    assert torch.equal(values[0], values[1])
    # a cache that cannot be written: the torch ops run, the same values
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    path = tmp_path / "blocked.pt"
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                          env={**os.environ, "XDG_CACHE_HOME": str(blocked)}, check=True)
    assert done.stdout.split()[-1] == "False" and torch.equal(torch.load(path), values[0])


def mse_reference(x, valid, bits, unsigned, ratios):
    """The least-squared-error clipping of the valid entries' min-max range, in float64 numpy,
    by trying every ratio (ends pulled towards 0, or towards the end nearer 0)."""
    vals = x[valid].astype(np.float64)
    lo, hi = (0.0 if unsigned else vals.min()), vals.max()
    centre = min(max(0.0, lo), hi)
    ends = [(centre + r * (lo - centre), centre + r * (hi - centre)) for r in ratios]
    return min(ends, key=lambda e: _sq_error(vals, e[0], e[1], bits))


@pytest.mark.parametrize("bits,unsigned,shift", [(4, False, 0.0), (4, True, 0.0), (8, False, 0.0),
                                                  (4, False, 5.0), (3, False, -7.0)])
def test_mse_observer_picks_the_least_error_clipping_and_ignores_padding(bits, unsigned, shift):
    from fullyqt.quant.observers import CLIP_RATIOS
    g = torch.Generator().manual_seed(bits)
    x = torch.distributions.StudentT(3.0).sample((30, 7, 16)) + shift  # heavy tails
    if unsigned:
        x = x.abs()
    valid = torch.rand(30, 7, generator=g) > 0.2
    x[~valid] = 1e6  # padding: must not move the range
    q = ActivationQuantizer(bits, unsigned=unsigned, observer="mse").train()
    q(x, valid)
    ref_lo, ref_hi = mse_reference(x.numpy(), valid.numpy(), bits, unsigned, CLIP_RATIOS)
    assert q.lo.item() == pytest.approx(ref_lo, rel=1e-5, abs=1e-6)
    assert q.hi.item() == pytest.approx(ref_hi, rel=1e-5)
    if bits == 4 and not shift:  # heavy tails at 4 bits: a real clipping, not the min-max range
        assert q.hi.item() < x[valid].max().item() * 0.95
    if unsigned:
        assert q.lo.item() == 0.0


def test_mse_observer_samples_every_kth_row_of_a_large_batch():
    """Above MSE_SAMPLE values the error is measured on every k-th row: the clipping of the whole
    batch's range that is best for those rows."""
    from fullyqt.quant.observers import CLIP_RATIOS, MSE_SAMPLE
    x = torch.distributions.Laplace(0.0, 1.0).sample((4 * MSE_SAMPLE // 64 + 3, 64))
    x[::4] *= 3.0  # the sampled rows (stride 5 here) see other statistics than the rest
    stride = -(-x.numel() // MSE_SAMPLE)
    q = ActivationQuantizer(4, observer="mse").train()
    q(x)
    rows, lo, hi = x[::stride].numpy(), x.min().item(), x.max().item()
    best = min(CLIP_RATIOS, key=lambda r: _sq_error(rows, r * lo, r * hi, 4))
    assert q.lo.item() == pytest.approx(best * lo, rel=1e-5)
    assert q.hi.item() == pytest.approx(best * hi, rel=1e-5)


def _sq_error(vals, a, b, bits):
    step = (b - a) / (2**bits - 1)
    v = vals.astype(np.float64)
    return (((np.rint((np.clip(v, a, b) - a) / step) * step + a) - v) ** 2).sum()


def test_mse_observer_leaves_the_range_on_an_all_padding_batch():
    q = ActivationQuantizer(4, observer="mse").train()
    q(torch.randn(5, 3, 8), torch.ones(5, 3, dtype=torch.bool))
    lo, hi = q.lo.clone(), q.hi.clone()
    q(torch.full((5, 3, 8), 100.0), torch.zeros(5, 3, dtype=torch.bool))
    assert torch.equal(q.lo, lo) and torch.equal(q.hi, hi)


@pytest.mark.parametrize("shape", [(9, 6, 4), (9, 6, 256), (6, 4, 9, 12)])
def test_batch_range_ignores_padding_whatever_the_row_width(shape):
    """Narrow rows are masked whole, wide rows reduced first: both give numpy's min and max of
    the real entries, padding holding values far outside them (and a NaN-free inf)."""
    from fullyqt.quant.observers import ROW_REDUCE_MIN, batch_min_max
    g = torch.Generator().manual_seed(len(shape))
    x = torch.randn(*shape, generator=g)
    lead = len(shape) - 1
    valid = torch.rand(*shape[:lead], generator=g) > 0.3
    x[~valid] = float("inf")
    x[~valid, ..., 0] = -1e9
    real = x.numpy()[valid.numpy()]
    lo, hi = batch_min_max(x, valid)
    assert (lo.item(), hi.item()) == (real.min(), real.max())
    assert (shape[-1] >= ROW_REDUCE_MIN) == (shape[-1] == 256)  # both paths are exercised
    none = batch_min_max(x, torch.zeros_like(valid))
    assert (none[0].item(), none[1].item()) == (float("inf"), float("-inf"))


@pytest.mark.parametrize("bits", [4, 8])
def test_one_bucket_codes_equal_the_tensor_formula(bits, two_threads):
    """An activation grid's codes (taken from Python scalars; the one-pass kernel on CPU, over
    several chunks) equal the formula on 0-dim tensors bit for bit, clipped and boundary values
    included; per-row grids are unchanged."""
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(640, 330, generator=g) * 3
    lo, hi = torch.tensor(-2.3), torch.tensor(1.7)
    step = (hi - lo).clamp_min(1e-8) / (2**bits - 1)
    x[0, :3] = torch.stack([lo, hi, lo + 5 * step])
    expected = torch.round((torch.minimum(torch.maximum(x, lo), hi) - lo) / step)
    assert torch.equal(Grid(lo, hi, bits).codes(x), expected)
    rows = Grid(torch.full((640, 1), -2.3), torch.full((640, 1), 1.7), bits)
    assert torch.equal(rows.codes(x), expected)


@pytest.mark.parametrize("case", ["transposed-padded", "unsigned", "unclipped", "rows-of-7"])
def test_one_call_training_step_equals_the_observer_and_the_torch_ops(case, two_threads):
    """An activation quantizer's training step as one kernel call (range update and fake
    quantization) against the same quantizer running the torch ops: ranges, values and
    gradients over several batches, one of them all padding and one holding a NaN."""
    if fused.kernel() is None:
        pytest.skip("no C compiler on this machine: the torch ops run instead")
    torch.manual_seed(len(case))
    width = 7 if case == "rows-of-7" else 128
    kw = {"unsigned": case == "unsigned", "clip_gradient": case != "unclipped"}
    quantizers = [ActivationQuantizer(8, **kw), ActivationQuantizer(8, **kw)]
    for step in range(5):
        x = torch.randn(33, 41, width) * (step + 1)
        if case == "unsigned":
            x = x.abs()
        valid = torch.rand(33, 41) > 0.2
        if step == 2:
            valid[:] = False
        if step == 3:
            x[valid.nonzero()[0].tolist()] = float("nan")
        x[~valid] = 1e6  # padding holds anything
        x, valid = x.transpose(0, 1), valid.t()  # (T, B, C), as fairseq hands them over
        if case == "rows-of-7":
            valid = None if step == 4 else valid
        g = torch.randn(x.shape)
        outs, grads = [], []
        for q, torch_ops in zip(quantizers, (False, True)):
            a = x.clone(memory_format=torch.preserve_format).requires_grad_(True)
            with fused.switched_off(torch_ops):
                out = q(a, valid)
            (torch.nan_to_num(out) * g).sum().backward()
            outs.append(out.detach())
            grads.append(a.grad)
        one, ops = quantizers
        assert torch.equal(one.lo, ops.lo) and torch.equal(one.hi, ops.hi), step
        torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0, equal_nan=True)
        assert torch.equal(grads[0], grads[1]), step
    assert one.lo.item() < one.hi.item() and (one.lo.item() == 0) == (case == "unsigned")


def test_a_fake_quantization_that_clips_nothing_keeps_no_mask(two_threads):
    """Nothing outside the range: no mask is kept and the gradient passes whole (what the mask,
    all ones, would give); one value outside, or a NaN, and the mask is back."""
    if fused.kernel() is None:
        pytest.skip("no C compiler on this machine: the torch ops run instead")
    lo, hi = torch.tensor(-3.0), torch.tensor(3.0)
    step = (hi - lo) / 255
    x = torch.rand(200, 300) * 6 - 3
    assert fused.fake_quantize(x, lo, hi, step, True)[1] is None
    for bad in (3.5, float("nan")):
        y = x.clone()
        y[17, 5] = bad
        mask = fused.fake_quantize(y, lo, hi, step, True)[1]
        assert mask is not None and (~mask).sum() == 1 and not mask[17, 5]
        a = y.clone().requires_grad_(True)
        g = torch.randn_like(y)
        (fake_quantize(Grid(lo, hi, 8), a) * g).sum().backward()
        assert a.grad[17, 5] == 0 and torch.equal(a.grad, g * mask)
    a = x.clone().requires_grad_(True)
    g = torch.randn_like(x)
    (fake_quantize(Grid(lo, hi, 8), a) * g).sum().backward()
    assert torch.equal(a.grad, g)


def test_integer_matmul_affine_in_one_pass_equals_addcmul_then_addr(two_threads):
    """The integer linear's affine over its int32 sums (sums beyond 2^24 included, which
    float32 rounds) as one kernel pass of fused multiply-adds: bit for bit torch's addcmul and
    addr where their vector loops cover a row (512 columns), and within the one rounding of a
    float64 reference everywhere (torch's scalar tail rounds addr's product apart)."""
    if fused.kernel() is None:
        pytest.skip("no C compiler on this machine: the torch ops run instead")
    from fullyqt.quant.integer_form import affine_over_sums

    g = torch.Generator().manual_seed(3)
    for cols in (512, 7832):
        sums = torch.randint(-2**26, 2**26, (300, cols), generator=g, dtype=torch.int32)
        code_sums = torch.randint(-40000, 40000, (300,), generator=g).float()
        alpha, beta, c = (torch.randn(cols, generator=g) * s for s in (1e-4, 1e-3, 3.0))
        got = fused.int_affine(sums.clone(), code_sums, alpha, beta, c)
        assert got.dtype == torch.float32
        small = sums.clamp(-2**24, 2**24)  # the float32 engine's sums: exact integers as floats
        assert torch.equal(fused.int_affine(small.float(), code_sums, alpha, beta, c),
                           fused.int_affine(small.clone(), code_sums, alpha, beta, c))
        if cols == 512:
            assert torch.equal(got, affine_over_sums(sums.clone(), code_sums, alpha, beta, c))
        inner = sums.float().double() * alpha.double() + c.double()  # exact product
        ref = (inner.float().double() + code_sums.double()[:, None] * beta.double()).float()
        ulp = torch.finfo(torch.float32).eps * ref.abs()
        assert ((got.double() - ref.double()).abs() <= ulp).all()
    assert fused.int_affine(sums.t(), code_sums, alpha, beta, c) is None  # not contiguous
