"""Integer kernels: Int8Linear against the fake-quant layer, exact evaluation and Int8Linear
against a float64 reference written here, model conversion, and the int8 export decoded
natively through fairseq-generate (exact == int8 bit for bit on separately loaded models:
``test_export.py``)."""
import pytest
import torch

from fullyqt.quant.inference import set_kernels
from fullyqt.quant.native import Int8Linear, NativeConversionError, to_native_int8
from fullyqt.quant.config import QuantConfig
from fullyqt.quant.linear import QuantLinear
from tests.conftest import build_model, sample_batch


def calibrated_linear(wbits, abits, buckets, out_quant=False):
    """A QuantLinear with its own input quantizer, ranges set by a few training batches."""
    qcfg = QuantConfig(wbits, abits, weight_buckets=buckets)
    lin = QuantLinear(48, 24, qcfg=qcfg, quantize_input=True, quantize_output=out_quant)
    with torch.no_grad():
        lin.weight.mul_(torch.linspace(0.2, 3.0, 24)[:, None])  # rows of different ranges
        for _ in range(3):
            lin(torch.randn(10, 48) * 2 + 0.5)
    return lin.eval()


@pytest.mark.parametrize("wbits,abits,buckets", [(8, 8, "row"), (8, 8, "tensor"), (4, 8, "row"),
                                                 (4, 4, "tensor"), (6, 5, "row")])
def test_int8_linear_equals_fake_quant_layer(wbits, abits, buckets):
    lin = calibrated_linear(wbits, abits, buckets)
    native = Int8Linear(lin)
    x = torch.randn(7, 5, 48) * 3  # values beyond the calibrated range are clamped alike
    with torch.no_grad():
        ref, out = lin(x), native(x)
    assert out.shape == ref.shape == (7, 5, 24)
    assert native.form.weight_t.dtype == torch.int8
    torch.testing.assert_close(out, ref, atol=1e-4 * ref.abs().max().item(), rtol=0)


def test_output_quantizer_kept_and_training_refused():
    lin = calibrated_linear(8, 8, "row", out_quant=True)
    native = Int8Linear(lin)
    assert native.output_quant is lin.output_quant
    x = torch.randn(9, 48)
    with torch.no_grad():
        out = native(x)
    lo, hi, s = lin.output_quant.frozen_range()
    k = (out - lo) / s
    assert torch.allclose(k, k.round(), atol=1e-3)  # on the output quantizer's grid
    with pytest.raises(RuntimeError, match="inference-only"):
        native.train()(x)


def float64_reference(lin, x, wbits, abits, buckets):
    """``x @ Q(W)^T + b`` from the scheme's definition, in float64: min-max grids of the weight
    (per row or per tensor) and of the input quantizer's running range, round half to even."""
    def on_grid(t, lo, hi, bits):
        step = (hi - lo) / (2**bits - 1)
        return lo + step * torch.round((t.clamp(lo, hi) - lo) / step)

    w = lin.weight.detach().double()
    if buckets == "row":
        lo, hi = w.min(1, keepdim=True).values, w.max(1, keepdim=True).values
    else:
        lo, hi = w.min(), w.max()
    xq = on_grid(x.double(), float(lin.input_quant.lo), float(lin.input_quant.hi), abits)
    return xq @ on_grid(w, lo, hi, wbits).T + lin.bias.detach().double()


@pytest.mark.parametrize("wbits,abits,buckets", [(8, 8, "row"), (8, 8, "tensor"), (4, 8, "row"),
                                                 (6, 5, "row")])
def test_integer_path_equals_a_float64_reference(wbits, abits, buckets):
    """Exact evaluation and the int8 kernels, each against the product written out in float64."""
    lin = calibrated_linear(wbits, abits, buckets)
    x = torch.randn(7, 5, 48) * 3  # values beyond the calibrated range are clamped alike
    ref = float64_reference(lin, x, wbits, abits, buckets)
    with torch.no_grad():
        fake = lin(x)
        lin.kernels = "exact"
        exact = lin(x)
        with torch.enable_grad():  # with gradients wanted, eval falls back to fake quantization
            assert torch.equal(lin(x), fake)
        native = Int8Linear(lin)(x)
    tol = 2e-6 * ref.abs().max().item()
    for y in (exact, native):
        assert y.dtype == torch.float32
        assert (y.double() - ref).abs().max() <= tol
    assert not torch.equal(exact, fake)  # exact is not the float32 matmul of dequantized values


def _trained_tiny(toy_data, *extra):
    model, task, _ = build_model(toy_data[1], *extra)
    batch = sample_batch(task)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(**batch["net_input"])  # sets every activation range
    return model.eval(), batch


