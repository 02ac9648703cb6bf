"""Integer decoding against float in fairseq, on one machine in one run: each linear layer shape of
a decoding step (the float layer against the integer layer of this processor's engine), and
fairseq-generate of the float model and of its integer export taken in turn, several rounds, so
that the machine's slow spells fall on both alike.

    python scripts/studies/integer_decoding.py runs/cpu-small --rounds 3   # on an idle machine

Reads the finished run's float checkpoint and its int8 recipe's export; writes
OUT/integer_decoding.json and OUT/integer_decoding.md.
"""
import os
import statistics
import time

import torch

from fullyqt.eval.decode import cpu_name, source_commit, translate
from fullyqt.quant import int_engine
from finished_run import parse
from train_speed import positive_int, write_outputs

# (rows, in, out) of a decoding step at cpu-small (32 sentences x beam 5) and at base
SHAPES = [(160, 128, 128), (160, 128, 512), (160, 512, 128), (160, 128, 8000),
          (160, 512, 512), (160, 512, 2048), (160, 2048, 512), (160, 512, 32000)]


def _best_us(fn, calls: int, rounds: int = 7) -> float:
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def layer_rows(threads: int):
    """Microseconds of a float32 ``nn.Linear`` and of the integer layer (codes of the input,
    exact sums, affine: ``IntegerMatmul``'s work) at each shape, each the best of 7 rounds."""
    from fullyqt.quant.grid import Grid
    from fullyqt.quant.integer_form import IntegerMatmul

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    rows = []
    for m, k, n in SHAPES:
        x = torch.randn(m, k, generator=g)
        float_layer = torch.nn.Linear(k, n)
        codes = torch.randint(0, 256, (n, k), generator=g).float()
        weights = Grid(torch.full((n, 1), -0.1), torch.full((n, 1), 0.1), 8)
        layer = IntegerMatmul(codes, weights, Grid(torch.tensor(-4.0), torch.tensor(4.0), 8),
                              float_layer.bias.detach())
        calls = max(3, int(5e7 / (m * k * n)))
        with torch.no_grad():
            f = _best_us(lambda: float_layer(x), calls)
            i = _best_us(lambda: layer(x), calls)
        rows.append({"rows": m, "in": k, "out": n, "float us": f, "integer us": i})
    return rows


def generate_rounds(out: str, data: str, models: dict, rounds: int, threads: int):
    """Tokens/s of each model through fairseq-generate (the test split, beam 5, batches of 32),
    the models in turn for ``rounds`` rounds; the hypotheses of every round must be the same."""
    speeds = {name: [] for name in models}
    first = {}
    for r in range(rounds):
        for name, path in models.items():
            log = os.path.join(out, f"integer_decoding.{name}.{r}.txt")
            got = translate(path, data, None, log, threads=threads)
            speeds[name].append(got.target_tokens / got.seconds)
            if first.setdefault(name, got.hypotheses) != got.hypotheses:
                raise RuntimeError(f"{name}: round {r} translated otherwise than round 0")
            os.unlink(log)
    return speeds


def markdown(layers, speeds, meta) -> list:
    lines = [f"Machine: {meta['machine']}, {meta['threads']} threads; integer products by "
             f"`{meta['engine']}` (`fullyqt/quant/int_engine.py`); code {meta['commit']}.", "",
             "## One linear layer", "",
             "Microseconds, the best of 7 rounds: float32 `nn.Linear` against the integer layer "
             "(the input's codes, the exact sums, the affine; what `Int8Linear` runs), and the "
             "multiply-adds per second each reached (G: 10^9; all threads together).", "",
             "| rows x in x out | float us | integer us | integer vs float | float G/s | "
             "integer G/s |", "|---|---|---|---|---|---|"]
    for r in layers:
        macs = r["rows"] * r["in"] * r["out"] / 1e3  # per microsecond, in G/s
        lines.append(f"| {r['rows']} x {r['in']} x {r['out']} | {r['float us']:.0f} | "
                     f"{r['integer us']:.0f} | {r['float us'] / r['integer us']:.2f}x | "
                     f"{macs / r['float us']:.0f} | {macs / r['integer us']:.0f} |")
    names = list(speeds)
    lines += ["", "## fairseq-generate", "",
              f"The test split, beam 5, batches of 32; the models in turn for {meta['rounds']} "
              "rounds (identical hypotheses every round); target tokens/s of each round.", "",
              "| model | " + " | ".join(f"round {i + 1}" for i in range(meta['rounds']))
              + " | median | median vs float |", "|---|" + "---|" * (meta['rounds'] + 2)]
    base = statistics.median(speeds[names[0]])
    for name in names:
        mid = statistics.median(speeds[name])
        lines.append(f"| {name} | " + " | ".join(f"{s:.0f}" for s in speeds[name])
                     + f" | {mid:.0f} | {mid / base:.2f}x |")
    return lines


def main(argv=None):
    def options(parser):
        parser.add_argument("--rounds", type=positive_int, default=3)

    p, a, _ = parse("integer_decoding.py", __doc__, argv, options=options)
    run = os.path.abspath(a.out)
    models = {"float": os.path.join(run, "checkpoints", "float", "checkpoint_best.pt"),
              "int8 export": os.path.join(run, "recipes", "int8", "model.int8.pt")}
    for name, path in models.items():
        if not os.path.isfile(path):
            p.error(f"{path}: missing ({name}); run the main job to the end first")
    data = os.path.join(run, "data", "bin")
    meta = {"machine": cpu_name(), "threads": a.threads, "rounds": a.rounds,
            "engine": int_engine.engine(torch.device("cpu")),
            "commit": source_commit()}
    layers = layer_rows(a.threads)
    speeds = generate_rounds(run, data, models, a.rounds, a.threads)
    lines = markdown(layers, speeds, meta)
    write_outputs(run, "integer_decoding", "Integer decoding against float in fairseq",
                  {"meta": meta, "layers": layers, "tokens per second": speeds}, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
