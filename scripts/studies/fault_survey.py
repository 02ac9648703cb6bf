"""Bad inputs and faults over every command, tried as a new user would: each case runs the real
command line on tiny models of a generated task and records its exit status, the last line it
printed, whether a traceback appeared and what it left behind; a markdown table (and JSON) says
which cases end cleanly.  The cases are those of the second reliability pass (issue 43).

    python scripts/studies/fault_survey.py --out runs/fault-survey [--cases 1,4a]
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List

import torch

from fullyqt.checkpoint import SCRATCH
from fullyqt.data.synthetic import write_reversal_task

BIN = os.path.dirname(sys.executable)
USER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "fullyqt")
TINY = ["--arch", "fullyqt_transformer_tiny", "--encoder-embed-dim", "64",
        "--decoder-embed-dim", "64", "--encoder-ffn-embed-dim", "128",
        "--decoder-ffn-embed-dim", "128", "--encoder-layers", "2", "--decoder-layers", "2",
        "--share-all-embeddings"]
STOCK = ["--arch", "transformer", "--encoder-embed-dim", "64", "--decoder-embed-dim", "64",
         "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128",
         "--encoder-layers", "2", "--decoder-layers", "2", "--encoder-attention-heads", "4",
         "--decoder-attention-heads", "4", "--share-all-embeddings"]
TRAIN = ["--optimizer", "adam", "--lr", "3e-3", "--lr-scheduler", "inverse_sqrt",
         "--warmup-updates", "20", "--max-tokens", "2000", "--criterion",
         "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--no-progress-bar",
         "--cpu", "--seed", "1", "--no-epoch-checkpoints", "--disable-validation"]
KRON = ["--kron-layers", "ffn", "--kron-factor", "4"]
RESUME_Q8 = [*TINY, "--quant-bits", "8", "--max-update", "8", "--save-interval-updates", "2"]
PRUNE = ["--prune-method", "topk", "--prune-density", "0.5", "--prune-attn-block", "head",
         "--prune-warmup-updates", "2", "--prune-cooldown-updates", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}


@dataclass
class Outcome:
    case: str
    what: str
    rc: int
    last: str
    traceback: bool
    clean: bool  # what the case requires held: one line / resumed / nothing left behind
    notes: List[str] = field(default_factory=list)


def run(name, *args, env=None, timeout=600, **options):
    """Run a console script of this environment (or an absolute path); the CompletedProcess with
    ``last`` (its last line) and ``traceback`` added.  ``options`` go to ``subprocess.run``."""
    exe = name if os.path.isabs(name) else os.path.join(BIN, name)
    proc = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, env=env or ENV,
                          timeout=timeout, **options)
    lines = [ln for ln in proc.stderr.strip().splitlines() if "tensorboardX" not in ln]
    proc.last = lines[-1] if lines else (proc.stdout.strip().splitlines() or [""])[-1]
    proc.traceback = "Traceback" in proc.stderr
    return proc


def with_data(checkpoint, data, out):
    """A copy of ``checkpoint`` that records ``data`` as the folder it was trained on."""
    state = torch.load(checkpoint, weights_only=False)
    cfg = state["cfg"]
    if isinstance(cfg["task"], dict):
        cfg["task"]["data"] = str(data)
    else:
        cfg["task"].data = str(data)
    if getattr(cfg.get("model"), "data", None) is not None:
        cfg["model"].data = str(data)
    torch.save(state, out)
    return out


def scratch(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith(SCRATCH) or n.startswith(".ct2"))


class Survey:
    """Tiny models and data under ``root``, built once; each case gets a fresh folder."""

    def __init__(self, root):
        self.root = root
        self.n = 0
        raw, self.data = os.path.join(root, "raw"), os.path.join(root, "bin")
        if not os.path.isdir(self.data):
            write_reversal_task(raw)
            for dest, extra in ((self.data, []), (os.path.join(root, "bin8"),
                                                  ["--nwordssrc", "8"])):
                run("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt",
                    "--trainpref", f"{raw}/train", "--validpref", f"{raw}/valid", "--testpref",
                    f"{raw}/test", "--destdir", dest, "--joined-dictionary", "--workers", "1",
                    *extra)
        self.raw, self.other = raw, os.path.join(root, "bin8")
        m = os.path.join(root, "models")
        self.teacher = self.model(m, "teacher", *STOCK, "--max-update", "60", user_dir=False)
        self.q8 = self.model(m, "q8", *TINY, "--quant-bits", "8", "--max-update", "6",
                             "--save-interval-updates", "2")
        self.float = self.model(m, "float", *TINY, "--no-quant", "--max-update", "4")
        self.pruned = self.model(m, "pruned", *TINY, "--quant-bits", "8", *PRUNE,
                                 "--max-update", "6")
        self.kron = self.model(m, "kron", *TINY, "--quant-bits", "8", *KRON, "--max-update", "4")
        self.wide = self.model(m, "wide", "--arch", "fullyqt_transformer", "--quant-bits", "8",
                               "--share-all-embeddings", "--max-update", "1")  # big to write
        self.student = self.model(m, "student", *TINY, "--quant-bits", "8", *KRON,
                                  "--criterion", "fullyqt_distill", "--teacher-path",
                                  self.teacher, "--max-update", "4")

    def model(self, folder, name, *extra, user_dir=True):
        save = os.path.join(folder, name)
        last = os.path.join(save, "checkpoint_last.pt")
        if not os.path.isfile(last):
            proc = self.train_from(save, *extra, user_dir=user_dir)
            if proc.returncode:
                raise SystemExit(f"setup training failed:\n{proc.stderr[-3000:]}")
        return last

    def fresh(self, name="case"):
        self.n += 1
        path = os.path.join(self.root, "cases", f"{self.n:02d}-{name}")
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        return path

    def train_from(self, save, *extra, data=None, user_dir=True):
        """fairseq-train on the survey's data (or ``data``) into ``save``."""
        return run("fairseq-train", data or self.data, "--save-dir", save, *TRAIN, *extra,
                   *(["--user-dir", USER_DIR] if user_dir else []))

    def copy_run(self, name, checkpoint):
        """A fresh case folder holding a copy of ``checkpoint``'s run folder; its path."""
        save = os.path.join(self.fresh(name), "run")
        shutil.copytree(os.path.dirname(checkpoint), save)
        return save


