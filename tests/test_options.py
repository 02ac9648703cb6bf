"""Quantization options: validation through fairseq-train, and the float switch."""
import argparse

import pytest

from fullyqt.errors import UserError, one_line
from fullyqt.quant.config import QuantConfig, QuantOptionError
from fullyqt.quant.quantizer import ActivationQuantizer
from tests.conftest import TINY, USER_DIR, build_model, cli


@pytest.mark.slow
@pytest.mark.parametrize("option,value,allowed", [
    ("--quant-bits", "1", "integer from 2 to 16"),
    ("--quant-bits", "17", "integer from 2 to 16"),
    ("--quant-bits", "eight", "integer from 2 to 16"),
    ("--quant-act-bits", "0", "integer from 2 to 16"),
    ("--quant-start-update", "-1", "integer >= 0"),
    ("--quant-ema-momentum", "1.5", "[0, 1)"),
    ("--quant-weight-buckets", "column", "row, tensor"),
    ("--quant-kernels", "int9", "exact, fake, int8, fake64"),
    ("--quant-softmax-denominator-bits", "99", "integer from 2 to 16"),
    ("--quant-act-range", "percentile", "auto, minmax, mse"),
])
def test_bad_values_stop_with_one_clear_line(toy_data, tmp_path, option, value, allowed):
    proc = cli("fairseq-train", toy_data[1], "--user-dir", USER_DIR, *TINY, option, value,
               "--save-dir", tmp_path, "--max-update", "1", "--cpu", check=False)
    assert proc.returncode == 2
    err = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(err) == 1, proc.stderr[-2000:]
    assert option in err[0] and repr(value) in err[0] and allowed in err[0]
    assert "Traceback" not in proc.stderr and "usage:" not in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
