"""fullyqt-export: integer, stock fairseq and CTranslate2 exports load where they should."""
import os

import pytest
import torch

from fullyqt.checkpoint import load_model
from fullyqt.eval.bleu import corpus_bleu, hypotheses_from_generate
from fullyqt.feature import plugin_options
from fullyqt.quant.weights import quantized_parameters
from fullyqt.quant.packing import pack_codes, unpack_codes
from tests.conftest import USER_DIR, build_model, cli, sample_batch, train

WIDE = ["--arch", "fullyqt_transformer_tiny", "--encoder-embed-dim", "512",
        "--decoder-embed-dim", "512", "--encoder-ffn-embed-dim", "2048",
        "--decoder-ffn-embed-dim", "2048", "--encoder-layers", "1", "--decoder-layers", "1",
        "--share-all-embeddings"]


def export(*args, check=True):
    return cli("fullyqt-export", *map(str, args), check=check)


def export_here(capsys, *args):
    """fullyqt-export's ``main`` in this process (no start-up cost): (exit code, stderr).  An
    uncaught exception, the in-process form of a traceback, fails the test."""
    from fullyqt.export.cli import main

    capsys.readouterr()
    try:
        main(list(map(str, args)))
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def hyps(data, ckpt, n, user_dir=True, env=None, subset="test", log=None):
    args = [data, "--path", ckpt, "--beam", "5", "--batch-size", "64", "--cpu",
            "--required-batch-size-multiple", "1", "--gen-subset", subset]
    if user_dir:
        args += ["--user-dir", USER_DIR]
    out = cli("fairseq-generate", *args, env=env)
    if log is not None:
        log.append(out.stderr + out.stdout)
    return hypotheses_from_generate(out.stdout.splitlines(), n)


def test_exports_in_the_0_1_0_format_still_load(trained_8bit):
    """Exports made before min/max were stored carry codes, scale and min."""
    from fullyqt.quant.packed_state import SEP, pack_state, unpack_state
    from fullyqt.quant.grid import Grid

    model = load_model(str(trained_8bit))
    old = pack_state(model, 8)
    for key in [k for k in old if k.endswith(f"{SEP}max")]:
        name = key[:-len(f"{SEP}max")]
        old[f"{name}{SEP}scale"] = Grid(old[f"{name}{SEP}min"], old.pop(key), 8).step()
    unpack_state(old, 8)
    state = model.state_dict()
    with torch.no_grad():
        for name, (_, q) in quantized_parameters(model).items():
            if name in state:
                assert torch.equal(old[name], q(state[name])), name


def test_bundled_state_unbundles_to_the_packed_state_and_saves_smaller(trained_8bit, tmp_path):
    """One flat tensor per dtype in the file; unbundled, every entry is the packed one, and a
    tied unquantized tensor comes back tied (stored once)."""
    from fullyqt.quant.packed_state import BUNDLE_INDEX, BUNDLE_LISTS, bundle, pack_state, unbundle

    packed = pack_state(load_model(str(trained_8bit)), 8)
    shared = torch.arange(6.0).reshape(2, 3)
    packed["tied.a"], packed["tied.b"] = shared, shared
    packed["int.c"] = torch.tensor([[1, 2], [3, 4]], dtype=torch.int32)
    bundled = bundle(packed)
    tensors = [k for k, v in bundled.items() if isinstance(v, torch.Tensor) and k != BUNDLE_LISTS]
    assert sorted({str(bundled[k].dtype) for k in tensors}) == sorted(
        {str(v.dtype) for v in packed.values() if isinstance(v, torch.Tensor)})
    assert len(tensors) == len({v.dtype for v in packed.values() if isinstance(v, torch.Tensor)})
    plain, small = tmp_path / "plain.pt", tmp_path / "bundled.pt"
    torch.save(packed, plain)
    torch.save(bundled, small)
    assert os.path.getsize(small) < 0.9 * os.path.getsize(plain)
    back = unbundle(torch.load(small, weights_only=True))
    assert BUNDLE_INDEX not in back and set(back) == set(packed)
    for k, v in packed.items():
        if isinstance(v, torch.Tensor):
            assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
        else:
            assert back[k] == v, k
    assert back["tied.a"].data_ptr() == back["tied.b"].data_ptr()


@pytest.mark.parametrize("bits", range(1, 9))
def test_packing_round_trip(bits):
    codes = torch.randint(0, 2**bits, (7, 13))
    packed = pack_codes(codes, bits)
    assert packed.numel() == -(-codes.numel() * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, codes.shape), codes)