def logged(proc, needle):
    """The first line of the command's log (stdout or stderr) that holds ``needle``, without
    the logger's prefix; None if there is none."""
    for line in (proc.stdout + proc.stderr).splitlines():
        if needle in line:
            line = line.split(" | ")[-1].split("] ", 1)[-1].strip()
            return re.sub(r"^(INFO|WARNING|ERROR):[\w.]+:", "", line)
    return None


def said(proc, needle):
    """Whether the log holds ``needle``; the line becomes the case's line to show."""
    line = logged(proc, needle)
    if line:
        proc.last = line
    return line is not None


def refused(proc, *needles):
    """A clean refusal: nonzero exit, no traceback, the last line names what it must."""
    return proc.returncode != 0 and not proc.traceback and all(n in proc.last for n in needles)


CASES: Dict[str, Callable] = {}
WHAT: Dict[str, str] = {}


def case(key, what):
    def register(fn):
        CASES[key], WHAT[key] = fn, what
        return fn
    return register


@case("1", "--teacher-path: a teacher on a permuted dictionary of the same size")
def c1(s):
    d = s.fresh("permuted")
    other = os.path.join(d, "permuted")
    shutil.copytree(s.data, other)
    for name in ("dict.src.txt", "dict.tgt.txt"):
        path = os.path.join(other, name)
        lines = open(path).read().splitlines(keepends=True)
        lines[2], lines[5] = lines[5], lines[2]
        open(path, "w").write("".join(lines))
    teacher = with_data(s.teacher, other, os.path.join(d, "teacher.pt"))
    p = s.train_from(os.path.join(d, "s"), *TINY, "--criterion", "fullyqt_distill",
                     "--teacher-path", teacher, "--max-update", "1")
    return p, refused(p, "differs from the data's at entry")


