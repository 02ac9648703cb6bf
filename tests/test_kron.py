"""Kronecker-factorized layers: factor shapes, the two-matmul product against the dense one, the
nearest-product initialization, integer evaluation, exports, refused shapes."""
import logging
import math

import pytest
import torch
import torch.nn.functional as F

from fullyqt.quant.packed_state import pack_state, unpack_state
from fullyqt.export.stock import stock_state_dict
from fullyqt.kron.factors import KronOptionError, KronShape, choose, from_second
from fullyqt.kron.kron_weight import KroneckerWeight
from fullyqt.kron.nearest import nearest, stacked
from fullyqt.quant.native.convert import to_native_int8
from fullyqt.quant.config import QuantConfig
from fullyqt.quant.linear import QuantLinear
from tests.conftest import build_model, sample_batch

KRON = ["--kron-layers", "ffn,attn,embed", "--kron-factor", "4"]


def _kron_sum(a, b, ks):
    """sum_k kron(A_k, B_k) with torch.kron (the reference the layout is checked against)."""
    A, B = stacked(a, b, ks)
    return sum(torch.kron(A[k], B[k]) for k in range(ks.rank))


def test_factor_shape_nearest_the_target_among_all_divisor_pairs():
    ks = choose((512, 128), 4.0, 1, "fc1")
    assert ks.shape == (512, 128) and ks.params == ks.m1 * ks.n1 + ks.m2 * ks.n2
    ratios = [512 * 128 / (512 // m2 * 128 // n2 + m2 * n2)
              for m2 in range(1, 513) if 512 % m2 == 0
              for n2 in range(1, 129) if 128 % n2 == 0 and m2 * n2 > 1]
    ratios = [r for r in ratios if r > 1]
    best = min(abs(math.log(r / 4)) for r in ratios)
    assert abs(math.log(ks.compression / 4)) == pytest.approx(best)
    emb = choose((1000, 64), 8.0, 2, "embed", rows_of_b=1)
    assert (emb.m2, emb.m1, emb.n2) == (1, 1000, 16)  # 2 x (1000x4 + 1x16): 7.97x


def test_a_factor_that_does_not_divide_is_refused_naming_both():
    with pytest.raises(KronOptionError, match=r"3x2 does not divide fc1 \(512x128\)"):
        from_second((512, 128), (3, 2), 1, "fc1")
    with pytest.raises(KronOptionError, match="no fewer than the 4096"):
        from_second((64, 64), (1, 1), 1, "q_proj")


@pytest.mark.parametrize("rank", [1, 3])
def test_two_matmul_product_equals_the_dense_kronecker_product(rank):
    ks = KronShape(6, 4, 3, 5, rank)
    layer = QuantLinear(20, 18, qcfg=QuantConfig(None, None))
    layer.source = KroneckerWeight(ks, QuantConfig(None, None))
    del layer.weight
    torch.nn.init.normal_(layer.source.a)
    torch.nn.init.normal_(layer.source.b)
    x = torch.randn(2, 7, 20, requires_grad=True)
    y = layer(x)
    a = layer.source.a.detach().clone().requires_grad_(True)
    b = layer.source.b.detach().clone().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = F.linear(x_ref, _kron_sum(a, b, ks), layer.bias.detach())
    assert torch.allclose(y, y_ref, atol=1e-4)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (y_ref * g).sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-4)
    assert torch.allclose(layer.source.a.grad, a.grad, atol=1e-3)
    assert torch.allclose(layer.source.b.grad, b.grad, atol=1e-3)


@pytest.mark.parametrize("rank", [1, 2])
def test_nearest_product_error_is_the_discarded_singular_values(rank):
    ks = KronShape(8, 6, 4, 3, rank)
    w = torch.randn(32, 18, dtype=torch.float64)
    a, b, rel = nearest(w, ks)
    err = float((w - _kron_sum(a, b, ks)).norm())
    # the rearrangement written out block by block: row (i1, j1) holds block W[i1, j1] flattened
    rows = [w[i1 * 4:(i1 + 1) * 4, j1 * 3:(j1 + 1) * 3].reshape(-1)
            for i1 in range(8) for j1 in range(6)]
    s = torch.linalg.svdvals(torch.stack(rows))
    assert err == pytest.approx(float(s[rank:].square().sum().sqrt()), rel=1e-9)
    assert rel == pytest.approx(err / float(w.norm()), rel=1e-9)
    exact = _kron_sum(a, b, ks)  # a sum of `rank` products is recovered exactly
    a2, b2, rel2 = nearest(exact, ks)
    assert rel2 < 1e-12 and torch.allclose(_kron_sum(a2, b2, ks), exact, atol=1e-12)


