"""Integer kernels: Int8Linear against the fake-quant layer, exact evaluation against Int8Linear
(bit for bit), model conversion, and the int8 export decoded natively through fairseq-generate."""
import pytest
import torch

from fullyqt.native import Int8Linear, NativeConversionError, to_native_int8
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


@pytest.mark.parametrize("wbits,abits,buckets", [(8, 8, "row"), (8, 8, "tensor"), (4, 8, "row"),
                                                 (6, 5, "row")])
def test_exact_evaluation_is_int8_linear_bit_for_bit(wbits, abits, buckets):
    lin = calibrated_linear(wbits, abits, buckets, out_quant=True)
    native = Int8Linear(lin).eval()
    x = torch.randn(7, 5, 48) * 3
    with torch.no_grad():
        fake = lin(x)
        lin.kernels = "exact"
        exact = lin(x)
        with torch.enable_grad():  # with gradients wanted, eval falls back to fake quantization
            assert torch.equal(lin(x), fake)
    assert torch.equal(exact, native(x))
    # and both are the fake-quant layer up to float rounding (one output step at most)
    _, _, step = lin.output_quant.frozen_range()
    assert (exact - fake).abs().max() <= step * 1.001


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
    with torch.no_grad():
        ref = model(**batch["net_input"])[0]
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


def test_exact_evaluation_equals_int8_kernels(toy_data):
    import copy

    model, batch = _trained_tiny(toy_data, "--quant-bits", "8")
    linears = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert all(m.kernels == "exact" and m.integer_form() is not None for m in linears)
    native = copy.deepcopy(model)
    to_native_int8(native)
    with torch.no_grad():
        exact, out = model(**batch["net_input"])[0], native(**batch["net_input"])[0]
        for m in linears:
            m.kernels = "fake"
        fake = model(**batch["net_input"])[0]
    real = batch["net_input"]["prev_output_tokens"].ne(1)
    assert torch.equal(exact[real], out[real])
    assert not torch.equal(exact[real], fake[real])  # exact is a different computation ...
    assert (exact - fake)[real].abs().median() <= 1e-4 * fake.abs().max()  # ... of the same model


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


def test_int_matmul_matches_an_integer_reference_for_any_row_count():
    from fullyqt.quant.integer_form import int_matmul

    b = torch.randint(-128, 128, (40, 24), dtype=torch.int8)
    for rows in (0, 1, 5, 17):
        a = torch.randint(-128, 128, (rows, 40), dtype=torch.int8)
        out = int_matmul(a, b)
        assert out.dtype == torch.int32 and out.shape == (rows, 24)
        assert torch.equal(out.long(), a.long() @ b.long())
    k = 2500  # sums beyond float32's exact integers (2^24): still exact
    a = torch.full((3, k), -128.0)  # float codes, as the layers pass them
    b = torch.full((k, 8), -128, dtype=torch.int8)
    b[:, 1] = torch.randint(-128, 128, (k,), dtype=torch.int8)
    ref = a.long() @ b.long()
    assert ref.abs().max() > 2**24 and torch.equal(int_matmul(a, b).long(), ref)


@pytest.mark.parametrize("k,n", [(1, 24), (24, 1), (1, 1)])
def test_integer_matmul_of_a_matrix_with_a_side_of_one(k, n):
    """torch._int_mm on CPU misreads a (1, n) matrix with transposed strides; the integer form
    hands it row-major tensors (a compacted FFN can keep a single unit)."""
    from fullyqt.quant.integer_form import int_matmul

    a = torch.randint(-128, 128, (5, k), dtype=torch.int8)
    b = torch.randint(-128, 128, (n, k), dtype=torch.int8).t()  # transposed view, as stored
    assert torch.equal(int_matmul(a, b), (a.double() @ b.double()).to(torch.int32))