@case("2", "fullyqt-distill-data killed, its teacher file replaced, rerun")
def c2(s):
    d = s.fresh("distill-swap")
    teacher, out = os.path.join(d, "teacher.pt"), os.path.join(d, "out")
    shutil.copy(s.teacher, teacher)
    args = [teacher, s.data, "--beam", "2", "--threads", "1", "--no-progress-bar", "--out", out]
    proc = subprocess.Popen([os.path.join(BIN, "fullyqt-distill-data"), *args], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = out + ".partial"
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline and not (
            os.path.isdir(partial) and any(n.startswith("part-") for n in os.listdir(partial))):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(s.teacher, weights_only=False)
    with torch.no_grad():
        for t in state["model"].values():
            t.mul_(1.01)
    torch.save(state, teacher)
    p = run("fullyqt-distill-data", *args)
    return p, refused(p, "not the teacher that made the translations") and not os.path.exists(out)


def _cut_last(s, name, keep):
    save = s.copy_run(name, s.q8)
    last = os.path.join(save, "checkpoint_last.pt")
    data = open(last, "rb").read()
    open(last, "wb").write(data[:keep(len(data))])
    return s.train_from(save, *RESUME_Q8), save, last


@case("3a", "fairseq-train rerun after a kill left checkpoint_last.pt empty")
def c3a(s):
    p, save, last = _cut_last(s, "empty-last", lambda n: 0)
    return p, refused(p, "empty (0 bytes)", "`cp ")


@case("3b", "fairseq-train rerun after a kill cut checkpoint_last.pt short")
def c3b(s):
    p, save, last = _cut_last(s, "cut-last", lambda n: n // 2)
    ok = refused(p, "cut short", "`cp ")
    if ok:  # do what the line says: the run resumes from the newest complete checkpoint
        source, target = p.last.split("`cp ")[1].split("`")[0].split()
        shutil.copyfile(source, target)
        again = s.train_from(save, *RESUME_Q8)
        state = torch.load(last, map_location="cpu", weights_only=False)
        ok = again.returncode == 0 and state["optimizer_history"][-1]["num_updates"] == 8
    return p, ok


@case("3c", "a save that failed (full disk) left fairseq's checkpoint_1_8.pt.tmp; rerun")
def c3c(s):
    save = s.copy_run("stale-tmp", s.q8)
    open(os.path.join(save, "checkpoint_1_8.pt.tmp"), "wb").write(b"half" * 1000)
    p = s.train_from(save, *RESUME_Q8)
    left = [n for n in os.listdir(save) if n.endswith(".tmp")]
    p.last = (f"left behind: {', '.join(left)}" if left else
              "checkpoint_1_8.pt.tmp replaced by the rerun's own save of checkpoint_1_8.pt")
    return p, p.returncode == 0 and not left


def _finetune(s, name, source, *extra):
    return s.train_from(s.fresh(name), *TINY, "--finetune-from-model", source,
                        "--max-update", "1", *extra)


@case("4a", "--finetune-from-model of a masked checkpoint without --prune-*")
def c4a(s):
    p = _finetune(s, "masked-noprune", s.pruned, "--quant-bits", "8")
    return p, refused(p, "holds pruning masks")


@case("4b", "--finetune-from-model of a masked checkpoint with another block shape")
def c4b(s):
    p = _finetune(s, "masked-block", s.pruned, "--quant-bits", "8", *PRUNE[:4],
                  "--prune-attn-block", "32x32", "--prune-warmup-updates", "0",
                  "--prune-cooldown-updates", "0")
    return p, refused(p, s.pruned)


@case("4c", "--finetune-from-model of a Kronecker checkpoint without --kron-layers")
def c4c(s):
    p = _finetune(s, "kron-noflags", s.kron, "--quant-bits", "8")
    return p, p.returncode == 0 and said(p, "taken from it")


@case("4d", "--finetune-from-model of a Kronecker checkpoint with another --kron-factor")
def c4d(s):
    p = _finetune(s, "kron-factor", s.kron, "--quant-bits", "8", "--kron-layers", "ffn",
                  "--kron-factor", "16")
    return p, refused(p, "kron")


@case("4e", "--finetune-from-model of a Kronecker checkpoint (ffn) with --kron-layers ffn,attn")
def c4e(s):
    p = _finetune(s, "kron-layers", s.kron, "--quant-bits", "8", "--kron-layers", "ffn,attn",
                  "--kron-factor", "4")
    return p, p.returncode == 0 and said(p, "initialised from the dense weight")


@case("4f", "--finetune-from-model of a model trained on another dictionary")
def c4f(s):
    p = s.train_from(s.fresh("other-dict"), *TINY, "--quant-bits", "8", "--finetune-from-model",
                     s.q8, "--max-update", "1", data=s.other)
    return p, refused(p, s.q8)


def _restart(s, name, *extra):
    return s.train_from(s.copy_run(name, s.float), *TINY, "--no-quant", "--max-update", "6",
                        *extra)


@case("4g", "restarting a float run's directory with --kron-layers")
def c4g(s):
    p = _restart(s, "restart-kron", *KRON)
    return p, refused(p, "checkpoint_last.pt")


@case("4h", "restarting a float run's directory with --prune-method")
def c4h(s):
    p = _restart(s, "restart-prune", *PRUNE)
    return p, refused(p, "checkpoint_last.pt")


def _contradiction(s, name, needle, *flags):
    d = s.fresh(name)
    p = s.train_from(d, *TINY, *flags, "--max-update", "1")
    return p, refused(p, needle) and not os.listdir(d)


@case("5a", "--no-quant --quant-kernels int8")
def c5a(s):
    return _contradiction(s, "noquant-int8", "int8", "--no-quant", "--quant-kernels", "int8")


@case("5b", "--no-quant --quant-saved-codes")
def c5b(s):
    return _contradiction(s, "noquant-codes", "--quant-saved-codes", "--no-quant", "--quant-saved-codes")


@case("5c", "--prune-density without --prune-method")
def c5c(s):
    return _contradiction(s, "density-alone", "--prune-density", "--quant-bits", "8", "--prune-density", "0.5")


@case("5d", "--kron-factor 1000000 (far from any factor the shapes allow)")
def c5d(s):
    d = s.fresh("kron-far")
    p = s.train_from(d, *TINY, "--quant-bits", "8", "--kron-layers", "ffn", "--kron-factor",
                     "1000000", "--max-update", "1")
    return p, p.returncode == 0 and said(p, "is far from")


@case("5e", "python -m fullyqt.bench --variants ''")
def c5e(s):
    d = s.fresh("bench-empty")
    p = run(sys.executable, "-m", "fullyqt.bench", "--preset", "smoke", "--variants", "",
            "--out", os.path.join(d, "out"))
    return p, refused(p, "--variants") and not os.listdir(d)


def _export_killed(s, name, fmt, sig):
    d = s.fresh(name)
    out = os.path.join(d, "model" if fmt == "ctranslate2" else "model.pt")
    cmd = [os.path.join(BIN, "fullyqt-export"), s.wide, "--format", fmt, "--out", out]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not scratch(d) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.001)
    caught = bool(scratch(d)) and proc.poll() is None
    proc.send_signal(signal.SIGSTOP)  # frozen mid-write, then stopped
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)
    proc.wait()
    after_kill = scratch(d)
    half = os.path.exists(out)
    again = run("fullyqt-export", *cmd[1:])
    said(again, "wrote")
    again.notes = [f"stopped mid-write: {caught}; left by the stop: "
                   f"{', '.join(after_kill) or 'nothing'}; after the next run: "
                   f"{', '.join(scratch(d)) or 'nothing'}"]
    ok = caught and not half and again.returncode == 0 and not scratch(d) and \
        os.path.exists(out)
    if sig == signal.SIGTERM:
        ok = ok and not after_kill
    tmp = [n for n in os.listdir("/tmp") if n.startswith("tmp") and os.path.exists(
        os.path.join("/tmp", n, "stock.pt"))]
    return again, ok and not tmp


