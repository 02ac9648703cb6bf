"""The compact-model speed benchmark: the shapes it builds and the multiply-add ratios it
reports (its times are a benchmark's, not asserted here)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import STUDIES
from compact_speed import build, markdown, measure, shapes_for  # scripts/studies/, on sys.path
from fullyqt.bench.kernels import SIZES, dictionary
from fullyqt.bench.readme import update
from fullyqt.prune.macs import dims_of

REPO = __file__.rsplit("/tests/", 1)[0]
TINY = {"tiny": dict(layers=1, dim=32, ffn=64, heads=4, vocab=100)}


def test_shares_become_per_layer_head_counts_and_ffn_sizes():
    s = shapes_for(SIZES["base"], 0.5, 0.3)
    assert [x.heads for x in s.encoder] == [4] * 6 and [x.ffn for x in s.decoder] == [614] * 6
    assert all(x.cross_heads == 4 for x in s.decoder)
    assert shapes_for(SIZES["cpu-small"], 0.01, 0.0001).decoder[0][:] == (1, 1, 1)  # at least one


def test_the_compact_model_has_the_shapes_and_its_mac_ratio_is_counted_by_hand():
    size = TINY["tiny"]
    d = dictionary(size["vocab"])
    compact = build(size, d, shapes_for(size, 0.5, 0.25))
    dims = dims_of(compact)
    assert dims.encoder == [(2, 16)] and dims.decoder == [(2, 2, 16)]
    assert compact.decoder.layers[0].fc1.weight.shape == (16, 32)
    (row,) = measure(["tiny"], 0.5, 0.25, src_len=30, steps=8, table=TINY)
    # one decoder layer at position 5, 30 source tokens, width 32, head size 8:
    # self q,k,v,out + scores/sum; cross q,out + scores/sum; FFN in and out
    dense = 4 * 32 * 32 + 2 * 5 * 32 + 2 * 32 * 32 + 2 * 30 * 32 + 2 * 32 * 64
    kept = 4 * 32 * 16 + 2 * 5 * 16 + 2 * 32 * 16 + 2 * 30 * 16 + 2 * 32 * 16
    assert row["layer_mac_ratio"] == pytest.approx(dense / kept)
    assert row["step_mac_bound"] == pytest.approx((dense + 32 * 100) / (kept + 32 * 100))
    assert min(row[k] for k in ("dense_layers_ms", "compact_layers_ms", "dense_step_ms",
                                "compact_step_ms")) > 0


@pytest.mark.slow
def test_ctranslate2_columns_time_both_exports_against_the_sentence_bound(tmp_path):
    (row,) = measure(["tiny"], 0.5, 0.25, src_len=6, steps=4, table=TINY, ct2_threads=1)
    size, w, hd = TINY["tiny"], 32, 8
    # whole sentence, 6 source and 6 target tokens: encoder layer, cross keys/values, 6 steps
    def sentence(h, ffn):
        enc = 6 * (4 * w * h * hd + 2 * 6 * h * hd + 2 * w * ffn)
        cross_kv = 2 * 6 * w * h * hd
        steps = sum(4 * w * h * hd + 2 * t * h * hd + 2 * w * h * hd + 2 * 6 * h * hd
                    + 2 * w * ffn + w * size["vocab"] for t in range(1, 7))
        return enc + cross_kv + steps
    assert row["sentence_mac_bound"] == pytest.approx(sentence(4, 64) / sentence(2, 16))
    assert row["ct2_dense_ms"] > 0 and row["ct2_compact_ms"] > 0
    # the README block, from the rows as --json writes them
    results, readme = tmp_path / "compact-speed.json", tmp_path / "README.md"
    results.write_text(json.dumps({"kind": "compact_speed", "threads": 1, "rows": [row],
                                   "markdown": markdown([row], 1)[2:]}))
    readme.write_text("a\n<!-- compact-speed:begin -->\n<!-- compact-speed:end -->\nb\n")
    update(str(results), str(readme))
    block = readme.read_text().split("<!-- compact-speed:begin -->")[1]
    tables = [line for line in markdown([row], 1) if line.startswith("| tiny")]
    assert len(tables) == 2 and all(line in block for line in tables)


@pytest.mark.slow
@pytest.mark.parametrize("flags,message", [
    (["--sizes", "huge"], "--sizes: got 'huge'; allowed: tiny, cpu-small, base, big"),
    (["--heads", "1.5"], "--heads: got 1.5; allowed: a share in (0, 1]"),
    (["--ffn", "0"], "--ffn: got 0.0; allowed: a share in (0, 1]"),
])
def test_bad_options_are_one_line(flags, message):
    proc = subprocess.run([sys.executable, os.path.join(STUDIES, "compact_speed.py"), *flags],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message in proc.stderr
