"""Compaction: the compact model (heads and FFN units removed) computes what the masked model
did, for whole sequences and step by step, and loads where fairseq loads models."""
import pytest
import torch

from fullyqt.prune.compact import compact_state, parameter_count
from fullyqt.prune.macs import dims_of
from fullyqt.prune.structure import cut_to_the_floor, heads_alive, units_alive
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


def _head_pruned(data, *extra):
    """A model with one score per head, top half kept by norm (``extra``: more options), its
    scores started and activation ranges set by one training-mode batch; and that batch."""
    model, task, _ = build_model(data, *PRUNE, "--prune-attn-block", "head",
                                 "--prune-method", "topk", "--prune-density", "0.5",
                                 "--prune-score-init", "magnitude", *extra)
    model.set_num_updates(100)
    batch = sample_batch(task, "train")
    model.train()
    with torch.no_grad():
        model(**batch["net_input"])
    model.eval()
    return model, batch


def _head_norms(attn):
    """Each head's norm: its Q, K, V rows and output-projection columns together (float64)."""
    d = attn.head_dim
    w = [getattr(attn, n).weight.detach().double() for n in ("q_proj", "k_proj", "v_proj")]
    out = attn.out_proj.weight.detach().double()
    return torch.stack([sum(x[i * d:(i + 1) * d].pow(2).sum() for x in w)
                        + out[:, i * d:(i + 1) * d].pow(2).sum()
                        for i in range(attn.num_heads)]).sqrt()


def test_head_blocks_prune_whole_heads_chosen_by_their_norms(toy_data):
    """``--prune-attn-block head``: one score per head (its Q, K, V rows and output columns),
    started at the z-score of the head's norm; the top half of each attention's heads stay whole,
    the rest are zero in all four projections, and compaction removes exactly them."""
    model, batch = _head_pruned(toy_data[1])
    attn = model.decoder.layers[1].encoder_attn
    h, d = attn.num_heads, attn.head_dim
    norms = _head_norms(attn)
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