for _key, _fmt, _sig, _what in (
        ("6a", "int8", signal.SIGKILL, "killed (kill -9) mid-write, then rerun"),
        ("6b", "int8", signal.SIGTERM, "stopped (SIGTERM) mid-write"),
        ("6c", "ctranslate2", signal.SIGKILL, "killed (kill -9) mid-write, then rerun"),
        ("6d", "ctranslate2", signal.SIGTERM, "stopped (SIGTERM): nothing in /tmp either")):
    case(_key, f"fullyqt-export --format {_fmt} {_what}")(
        lambda s, fmt=_fmt, sig=_sig, key=_key: _export_killed(s, f"export-{key}", fmt, sig))


@case("6e", "exported files' permissions under umask 022 (fairseq's checkpoints: 0644)")
def c6e(s):
    d = s.fresh("umask")
    out = os.path.join(d, "model.int8.pt")
    old = os.umask(0o022)
    try:
        p = run("fullyqt-export", s.q8, "--format", "int8", "--out", out)
    finally:
        os.umask(old)
    mode = oct(os.stat(out).st_mode & 0o777) if os.path.exists(out) else "missing"
    p.last = f"{os.path.basename(out)}: mode {mode}"
    return p, mode == "0o644"


@case("7a", "--teacher-path DIR")
def c7a(s):
    p = s.train_from(s.fresh("teacher-dir"), *TINY, "--criterion", "fullyqt_distill",
                     "--teacher-path", os.path.dirname(s.teacher), "--max-update", "1")
    return p, refused(p, "a directory, not a checkpoint file")


