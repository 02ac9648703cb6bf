"""Every matmul-like op of the model receives operands on the b-bit grid."""
import pytest
import torch
import torch.nn.functional as F
from fairseq.sequence_generator import SequenceGenerator
from torch.overrides import TorchFunctionMode

from fullyqt.quant.coverage import format_table, quantization_points
from fullyqt.quant.quantizer import ActivationQuantizer
from tests.conftest import CKPT, FIXTURE, TINY, build_model, calibrated, cli, sample_batch, train

MATMUL_LIKE = {F.linear: (0, 1), torch.matmul: (0, 1), torch.bmm: (0, 1),
               torch.Tensor.__matmul__: (0, 1), F.embedding: (1,), torch.einsum: None}


class OperandRecorder(TorchFunctionMode):
    """Records, for every matmul-like call, the most distinct values any operand row holds."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in MATMUL_LIKE:
            positions = MATMUL_LIKE[func]
            operands = args[1:] if positions is None else [args[i] for i in positions]
            for op in operands:
                if isinstance(op, torch.Tensor) and op.is_floating_point():
                    rows = op.detach().reshape(-1, op.shape[-1])
                    worst = max(len(torch.unique(r)) for r in rows)
                    self.calls.append((func.__name__, tuple(op.shape), worst))
        return func(*args, **kwargs)


def record(model, task, batch, bits):
    rec = OperandRecorder()
    with torch.no_grad(), rec:
        model(**batch["net_input"])
        gen = SequenceGenerator([model], task.target_dictionary, beam_size=2, max_len_b=12)
        gen.generate([model], {"net_input": batch["net_input"]})
    return rec.calls


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--encoder-normalize-before", "--decoder-normalize-before"],
                                   ["--quant-weight-buckets", "tensor"]])
def test_every_matmul_operand_is_on_the_4bit_grid(toy_data, extra):
    # fake kernels: the linears multiply the dequantized float values, as the paper defines it
    # (exact kernels multiply the integer codes themselves)
    model, task, _ = build_model(toy_data[1], "--quant-bits", "4", "--quant-kernels", "fake",
                                 *extra)
    batch = sample_batch(task)
    calls = record(calibrated(model, batch), task, batch, 4)
    kinds = {name for name, _, _ in calls}
    assert {"linear", "matmul", "embedding"} <= kinds, kinds
    offending = [c for c in calls if c[2] > 16]
    assert not offending, offending[:5]


@pytest.mark.slow
def test_the_check_catches_an_unquantized_model(toy_data):
    """The same check on a float model finds operands off the grid (so it can fail)."""
    model, task, _ = build_model(toy_data[1], "--no-quant")
    batch = sample_batch(task)
    calls = record(calibrated(model, batch), task, batch, 4)
    assert any(c[2] > 16 for c in calls)


class GridRecorder(TorchFunctionMode):
    """Each activation quantizer's grid as it quantized (forward hooks), and the activation
    operands of every linear and matmul (weights have per-row grids of their own)."""

    def __init__(self, model):
        super().__init__()
        self.grids, self.operands = set(), []
        self.handles = [m.register_forward_hook(self._grid) for m in model.modules()
                        if isinstance(m, ActivationQuantizer)]

    def _grid(self, q, _inputs, _out):
        if q.has_range:
            lo, hi, step = q.grid.scalars()
            self.grids.add((lo, hi, step))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.linear:
            self.operands.append((func.__name__, args[0].detach().clone()))
        elif func is torch.matmul:
            self.operands += [(func.__name__, a.detach().clone()) for a in args[:2]]
        return func(*args, **(kwargs or {}))


def on_grid(x, grid, tol=1e-3):
    """Every value of x is a point of grid (exact zeros aside: fairseq's padding masks)."""
    lo, hi, step = grid
    v = x[x != 0].double()
    k = (v - lo) / step
    return bool(((k - k.round()).abs() < tol).all() and (k > -tol).all()
                and (v <= hi + step * tol).all())


@pytest.mark.parametrize("extra", [[], ["--encoder-normalize-before", "--decoder-normalize-before"],
                                   ["--layernorm-embedding", "--activation-fn", "gelu"]])
def test_training_operands_are_on_a_grid_with_dropout(toy_data, extra):
    """Dropout (embedding, attention, activation) comes before its quantizer, so in training
    every activation a linear or matmul receives is a point of the grid that produced it."""
    model, task, _ = build_model(toy_data[1], "--quant-bits", "8", "--dropout", "0.3",
                                 "--attention-dropout", "0.3", "--activation-dropout", "0.3",
                                 *extra)
    batch = sample_batch(task)
    calibrated(model, batch).train()
    rec = GridRecorder(model)
    with rec:
        model(**batch["net_input"])[0].sum().backward()
    for h in rec.handles:
        h.remove()
    assert len(rec.operands) > 40 and len(rec.grids) > 40
    off = [(name, tuple(x.shape)) for name, x in rec.operands
           if not any(on_grid(x, g) for g in rec.grids)]
    assert not off, off[:5]


def test_the_grid_check_catches_dropout_after_a_quantizer():
    """Dropout's 1/(1-p) applied to quantized values leaves the grid (so the check can fail)."""
    q = ActivationQuantizer(8)
    x = torch.randn(64, 32)
    y = q(x)
    grid = q.grid.scalars()
    assert on_grid(y, grid)
    assert not on_grid(F.dropout(y, 0.3, training=True), grid)


def test_coverage_listing_names_every_site(toy_data):
    model, task, _ = build_model(toy_data[1], "--quant-bits", "6")
    calibrated(model, sample_batch(task), steps=1)
    points = quantization_points(model)
    names = {p.name for p in points}
    layer = "encoder.layers.0."
    for site in ["self_attn.q_proj.weight_quant", "self_attn.q_quant", "self_attn.k_quant",
                 "self_attn.v_quant", "self_attn.softmax_numerator_quant",
                 "self_attn.softmax_denominator_quant", "self_attn.softmax_output_quant",
                 "self_attn.attn_output_quant", "fc1.weight_quant", "fc2.output_quant",
                 "activation_fn.quant", "final_layer_norm.numerator_quant",
                 "final_layer_norm.denominator_quant", "final_layer_norm.quotient_quant",
                 "final_layer_norm.output_quant", "final_layer_norm.gain_quant"]:
        assert layer + site in names
    for site in ["encoder.embed_tokens.weight_quant", "encoder.embed_positions.weight_quant",
                 "encoder.layernorm_embedding", "decoder.layernorm_embedding",
                 "decoder.output_projection.weight_quant",
                 "decoder.layers.1.encoder_attn.k_quant"]:
        assert site in names
    assert all(p.bits == 6 and p.active for p in points)
    assert all(p.lo is not None and p.lo <= p.hi for p in points)
    assert "activation" in format_table(points)


@pytest.mark.slow
def test_coverage_of_a_stock_checkpoint_is_an_error(toy_data, tmp_path):
    stock = ["--arch", "transformer", *TINY[2:]]
    train(toy_data[1], tmp_path, *stock, "--max-update", "1", "--disable-validation",
          user_dir=False)
    proc = cli("fullyqt-coverage", tmp_path / "checkpoint_last.pt", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "architecture 'transformer' is not a fullyqt model; it has no quantization points")


def test_a_missing_data_directory_is_one_error_line(tmp_path):
    """The legacy fixture recorded a data directory that is gone: name it, or the bad --data."""
    from fullyqt.quant.coverage import main

    with pytest.raises(SystemExit, match=r"its data directory .* \(recorded when it was trained\)"
                                         r": no such directory; pass --data DIR"):
        main([CKPT])
    with pytest.raises(SystemExit, match=f"--data {tmp_path}/none: no such directory"):
        main([CKPT, "--data", f"{tmp_path}/none"])
    main([CKPT, "--data", FIXTURE])  # the dictionaries are there
    with pytest.raises(SystemExit, match=f"{tmp_path}: a directory, not a checkpoint file"):
        main([str(tmp_path)])
