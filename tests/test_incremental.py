"""Incremental decoding runs the same quantized path as full-sequence decoding."""
import pytest
import torch

from tests.conftest import build_model, calibrated, sample_batch


def decode_both_ways(model, task, batch, steps=6):
    """Decoder outputs of the first ``steps`` target positions: the full sequence at once, and
    one position at a time with an incremental state; and the mask of real (non-pad) ones."""
    net = batch["net_input"]
    with torch.no_grad():
        enc = model.encoder(net["src_tokens"], net["src_lengths"])
        prev = net["prev_output_tokens"][:, :steps]
        full, _ = model.decoder(prev, encoder_out=enc)
        state = {}
        inc = torch.cat([model.decoder(prev[:, : t + 1], encoder_out=enc, incremental_state=state)[0]
                         for t in range(prev.size(1))], dim=1)
    # Padding positions get different positional embeddings in the two modes (in stock fairseq
    # too); every real target position must agree.
    real = prev.ne(task.target_dictionary.pad())
    assert inc.shape == full.shape and (~real).any() and real.sum() > 30
    return inc, full, real


@pytest.mark.parametrize("extra", [[], ["--encoder-normalize-before", "--decoder-normalize-before"]])
def test_exact_incremental_decoding_is_bit_identical_in_float32(toy_data, extra):
    """Exact evaluation multiplies integer codes (linears, Q·Kᵀ, P·V, the softmax sum): one
    position decoded alone gets the bits it gets in the full sequence."""
    model, task, _ = build_model(toy_data[1], "--quant-bits", "8", *extra)
    batch = sample_batch(task, n=8)
    model = calibrated(model, batch)
    assert next(model.parameters()).dtype == torch.float32
    inc, full, real = decode_both_ways(model, task, batch)
    assert torch.equal(inc[real], full[real])


SITES = ("softmax_numerator_quant", "softmax_denominator_quant", "attn_output_quant")


def quantizer_inputs(model, run):
    """``{(attention, site): [input of each call]}`` of the decoder attentions' quantizers that
    take Q·Kᵀ (through exp), the softmax sum and P·V, recorded while ``run()`` runs."""
    seen, handles = {}, []
    for name, m in model.decoder.named_modules():
        for site in SITES if name.endswith("attn") else ():
            def hook(_q, inputs, key=(name, site)):
                seen.setdefault(key, []).append(inputs[0].detach().clone())
            handles.append(getattr(m, site).register_forward_pre_hook(hook))
    with torch.no_grad():
        run()
    for h in handles:
        h.remove()
    return seen


def test_exact_attention_products_do_not_depend_on_the_sequence_shape(toy_data):
    """Before any quantizer rounds them: Q·Kᵀ, the softmax sum and P·V of one position decoded
    alone equal that position's in the full sequence (float matmuls of other shapes differ)."""
    model, task, _ = build_model(toy_data[1], "--quant-bits", "8")
    batch = sample_batch(task, n=8)
    model = calibrated(model, batch)
    net = batch["net_input"]
    enc = model.encoder(net["src_tokens"], net["src_lengths"])
    prev = net["prev_output_tokens"][:, :8]
    full = quantizer_inputs(model, lambda: model.decoder(prev, encoder_out=enc))
    state = {}
    inc = quantizer_inputs(model, lambda: [
        model.decoder(prev[:, : t + 1], encoder_out=enc, incremental_state=state)
        for t in range(prev.size(1))])
    real = prev.ne(task.target_dictionary.pad())
    assert len(full) == 2 * 3 * 2  # two layers, self and encoder attention, three sites
    compared = 0
    for key, (whole,) in full.items():
        for t, step in enumerate(inc[key]):
            rows = real[:, t]
            if key[1] == "attn_output_quant":  # (time, batch, dim)
                a, b = whole[t][rows], step[0][rows]
            else:  # (batch, heads, time, keys): self-attention sees keys up to t
                a, b = whole[rows][:, :, t, : step.shape[-1]], step[rows][:, :, 0]
            assert torch.equal(a, b), (key, t)
            compared += a.numel()
    assert compared > 5000


def test_fake_incremental_decoding_differs_only_in_the_low_bits(toy_data):
    """Float matmuls of other shapes round differently (why exact mode exists), within 1e-4."""
    model, task, _ = build_model(toy_data[1], "--quant-bits", "8", "--quant-kernels", "fake")
    batch = sample_batch(task, n=8)
    inc, full, real = decode_both_ways(calibrated(model, batch), task, batch)
    torch.testing.assert_close(inc[real], full[real], rtol=1e-4, atol=1e-4)


def test_attention_never_takes_the_fused_path(toy_data, monkeypatch):
    """F.multi_head_attention_forward reads the raw projection weights: it must never run."""
    import torch.nn.functional as F

    def refuse(*a, **k):
        raise AssertionError("fused attention path taken")

    monkeypatch.setattr(F, "multi_head_attention_forward", refuse)
    model, task, _ = build_model(toy_data[1], "--quant-bits", "8")
    batch = sample_batch(task, n=4)
    model.train()
    model(**batch["net_input"])[0].sum().backward()
    model.eval()
    with torch.no_grad():
        model(**batch["net_input"])