@case("7b", "fullyqt-coverage DIR")
def c7b(s):
    p = run("fullyqt-coverage", os.path.dirname(s.q8))
    return p, refused(p, os.path.dirname(s.q8))


@case("7c", "fullyqt-coverage --data of another dictionary")
def c7c(s):
    p = run("fullyqt-coverage", s.q8, "--data", s.other)
    return p, refused(p, s.other)


@case("7d", "fullyqt-export --data of another dictionary")
def c7d(s):
    d = s.fresh("export-other")
    p = run("fullyqt-export", s.q8, "--format", "int8", "--out", os.path.join(d, "m.pt"),
            "--data", s.other)
    return p, refused(p, s.other) and not os.listdir(d)


@case("7e", "fullyqt-distill-data --subset nosuch")
def c7e(s):
    d = s.fresh("distill-subset")
    p = run("fullyqt-distill-data", s.teacher, s.data, "--subset", "nosuch", "--out",
            os.path.join(d, "out"))
    return p, refused(p, "nosuch") and not os.listdir(d)


@case("7f", "fullyqt-distill-data on an empty data folder")
def c7f(s):
    d = s.fresh("distill-empty")
    os.makedirs(os.path.join(d, "empty"))
    p = run("fullyqt-distill-data", s.teacher, os.path.join(d, "empty"), "--out",
            os.path.join(d, "out"))
    return p, refused(p, "empty") and os.listdir(d) == ["empty"]


@case("7g", "python -m fullyqt.bench --out FILE")
def c7g(s):
    d = s.fresh("bench-out-file")
    path = os.path.join(d, "file")
    open(path, "w").write("x")
    p = run(sys.executable, "-m", "fullyqt.bench", "--preset", "smoke", "--out", path)
    return p, refused(p, path)


