"""Where decoding time goes: the torch profiler over a few test batches of beam search, split
into model matmul kernels, the model's other ops, Python/dispatch overhead inside the model, and
beam search outside it; for the float model of a finished benchmark run, its 8-bit model in fake
quantization and its integer export (a full-grid run's ``fullyqt8``, else the ``int8`` recipe's).

    python scripts/studies/decode_profile.py runs/cpu-small      # on an idle machine

Writes OUT/decode_profile.json (rows and rendered table) and rebuilds OUT/report.md.
"""
import json
import os
import time
from typing import Dict, List, Optional

import torch

from fullyqt.bench.report import rewrite
from finished_run import parse
from train_speed import write_outputs

MATMULS = {"aten::_int_mm": "int8", "aten::addmm": "float", "aten::mm": "float",
           "aten::bmm": "float", "aten::baddbmm": "float"}
MODEL_SCOPES = ("EnsembleModel: forward_encoder", "EnsembleModel: forward_decoder")


def load_eval_model(path: str, data_bin: str, overrides: Optional[dict] = None):
    from fairseq import checkpoint_utils

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [path], arg_overrides={"data": data_bin, **(overrides or {})})
    models[0].prepare_for_inference_(cfg)  # as fairseq-generate does: int8 kernels for exports
    return models[0], task


def eval_batches(task, n: int, batch_size: int):
    task.load_dataset("test")
    ds = task.dataset("test")
    it = task.get_batch_iterator(ds, max_sentences=batch_size,
                                 max_positions=(1024, 1024)).next_epoch_itr(shuffle=False)
    return [b for _, b in zip(range(n), it)]


def generator(model, task, beam: int, max_len: Optional[int]):
    """fairseq's beam search; ``max_len`` caps the hypotheses' length (fairseq's own cap
    otherwise)."""
    from fairseq.sequence_generator import SequenceGenerator

    cap = {} if max_len is None else {"max_len_a": 0, "max_len_b": max_len}
    return SequenceGenerator([model], task.target_dictionary, beam_size=beam, **cap)


def _decode(gen, model, batches) -> int:
    tokens = 0
    with torch.no_grad():
        for b in batches:
            tokens += sum(len(h[0]["tokens"]) for h in gen.generate([model], b))
    return tokens


def profile(checkpoints: Dict[str, str], data_bin: str, *, batches: int = 4,
            batch_size: int = 32, beam: int = 5,
            overrides: Optional[Dict[str, dict]] = None,
            max_len: Optional[int] = None) -> List[dict]:
    """One row per named checkpoint (loaded with ``overrides[name]``, if any): shares of the
    decode wall time."""
    rows = []
    for name, path in checkpoints.items():
        model, task = load_eval_model(path, data_bin, (overrides or {}).get(name))
        bs = eval_batches(task, batches, batch_size)
        gen = generator(model, task, beam, max_len)
        _decode(gen, model, bs[:1])  # warm-up
        start = time.perf_counter()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            tokens = _decode(gen, model, bs)
        wall = (time.perf_counter() - start) * 1e6
        events = prof.events()
        in_model = sum(e.cpu_time_total for e in events if e.name in MODEL_SCOPES)
        mm = {"int8": 0.0, "float": 0.0}
        model_aten = 0.0
        for e in events:
            if e.name.startswith("aten::") and _inside_model(e):
                model_aten += e.self_cpu_time_total
                if e.name in MATMULS:
                    mm[MATMULS[e.name]] += e.self_cpu_time_total
        rows.append({"model": name, "tokens": tokens, "wall_ms": wall / 1e3,
                     "int8_matmul": mm["int8"] / wall, "float_matmul": mm["float"] / wall,
                     "other_ops": (model_aten - mm["int8"] - mm["float"]) / wall,
                     "python_in_model": (in_model - model_aten) / wall,
                     "outside_model": 1 - in_model / wall})
    return rows


def _inside_model(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in MODEL_SCOPES:
            return True
        parent = parent.cpu_parent
    return False


def markdown(rows: List[dict], threads: int) -> List[str]:
    """The profile section of the report."""
    head = ["| decoding | int8 matmul | float matmul | other ops in the model | Python & "
            "dispatch in the model | beam search & rest |", "|---|---|---|---|---|---|"]
    body = [f"| {r['model']} | {r['int8_matmul']:.0%} | {r['float_matmul']:.0%} | "
            f"{r['other_ops']:.0%} | {r['python_in_model']:.0%} | {r['outside_model']:.0%} |"
            for r in rows]
    lines = [f"torch profiler, {threads} threads, beam 5, batch 32, the first test batches; "
             "shares of the profiled wall time (profiling itself adds overhead).", ""]
    lines += head + body
    base = next((r for r in rows if "float" in r["model"]), None)
    if base is not None:
        lines += ["", f"fairseq's beam search outside the model takes "
                      f"{base['outside_model']:.0%} of float decoding here, so no model, however "
                      f"fast, decodes more than {1 / base['outside_model']:.1f}x faster than "
                      "float through fairseq-generate at this size; CTranslate2 rows run beam "
                      "search in C++."]
    return lines


def eight_bit_models(out: str) -> Dict[str, str]:
    """The run's 8-bit fake-quant checkpoint and integer export: ``fullyqt8`` (or
    ``fullyqt8-finetune``) of a full-grid run, else the int8 recipe's."""
    for name in ("fullyqt8", "fullyqt8-finetune"):
        done = os.path.join(out, "checkpoints", name, "train_result.json")
        export = os.path.join(out, "checkpoints", name, "model.int8.pt")
        if os.path.isfile(done) and os.path.isfile(export):
            with open(done, encoding="utf-8") as f:
                return {name: json.load(f)["checkpoint"], f"{name} int8 export": export}
    recipe = os.path.join(out, "recipes", "int8")
    stages = sorted(os.listdir(os.path.join(recipe, "stages"))) if os.path.isdir(
        os.path.join(recipe, "stages")) else []
    last = os.path.join(recipe, "stages", stages[-1], "checkpoint_last.pt") if stages else ""
    if os.path.isfile(last) and os.path.isfile(os.path.join(recipe, "model.int8.pt")):
        return {"int8 recipe": last, "int8 recipe export": os.path.join(recipe, "model.int8.pt")}
    return {}


def main(argv=None):
    p, a, data = parse("decode_profile.py", __doc__, argv)
    float_ckpt = os.path.join(a.out, "checkpoints", "float", "train_result.json")
    eight = eight_bit_models(a.out)
    if not (os.path.isfile(float_ckpt) and eight):
        p.error(f"{a.out}: not a finished benchmark run with a float model and an 8-bit one "
                "and its integer export")
    with open(float_ckpt, encoding="utf-8") as f:
        models = {"fairseq float": json.load(f)["checkpoint"]}
    max_len = data["meta"].get("hypotheses cut at (target tokens)")
    torch.set_num_threads(a.threads)
    fake, export = eight
    models[f"{fake} fake-quant (float matmuls)"] = eight[fake]
    models[export] = eight[export]
    rows = profile(models, os.path.join(a.out, "data", "bin"), max_len=max_len,
                   overrides={f"{fake} fake-quant (float matmuls)": {"quant_kernels": "fake"}})
    write_outputs(a.out, "decode_profile", "Where decode time goes",
                  {"kind": "decode_profile", "rows": rows, "threads": a.threads},
                  markdown(rows, a.threads))
    print(rewrite(a.out)["md"])


if __name__ == "__main__":
    main()