def test_model_conversion_covers_every_linear_and_keeps_logits(toy_data):
    model, batch = _trained_tiny(toy_data, "--quant-bits", "8")
    set_kernels(model, "fake64")  # the reference: dequantized values multiplied in float64
    with torch.no_grad():
        ref = model(**batch["net_input"])[0]
    set_kernels(model, "exact")
    linears = sum(isinstance(m, QuantLinear) for m in model.modules())
    assert to_native_int8(model) == linears
    assert not any(isinstance(m, QuantLinear) for m in model.modules())
    with torch.no_grad():
        out = model(**batch["net_input"])[0]  # a padded batch, unlike the calibration pass
    real = batch["net_input"]["prev_output_tokens"].ne(1)  # padding positions carry no output
    assert (~real).any()
    out, ref = out[real], ref[real]
    # Each layer matches to float precision (above); across the model a last-bit difference can
    # move a value across a rounding boundary of a later quantizer, which shifts it one step.
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.95
    assert (out - ref).abs().median() <= 1e-4 * ref.abs().max()
    assert (out - ref).abs().max() <= 0.05 * ref.abs().max()


def test_validation_between_updates_sees_the_new_weights_and_ranges(toy_data):
    """As in fairseq-train: eval (validation), a training update, eval again."""
    import copy

    model, batch = _trained_tiny(toy_data, "--quant-bits", "8")
    real = batch["net_input"]["prev_output_tokens"].ne(1)
    with torch.no_grad():
        before = model(**batch["net_input"])[0]
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(**batch["net_input"])[0].logsumexp(-1).mean().backward()  # gradients flow in training
    opt.step()
    model.eval()
    native = copy.deepcopy(model)
    to_native_int8(native)
    with torch.no_grad():
        after, ref = model(**batch["net_input"])[0], native(**batch["net_input"])[0]
    assert not torch.equal(after[real], before[real])
    assert torch.equal(after[real], ref[real])  # no stale cached integer form


def test_integer_forms_wait_for_their_input_quantizer_to_have_a_range(toy_data):
    model, task, _ = build_model(toy_data[1], "--quant-bits", "8")
    model.eval()  # untrained: wired, but no ranges yet, so eval stays fake-quant
    linears = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert all(m.input_grid is not None and m.integer_form() is None for m in linears)
    with torch.no_grad():
        model(**sample_batch(task, n=4)["net_input"])  # and it runs


def test_conversion_refuses_wide_weights_and_training_mode(toy_data):
    model, batch = _trained_tiny(toy_data, "--quant-weight-bits", "12", "--quant-act-bits", "8")
    assert all(m.integer_form() is None for m in model.modules() if isinstance(m, QuantLinear))
    with torch.no_grad():  # exact evaluation leaves layers beyond int8 on fake quantization
        model(**batch["net_input"])
    with pytest.raises(NativeConversionError, match=r"at most 8 bits.*\[12\]"):
        to_native_int8(model)
    with pytest.raises(NativeConversionError, match="eval mode"):
        to_native_int8(model.train())


@pytest.mark.slow
def test_int8_export_loads_with_integer_kernels_everywhere(toy_data, trained_8bit, tmp_path):
    from fairseq.models.transformer import TransformerModel

    from tests.conftest import USER_DIR, cli

    out = tmp_path / "model.int8.pt"
    cli("fullyqt-export", trained_8bit, "--format", "int8", "--out", out)
    hub = TransformerModel.from_pretrained(str(tmp_path), checkpoint_file=out.name,
                                           data_name_or_path=str(toy_data[1]), user_dir=USER_DIR)
    assert isinstance(hub.models[0].decoder.output_projection, Int8Linear)
    assert hub.translate("w5 w6 w7", beam=5) == "W7 W6 W5"
    proc = cli("fairseq-interactive", toy_data[1], "--user-dir", USER_DIR, "--path", out,
               "--beam", "5", "--cpu", "--source-lang", "src", "--target-lang", "tgt",
               input="w1 w2 w3 w4\n")
    assert "linear layers run int8 kernels" in proc.stdout + proc.stderr
    assert [x.split("\t")[2] for x in proc.stdout.splitlines() if x.startswith("D-")] == [
        "W4 W3 W2 W1"]
    # and the fake-quant path stays one override away
    fake = TransformerModel.from_pretrained(str(tmp_path), checkpoint_file=out.name,
                                            data_name_or_path=str(toy_data[1]),
                                            user_dir=USER_DIR, quant_kernels="fake")
    assert isinstance(fake.models[0].decoder.output_projection, QuantLinear)


