"""Training speed: time and peak memory per update of stock float, ``--no-quant``, 8-bit and 4-bit
QAT (4-bit with min-max and with mse ranges; 8-bit also with the torch op chain instead of the
one-pass CPU kernel, ``quant/fused.py``, and with ``--quant-saved-codes``: its saved activations
as byte codes, ``quant/saved_codes.py``), timed interleaved on the same batches in one process,
as ratios to stock float; and the time of a validation step (exact evaluation for the quantized
models).

    python scripts/studies/train_speed.py --out runs/train-speed            # toy corpus (13 words:
                                                                          # the layers are the work)
    python scripts/studies/train_speed.py --data runs/cpu-small/data/bin --out runs/train-speed-bible
    python -m fullyqt.bench.readme runs/train-speed/train_speed.json docs/benchmark.md

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over three updates (both columns); on
CPU the growth of the peak resident set (``VmHWM``, reset first) over the built model during
three updates, each model in a process of its own (CPU tensors have no allocator statistics),
measured twice: as glibc's allocator runs by default (what ``fairseq-train`` holds; it keeps
freed blocks of up to 32 MiB for reuse, so the figure moves by a few hundred MiB with the order
of allocations), and with every block of 128 KiB or more mapped and unmapped on its own
(``MALLOC_MMAP_THRESHOLD_``): the live tensors, the measure CUDA's figure takes.
"""
import argparse
import contextlib
import glob
import json
import multiprocessing
import os
import platform
import statistics
import time
from typing import Dict, List, Optional

import torch

from fullyqt.errors import UserError
from fullyqt.quant import fused
from fullyqt.eval.decode import BIN, USER_DIR, thread_env
from fullyqt.bench.shapes import SHAPES

MODELS = {
    "stock float": ["--arch", "transformer"],
    "fullyqt --no-quant": ["--arch", "fullyqt_transformer", "--no-quant"],
    "fullyqt 8-bit": ["--arch", "fullyqt_transformer", "--quant-bits", "8"],
    "fullyqt 8-bit, torch ops": ["--arch", "fullyqt_transformer", "--quant-bits", "8"],
    "fullyqt 8-bit, saved codes": ["--arch", "fullyqt_transformer", "--quant-bits", "8",
                                   "--quant-saved-codes"],
    "fullyqt 4-bit": ["--arch", "fullyqt_transformer", "--quant-bits", "4",
                      "--quant-act-range", "minmax"],
    "fullyqt 4-bit mse": ["--arch", "fullyqt_transformer", "--quant-bits", "4",
                          "--quant-act-range", "mse"],
}
# the same model with a part switched off: fake quantization by the torch op chain, not the kernel
SWITCHES = {"fullyqt 8-bit, torch ops": fused.switched_off}
LIVE_TENSORS = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
TRAIN = ["--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", "5e-4", "--lr-scheduler",
         "inverse_sqrt", "--warmup-updates", "4000", "--dropout", "0.1", "--criterion",
         "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--seed", "1",
         "--share-all-embeddings", "--no-progress-bar"]


def shape_flags(shape: dict) -> List[str]:
    flags = []
    for side in ("encoder", "decoder"):
        flags += [f"--{side}-layers", str(shape["layers"]), f"--{side}-embed-dim",
                  str(shape["dim"]), f"--{side}-ffn-embed-dim", str(shape["ffn"]),
                  f"--{side}-attention-heads", str(shape["heads"])]
    return flags