@pytest.mark.slow
def test_int8_export_round_trip_and_native_translations(toy_data, trained_8bit, tmp_path):
    raw, data = toy_data
    out = tmp_path / "model.int8.pt"
    export(trained_8bit, "--format", "int8", "--out", out)
    original = load_model(str(trained_8bit))
    exported = load_model(str(out), quant_kernels="fake")
    with torch.no_grad():
        for name, (w, q) in quantized_parameters(original).items():
            if name not in original.state_dict():
                continue  # the position table is rebuilt, not stored
            w2 = quantized_parameters(exported)[name][0]
            assert torch.equal(q(w2), q(w)), name  # the same fake-quantized weight,
            (c2, g2), (c, g) = q.codes(w2), q.codes(w)  # codes and grids
            for a, b in ((c2, c), (g2.lo, g.lo), (g2.hi, g.hi), (g2.step(), g.step())):
                assert torch.equal(a, b), name
    for k, v in original.state_dict().items():
        if k.endswith((".lo", ".hi", ".bias")):
            assert torch.equal(exported.state_dict()[k], v), k
    # the export decodes with integer kernels, the training checkpoint with exact arithmetic on
    # the same codes (the default): every translation is the same
    refs = (raw / "train.tgt").read_text().splitlines()
    log = []
    exact = hyps(data, trained_8bit, len(refs), subset="train")
    native = hyps(data, out, len(refs), subset="train", log=log)
    assert "33 of 33 linear layers run int8 kernels" in log[0]
    assert sum(x != y for x, y in zip(exact, native)) == 0
    assert corpus_bleu(native, refs)[0] == corpus_bleu(exact, refs)[0]


@pytest.mark.slow
def test_int8_export_computes_the_checkpoints_logits_bit_for_bit(toy_data, trained_8bit,
                                                                  tmp_path):
    out = tmp_path / "model.int8.pt"
    export(trained_8bit, "--format", "int8", "--out", out)
    _, task, _ = build_model(toy_data[1])
    batch = sample_batch(task, n=64)  # teacher-forced and padded, as in validation
    with torch.no_grad():
        checkpoint = load_model(str(trained_8bit))(**batch["net_input"])[0]
        shipped = load_model(str(out))(**batch["net_input"])[0]
        fake = load_model(str(trained_8bit), quant_kernels="fake")(**batch["net_input"])[0]
        # a reference that runs no integer matmul: dequantized values, float64 sums
        ref = load_model(str(trained_8bit), quant_kernels="fake64")(**batch["net_input"])[0]
        ref_shipped = load_model(str(out), quant_kernels="fake64")(**batch["net_input"])[0]
    real = batch["net_input"]["prev_output_tokens"].ne(task.target_dictionary.pad())
    assert (~real).any()
    assert torch.equal(ref_shipped[real], ref[real])  # the file holds the trained weights
    assert torch.equal(shipped[real], checkpoint[real])
    assert not torch.equal(fake[real], checkpoint[real])  # float matmuls round differently
    # the integer path computes what float64 sums of dequantized values do, but for the odd
    # value that lands on a neighbouring step at a later rounding point
    assert (shipped[real] - ref[real]).abs().mean() <= 1e-2 * ref[real].abs().mean()


@pytest.mark.slow
@pytest.mark.parametrize("bits,limit", [(8, 0.26), (6, 0.20), (4, 0.14)])
def test_integer_export_size(toy_data, tmp_path, bits, limit):
    train(toy_data[1], tmp_path, *WIDE, "--quant-bits", bits, "--max-update", "1",
          "--disable-validation")
    ckpt = tmp_path / "checkpoint_last.pt"
    out = tmp_path / f"model.int{bits}.pt"
    export(ckpt, "--format", f"int{bits}", "--out", out)
    model = load_model(str(ckpt))
    float_bytes = 4 * sum(p.numel() for p in model.parameters())
    assert os.path.getsize(out) <= limit * float_bytes, os.path.getsize(out) / float_bytes
    reloaded = load_model(str(out), quant_kernels="fake")  # and it loads back
    assert sum(p.numel() for p in reloaded.parameters()) * 4 == float_bytes
    from fullyqt.quant.inference import prepare_for_inference
    from fullyqt.quant.native import Int8Linear

    native = load_model(str(out))
    assert native.args.quant_kernels == "int8"  # what fairseq's prepare_for_inference_ applies
    prepare_for_inference(native, native.args.quant_kernels)
    assert isinstance(native.decoder.output_projection, Int8Linear)