@pytest.mark.parametrize("flags,message", [
    (["--no-quant", "--quant-bits", "4"], "--quant-bits 4 contradicts --no-quant"),
    (["--quant-act-bits", "4", "--no-quant"], "--no-quant contradicts --quant-act-bits"),
    (["--quant-bits", "12", "--quant-kernels", "int8"],
     "--quant-kernels int8: runs weights and activations of at most 8 bits (got 12-bit weights"),
    (["--quant-act-bits", "10", "--quant-kernels", "int8"], "10-bit activations"),
    (["--encoder-learned-pos"], "fullyqt_transformer does not support --encoder-learned-pos"),
    (["--no-quant", "--quant-kernels", "int8"],
     "--quant-kernels int8 runs integer codes, which a --no-quant model has none of"),
    (["--no-quant", "--quant-saved-codes"],
     "--quant-saved-codes keeps fake-quantized activations as byte codes, which a --no-quant"),
    (["--prune-density", "0.5"], "--prune-density 0.5 applies to --prune-method topk, which is"),
    (["--prune-decoder-density", "0.5"], "--prune-decoder-density 0.5 applies to --prune-method"),
])
def test_contradictions_and_unsupported_options_stop_with_one_line(toy_data, tmp_path, flags,
                                                                    message):
    proc = cli("fairseq-train", toy_data[1], "--user-dir", USER_DIR, *TINY, *flags,
               "--save-dir", tmp_path, "--max-update", "1", "--cpu", "--max-tokens", "1000",
               "--optimizer", "adam", "--lr", "1e-3", check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert last.startswith("fairseq-train: error: ") and message in last, last
    assert not list(tmp_path.iterdir())  # nothing written


def test_config_from_namespace_validates_too():
    ns = argparse.Namespace(quant_bits=1)
    with pytest.raises(QuantOptionError, match="--quant-bits: got 1"):
        QuantConfig.from_args(ns)
    ns = argparse.Namespace(quant_kernels="int9")  # as --model-overrides would set it
    with pytest.raises(QuantOptionError,
                       match="--quant-kernels: got 'int9'; allowed: exact, fake, int8"):
        QuantConfig.from_args(ns)


def test_overrides_and_float_switch(toy_data):
    model, _, _ = build_model(toy_data[1], "--quant-bits", "6", "--quant-act-bits", "8",
                              "--quant-weight-buckets", "tensor")
    attn = model.encoder.layers[0].self_attn
    assert attn.q_proj.weight_quant.bits == 6 and attn.q_proj.weight_quant.buckets == "tensor"
    assert attn.q_quant.bits == 8
    assert model.encoder.layers[0].fc2.output_quant.momentum == 0.9

    model, _, _ = build_model(toy_data[1], "--quant-bits", "4",
                              "--quant-softmax-denominator-bits", "8")
    from fullyqt.quant.coverage import quantization_points
    bits = {}
    for p in quantization_points(model):
        bits.setdefault(p.name.endswith("softmax_denominator_quant"), set()).add(p.bits)
    assert bits == {True: {8}, False: {4}}
    n_attention = sum(1 for n, _ in model.named_modules() if n.endswith("attn"))
    assert sum(1 for p in quantization_points(model)
               if p.name.endswith("softmax_denominator_quant")) == n_attention > 0

    model, _, _ = build_model(toy_data[1], "--quant-bits", "4", "--quant-act-range", "mse")
    observers = {m.observer for m in model.modules() if isinstance(m, ActivationQuantizer)}
    assert observers == {"mse"}

    def observers_of(*flags):
        built, _, _ = build_model(toy_data[1], *flags)
        return {m.observer for m in built.modules() if isinstance(m, ActivationQuantizer)}

    # the default takes mse where min-max ranges collapse (4 activation bits or fewer)
    assert observers_of("--quant-bits", "4") == observers_of("--quant-act-bits", "3") == {"mse"}
    assert observers_of("--quant-bits", "8") == {"minmax"}
    assert observers_of("--quant-weight-bits", "4", "--quant-act-bits", "8") == {"minmax"}
    assert observers_of("--quant-bits", "4", "--quant-act-range", "minmax") == {"minmax"}
    # a Namespace saved before the option had "auto" (no such attribute) keeps min-max
    old = argparse.Namespace(quant_bits=4)
    assert QuantConfig.from_args(old).act_range == "minmax"

    float_model, _, _ = build_model(toy_data[1], "--no-quant")
    assert not any(p.active for p in quantization_points(float_model))


def test_unsupported_stock_options_are_refused(toy_data):
    with pytest.raises(ValueError, match="encoder-learned-pos"):
        build_model(toy_data[1], "--encoder-learned-pos")


@pytest.mark.slow
def test_bad_override_at_decode_time_is_one_line(toy_data, trained_8bit):
    """--model-overrides bypasses argparse; the plugin still answers with one line."""
    proc = cli("fairseq-generate", toy_data[1], "--user-dir", USER_DIR, "--path", trained_8bit,
               "--cpu", "--gen-subset", "valid", "--model-overrides",
               "{'quant_kernels': 'int9'}", check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    err = [line for line in proc.stderr.splitlines() if "error" in line]
    assert err == ["fairseq-generate: error: --quant-kernels: got 'int9'; allowed: exact, fake, "
                   "int8, fake64"]


def test_an_error_fairseq_wraps_is_printed_as_one_line():
    def raised(make):
        try:
            make()
        except Exception as e:  # noqa: BLE001  (what fairseq's trainer does)
            return e

    def wrapped(inner):
        def make():
            try:
                raise inner
            except Exception:
                raise Exception("Cannot load model parameters from checkpoint /r/ckpt.pt; "
                                "please ensure that the architectures match.")
        return raised(make)

    assert one_line(wrapped(UserError("the checkpoint holds pruning masks"))) == (
        "the checkpoint holds pruning masks")
    mismatch = RuntimeError("Error(s) in loading state_dict for M:\n\tsize mismatch for "
                            "encoder.fc1.weight: copying a param with shape [8, 4] from "
                            "checkpoint, the shape in current model is [16, 4].")
    assert one_line(wrapped(mismatch)) == (
        "/r/ckpt.pt: its weights do not fit the model these options build (size mismatch for "
        "encoder.fc1.weight: copying a param with shape [8, 4] from checkpoint, the shape in "
        "current model is [16, 4].); pass the architecture and fullyqt options it was trained "
        "with")
    assert one_line(RuntimeError("something else")) is None
    assert one_line(wrapped(KeyError("x"))).startswith("/r/ckpt.pt: its weights do not fit")