def build_trainer(data: str, flags: List[str], max_tokens: int):
    """A fairseq Trainer built as fairseq-train builds it (no checkpoint loaded)."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    device = [] if torch.cuda.is_available() else ["--cpu"]
    args = options.parse_args_and_arch(options.get_training_parser(), [
        data, "--user-dir", USER_DIR, *TRAIN, *device, "--max-tokens", str(max_tokens), *flags])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    return Trainer(cfg, task, model, task.build_criterion(cfg.criterion)), task


def take_batches(task, max_tokens: int, n: int) -> list:
    """``n`` training batches of at most ``max_tokens`` (repeated if the data has fewer)."""
    task.load_dataset("train")
    ds = task.dataset("train")
    itr = task.get_batch_iterator(ds, max_tokens=max_tokens, seed=1,
                                  max_positions=(1024, 1024)).next_epoch_itr(shuffle=True)
    got = [b for _, b in zip(range(n), itr)]
    if not got:
        raise UserError("the training set gave no batch")
    return [got[i % len(got)] for i in range(n)]


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_models(data: str, shape: dict, max_tokens: int, updates: int, warmup: int):
    """Per model: update seconds (after ``warmup``), validation-step seconds, target tokens."""
    trainers = {}
    for name, flags in MODELS.items():
        trainers[name] = build_trainer(data, flags + shape_flags(shape), max_tokens)[0]
    batches = take_batches(next(iter(trainers.values())).task, max_tokens, warmup + updates)
    names = list(trainers)
    times: Dict[str, List[float]] = {n: [] for n in names}
    for i, batch in enumerate(batches):
        order = names[i % len(names):] + names[:i % len(names)]  # no model always goes first
        for name in order:
            _sync()
            start = time.perf_counter()
            with switched(name):
                trainers[name].train_step([batch])
            _sync()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    valid = {n: [] for n in names}
    for batch in batches[warmup:]:
        for name in names:
            _sync()
            start = time.perf_counter()
            with switched(name):
                trainers[name].valid_step(batch)
            _sync()
            valid[name].append(time.perf_counter() - start)
    tokens = statistics.mean(b["ntokens"] for b in batches[warmup:])
    return times, valid, tokens


def peak_memory_mib(data: str, flags: List[str], max_tokens: int) -> Optional[float]:
    """MiB that three updates add to the peak memory over the built model (CUDA: allocated;
    CPU: the resident set, on Linux; elsewhere None)."""
    trainer, task = build_trainer(data, flags, max_tokens)
    batches = take_batches(task, max_tokens, 3)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        for b in batches:
            trainer.train_step([b])
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    try:  # Linux: reset the peak resident set (VmHWM) to the current one
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    before = _status_kib("VmRSS")
    for b in batches:
        trainer.train_step([b])
    return (_status_kib("VmHWM") - before) / 1024


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def switched(name: str):
    """The context a model's steps run in: its switch (``SWITCHES``), or none."""
    return SWITCHES.get(name, contextlib.nullcontext)()


def _peak_child(queue, data, name, flags, max_tokens, threads):
    torch.set_num_threads(threads)
    import fullyqt  # noqa: F401  (registers the models in the fresh process)

    with switched(name):
        queue.put(peak_memory_mib(data, flags, max_tokens))