@case("7h", "fullyqt-export onto a full disk (a 64 KiB file-size limit stands in for it)")
def c7h(s):
    import resource

    d = s.fresh("full-disk")
    out = os.path.join(d, "model.int8.pt")

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    p = run("fullyqt-export", s.q8, "--format", "int8", "--out", out, preexec_fn=limit)
    return p, refused(p, out) and not os.listdir(d)


@case("7i", "python -m fullyqt.eval.bleu on a UTF-16 file")
def c7i(s):
    d = s.fresh("utf16")
    hyp = os.path.join(d, "hyp.txt")
    open(hyp, "w", encoding="utf-16").write(open(f"{s.raw}/test.tgt").read())
    p = run(sys.executable, "-m", "fullyqt.eval.bleu", hyp, f"{s.raw}/test.tgt")
    return p, refused(p, hyp)


@case("7j", "fairseq-generate on a 0-byte checkpoint")
def c7j(s):
    d = s.fresh("generate-empty")
    path = os.path.join(d, "checkpoint.pt")
    open(path, "wb").close()
    p = run("fairseq-generate", s.data, "--user-dir", USER_DIR, "--path", path, "--cpu")
    return p, refused(p, path, "empty")


@case("8a", "4 bits without --quant-act-range: which activation range it trains with")
def c8a(s):
    d = s.fresh("4bit-default")
    p = s.train_from(d, *TINY, "--quant-bits", "4", "--max-update", "1")
    cfg = torch.load(os.path.join(d, "checkpoint_last.pt"), weights_only=False)["cfg"]["model"]
    from fullyqt.quant.config import QuantConfig

    used = QuantConfig.from_args(cfg).act_range
    p.last = (f"the checkpoint records --quant-act-range {cfg.quant_act_range}: activations "
              f"ranged by {used}")
    return p, p.returncode == 0 and used == "mse"


@case("8b", "pruning at a short --max-update, warm-up left at its default")
def c8b(s):
    d = s.fresh("prune-no-room")
    p = s.train_from(d, *TINY, "--quant-bits", "8", "--prune-method", "topk",
                     "--prune-density", "0.5", "--max-update", "10")
    return p, refused(p, "--prune-warmup-updates") and not os.listdir(d)


@case("8c", "fullyqt-export --format compact of a run whose masks removed nothing")
def c8c(s):
    d = s.fresh("compact-nothing")
    save = os.path.join(d, "run")
    s.train_from(save, *TINY, "--quant-bits", "8", "--prune-method", "topk",
                 "--prune-density", "1", "--prune-attn-block", "head", "--prune-warmup-updates",
                 "1", "--prune-cooldown-updates", "1", "--max-update", "4")
    p = run("fullyqt-export", os.path.join(save, "checkpoint_last.pt"), "--format", "compact",
            "--out", os.path.join(d, "m.pt"))
    return p, p.returncode == 0 and said(p, "removed no head")


@case("8d", "a top-k run that cuts a layer to its floor: said in the log and the export")
def c8d(s):
    d = s.fresh("floor")
    save = os.path.join(d, "run")
    t = s.train_from(save, *TINY, "--quant-bits", "8", "--prune-method", "topk",
                     "--prune-density", "0.01", "--prune-topk-scope", "stack",
                     "--prune-attn-block", "head",
                     "--prune-warmup-updates", "1", "--prune-cooldown-updates", "1",
                     "--max-update", "6", "--log-interval", "1")
    p = run("fullyqt-export", os.path.join(save, "checkpoint_last.pt"), "--format", "compact",
            "--out", os.path.join(d, "m.pt"))
    return p, p.returncode == 0 and said(t, "cut to the floor") and said(p, "cut to the floor")