def test_exact_softmax_kernel_equals_the_chain(toy_data, monkeypatch):
    """Exact evaluation's quantized softmax in one kernel pass after torch's exp gives the
    chain's logits and attention weights bit for bit; hooks on a softmax quantizer send it back
    to the chain (so that they see it run)."""
    from fullyqt.quant import fused
    from fullyqt.quant.attention import QuantMultiheadAttention

    if fused.kernel() is None:
        pytest.skip("no C compiler: the kernel does not build")
    model, task, _ = build_model(toy_data[1], "--quant-bits", "8")
    batch = sample_batch(task, n=8)
    model = calibrated(model, batch)
    runs = []
    real = fused.softmax_codes
    monkeypatch.setattr(fused, "softmax_codes", lambda *a: runs.append(1) or real(*a))
    with torch.no_grad():
        logits, extra = model(**batch["net_input"])
    assert runs
    kernel_runs = len(runs)
    handles = [m.softmax_denominator_quant.register_forward_hook(lambda *a: None)
               for m in model.modules() if isinstance(m, QuantMultiheadAttention)]
    with torch.no_grad():
        want_logits, want_extra = model(**batch["net_input"])
    for h in handles:
        h.remove()
    assert len(runs) == kernel_runs
    assert torch.equal(logits, want_logits) and torch.equal(extra["attn"][0], want_extra["attn"][0])


def test_exact_softmax_kernel_keeps_the_chain_on_nan_and_masked_rows():
    """Rows whose keys are all masked give zeros, a row holding NaN gives NaN, in the kernel as
    in the chain (a NaN code must not be summed as an integer)."""
    from fullyqt.quant import fused
    from fullyqt.quant.attention import QuantMultiheadAttention
    from fullyqt.quant.config import QuantConfig

    if fused.kernel() is None:
        pytest.skip("no C compiler: the kernel does not build")
    attn = QuantMultiheadAttention(16, 2, qcfg=QuantConfig(8, 8), pad=None,
                                   self_attention=True)
    x = torch.randn(7, 3, 16)
    for _ in range(3):
        attn(x, x, x)
    attn.eval()
    scores = torch.randn(3, 2, 7, 7) * 3
    scores[0, 1, 2] = float("-inf")
    scores[1, 0, 4, 3] = float("nan")
    probs, codes = attn._exact_softmax(scores, True)
    handle = attn.softmax_output_quant.register_forward_hook(lambda *a: None)
    want_probs, want_codes = attn._exact_softmax(scores, True)
    handle.remove()
    torch.testing.assert_close(probs, want_probs, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(codes, want_codes, rtol=0, atol=0, equal_nan=True)
    assert probs[1, 0, 4].isnan().all() and (probs[0, 1, 2] == 0).all()
    assert not probs[1, 0, 3].isnan().any()


def test_the_decoder_reorders_every_module_that_keeps_decoding_state(toy_data):
    """Beam search's reorder walks ``stateful_modules`` only: they must be every module of the
    decoder (the decoder's own no-op aside) that fairseq's full walk would ask, and the state
    they leave must be the one fairseq's walk leaves."""
    from fairseq.models import FairseqIncrementalDecoder

    model, task, _ = build_model(toy_data[1], "--quant-bits", "8")
    decoder = model.decoder
    walked = {id(m) for m in decoder.modules() if hasattr(m, "reorder_incremental_state")}
    assert walked - {id(decoder)} == {id(m) for m in decoder.stateful_modules()}
    batch = sample_batch(task, n=4)
    model = calibrated(model, batch)
    net = batch["net_input"]
    ours = {}
    with torch.no_grad():
        enc = model.encoder(net["src_tokens"], net["src_lengths"])
        decoder(net["prev_output_tokens"][:, :2], encoder_out=enc, incremental_state=ours)
    theirs, before = ({k: dict(v) for k, v in ours.items()} for _ in range(2))
    order = torch.tensor([2, 0, 3, 1])
    decoder.reorder_incremental_state_scripting(ours, order)
    FairseqIncrementalDecoder.reorder_incremental_state_scripting(decoder, theirs, order)
    moved = 0
    for key, buffers in theirs.items():
        for name, t in buffers.items():
            if t is None:
                assert ours[key][name] is None
                continue
            assert torch.equal(ours[key][name], t), (key, name)
            moved += name == "prev_key" and not torch.equal(t, before[key][name])
    assert moved  # the self-attention keys did move


@pytest.mark.parametrize("bits", ["8", "4"])
def test_attention_kernels_give_the_bits_of_the_torch_ops(toy_data, monkeypatch, bits):
    """``kernels/attention.c`` (Q·Kᵀ with its masks and row max, P·V, from codes) against
    ``codes_matmul`` and the torch ops: encoder (padded keys), decoder in full (future mask)
    and one position at a time."""
    from fullyqt.quant.attention import QuantMultiheadAttention

    model, task, _ = build_model(toy_data[1], "--quant-bits", bits)
    batch = sample_batch(task, n=8)
    model = calibrated(model, batch)
    assert batch["net_input"]["src_tokens"].eq(task.source_dictionary.pad()).any()
    ran, fused_products = [], QuantMultiheadAttention._fused_products

    def watched(self, *args, **kwargs):
        out = fused_products(self, *args, **kwargs)
        ran.append(out is not None)
        return out

    monkeypatch.setattr(QuantMultiheadAttention, "_fused_products", watched)
    kernels = decode_both_ways(model, task, batch)
    assert ran and all(ran)
    monkeypatch.setattr(QuantMultiheadAttention, "_fused_products", lambda *a, **k: None)
    torch_ops = decode_both_ways(model, task, batch)
    assert torch.equal(kernels[0], torch_ops[0]) and torch.equal(kernels[1], torch_ops[1])
