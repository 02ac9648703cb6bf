"""Compaction: the compact model (heads and FFN units removed) computes what the masked model
did, for whole sequences and step by step, and loads where fairseq loads models."""
import pytest
import torch

from fullyqt.prune.compact import compact_state, parameter_count
from fullyqt.prune.macs import dims_of
from fullyqt.prune.structure import heads_alive, units_alive
from tests.conftest import build_model, sample_batch

PRUNE = ["--prune-method", "sigmoid", "--prune-attn-block", "16x16", "--max-update", "100",
         "--warmup-updates", "10", "--quant-bits", "8"]
ARCHS = {"post-norm": [], "pre-norm": ["--encoder-normalize-before",
                                       "--decoder-normalize-before"]}


def _set_scores(scores, value):
    with torch.no_grad():
        scores.raw.copy_(torch.as_tensor(value, dtype=torch.float).expand_as(scores.raw)
                         / scores.scale)


def _masked_model(data, arch):
    """A masked model with whole heads gone (through V and through the output projection), a
    layer left without heads, dead FFN units, and partly pruned blocks inside kept heads."""
    model, task, args = build_model(data, *PRUNE, *ARCHS[arch])
    model.set_num_updates(100)  # threshold 0.1
    g = torch.Generator().manual_seed(0)
    for _, label, layer in model.pruner.matrices:
        if hasattr(layer.source, "scores") and "fc2" not in label:
            _set_scores(layer.source.scores, torch.where(
                torch.rand(layer.source.scores.raw.shape, generator=g) < 0.15, -10.0, 5.0))
    enc0, dec1 = model.encoder.layers[0].self_attn, model.decoder.layers[1].encoder_attn
    with torch.no_grad():
        _set_scores(enc0.out_proj.source.scores, -10.0)  # no head left in this layer
        dec1.v_proj.source.scores.raw[1] = -10 / dec1.v_proj.source.scores.scale  # head 1: V
        dec1.out_proj.source.scores.raw[:, 2] = -10 / dec1.out_proj.source.scores.scale
    batch = sample_batch(task, "train")
    model.train()
    with torch.no_grad():
        model(**batch["net_input"])  # activation ranges
    model.eval()
    assert not heads_alive(enc0).any() and not heads_alive(dec1)[1:3].any()
    assert heads_alive(dec1)[0] and not units_alive(model.encoder.layers[1]).all()
    return model, task


def _compact_model(data, model, arch):
    state, shapes = compact_state(model)
    compact, _, _ = build_model(data, "--quant-bits", "8", "--prune-compact-shapes",
                                shapes.to_json(), *ARCHS[arch])
    compact.load_state_dict(state)  # strict: every tensor has its place and shape
    return compact.eval(), shapes


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_compact_model_computes_what_the_masked_model_did(toy_data, arch):
    model, task = _masked_model(toy_data[1], arch)
    compact, shapes = _compact_model(toy_data[1], model, arch)
    assert shapes.encoder[0].heads == 1  # kept (dead) so that no matrix is empty
    assert shapes.decoder[1].cross_heads == 2
    assert shapes.encoder[1].ffn == int(units_alive(model.encoder.layers[1]).sum())
    assert dims_of(compact).encoder == [(s.heads, s.ffn) for s in shapes.encoder]
    assert dims_of(compact).decoder == [(s.heads, s.cross_heads, s.ffn) for s in shapes.decoder]
    assert parameter_count(compact.state_dict()) < parameter_count(
        {k: v for k, v in model.state_dict().items() if ".source." not in k})
    batch = sample_batch(task, "valid")
    with torch.no_grad():
        exact = [m(**batch["net_input"])[0] for m in (model, compact)]
        for m in (model, compact):
            m.apply(lambda x: x.set_kernels("fake") if hasattr(x, "set_kernels") else None)
        fake = [m(**batch["net_input"])[0] for m in (model, compact)]
    assert torch.equal(exact[0], exact[1])  # symmetric per-row grids: the same integer sums
    assert torch.allclose(fake[0], fake[1], atol=1e-4, rtol=1e-4)


def test_compact_model_decodes_step_by_step_like_the_masked_model(toy_data):
    from fairseq.sequence_generator import SequenceGenerator

    model, task = _masked_model(toy_data[1], "post-norm")
    compact, _ = _compact_model(toy_data[1], model, "post-norm")
    batch = sample_batch(task, "test", n=8)
    hyps = []
    for m in (model, compact):
        gen = SequenceGenerator([m], task.target_dictionary, beam_size=3, max_len_b=30)
        out = gen.generate([m], batch)
        hyps.append([(h[0]["tokens"].tolist(), round(float(h[0]["score"]), 5)) for h in out])
    assert hyps[0] == hyps[1]


def test_head_blocks_prune_whole_heads_chosen_by_their_norms(toy_data):
    """``--prune-attn-block head``: one score per head (its Q, K, V rows and output columns),
    started at the z-score of the head's norm; the top half of each attention's heads stay whole,
    the rest are zero in all four projections, and compaction removes exactly them."""
    model, task, _ = build_model(toy_data[1], *PRUNE, "--prune-attn-block", "head",
                                 "--prune-method", "topk", "--prune-density", "0.5",
                                 "--prune-score-init", "magnitude")
    model.set_num_updates(100)
    batch = sample_batch(task, "train")
    model.train()
    with torch.no_grad():
        model(**batch["net_input"])  # starts the scores; activation ranges
    model.eval()
    attn = model.decoder.layers[1].encoder_attn
    h, d = attn.num_heads, attn.head_dim
    w = {n: getattr(attn, n).weight.detach().double() for n in ("q_proj", "k_proj", "v_proj")}
    out = attn.out_proj.weight.detach().double()
    norms = torch.stack([sum(w[n][i * d:(i + 1) * d].pow(2).sum() for n in w)
                         + out[:, i * d:(i + 1) * d].pow(2).sum() for i in range(h)]).sqrt()
    keep = torch.zeros(h, dtype=torch.bool)
    keep[norms.topk(h // 2).indices] = True
    assert torch.equal(heads_alive(attn), keep)
    rows = keep.repeat_interleave(d)
    for name in ("q_proj", "k_proj", "v_proj"):
        proj = getattr(attn, name)
        masked = proj.source.masked(proj)
        assert torch.equal(masked[rows], proj.weight[rows]) and not masked[~rows].any()
    masked = attn.out_proj.source.masked(attn.out_proj)
    assert torch.equal(masked[:, rows], attn.out_proj.weight[:, rows])
    assert not masked[:, ~rows].any()
    compact, shapes = _compact_model(toy_data[1], model, "post-norm")
    assert [s.heads for s in shapes.encoder] == [h // 2] * len(shapes.encoder)
    assert all(s.heads == s.cross_heads == h // 2 for s in shapes.decoder)
    with torch.no_grad():
        assert torch.equal(model(**batch["net_input"])[0], compact(**batch["net_input"])[0])


def test_head_blocks_are_for_attention_only(toy_data, capsys):
    with pytest.raises(SystemExit):
        build_model(toy_data[1], *PRUNE, "--prune-ffn-block", "head")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].endswith("error: --prune-ffn-block: got 'head'; allowed: RxC with positive "
                           "integers (e.g. 32x32), or row")