def test_stack_scope_ranks_the_heads_of_a_whole_stack_together(toy_data):
    """``--prune-topk-scope stack``: the decoder's self and cross attention heads of both layers
    pooled, half of them kept (by norm at the start: each attention's best head, then the
    largest of the rest), so an attention may keep 1 or 4 heads; compaction gives those
    per-layer counts and computes what the masked model did."""
    model, batch = _head_pruned(toy_data[1], "--prune-topk-scope", "stack")
    for stack in (model.encoder, model.decoder):
        attns = [a for layer in stack.layers
                 for a in (layer.self_attn, getattr(layer, "encoder_attn", None)) if a is not None]
        norms = torch.cat([_head_norms(a) for a in attns])
        keep = torch.zeros(len(norms), dtype=torch.bool)
        for i in range(len(attns)):  # 4 heads each
            keep[4 * i + int(norms[4 * i:4 * i + 4].argmax())] = True
        rest = [i for i in sorted(range(len(norms)), key=lambda i: -float(norms[i]))
                if not keep[i]]
        keep[rest[:len(norms) // 2 - len(attns)]] = True
        alive = torch.cat([heads_alive(a) for a in attns])
        assert torch.equal(alive, keep), (alive, keep)
        z = (norms - norms.mean()) / norms.std()
        scores = torch.cat([a.v_proj.source.scores.scores().detach().view(-1) for a in attns])
        assert torch.allclose(scores.double(), z, atol=1e-5)
    compact, shapes = _compact_model(toy_data[1], model, "post-norm")
    counts = [(s.heads, s.cross_heads) for s in shapes.decoder]
    assert [c for pair in counts for c in pair] == [
        int(heads_alive(a).sum()) for layer in model.decoder.layers
        for a in (layer.self_attn, layer.encoder_attn)]
    with torch.no_grad():
        assert torch.equal(model(**batch["net_input"])[0], compact(**batch["net_input"])[0])


def test_stack_scope_keeps_a_head_in_every_attention_and_follows_the_scores(toy_data):
    """Scores set by hand: the decoder's best heads sit in one attention, and the lowest scores
    fill whole attentions, which keep their best head within the budget; in training the masks
    follow scores written through ``.data`` (as fairseq's optimizers write them)."""
    model, task, _ = build_model(toy_data[1], *PRUNE, "--prune-attn-block", "head",
                                 "--prune-method", "topk", "--prune-density", "0.5",
                                 "--prune-topk-scope", "stack")
    model.set_num_updates(100)  # 8 of the decoder's 16 heads
    layers = model.decoder.layers
    attns = [layers[0].self_attn, layers[0].encoder_attn, layers[1].self_attn,
             layers[1].encoder_attn]
    values = [[9.0, 8.0, 7.0, 6.0], [5.0, -1.0, -2.0, -3.0], [-4.0, -5.0, -6.0, -7.0],
              [-8.0, -9.0, -10.0, -11.0]]
    for a, v in zip(attns, values):
        _set_scores(a.v_proj.source.scores, torch.tensor(v).view(4, 1))
    model.train()
    # each attention's best (9, 5, -4, -8), then the four largest of the rest (8, 7, 6, -1)
    expect = [[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]]
    got = [a.v_proj.source.block_mask().view(-1).tolist() for a in attns]
    assert got == expect
    attns[1].v_proj.source.scores.raw.data[3] = 20.0 / attns[1].v_proj.source.scores.scale
    attns[3].v_proj.source.scores.raw.data[3] = 0.0
    got = [a.v_proj.source.block_mask().view(-1).tolist() for a in attns]
    # bests 9, 20, -4, 0; then 8, 7, 6, 5
    assert got == [[1, 1, 1, 1], [1, 0, 0, 1], [1, 0, 0, 0], [0, 0, 0, 1]]


def test_ffn_stack_scope_pools_ffn_units_per_stack_and_keeps_heads_per_attention(toy_data):
    """``--prune-topk-scope ffn-stack``: every attention keeps its own top half of the heads
    (equal counts: what CTranslate2 holds unpadded) while the FFN units of a stack are ranked
    together, so the FFN whose units score higher keeps more of them."""
    model, _, _ = build_model(toy_data[1], *PRUNE, "--prune-attn-block", "head",
                              "--prune-method", "topk", "--prune-density", "0.5",
                              "--prune-topk-scope", "ffn-stack")
    model.set_num_updates(100)
    layers = model.decoder.layers
    attns = [layers[0].self_attn, layers[0].encoder_attn, layers[1].self_attn,
             layers[1].encoder_attn]
    # the stack scope would give the first attention all four heads (see the test above)
    for a, v in zip(attns, [[9.0, 8.0, 7.0, 6.0], [5.0, -1.0, -2.0, -3.0],
                            [-4.0, -5.0, -7.0, -6.0], [-8.0, -9.0, -10.0, -11.0]]):
        _set_scores(a.v_proj.source.scores, torch.tensor(v).view(4, 1))
    units = layers[0].fc1.out_features
    high = torch.arange(units, dtype=torch.float) + 10.0
    _set_scores(layers[0].fc1.source.scores, high.view(units, 1))
    _set_scores(layers[1].fc1.source.scores, -high.view(units, 1))
    model.train()
    got = [a.v_proj.source.block_mask().view(-1).tolist() for a in attns]
    assert got == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
    # half of the decoder's 2 x units kept: the second FFN keeps only its best unit (-10)
    assert torch.equal(units_alive(layers[0]), torch.arange(units) >= 1)
    assert torch.equal(units_alive(layers[1]), torch.arange(units) == 0)


def test_stack_scope_needs_topk(toy_data):
    from fullyqt.prune.blocks import PruneOptionError

    with pytest.raises(PruneOptionError, match="--prune-topk-scope stack applies to "
                                                "--prune-method topk; got --prune-method sigmoid"):
        build_model(toy_data[1], *PRUNE, "--prune-topk-scope", "stack")


def test_decoder_density_thins_the_decoder_on_its_own_schedule(toy_data):
    """``--prune-decoder-density``: the decoder's attentions and FFNs keep the top quarter,
    the encoder's the top three quarters (hand-set scores; per matrix and with the FFN units of a
    stack pooled), each density falling on the cubic schedule; a checkpoint saved before the
    option (no ``decoder_density``) masks its decoder at the one density."""
    from fullyqt.prune.schedule import Schedule

    for scope in ("matrix", "ffn-stack"):
        model, _, _ = build_model(toy_data[1], *PRUNE, "--prune-attn-block", "head",
                                  "--prune-method", "topk", "--prune-density", "0.75",
                                  "--prune-decoder-density", "0.25", "--prune-topk-scope", scope)
        ramp = Schedule(10, 20, 100)  # --warmup-updates 10, cooldown a fifth of 100
        model.set_num_updates(40)
        assert float(model.pruner.density) == pytest.approx(ramp.falling(0.75, 40))
        assert float(model.pruner.decoder_density) == pytest.approx(ramp.falling(0.25, 40))
        model.set_num_updates(100)
        for stack in (model.encoder, model.decoder):
            for layer in stack.layers:
                for attn in (layer.self_attn, getattr(layer, "encoder_attn", None)):
                    if attn is not None:
                        _set_scores(attn.v_proj.source.scores,
                                    torch.tensor([1.0, 4.0, 3.0, 2.0]).view(4, 1))
                units = layer.fc1.out_features
                _set_scores(layer.fc1.source.scores,
                            torch.arange(units, dtype=torch.float).view(units, 1))
        model.train()
        for stack, heads in ((model.encoder, [0, 1, 1, 1]), (model.decoder, [0, 1, 0, 0])):
            keep = 0.75 if stack is model.encoder else 0.25
            for layer in stack.layers:
                assert heads_alive(layer.self_attn).int().tolist() == heads
                units = layer.fc1.out_features
                # the same scores in every FFN of the stack: pooled or not, each keeps its top
                kept = int(keep * units)
                assert torch.equal(units_alive(layer), torch.arange(units) >= units - kept)
    old = {k: v for k, v in model.state_dict().items() if not k.endswith("decoder_density")}
    model.load_state_dict(old)
    assert float(model.pruner.decoder_density) == float(model.pruner.density) == 0.75
    assert heads_alive(model.decoder.layers[0].self_attn).int().tolist() == [0, 1, 1, 1]


def test_decoder_density_needs_topk(toy_data):
    from fullyqt.prune.blocks import PruneOptionError

    with pytest.raises(PruneOptionError, match="--prune-decoder-density 0.3 applies to "
                                                "--prune-method topk; got --prune-method sigmoid"):
        build_model(toy_data[1], *PRUNE, "--prune-decoder-density", "0.3")


def test_attentions_and_ffns_cut_to_the_floor_are_named(toy_data):
    model, _ = _masked_model(toy_data[1], "post-norm")
    assert cut_to_the_floor(model) == ["encoder.layers.0.self_attn (no head)"]
    layer = model.decoder.layers[0]
    with torch.no_grad():
        _set_scores(layer.fc1.source.scores, -10.0)  # the units' fc2 columns follow fc1 rows
        _set_scores(layer.fc2.source.scores, -10.0)
    assert not units_alive(layer).any()
    assert cut_to_the_floor(model) == ["encoder.layers.0.self_attn (no head)",
                                       "decoder.layers.0 FFN (0 units)"]
    layer = model.decoder.layers[1]  # one unit left, as top-k's floor leaves a layer
    scores = layer.fc1.source.scores  # row blocks: one score per unit, fc1 and fc2 share it
    _set_scores(scores, -10.0)
    with torch.no_grad():
        scores.raw[3, 0] = 5.0 / scores.scale
    assert units_alive(layer).nonzero().flatten().tolist() == [3]
    assert cut_to_the_floor(model)[2:] == ["decoder.layers.1 FFN (1 unit)"]
    dense, _, _ = build_model(toy_data[1], *PRUNE)
    assert cut_to_the_floor(dense) == []