def _calibrated(toy_data, *extra):
    model, task, args = build_model(toy_data[1], *KRON, "--quant-bits", "8", *extra)
    batch = sample_batch(task, "train")
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(**batch["net_input"])
    model.eval()
    return model, task, batch


def test_model_is_smaller_and_every_factor_and_product_is_quantized(toy_data):
    dense, _, _ = build_model(toy_data[1], "--quant-bits", "8")
    model, _, batch = _calibrated(toy_data)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model) < count(dense) / 2.5
    assert not [n for n, _ in model.named_parameters() if n.endswith(".weight")
                and ("fc" in n or "proj" in n or "embed_tokens" in n)]
    out = model.decoder.output_projection
    assert out.source.a is model.decoder.embed_tokens.a  # tied to the embedding
    for name, m in model.named_modules():
        if isinstance(m, KroneckerWeight):
            assert m.mid_quant.has_range, name


def test_integer_path_equals_exact_evaluation_and_fake_is_close(toy_data):
    model, _, batch = _calibrated(toy_data)
    with torch.no_grad():
        exact = model(**batch["net_input"])[0]
        model.decoder.output_projection.set_kernels("fake")
        for m in model.modules():
            if isinstance(m, QuantLinear):
                m.set_kernels("fake")
        fake = model(**batch["net_input"])[0]
        for m in model.modules():
            if isinstance(m, QuantLinear):
                m.set_kernels("exact")
        assert to_native_int8(model) > 0
        native = model(**batch["net_input"])[0]
    assert torch.equal(native, exact)
    assert (exact - fake).abs().max() < 0.05 * fake.abs().max()


def test_exports_keep_factors_or_multiply_them_out(toy_data):
    model, task, batch = _calibrated(toy_data)
    packed = pack_state(model, 8)
    assert "encoder.layers.0.fc1.source.a@codes" in packed
    assert not [k for k in packed if k.endswith(".weight@codes") and "fc" in k]
    unpack_state(packed, 8)
    again, _, _ = build_model(toy_data[1], *KRON, "--quant-bits", "8")
    again.load_state_dict(packed)
    again.eval()
    with torch.no_grad():
        assert torch.equal(again(**batch["net_input"])[0], model(**batch["net_input"])[0])
    stock = stock_state_dict(model)
    fc1 = model.encoder.layers[0].fc1
    ref = _kron_sum(fc1.weight_quant(fc1.source.a), fc1.source.b_quant(fc1.source.b),
                    fc1.source.ks)
    assert torch.allclose(stock["encoder.layers.0.fc1.weight"], ref, atol=1e-6)
    stock_model, _, _ = build_model(toy_data[1], "--no-quant")
    stock_model.load_state_dict(stock)  # a dense model of the same shape takes it


def test_a_dense_checkpoint_becomes_its_nearest_factors(toy_data):
    dense, _, _ = build_model(toy_data[1], "--quant-bits", "8")
    state = dense.state_dict()
    model, _, _ = build_model(toy_data[1], *KRON, "--quant-bits", "8")
    model.load_state_dict(state)
    fc2 = model.decoder.layers[1].fc2
    a, b, _ = nearest(dense.decoder.layers[1].fc2.weight, fc2.source.ks)
    assert torch.equal(fc2.source.a, a) and torch.equal(fc2.source.b, b)
    emb = model.encoder.embed_tokens
    a, b, _ = nearest(dense.encoder.embed_tokens.weight, emb.ks)
    assert torch.equal(emb.a, a) and torch.equal(emb.b, b)


