"""Train, translate and measure one benchmark variant through fairseq's own CLIs."""
import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import List, Optional

import torch

from ..eval.decode import (BIN, USER_DIR, device_flags, length_flags, run_logged, thread_env,
                           train_record)
from .config import Experiment


@dataclass
class TrainResult:
    checkpoint: str
    num_updates: int
    sec_per_update: float
    wall_seconds: float
    teacher_share: Optional[float] = None  # distillation: the teacher's share of update time


def train(exp: Experiment, data_bin: str, save_dir: str, *, minutes: float = 0,
          max_update: Optional[int] = None, finetune_from: Optional[str] = None,
          extra_flags: List[str] = (), threads: int = 2, say=print) -> TrainResult:
    """fairseq-train one experiment; reuses a finished run found in save_dir."""
    done = os.path.join(save_dir, "train_result.json")
    if os.path.exists(done):
        with open(done) as f:
            result = TrainResult(**json.load(f))
        say(f"[{exp.name}] reusing finished training ({result.num_updates} updates)")
        return result
    os.makedirs(save_dir, exist_ok=True)
    cmd = [os.path.join(BIN, "fairseq-train"), data_bin, "--user-dir", USER_DIR,
           "--save-dir", save_dir, *exp.flags(), *device_flags(), "--seed", "1",
           "--no-progress-bar", "--log-format", "json", "--log-interval", "10",
           "--no-epoch-checkpoints", "--keep-last-epochs", "1", *extra_flags]
    if max_update:
        cmd += ["--max-update", str(max_update)]
    if minutes:
        cmd += ["--stop-time-hours", f"{minutes / 60:.6f}"]
    if finetune_from:
        cmd += ["--finetune-from-model", finetune_from]
    records, start = [], time.time()

    def progress(line):
        rec = train_record(line)
        if rec:
            records.append(rec)
            if len(records) % 4 == 1:
                limit = f"/{max_update}" if max_update else ""
                say(f"[{exp.name}] update {rec['num_updates']}{limit}  loss {rec['loss']}  "
                    f"{time.time() - start:.0f}s")

    say(f"[{exp.name}] training: {exp.description}"
        + (f" (time cap {minutes:.1f} min)" if minutes else ""))
    run_logged(cmd, os.path.join(save_dir, "train.log"), progress, env=thread_env(threads))
    steps = [1.0 / float(r["ups"]) for r in records[1:] if float(r.get("ups", 0)) > 0]
    best = os.path.join(save_dir, "checkpoint_best.pt")
    # a pruned model is the one at the end of its schedule, not the best-validated (densest)
    ckpt = best if os.path.exists(best) and not exp.train.get("prune-method") else os.path.join(
        save_dir, "checkpoint_last.pt")
    n = int(torch.load(ckpt, map_location="cpu")["optimizer_history"][-1]["num_updates"])
    shares = [float(r["teacher_share"]) for r in records[1:] if "teacher_share" in r]
    result = TrainResult(ckpt, n, statistics.median(steps) if steps else math.nan,
                         time.time() - start, statistics.median(shares) if shares else None)
    with open(done, "w") as f:
        json.dump(asdict(result), f)
    return result


def distilled_data(teacher: str, data_bin: str, out_dir: str, *, threads: int,
                   max_len: Optional[int] = None, say=print) -> str:
    """The training set translated by ``teacher`` (fullyqt-distill-data, beam 5); reused when
    already made, resumed when stopped."""
    if os.path.exists(os.path.join(out_dir, "distill.json")):
        say(f"reusing the distilled training set {out_dir}")
        return out_dir
    say(f"translating the training set with the teacher into {out_dir}")
    cmd = [os.path.join(BIN, "fullyqt-distill-data"), teacher, data_bin, "--out", out_dir,
           "--beam", "5", "--batch-size", "64", "--threads", str(threads), "--no-progress-bar",
           *length_flags(max_len), *(["--cpu"] if not torch.cuda.is_available() else [])]
    run_logged(cmd, out_dir.rstrip("/") + ".log", env=thread_env(threads))
    return out_dir


def compact_model(checkpoint: str, out_dir: str) -> str:
    """The compact export of a pruned checkpoint (rewritten: seconds)."""
    from ..export.cli import export

    return export(checkpoint, "compact", os.path.join(out_dir, "model.compact.pt"), force=True)


def layer_shapes(checkpoint: str) -> dict:
    """Heads and FFN units per layer, and encoder/decoder layer parameters, of a checkpoint."""
    from ..checkpoint import model_args, read_checkpoint
    from ..prune.compact import parameter_count
    from ..prune.shapes import CompactShapes

    state = read_checkpoint(checkpoint)
    args = model_args(state)
    text = getattr(args, "prune_compact_shapes", None)
    out = {"layer_params": parameter_count(state["model"])}
    if text:
        shapes = CompactShapes.parse(text)
        out.update(heads={"enc": [s.heads for s in shapes.encoder],
                          "dec-self": [s.heads for s in shapes.decoder],
                          "dec-cross": [s.cross_heads for s in shapes.decoder]},
                   ffn={"enc": [s.ffn for s in shapes.encoder],
                        "dec": [s.ffn for s in shapes.decoder]})
    return out