@case("8e", "a float (--no-quant) Kronecker model: a small file to ship")
def c8e(s):
    d = s.fresh("float-kron")
    save = os.path.join(d, "run")
    s.train_from(save, *TINY, "--no-quant", *KRON, "--max-update", "2")
    ckpt = os.path.join(save, "checkpoint_last.pt")
    out = os.path.join(d, "model.fp16.pt")
    p = run("fullyqt-export", ckpt, "--format", "float16", "--out", out)
    stock = os.path.join(d, "stock.pt")
    run("fullyqt-export", ckpt, "--format", "fairseq", "--out", stock)
    ratio = os.path.getsize(out) / os.path.getsize(stock) if os.path.exists(out) else 0
    p.last = f"model.fp16.pt: {ratio:.2f}x the bytes of the multiplied-out stock export"
    return p, p.returncode == 0 and 0 < ratio < 0.5


@case("8f", "fullyqt-export --format ctranslate2 of a combined (8-bit Kronecker) checkpoint")
def c8f(s):
    d = s.fresh("ct2-combined")
    p = run("fullyqt-export", s.student, "--format", "ctranslate2", "--out",
            os.path.join(d, "ct2"))
    fresh = logged(p, "start fresh")
    said(p, "wrote")
    p.notes = [fresh] if fresh else []
    return p, p.returncode == 0 and not fresh


@case("9", "the stock export of a distilled 8-bit Kronecker student in stock fairseq")
def c9(s):
    d = s.fresh("stock-student")
    out = os.path.join(d, "stock.pt")
    run("fullyqt-export", s.student, "--format", "fairseq", "--out", out)
    p = run("fairseq-generate", s.data, "--path", out, "--cpu", "--gen-subset", "test",
            "--required-batch-size-multiple", "1", "--max-sentences", "50", "--beam", "2")
    hyps = sum(ln.startswith("H-") for ln in p.stdout.splitlines())
    p.last = f"stock fairseq-generate (no --user-dir): {hyps} hypotheses, exit {p.returncode}"
    return p, p.returncode == 0 and hyps == 200


def main(argv=None):
    p = argparse.ArgumentParser(prog="python scripts/studies/fault_survey.py",
                                description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="work folder; fault_survey.md / .json go there")
    p.add_argument("--cases", help="comma-separated case keys (default: all)")
    a = p.parse_args(argv)
    keys = list(CASES) if not a.cases else a.cases.split(",")
    bad = [k for k in keys if k not in CASES]
    if bad:
        p.error(f"--cases: unknown {', '.join(bad)}; allowed: {', '.join(CASES)}")
    os.makedirs(a.out, exist_ok=True)
    survey = Survey(os.path.abspath(a.out))
    results = []
    for key in keys:
        proc, ok = CASES[key](survey)
        results.append(Outcome(key, WHAT[key], proc.returncode, proc.last.strip(),
                               proc.traceback, bool(ok), getattr(proc, "notes", [])))
        print(f"{key}: {'clean' if ok else 'NOT CLEAN'}: {proc.last.strip()[:160]}", flush=True)
    lines = ["| case | what | exit | traceback | last line / what was checked | clean |",
             "|---|---|---|---|---|---|"]
    for r in results:
        text = r.last.replace("|", "\\|").replace(survey.root, "…")
        note = "; ".join(r.notes).replace(survey.root, "…")
        lines.append(f"| {r.case} | {r.what} | {r.rc} | {'yes' if r.traceback else 'no'} | "
                     f"`{text}`{' (' + note + ')' if note else ''} | "
                     f"{'yes' if r.clean else '**no**'} |")
    clean = sum(r.clean for r in results)
    lines += ["", f"{clean} of {len(results)} cases clean."]
    with open(os.path.join(a.out, "fault_survey.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(a.out, "fault_survey.json"), "w") as f:
        json.dump([asdict(r) for r in results], f, indent=1)
    print("\n".join(lines))
    return 0 if clean == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