@pytest.mark.slow
def test_stock_fairseq_export_loads_without_the_plugin(toy_data, trained_8bit, tmp_path):
    raw, data = toy_data
    out = tmp_path / "stock.pt"
    export(trained_8bit, "--format", "fairseq", "--out", out)
    state = torch.load(out, weights_only=False)
    assert state["args"].arch == "transformer" and state["args"].user_dir is None
    assert not [k for k in state["model"] if "_quant" in k or k.endswith((".lo", ".hi"))]
    assert not set(vars(state["args"])) & set(plugin_options())  # fairseq's own options only
    # stock fairseq-generate, no --user-dir (torch >= 2.6 needs weights_only off for any
    # fairseq checkpoint without the plugin's allowlist)
    n = len((raw / "test.tgt").read_text().splitlines())
    stock = hyps(data, out, n, user_dir=False,
                 env={**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    quant = hyps(data, trained_8bit, n)
    assert sum(x == y for x, y in zip(stock, quant)) / n > 0.8
    # a student trained with the plugin's criterion: its stock export names fairseq's own
    state = torch.load(trained_8bit, weights_only=False)
    vars(state["cfg"]["model"]).update(criterion="fullyqt_distill", teacher_path="t.pt",
                                       kd_weight=0.5, kd_temperature=1.0)
    torch.save(state, tmp_path / "student.pt")
    export(tmp_path / "student.pt", "--format", "fairseq", "--out", tmp_path / "student.stock.pt")
    args = torch.load(tmp_path / "student.stock.pt", weights_only=False)["args"]
    assert args.criterion == "label_smoothed_cross_entropy" and not hasattr(args, "kd_weight")
    assert hyps(data, tmp_path / "student.stock.pt", n, user_dir=False,
                env={**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}) == stock


@pytest.mark.slow
def test_ctranslate2_export_translates(toy_data, trained_8bit, tmp_path):
    ctranslate2 = pytest.importorskip("ctranslate2")
    out = tmp_path / "ct2"
    export(trained_8bit, "--format", "ctranslate2", "--out", out)
    assert (out / "model.bin").exists()
    translator = ctranslate2.Translator(str(out), device="cpu")
    result = translator.translate_batch([["w1", "w2", "w3", "w4"], ["w7", "w5", "w9"]],
                                        beam_size=5)
    assert [r.hypotheses[0] for r in result] == [["W4", "W3", "W2", "W1"], ["W9", "W5", "W7"]]


@pytest.mark.slow
def test_refuses_to_overwrite_and_non_fullyqt_and_corrupt(toy_data, trained_8bit, tmp_path,
                                                          capsys):
    out = tmp_path / "exists.pt"
    out.write_text("keep me")
    proc = export(trained_8bit, "--format", "int8", "--out", out, check=False)  # the real CLI
    assert proc.returncode == 2 and "--force" in proc.stderr and out.read_text() == "keep me"
    assert "Traceback" not in proc.stderr and "--force" in proc.stderr.strip().splitlines()[-1]
    assert export_here(capsys, trained_8bit, "--format", "int8", "--out", out, "--force")[0] == 0
    assert torch.load(out)["fullyqt_export"]["format"] == "int8"

    stock = tmp_path / "stock.pt"
    assert export_here(capsys, trained_8bit, "--format", "fairseq", "--out", stock)[0] == 0
    code, err = export_here(capsys, stock, "--format", "int8", "--out", tmp_path / "x.pt")
    assert code == 2 and "not a fullyqt model" in err

    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(open(trained_8bit, "rb").read()[:5000])
    code, err = export_here(capsys, bad, "--format", "int8", "--out", tmp_path / "y.pt")
    assert code == 2 and "corrupt.pt" in err

    for fmt, want in (("int4", "trained with 8-bit"), ("int3", "allowed: int8")):
        code, err = export_here(capsys, trained_8bit, "--format", fmt, "--out", tmp_path / "z.pt")
        assert code == 2 and want in err
    code, err = export_here(capsys, trained_8bit, "--format", "ctranslate2", "--out",
                            tmp_path / "ct2", "--data", tmp_path / "no-such-dir")
    assert code == 2 and "no-such-dir" in err
    (tmp_path / "a-dir").mkdir()
    for fmt, out, want in (
            ("int8", tmp_path / "a-dir", "a-dir is a directory; --format int8 writes a file"),
            ("ctranslate2", tmp_path / "stock.pt", "is a file; --format ctranslate2 writes a "
                                                   "directory"),
            ("int8", tmp_path / "nowhere" / "m.pt", "nowhere does not exist")):
        code, err = export_here(capsys, trained_8bit, "--format", fmt, "--out", out, "--force")
        assert code == 2 and want in err.strip().splitlines()[-1], err
    assert not list((tmp_path / "a-dir").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-dir", "corrupt.pt", "exists.pt",
                                                          "stock.pt"]
