"""Model time per beam-search decoding step at the paper's sizes: stock float, fake-quant and
int8 kernels, on randomly initialised models with calibrated ranges (speed does not depend on
the weights' values), and beam search end to end on them.  Shows where integer kernels pay off
once matmuls dominate.

    python -m fullyqt.bench.kernels --sizes cpu-small,base,big --threads 2
"""
import argparse
import copy
import os
import sys
import tempfile
import time
from typing import Dict, List

import torch

from ..quant import int_engine
from .shapes import SHAPES

SIZES = SHAPES  # the sizes --sizes accepts


def size_args(size: dict, user_dir: str, quant: bool, extra=()):
    from fairseq import options

    flags = ["--arch", "fullyqt_transformer" if quant else "transformer", "--user-dir", user_dir,
             "--share-all-embeddings", "--cpu", *extra]
    if quant:  # float matmuls on dequantized values, the arithmetic the paper describes
        flags += ["--quant-kernels", "fake"]
    for side in ("encoder", "decoder"):
        flags += [f"--{side}-layers", str(size["layers"]), f"--{side}-embed-dim", str(size["dim"]),
                  f"--{side}-ffn-embed-dim", str(size["ffn"]),
                  f"--{side}-attention-heads", str(size["heads"])]
    with tempfile.TemporaryDirectory() as data:
        return options.parse_args_and_arch(options.get_training_parser(), [data, *flags])


def dictionary(vocab: int):
    """A fairseq dictionary of ``vocab`` made-up symbols (specials included)."""
    from fairseq.data import Dictionary

    d = Dictionary()
    for i in range(vocab - len(d)):
        d.add_symbol(f"w{i}")
    return d


def _models(size: dict, user_dir: str):
    from fairseq.tasks.translation import TranslationTask

    from ..quant.inference import prepare_for_inference

    d = dictionary(size["vocab"])
    models = {}
    for name, quant in (("float", False), ("fake-quant", True)):
        args = size_args(size, user_dir, quant)
        task = TranslationTask(args, d, d)
        models[name] = task.build_model(args)
    fq = models["fake-quant"].train()
    src = torch.randint(d.nspecial, len(d), (8, 20))
    with torch.no_grad():
        for _ in range(2):  # activation ranges from live statistics
            fq(src, torch.full((8,), 20), src)
    fq.eval()
    native = copy.deepcopy(fq)
    prepare_for_inference(native, "int8")  # as an integer export loads: exact attention too
    models["int8 kernels"] = native
    return {k: m.eval() for k, m in models.items()}, d


def step_ms(model, dictionary, batch: int, beam: int, src_len: int, steps: int) -> float:
    """Mean model time (ms) of one incremental decoder step for batch x beam hypotheses."""
    src = torch.randint(dictionary.nspecial, len(dictionary), (batch, src_len))
    rows = batch * beam
    with torch.no_grad():
        enc = model.encoder(src, torch.full((batch,), src_len))
        enc = model.encoder.reorder_encoder_out(enc, torch.arange(batch).repeat_interleave(beam))
        tokens = torch.full((rows, steps + 2), dictionary.eos())
        state: Dict = {}
        model.decoder(tokens[:, :1], enc, incremental_state=state)  # warm-up step
        start = time.perf_counter()
        for t in range(1, steps + 1):
            out, _ = model.decoder(tokens[:, :t + 1], enc, incremental_state=state)
            torch.log_softmax(out[:, -1], dim=-1)
        return (time.perf_counter() - start) / steps * 1e3


def fixed_length_search(model, dictionary, batch: int, beam: int, src_len: int, length: int):
    """(hypotheses, seconds) of fairseq's beam search (``SequenceGenerator``: the encoder,
    every step, the search itself) translating ``batch`` random sentences; every hypothesis is
    made exactly ``length`` tokens long (then EOS), so random weights give every model the
    same work."""
    from fairseq.sequence_generator import SequenceGenerator

    search = SequenceGenerator([model], dictionary, beam_size=beam, max_len_a=0,
                               max_len_b=length, min_len=length)
    src = torch.randint(dictionary.nspecial, len(dictionary), (batch, src_len))
    sample = {"net_input": {"src_tokens": src, "src_lengths": torch.full((batch,), src_len)}}
    with torch.no_grad():
        start = time.perf_counter()
        hyps = search.generate([model], sample)
        return hyps, time.perf_counter() - start


def generate_tok_s(model, dictionary, batch: int, beam: int, src_len: int,
                   length: int) -> float:
    """Target tokens/s (EOS included) of ``fixed_length_search``."""
    hyps, seconds = fixed_length_search(model, dictionary, batch, beam, src_len, length)
    return sum(h[0]["tokens"].numel() for h in hyps) / seconds