def test_options_are_checked_in_one_line(toy_data):
    with pytest.raises(KronOptionError, match=r"ffn=3x2.*does not divide"):
        build_model(toy_data[1], "--kron-layers", "ffn", "--kron-shapes", "ffn=3x2")
    with pytest.raises(KronOptionError, match="--kron-factor needs --kron-layers"):
        build_model(toy_data[1], "--kron-factor", "4")
    with pytest.raises(KronOptionError, match="both set the factor shapes"):
        build_model(toy_data[1], "--kron-layers", "ffn", "--kron-factor", "4",
                    "--kron-shapes", "ffn=2x2")
    with pytest.raises(KronOptionError, match="gives no shape for attn"):
        build_model(toy_data[1], "--kron-layers", "ffn,attn", "--kron-shapes", "ffn=2x2")
    dense, _, _ = build_model(toy_data[1], "--quant-bits", "8")
    kron, _, _ = build_model(toy_data[1], *KRON, "--quant-bits", "8")
    with pytest.raises(Exception, match="holds Kronecker factors"):
        dense.load_state_dict(kron.state_dict())


def test_a_factor_far_from_what_the_matrices_allow_is_warned_once_per_shape(toy_data, caplog):
    with caplog.at_level(logging.WARNING, logger="fullyqt.kron.attach"):
        model, _, _ = build_model(toy_data[1], "--kron-layers", "ffn", "--kron-factor", "1e6")
    far = [r.getMessage() for r in caplog.records if "is far from" in r.getMessage()]
    shapes = {ks for _, ks in model.factorized}
    assert len(far) == len(shapes) == 2  # fc1 and fc2: two shapes, one line each
    best = max(ks.compression for ks in shapes)
    assert best < 1e3 and any(f"{best:.1f}x fewer numbers" in line for line in far)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fullyqt.kron.attach"):
        build_model(toy_data[1], *KRON)
    assert not [r for r in caplog.records if "is far from" in r.getMessage()]


def test_pruned_heads_and_kronecker_ffn_compact_into_one_model(toy_data):
    from fullyqt.prune.compact import compact_state
    from fullyqt.prune.structure import heads_alive

    prune = ["--prune-method", "sigmoid", "--prune-attn-block", "16x16", "--max-update", "100",
             "--warmup-updates", "10"]
    kron = ["--kron-layers", "ffn,embed", "--kron-factor", "4", "--quant-bits", "8"]
    model, task, _ = build_model(toy_data[1], *kron, *prune)
    assert {group for group, _, _ in model.pruner.matrices} == {"attn"}  # FFN left factorized
    model.set_num_updates(100)
    attn = model.decoder.layers[0].self_attn
    with torch.no_grad():
        attn.out_proj.source.scores.raw[:, 1] = -10 / attn.out_proj.source.scores.scale
    batch = sample_batch(task, "train")
    model.train()
    with torch.no_grad():
        model(**batch["net_input"])
    model.eval()
    assert heads_alive(attn).tolist() == [True, False, True, True]
    state, shapes = compact_state(model)
    assert shapes.decoder[0].heads == 3 and shapes.decoder[0].ffn == 128
    compact, _, _ = build_model(toy_data[1], *kron, "--prune-compact-shapes", shapes.to_json())
    compact.load_state_dict(state)
    compact.eval()
    with torch.no_grad():
        assert torch.equal(compact(**batch["net_input"])[0], model(**batch["net_input"])[0])


def test_a_finetune_of_a_factorized_checkpoint_takes_its_factorization(toy_data, tmp_path):
    """Kronecker's second stage (or a later step) needs no --kron-* option repeated."""
    stage1, _, args = build_model(toy_data[1], *KRON, "--quant-bits", "8")
    ckpt = tmp_path / "stage1.pt"
    torch.save({"args": args, "model": stage1.state_dict(), "extra_state": {},
                "optimizer_history": [{"num_updates": 5}], "last_optimizer_state": None}, ckpt)
    stage2, _, args2 = build_model(toy_data[1], "--quant-bits", "8", "--finetune-from-model",
                                   ckpt)
    assert (args2.kron_layers, args2.kron_factor) == (args.kron_layers, args.kron_factor)
    assert stage2.factorized == stage1.factorized
    stage2.load_state_dict(stage1.state_dict())  # strict: the same factors
    dense, _, args3 = build_model(toy_data[1], "--quant-bits", "8", "--finetune-from-model",
                                  tmp_path / "gone.pt")
    assert args3.kron_layers is None and not dense.factorized
