"""Benchmark: train the float baseline and the FullyQT variants, translate the test set, and
write ``report.md``, ``results.json`` and ``pareto.png``.

    python -m fullyqt.bench --preset cpu-small --out runs/cpu-small

Quantized variants train the same number of updates as the float baseline (the paper's
comparison); the time budget sets the float baseline's share and caps the others.  A rerun with
the same --out reuses finished training runs.
"""
import argparse
import dataclasses
import datetime
import logging
import os
import sys
import time
from typing import List, Optional

import torch

from ..eval.significance import compare
from .config import ConfigError, load_preset, presets
from ..data.prepare import layout, prepare_bible
from .kernels import measure
from .report import write_report
from .row import Row
from ..eval.decode import cpu_name, source_commit, translate
from ..eval.size import model_size
from .runner import compact_model, distilled_data, layer_shapes, train


def agreement(a, b) -> float:
    """Share of sentences whose translations are identical."""
    return sum(x == y for x, y in zip(a, b)) / max(1, len(a))


def selected(variants, names: List[str]):
    """``names`` and the variants they need (fine-tuned from, matched to, taught by, judged
    against), in the preset's order."""
    by_name = {v.name: v for v in variants}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: not a variant (allowed: "
                          f"{', '.join(by_name)})")
    keep, todo = set(), list(names)
    while todo:
        v = by_name[todo.pop()]
        if v.name not in keep:
            keep.add(v.name)
            todo += [d for d in (v.finetune_from, v.match_updates, v.teacher, v.distill_data,
                                 v.baseline) if d in by_name]
    return [v for v in variants if v.name in keep]


def control_of(v, shapes: dict) -> Optional[str]:
    """The variant ``v``'s BLEU is judged against: a pruned model's dense model (``shapes``);
    a quantized or distilled one's control (its ``baseline``); none for another float model."""
    if v.bits or v.distill_data:
        return v.baseline
    if shapes:
        return shapes.get("dense")
    return v.baseline if v.teacher else None


def kernels(name: str) -> List[str]:
    """fairseq-generate flags that decode a fullyqt checkpoint with ``--quant-kernels name``
    whatever its training run saved."""
    return ["--model-overrides", repr({"quant_kernels": name})]


