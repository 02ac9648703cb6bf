"""Fake-quantized activations saved for backward as byte codes (``quant/saved_codes.py``): the
same gradients as with the floats kept, bit for bit, and the floats kept wherever a code cannot
stand for them."""
import copy

import pytest
import torch

from fullyqt.quant import fused, saved_codes
from fullyqt.quant.fake_quant import fake_quantize
from fullyqt.quant.grid import Grid
from fullyqt.quant.layout import as_rows, from_rows
from tests.conftest import build_model, sample_batch


def _grads(model, batch, seed):
    model.zero_grad()
    torch.manual_seed(seed)  # the same dropout masks
    out = model(**batch["net_input"])[0]
    loss = torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]).float(),
                                             batch["target"].reshape(-1), ignore_index=1)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("extra,torch_ops", [
    (["--quant-bits", "8"], False), (["--quant-bits", "4"], False),
    (["--quant-bits", "8", "--kron-layers", "ffn", "--prune-method", "topk",
      "--prune-density", "0.5", "--prune-attn-block", "head"], False),
    (["--quant-bits", "8"], True)],
    ids=["8-bit", "4-bit", "8-bit-kronecker-pruned", "8-bit-torch-ops"])
def test_training_gradients_are_the_same_with_codes_saved(toy_data, monkeypatch, extra,
                                                          torch_ops):
    """Every gradient over three training steps, codes saved against floats kept: with the
    CPU kernel writing the codes, and with the torch ops (the GPU path) making them."""
    monkeypatch.setattr(saved_codes, "SMALLEST", 0)  # the tiny model's tensors too
    packed = []
    pack = saved_codes._pack

    def spy(offers, t):
        got = pack(offers, t)
        if isinstance(got, tuple):
            packed.append(t.numel())
        return got

    monkeypatch.setattr(saved_codes, "_pack", spy)
    model, task, _ = build_model(toy_data[1], *extra, "--max-update", "10",
                                 "--quant-saved-codes")
    model.set_num_updates(10)
    model.train()
    batch = sample_batch(task, "train", n=24)
    floats = copy.deepcopy(model)
    floats.saved_codes = False
    with fused.switched_off(torch_ops):
        for step in range(3):  # the first step sets the ranges; later ones run the kernel
            with_codes = _grads(model, batch, step)
            assert packed, "nothing was saved as codes"
            packed.clear()
            expect = _grads(floats, batch, step)
            assert not packed
            assert with_codes.keys() == expect.keys()
            for name in expect:
                assert torch.equal(with_codes[name], expect[name]), name


def _offered(x, lo, hi, bits=8):
    """``Grid.fake_quantize`` of x on [lo, hi] (offered, within ``packing()``)."""
    return fake_quantize(Grid(torch.tensor(lo), torch.tensor(hi), bits), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_a_saved_view_comes_back_bit_for_bit(monkeypatch, dtype):
    """A permuted view of a quantizer's (batch-major) output, saved by a matmul: kept as codes
    (the kernel's on float32, torch's on float16), unpacked to the same values and strides."""
    monkeypatch.setattr(saved_codes, "SMALLEST", 0)
    x = (torch.randn(5, 7, 16) * 3).to(dtype).transpose(0, 1).requires_grad_(True)
    w = torch.randn(16, 9, dtype=dtype, requires_grad=True)
    seen = []
    with saved_codes.packing():
        q = _offered(x, -2.0, 2.5)
        offers = saved_codes._local.offers
        view = q.permute(1, 0, 2)
        seen.append(saved_codes._pack(offers, view))
        y = view @ w
    assert not saved_codes.active()
    packed = seen[0]
    assert isinstance(packed, tuple) and packed[0].codes.dtype == torch.uint8
    back = saved_codes._unpack(packed)
    assert back.stride() == view.stride() and torch.equal(back, view.detach())
    y.sum().backward()
    with saved_codes.packing(enabled=False):
        x2 = x.detach().clone().requires_grad_(True)
        w2 = w.detach().clone().requires_grad_(True)
        (_offered(x2, -2.0, 2.5).permute(1, 0, 2) @ w2).sum().backward()
    assert torch.equal(w.grad, w2.grad) and torch.equal(x.grad, x2.grad)


def test_floats_are_kept_where_codes_cannot_stand_for_them(monkeypatch):
    monkeypatch.setattr(saved_codes, "SMALLEST", 0)
    x = torch.randn(64, 32)
    x[3, 4] = float("nan")
    with saved_codes.packing():
        offers = saved_codes._local.offers
        with_nan = _offered(x, -1.0, 1.0)  # a NaN has no code
        assert not isinstance(saved_codes._pack(offers, with_nan), tuple)
        changed = _offered(x.nan_to_num(), -1.0, 1.0)
        changed.mul_(2)  # written after it was offered: no longer on its grid
        assert not isinstance(saved_codes._pack(offers, changed), tuple)
        plain = torch.randn(64, 32)  # never offered
        kept = saved_codes._pack(offers, plain)
        assert not isinstance(kept, tuple) and torch.equal(kept, plain)
        wide = fake_quantize(Grid(torch.tensor(-1.0), torch.tensor(1.0), 16), x.nan_to_num())
        assert not isinstance(saved_codes._pack(offers, wide), tuple)  # 2^16 levels: no byte
        dead = _offered(x.nan_to_num(), -1.0, 1.0)
        ptr = dead.untyped_storage().data_ptr()
        assert ptr in offers
        del dead  # an output that died unsaved leaves no codes behind
        assert ptr not in offers


def test_rows_in_memory_order_need_no_copy_and_come_back_in_place():
    """A time-major view of batch-major memory (fairseq's residual stream) as a matrix without a
    copy, its product back in (time, batch) order, against the same product on a copy."""
    batch_major = torch.randn(3, 5, 8)
    x = batch_major.transpose(0, 1)  # (time, batch, C)
    rows, perm = as_rows(x)
    assert rows.untyped_storage().data_ptr() == batch_major.untyped_storage().data_ptr()
    w = torch.randn(4, 8)
    y = from_rows(rows @ w.t(), x, perm)
    assert y.shape == (5, 3, 4)
    torch.testing.assert_close(y, x.contiguous() @ w.t(), rtol=1e-6, atol=1e-6)
    plain, none = as_rows(batch_major)  # contiguous already: rows in order
    assert none is None
    torch.testing.assert_close(from_rows(plain @ w.t(), batch_major, none), batch_major @ w.t(),
                               rtol=1e-6, atol=1e-6)
