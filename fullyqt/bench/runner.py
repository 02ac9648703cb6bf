"""Train, translate and measure one benchmark variant through fairseq's own CLIs."""
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional

import torch

from ..eval.bleu import corpus_bleu, hypotheses_from_generate
from ..quant.weights import storage_key
from .config import Experiment

USER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
_TRANSLATED = re.compile(r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in ([\d.]+)s")


@dataclass
class TrainResult:
    checkpoint: str
    num_updates: int
    sec_per_update: float
    wall_seconds: float
    teacher_share: Optional[float] = None  # distillation: the teacher's share of update time


def device_flags() -> List[str]:
    return [] if torch.cuda.is_available() else ["--cpu"]


def thread_env(threads: int) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def run_logged(cmd: List[str], log_path: str, on_line: Optional[Callable[[str], None]] = None,
               env=None):
    """Run cmd, writing its output to log_path and handing each line to on_line."""
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env)
        for line in proc.stdout:
            log.write(line)
            if on_line:
                on_line(line)
        proc.wait()
    if proc.returncode != 0:
        with open(log_path, encoding="utf-8") as f:
            tail = "".join(f.readlines()[-15:])
        raise RuntimeError(f"{os.path.basename(cmd[0])} failed (exit {proc.returncode}); "
                           f"log: {log_path}\n{tail}")


def train_record(line: str):
    if "| train_inner |" not in line:
        return None
    try:
        return json.loads(line[line.index("{"):])
    except ValueError:
        return None


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


def length_flags(max_len: Optional[int]) -> List[str]:
    """fairseq's flags for hypotheses of at most ``max_len`` target tokens (none: its own)."""
    return [] if max_len is None else ["--max-len-a", "0", "--max-len-b", str(max_len)]


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


@dataclass
class DecodeResult:
    bleu: float
    signature: str
    translated: int  # sentences with a non-empty hypothesis
    target_tokens: int
    seconds: float
    hypotheses: List[str] = field(default_factory=list, repr=False)

    @property
    def scored(self) -> int:
        """Sentences BLEU was computed on (every reference: fullyqt.eval.bleu refuses less)."""
        return len(self.hypotheses)

    @property
    def tokens_per_second(self):
        return self.target_tokens / self.seconds


def translate(checkpoint: str, data_bin: str, reference: str, out_path: str, *, threads: int,
              beam: int = 5, batch_size: int = 32, post_process="sentencepiece",
              max_len: Optional[int] = None, extra: List[str] = ()) -> DecodeResult:
    """fairseq-generate on the test split; BLEU of detokenized output against the raw text."""
    cmd = [os.path.join(BIN, "fairseq-generate"), data_bin, "--user-dir", USER_DIR,
           "--path", checkpoint, "--gen-subset", "test", "--beam", str(beam),
           "--batch-size", str(batch_size), "--required-batch-size-multiple", "1",
           *device_flags(), *length_flags(max_len), *extra]
    if post_process:
        cmd += ["--post-process", post_process]
    run_logged(cmd, out_path, env=thread_env(threads))
    with open(out_path, encoding="utf-8") as f:
        lines = f.readlines()
    m = next((_TRANSLATED.search(x) for x in lines if _TRANSLATED.search(x)), None)
    if m is None:
        raise RuntimeError(f"{out_path}: fairseq-generate printed no timing line")
    with open(reference, encoding="utf-8") as f:
        refs = [x.rstrip("\n") for x in f]
    hyps = hypotheses_from_generate(lines, len(refs))
    score, sig = corpus_bleu(hyps, refs)
    return DecodeResult(score, sig, len(refs) - sum(not h for h in hyps),
                        int(m.group(2).replace(",", "")), float(m.group(3)), hyps)


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


_MATRIX = re.compile(r"layers\.\d+\.(self_attn|encoder_attn|fc1|fc2)\b.*"
                     r"\.(weight|source\.a|source\.b)$")
_EMBED = re.compile(r"(embed_tokens|output_projection)\.(weight|a|b|source\.a|source\.b)$")


def model_size(checkpoint: str, bits: Optional[int]) -> dict:
    """Parameters and deployable bytes: b-bit weights plus an fp32 (scale, min) per row bucket,
    fp32 biases; float models at 4 bytes a parameter.  Also the numbers held by the FFN and
    attention matrices and by the embeddings and output projection (dense weights or Kronecker
    factors).  Tied tensors count once."""
    state = torch.load(checkpoint, map_location="cpu")["model"]
    seen, params, nbytes = set(), 0, 0.0
    groups = {"ffn_attn_params": 0, "embed_params": 0}
    for name, t in state.items():
        if not t.is_floating_point() or t.dim() == 0 or "_quant" in name \
                or name.endswith((".lo", ".hi", "_float_tensor", ".version")) \
                or ".source.scores." in name or name.startswith("pruner."):
            continue
        key = storage_key(t)
        if key in seen:
            continue
        seen.add(key)
        params += t.numel()
        group = ("ffn_attn_params" if _MATRIX.search(name) else
                 "embed_params" if _EMBED.search(name) else None)
        if group is not None:
            groups[group] += t.numel()
        if bits is None or name.endswith(".bias"):
            nbytes += 4 * t.numel()
        else:
            rows = t.shape[0] if t.dim() > 1 else 1
            nbytes += t.numel() * bits / 8 + 8 * rows
    return {"params": params, "model_bytes": int(math.ceil(nbytes)), **groups}