def deployment_rows(v, row, fake, checkpoint, data, out, threads, max_len, say):
    """Rows for the shipped forms of a variant: CTranslate2 int8 of the float model (PTQ); the
    integer export decoded with integer kernels (compared with ``fake``, the fake-quant model's
    exact decode, and with its float-matmul decode)
    for <= 8-bit FullyQT models, and CTranslate2 conversion of the 8-bit ones."""
    from ..eval.decode import ct2_translate
    from ..eval.size import tree_bytes
    from .deploy import ctranslate2_model, export_int

    rows, vdir = [], os.path.join(out, "checkpoints", v.name)
    base = dict(params=row.params, num_updates=row.num_updates, sec_per_update=row.sec_per_update,
                train_minutes=row.train_minutes, baseline=row.baseline)
    if v.bits is not None and v.bits <= 8:
        b = v.bits
        say(f"[{v.name}] int{b} export, decoded with integer kernels by fairseq-generate")
        path = export_int(checkpoint, b, os.path.join(vdir, f"model.int{b}.pt"))
        dec = translate(path, data["bin"], data["test_ref"],
                        os.path.join(vdir, f"generate.int{b}.txt"), threads=threads,
                        max_len=max_len)
        same = agreement(dec.hypotheses, fake.hypotheses)
        say(f"[{v.name}] reference: the fake-quant model with float matmuls on dequantized values")
        dec_float = translate(checkpoint, data["bin"], data["test_ref"],
                              os.path.join(vdir, "generate.fake.txt"), threads=threads,
                              max_len=max_len, extra=kernels("fake"))
        rows.append(Row(**base, variant=f"{v.name} int{b} native", kind="deploy", bits=b,
                        description=f"the fullyqt-export int{b} file (packed weights) decoded by "
                                    "fairseq-generate --user-dir fullyqt with int8 matmul "
                                    f"kernels; {same:.1%} of its translations are identical to "
                                    "the fake-quant model's",
                        bleu=dec.bleu, signature=dec.signature, same_as_fake_quant=same,
                        float_matmul_same_as_fake_quant=agreement(dec_float.hypotheses,
                                                                  fake.hypotheses),
                        float_matmul_bleu=dec_float.bleu, model_bytes=tree_bytes(path),
                        tokens_per_second=dec.tokens_per_second, decode_seconds=dec.seconds,
                        translated=dec.translated, scored=dec.scored))
    if v.bits == 8 or v.bits is None:
        name = f"{v.name} → CT2 int8" + (" (PTQ)" if v.bits is None else "")
        say(f"[{name}] converting and decoding with CTranslate2")
        try:
            ct2_dir = ctranslate2_model(checkpoint, os.path.join(vdir, "ct2-int8"), data["bin"],
                                        from_fullyqt=str(v.train.get("arch", "")).startswith(
                                            "fullyqt"))
            res = ct2_translate(ct2_dir, data["test_tok"], data["spm"], data["test_ref"],
                                threads=threads, max_len=max_len)
        except (ImportError, RuntimeError) as e:
            say(f"[{name}] skipped: {e}")
            return rows
        what = (f"CTranslate2 int8 post-training quantization of {v.name} (float)"
                if v.bits is None else "fullyqt-export --format ctranslate2 (int8) of this model")
        res.pop("hypotheses")
        rows.append(Row(**base, **res, variant=name, kind="deploy", bits=8, description=what))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fullyqt.bench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cpu-small", help=f"one of: {', '.join(presets())}")
    p.add_argument("--out", required=True, help="output directory (data, checkpoints, report)")
    p.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="total training minutes (default: the preset's; 0 = no limit)")
    p.add_argument("--data", help="prepared data directory (presets with data: external)")
    p.add_argument("--no-deploy", dest="deploy", action="store_false",
                   help="skip the int8-export and CTranslate2 rows")
    p.add_argument("--full-grid", action="store_true",
                   help="also run the preset's extra variants (e.g. sequence-level "
                        "distillation), beyond the main job's")
    p.add_argument("--variants", metavar="A,B,...",
                   help="run only these variants of the main job and the full grid, with the "
                        "ones they build on (finished runs in --out are reused)")
    p.add_argument("--no-recipes", dest="recipes", action="store_false",
                   help="skip the preset's fullyqt-compress recipes of the float model")
    p.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 4),
                   help="CPU threads for training and decoding (default: min(cores, 4))")
    a = p.parse_args(argv)
    try:
        preset = load_preset(a.preset)
    except ConfigError as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    if a.threads < 1:
        p.exit(2, f"{p.prog}: error: --threads: got {a.threads}; allowed: an integer >= 1\n")
    budget = preset.time_budget_minutes if a.time_budget is None else a.time_budget
    if budget < 0:
        p.exit(2, f"{p.prog}: error: --time-budget: got {budget}; allowed: minutes >= 0\n")
    if preset.data == "external" and not a.data:
        p.exit(2, f"{p.prog}: error: preset {preset.name} needs --data DIR "
                  f"(made by scripts/prepare-wmt14.sh)\n")
    torch.set_num_threads(a.threads)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    started = time.time()

    def say(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    if a.variants is not None and not a.variants.strip(","):
        p.exit(2, f"{p.prog}: error: --variants {a.variants!r}: names no variant; give a comma "
                  "list of the preset's variants, or leave the option out to run the main job\n")
    variants = preset.variants + (preset.extra_variants if a.full_grid or a.variants else [])
    if a.variants:
        try:
            variants = selected(variants, a.variants.split(","))
        except ConfigError as e:
            p.exit(2, f"{p.prog}: error: --variants: {e}\n")
    out = os.path.abspath(a.out)
    if os.path.exists(out) and not os.path.isdir(out):
        p.exit(2, f"{p.prog}: error: --out {a.out}: a file; give a directory (new, or a "
                  "finished run's to reuse its training)\n")
    if a.data:
        data = layout(os.path.abspath(a.data))
        absent = [data[k] for k in ("bin", "spm", "test_ref", "test_tok")
                  if not os.path.exists(data[k])]
        if absent or not os.path.isfile(os.path.join(data["bin"], "dict.src.txt")):
            p.exit(2, f"{p.prog}: error: --data {a.data}: not a prepared data directory (missing "
                      f"{(absent or [os.path.join(data['bin'], 'dict.src.txt')])[0]}); make it "
                      "with scripts/prepare-wmt14.sh\n")
    else:
        say(f"preparing the built-in corpus in {out}/data")
        data = prepare_bible(os.path.join(out, "data"), preset.bpe_vocab, preset.limits)
    # the main job's variants set the time unit, so --full-grid leaves their runs unchanged
    unit = budget / sum(v.cost for v in preset.variants) if budget else 0
    with open(data["test_ref"], encoding="utf-8") as f:
        refs = [line.rstrip("\n") for line in f]
    meta = {"preset": preset.name, "date": datetime.date.today().isoformat(),
            "machine": f"{cpu_name()}, {a.threads} threads", "commit": source_commit(),
            "torch": torch.__version__, "test sentences": len(refs),
            "training budget (min)": budget}
    length = preset.max_len
    if length:
        meta["hypotheses cut at (target tokens)"] = length
    rows, trained, hypotheses = [], {}, {}
    dense_of = {}  # pruned variant -> the dense model it was pruned from
    for v in variants:
        dep = trained.get(v.match_updates)
        max_update = max(1, round(dep.num_updates * v.update_fraction)) if dep else None
        minutes = 0 if dep else unit * v.cost  # matched runs stop at the update count
        finetune = trained[v.finetune_from].checkpoint if v.finetune_from else None
        teacher = ["--teacher-path", trained[v.teacher].checkpoint] if v.teacher else []
        train_bin = data["bin"]
        if v.distill_data:
            train_bin = distilled_data(trained[v.distill_data].checkpoint, data["bin"],
                                       os.path.join(out, "data", f"distilled-{v.distill_data}"),
                                       threads=a.threads, max_len=length, say=say)
        result = train(v, train_bin, os.path.join(out, "checkpoints", v.name),
                       minutes=minutes, max_update=max_update, finetune_from=finetune,
                       extra_flags=teacher, threads=a.threads, say=say)
        shapes = {}
        if v.compact:  # from here on the variant is its compact model
            say(f"[{v.name}] removing pruned heads and FFN units (fullyqt-export --format "
                "compact)")
            result = dataclasses.replace(result, checkpoint=compact_model(
                result.checkpoint, os.path.join(out, "checkpoints", v.name)))
            shapes = {**layer_shapes(result.checkpoint), "dense": v.finetune_from,
                      "dense_layer_params": layer_shapes(finetune)["layer_params"]}
        elif v.finetune_from in dense_of:  # trained on from a compact model ("filled")
            dense = dense_of[v.finetune_from]
            shapes = {**layer_shapes(result.checkpoint), "dense": dense,
                      "dense_layer_params": layer_shapes(trained[dense].checkpoint)[
                          "layer_params"]}
        if shapes:
            dense_of[v.name] = shapes["dense"]
        trained[v.name] = result
        say(f"[{v.name}] translating the test set")
        dec = translate(result.checkpoint, data["bin"], data["test_ref"],
                        os.path.join(out, "checkpoints", v.name, "generate.txt"),
                        threads=a.threads, max_len=length,
                        extra=kernels("exact") if v.bits else [])
        hypotheses[v.name] = dec.hypotheses
        baseline = control_of(v, shapes)
        interval = (compare(dec.hypotheses, hypotheses[baseline], refs)
                    if baseline in hypotheses else None)
        rows.append(Row(variant=v.name, description=v.description, bits=v.bits,
                        baseline=baseline,
                        vs_control_interval=interval and [interval.low, interval.high],
                        teacher=v.teacher or v.distill_data, teacher_share=result.teacher_share,
                        bleu=dec.bleu, signature=dec.signature,
                        **model_size(result.checkpoint, v.bits),
                        kron_layers=v.train.get("kron-layers"),
                        tokens_per_second=dec.tokens_per_second, decode_seconds=dec.seconds,
                        translated=dec.translated, scored=dec.scored,
                        num_updates=result.num_updates, sec_per_update=result.sec_per_update,
                        train_minutes=result.wall_seconds / 60, **shapes))
        say(f"[{v.name}] BLEU {dec.bleu:.2f}, {dec.tokens_per_second:.0f} target tok/s")
        if a.deploy:
            rows += deployment_rows(v, rows[-1], dec, result.checkpoint, data, out, a.threads,
                                    length, say)
        meta["wall time (min)"] = round((time.time() - started) / 60, 1)
        paths = write_report(out, rows, meta, goals=preset.goals)
    if a.recipes and not a.variants and "float" in trained:
        from .recipes import recipe_rows, run_recipe

        for name in preset.recipes:
            report = run_recipe(name, trained["float"].checkpoint, data, out, threads=a.threads,
                                updates=preset.recipe_updates, say=say)
            rows += recipe_rows(name, report)
            paths = write_report(out, rows, meta, goals=preset.goals)
    q8 = next((n for n in ("fullyqt8", "fullyqt8-finetune") if n in trained), None)
    if a.deploy and q8 and preset.kernel_sizes:
        say(f"timing decoder steps at sizes {', '.join(preset.kernel_sizes)}")
        paths = write_report(out, rows, meta, a.threads, measure(preset.kernel_sizes),
                             preset.goals)
    for study, present in (("pruning_report", any(r.dense for r in rows)),
                           ("kronecker_report", any(r.kron_layers for r in rows))):
        if present:
            say(f"its section: python scripts/studies/{study}.py {a.out}")
    say(f"report: {paths['md']}  ({paths['json']}, {paths['png']})")
    print(open(paths["md"], encoding="utf-8").read())


if __name__ == "__main__":
    sys.exit(main())