def measure(sizes: List[str], *, batch: int = 32, beam: int = 5, src_len: int = 30,
            steps: int = 8, length: int = 0, rounds: int = 3,
            user_dir: str = None) -> List[dict]:
    """Each size's models timed in turn, ``rounds`` times round-robin, the best time of each
    (a machine's slow spell then costs every model alike instead of the one it hits): one
    decoder step, and beam search end to end for ``length`` target tokens (0: not run)."""
    user_dir = user_dir or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows = []
    for name in sizes:
        models, d = _models(SIZES[name], user_dir)
        ms = {k: float("inf") for k in models}
        tok_s = {k: 0.0 for k in models}
        for _ in range(rounds):
            for k, m in models.items():
                ms[k] = min(ms[k], step_ms(m, d, batch, beam, src_len, steps))
                if length:
                    tok_s[k] = max(tok_s[k], generate_tok_s(m, d, batch, beam, src_len, length))
        params = sum(p.numel() for p in models["float"].parameters())
        rows.append({"size": name, **SIZES[name], "params": params, "rounds": rounds,
                     "length": length, **{f"{k} ms": v for k, v in ms.items()},
                     **({f"{k} tok/s": v for k, v in tok_s.items()} if length else {})})
    return rows


def markdown(rows: List[dict], threads: int) -> List[str]:
    lines = ["## Model time per decoding step by size", "",
             f"One incremental decoder step for 32 sentences x beam 5 (160 rows), source length "
             f"30, {threads} threads, the best of {rows[0].get('rounds', 1) if rows else 1} "
             "rounds of the models in turn; random weights with calibrated ranges.  Beam search "
             "itself is not included.  fake-quant: float matmuls on dequantized values "
             "(`--quant-kernels fake`); int8 kernels: the model as an integer export loads "
             "(integer linear layers, exact attention on codes), the arithmetic of a "
             "checkpoint's default exact evaluation. "
             f"Products of int8 codes on this processor: {int_engine.cpu_engine()} "
             f"(`quant/int_engine.py`; `{int_engine.ENV}` fixes it).",
             "",
             "| size | layers | d | vocab | params | float ms | fake-quant ms | int8 kernels ms | "
             "int8 vs float | int8 vs fake-quant |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f, q, n = r["float ms"], r["fake-quant ms"], r["int8 kernels ms"]
        lines.append(f"| {r['size']} | {r['layers']} | {r['dim']} | {r['vocab']} | "
                     f"{r['params'] / 1e6:.1f}M | "
                     f"{f:.1f} | {q:.1f} | {n:.1f} | {f / n:.2f}x | {q / n:.2f}x |")
    searched = [r for r in rows if "float tok/s" in r]
    if searched:
        lines += ["", "## Beam search end to end by size", "",
                  "fairseq's `SequenceGenerator` (the encoder, every decoder step, the search) "
                  "translating 32 random sentences of 30 tokens, beam 5, every hypothesis made "
                  f"{searched[0]['length']} tokens long (the same work for every model); target "
                  "tokens/s, the best of the same rounds.", "",
                  "| size | float tok/s | fake-quant tok/s | int8 kernels tok/s | "
                  "int8 vs float | int8 vs fake-quant |", "|---|---|---|---|---|---|"]
        for r in searched:
            f, q, n = r["float tok/s"], r["fake-quant tok/s"], r["int8 kernels tok/s"]
            lines.append(f"| {r['size']} | {f:.0f} | {q:.0f} | {n:.0f} | {n / f:.2f}x | "
                         f"{n / q:.2f}x |")
    return lines


def add_size_args(p: argparse.ArgumentParser):
    p.add_argument("--sizes", default="cpu-small,base", help=f"comma list of {', '.join(SIZES)}")
    p.add_argument("--threads", type=int, default=2)


def checked_sizes(p: argparse.ArgumentParser, a) -> List[str]:
    """``--sizes`` as a list (a bad one, or bad ``--threads``: one error line); sets torch's
    thread count."""
    sizes = [s for s in a.sizes.split(",") if s]
    bad = [s for s in sizes if s not in SIZES]
    if bad or not sizes:
        p.exit(2, f"{p.prog}: error: --sizes: got {a.sizes!r}; allowed: {', '.join(SIZES)}\n")
    if a.threads < 1:
        p.exit(2, f"{p.prog}: error: --threads: got {a.threads}; allowed: an integer >= 1\n")
    torch.set_num_threads(a.threads)
    return sizes


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fullyqt.bench.kernels",
                                description=__doc__.split("\n\n")[0])
    add_size_args(p)
    p.add_argument("--length", type=int, default=20,
                   help="also time beam search end to end, every hypothesis this many target "
                        "tokens long (0: the decoder step only)")
    a = p.parse_args(argv)
    sizes = checked_sizes(p, a)
    if a.length < 0:
        p.exit(2, f"{p.prog}: error: --length: got {a.length}; allowed: an integer >= 0\n")
    print("\n".join(markdown(measure(sizes, length=a.length), a.threads)))


if __name__ == "__main__":
    sys.exit(main())