def peak_in_own_process(data, name, flags, max_tokens, threads, env=None) -> float:
    """``peak_memory_mib`` of model ``name`` in a fresh process, with ``env`` added to its
    environment (read as it starts)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_child, args=(queue, data, name, flags, max_tokens, threads))
    before = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        proc.start()
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v
    value = queue.get()
    proc.join()
    return value


def measure(data: str, shapes: List[str], max_tokens: int, updates: int, warmup: int,
            threads: int, say=print) -> dict:
    torch.set_num_threads(threads)
    rows = []
    for shape_name in shapes:
        shape = SHAPES[shape_name]
        say(f"[{shape_name}] timing {updates} updates of each model, interleaved")
        times, valid, tokens = time_models(data, shape, max_tokens, updates, warmup)
        for name, flags in MODELS.items():
            say(f"[{shape_name}] peak memory of {name}")
            # CUDA's figure counts live tensors already: one measurement there
            envs = (None,) if torch.cuda.is_available() else (None, LIVE_TENSORS)
            peak = [peak_in_own_process(data, name, flags + shape_flags(shape), max_tokens,
                                        threads, env) for env in envs]
            rows.append({"shape": shape_name, "model": name,
                         "sec_per_update": statistics.median(times[name]),
                         "valid_sec": statistics.median(valid[name]),
                         "words_per_second": tokens / statistics.median(times[name]),
                         "peak_mib": peak[0], "live_peak_mib": peak[-1]})
        stock = rows[-len(MODELS)]
        for r in rows[-len(MODELS):]:
            r["update_vs_stock"] = r["sec_per_update"] / stock["sec_per_update"]
            r["valid_vs_stock"] = r["valid_sec"] / stock["valid_sec"]
            for key in ("peak", "live_peak"):
                r[f"{key}_vs_stock"] = (r[f"{key}_mib"] / stock[f"{key}_mib"]
                                        if r[f"{key}_mib"] and stock[f"{key}_mib"] else None)
    return {"kind": "train_speed", "rows": rows, "meta": {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "threads": threads, "max_tokens": max_tokens, "updates": updates, "warmup": warmup,
        "data": data}}


def table_lines(result: dict) -> List[str]:
    meta = result["meta"]
    lines = [f"Run of {meta['date']} ({meta['device']}, {meta['threads']} threads, "
             f"`--max-tokens {meta['max_tokens']}`, median of {meta['updates']} updates after "
             f"{meta['warmup']} warm-up, models interleaved); generated by "
             "`python scripts/studies/train_speed.py`.  Peak memory: the growth of the resident "
             "set over three updates, with glibc's allocator as it runs by default, and with "
             "large blocks unmapped when freed (the live tensors, as CUDA counts).", "",
             "| shape | model | s/update | vs stock | words/s | validation vs stock | "
             "peak memory MiB | vs stock | live tensors MiB | vs stock |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def mib(value, ratio):
        return ("– | –" if value is None else
                f"{value:.0f} | {'–' if ratio is None else format(ratio, '.2f') + 'x'}")

    for r in result["rows"]:
        lines.append(f"| {r['shape']} | {r['model']} | {r['sec_per_update']:.3f} | "
                     f"{r['update_vs_stock']:.2f}x | {r['words_per_second']:,.0f} | "
                     f"{r['valid_vs_stock']:.2f}x | {mib(r['peak_mib'], r['peak_vs_stock'])} | "
                     f"{mib(r.get('live_peak_mib'), r.get('live_peak_vs_stock'))} |")
    return lines


def toy_data(dest: str) -> str:
    """The reversal toy corpus, binarized into ``dest`` (reused when there)."""
    import subprocess

    from fullyqt.data.synthetic import write_reversal_task

    binarized = os.path.join(dest, "bin")
    if not os.path.exists(os.path.join(binarized, "dict.src.txt")):
        raw = os.path.join(dest, "raw")
        write_reversal_task(raw)
        subprocess.run([os.path.join(BIN, "fairseq-preprocess"), "--source-lang", "src",
                        "--target-lang", "tgt", "--trainpref", f"{raw}/train", "--validpref",
                        f"{raw}/valid", "--destdir", binarized, "--joined-dictionary",
                        "--workers", "1"], check=True, capture_output=True)
    return binarized


def write_outputs(out: str, stem: str, title: str, result: dict, lines: List[str]):
    """``OUT/STEM.json`` (with its table, for ``python -m fullyqt.bench.readme`` and the
    benchmark's report) and ``OUT/STEM.md``, each written whole or not at all."""
    for name, text in ((f"{stem}.json", json.dumps({**result, "markdown": lines}, indent=1)),
                       (f"{stem}.md", "\n".join([f"# {title}", ""] + lines) + "\n")):
        tmp = os.path.join(out, name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, os.path.join(out, name))


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: an integer >= 1")
    return value


def main(argv=None):
    p = argparse.ArgumentParser(prog="python scripts/studies/train_speed.py",
                                description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for train_speed.json / .md")
    p.add_argument("--data", help="binarized data directory (default: the toy corpus)")
    p.add_argument("--shapes", default="cpu-small,base",
                   help=f"comma list of: {', '.join(SHAPES)} (default: cpu-small,base)")
    p.add_argument("--max-tokens", type=positive_int, default=4096)
    p.add_argument("--updates", type=positive_int, default=20, help="timed updates per model")
    p.add_argument("--warmup", type=int, default=3, help="untimed updates first")
    p.add_argument("--threads", type=positive_int, default=min(os.cpu_count() or 1, 4))
    a = p.parse_args(argv)
    shapes = [s for s in a.shapes.split(",") if s]
    bad = [s for s in shapes if s not in SHAPES]
    if bad or not shapes:
        p.error(f"--shapes: got {a.shapes!r}; allowed: a comma list of {', '.join(SHAPES)}")
    if a.data and not glob.glob(os.path.join(a.data, "dict.*.txt")):
        p.error(f"--data {a.data}: not a binarized data directory (no dict.*.txt)")
    os.makedirs(a.out, exist_ok=True)
    os.environ.update({k: v for k, v in thread_env(a.threads).items()
                       if k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    data = a.data or toy_data(os.path.join(a.out, "toy"))
    say = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731
    result = measure(data, shapes, a.max_tokens, a.updates, max(0, a.warmup), a.threads, say)
    write_outputs(a.out, "train_speed", "Training speed", result, table_lines(result))
    print("\n".join(table_lines(result)))


if __name__ == "__main__":
    main()