def test_fake64_reference_accumulates_linears_in_double(toy_data, trained_8bit):
    from fullyqt.checkpoint import load_model

    model = load_model(str(trained_8bit), quant_kernels="fake64")
    linears = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert linears and all(m.kernels == "fake64" for m in linears)
    lin = linears[0]
    x = torch.randn(3, lin.in_features)
    with torch.no_grad():
        y = lin(x)
        w = lin.weight_quant(lin.weight)
        ref = torch.nn.functional.linear(x.double(), w.double(), lin.bias.double()).float()
    assert y.dtype == torch.float32 and torch.equal(y, ref)


def engines_here():
    """The engines of int8 products this machine can run (int16 needs its AVX2 kernel)."""
    from fullyqt.quant import fused, int_engine

    return [e for e in int_engine.ENGINES if e != "int16" or fused.int16_products()]


@pytest.fixture(params=["int8", "float32", "int16"])
def engine(request, monkeypatch):
    """Each engine of int8 products in turn, whichever this processor would choose."""
    from fullyqt.quant import int_engine

    if request.param not in engines_here():
        pytest.skip("the int16 kernel needs AVX2 and a C compiler")
    monkeypatch.setattr(int_engine, "cpu_engine", lambda: request.param)
    return request.param


def test_int_matmul_matches_an_integer_reference_for_any_row_count(engine):
    from fullyqt.quant.integer_form import int_matmul

    b = torch.randint(-128, 128, (40, 24), dtype=torch.int8)
    for rows in (0, 1, 5, 17):
        a = torch.randint(-128, 128, (rows, 40), dtype=torch.int8)
        out = int_matmul(a, b)
        assert out.dtype == torch.int32 and out.shape == (rows, 24)
        assert torch.equal(out.long(), a.long() @ b.long())
    for k in (1024, 2500):  # 1024: the longest exact float32 product; 2500: chunks, sums > 2^24
        a = torch.full((3, k), -128.0)  # float codes, as the layers pass them
        b = torch.full((k, 8), -128, dtype=torch.int8)
        b[:, 1] = torch.randint(-128, 128, (k,), dtype=torch.int8)
        ref = a.long() @ b.long()
        assert ref.abs().max() >= 2**24 and torch.equal(int_matmul(a, b).long(), ref)


def test_integer_linear_gives_the_same_bits_on_either_engine(monkeypatch):
    from fullyqt.quant import int_engine

    lin = calibrated_linear(8, 8, "row")
    x = torch.randn(7, 5, 48) * 3
    outs = {}
    for name in engines_here():
        monkeypatch.setattr(int_engine, "cpu_engine", lambda name=name: name)
        lin.drop_caches()  # its integer form is made again, for this engine
        native = Int8Linear(lin)
        assert (native.form.weight_f is None) == (name != "float32")
        assert (native.form.weight_p is None) == (name != "int16")
        with torch.no_grad():
            outs[name] = native(x)
    for name in outs:
        assert torch.equal(outs[name], outs["int8"]), name


def test_the_int16_engine_takes_empty_inputs_and_its_kernels_switched_off(monkeypatch):
    """An empty batch, and the C kernels switched off for a while (the training-speed study
    times the torch ops so): the int16 engine's layer then runs float32 products of the codes
    and torch's affine (whose vector tail may round a last bit otherwise than the kernel)."""
    from fullyqt.quant import fused, int_engine

    if "int16" not in engines_here():
        pytest.skip("the int16 kernel needs AVX2 and a C compiler")
    monkeypatch.setattr(int_engine, "cpu_engine", lambda: "int16")
    native = Int8Linear(calibrated_linear(8, 8, "row"))
    x = torch.randn(7, 5, 48) * 3
    with torch.no_grad():
        on = native(x)
        assert native(x[:0]).shape == (0, 5, 24)
        with fused.switched_off():
            assert int_engine.engine(x.device) == "float32"
            off = native(x)
    torch.testing.assert_close(on, off, rtol=0, atol=1e-6 * on.abs().max().item())


@pytest.mark.parametrize("rows,k,n", [(1, 1, 1), (5, 3, 17), (9, 48, 24), (3, 2500, 40)])
def test_int16_layer_kernel_equals_an_integer_reference(rows, k, n):
    """The one-call int16 layer (codes, exact sums, affine) against its parts computed in
    int64 and float64 here: odd k, a partial last panel and tile, sums beyond 2^24."""
    from fullyqt.quant import fused

    if not fused.int16_products():
        pytest.skip("the int16 kernel needs AVX2 and a C compiler")
    g = torch.Generator().manual_seed(rows * 1000 + k)
    x = torch.randn(rows, k, generator=g) * 4
    x[0] = 1e6  # clamped to the top code
    w = torch.randint(-128, 128, (k, n), dtype=torch.int8, generator=g)
    w[:, 0] = -128  # with row 0: the longest sum's largest magnitude
    alpha, beta, c = (torch.rand(n, generator=g) - 0.5 for _ in range(3))
    affine = (10.0, 0.25, -128.0, 127.0)
    y = fused.int_linear(x.contiguous(), affine, fused.pack_int16(w), alpha, beta, c)
    codes = (x * affine[0] - affine[1]).round().clamp(affine[2], affine[3]).long()
    sums = codes @ w.long()
    if k == 2500:
        assert sums.abs().max() >= 2**24
    ref = (codes.sum(1, keepdim=True).double() * beta.double()
           + (sums.float().double() * alpha.double() + c.double()))
    assert torch.allclose(y.double(), ref, rtol=1e-6, atol=1e-6 * ref.abs().max().item())


def test_a_bad_engine_setting_is_refused_in_one_line(monkeypatch):
    from fullyqt.errors import UserError
    from fullyqt.quant import int_engine

    monkeypatch.setenv(int_engine.ENV, "int4")
    int_engine.cpu_engine.cache_clear()
    try:
        with pytest.raises(UserError,
                           match="FULLYQT_INT_MATMUL: got 'int4'; allowed: int8, float32, int16"):
            int_engine.cpu_engine()
        monkeypatch.setenv(int_engine.ENV, "float32")
        int_engine.cpu_engine.cache_clear()
        assert int_engine.cpu_engine() == "float32"
    finally:
        int_engine.cpu_engine.cache_clear()


@pytest.mark.parametrize("k,n", [(1, 24), (24, 1), (1, 1)])
def test_integer_matmul_of_a_matrix_with_a_side_of_one(k, n, engine):
    """torch._int_mm on CPU misreads a (1, n) matrix with transposed strides; the integer form
    hands it row-major tensors (a compacted FFN can keep a single unit)."""
    from fullyqt.quant.integer_form import int_matmul

    a = torch.randint(-128, 128, (5, k), dtype=torch.int8)
    b = torch.randint(-128, 128, (n, k), dtype=torch.int8).t()  # transposed view, as stored
    assert torch.equal(int_matmul(a, b), (a.double() @ b.double()).to(torch.int32))


def test_codes_matmul_equals_a_float64_product_and_ignores_zero_probabilities():
    """Attention's exact products: against the float64 product of the grid values; and keys
    whose probability is the code 0 of a ``lo = 0`` grid (masked ones) change no bit."""
    from fullyqt.quant.grid import Grid
    from fullyqt.quant.integer_form import code_sum, codes_matmul

    def code_matmul(x, x_grid, y, y_grid):  # from values, as attention takes its codes
        return codes_matmul(x_grid.codes(x), x_grid, y_grid.codes(y), y_grid)

    gq, gk = Grid(torch.tensor(-1.3), torch.tensor(2.1), 8), Grid(torch.tensor(-0.7),
                                                                torch.tensor(0.9), 8)
    gp = Grid(torch.tensor(0.0), torch.tensor(1.0), 8)
    q = gq.dequantize(torch.randint(0, 256, (2, 4, 9, 16)).float())
    k = gk.dequantize(torch.randint(0, 256, (2, 4, 16, 12)).float())
    scores = code_matmul(q, gq, k, gk)
    ref = q.double() @ k.double()
    assert (scores.double() - ref).abs().max() <= 1e-6 * ref.abs().max()
    p = gp.dequantize(torch.randint(0, 256, (2, 4, 9, 12)).float())
    v = gk.dequantize(torch.randint(0, 256, (2, 4, 12, 16)).float())
    out = code_matmul(p, gp, v, gk)
    ref = p.double() @ v.double()
    assert (out.double() - ref).abs().max() <= 1e-6 * ref.abs().max()
    padded = code_matmul(torch.cat([p, torch.zeros(2, 4, 9, 5)], -1), gp,
                         torch.cat([v, torch.randn(2, 4, 5, 16)], -2), gk)
    assert torch.equal(padded, out)
    assert torch.equal(code_matmul(p[:, :, 3:4], gp, v, gk), out[:, :, 3:4])  # one query alone
    total = code_sum(p, gp)
    assert (total.double() - p.double().sum(-1, keepdim=True)).abs().max() <= 1e-6 * 12
    assert torch.equal(code_sum(torch.cat([p, torch.zeros(2, 4, 9, 3)], -1), gp), total)
