"""fullyqt-compress: from a trained float model to a shipped one, by a named recipe.

    fullyqt-compress FLOAT_CKPT DATA_BIN --recipe int8 --out DIR
    fullyqt-compress FLOAT_CKPT DATA_BIN --recipe fast --out DIR -- --max-tokens 8192 --fp16
    fullyqt-compress FLOAT_CKPT DATA_BIN --recipe smallest --out DIR --dry-run

Recipes: int8, int4 (smaller), fast and shallow (faster), smallest (see configs/recipes/).
Arguments after `--` go to every fairseq-train stage unchanged.  A rerun with the same arguments
continues where the last one stopped.
"""
import argparse
import datetime
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from typing import List, Optional

from ..checkpoint import file_sha256
from ..errors import UserError
from . import recipe as recipes
from .plan import BASE_FLOOR, Plan, Step, default_base, make_plan
from .source import InputError, Source, read_source

MANIFEST = "compress.json"


class RunError(UserError):
    """The output directory holds something this run must not overwrite."""


def languages(source: Source, data: str):
    src, tgt = source.languages
    if src and tgt:
        return src, tgt
    from fairseq.data.data_utils import infer_language_pair

    return infer_language_pair(data)


def check_data(data: str, source: Source, checkpoint_path: str, *, test: bool):
    """DATA_BIN has the model's dictionaries (and a test split when evaluating)."""
    if not os.path.isdir(data):
        raise InputError(f"{data}: no such directory; DATA_BIN is fairseq-preprocess's "
                         "--destdir, with the model's dictionaries")
    src, tgt = languages(source, data)
    if src is None or tgt is None:
        raise InputError(f"{data}: no dict.SRC.txt / dict.TGT.txt pair found; DATA_BIN is "
                         "fairseq-preprocess's --destdir")
    from fairseq.data import Dictionary

    from ..checkpoint import read_checkpoint
    from ..data.dictionaries import difference

    dicts = []
    for lang in (src, tgt):
        path = os.path.join(data, f"dict.{lang}.txt")
        if not os.path.isfile(path):
            raise InputError(f"{data}: no {os.path.basename(path)}; the model's languages are "
                             f"{src}-{tgt}")
        dicts.append(Dictionary.load(path))
    problem = difference(read_checkpoint(checkpoint_path), *dicts)
    if problem:
        raise InputError(f"{checkpoint_path}: not trained on the dictionaries of {data} "
                         f"({problem})")
    if test and not os.path.exists(os.path.join(data, f"test.{src}-{tgt}.{src}.bin")):
        raise InputError(f"{data}: no test split (test.{src}-{tgt}.{src}.bin) to evaluate on; "
                         "binarize one (fairseq-preprocess --testpref) or pass --no-eval")


def manifest(a, recipe, source: Source, base: int, extra: List[str]) -> dict:
    return {"recipe": recipe.name, "recipe file": recipe.digest, "input": source.path,
            "input sha256": file_sha256(source.path), "data": os.path.abspath(a.data),
            "teacher": os.path.abspath(a.teacher) if a.teacher else None,
            "teacher sha256": file_sha256(a.teacher) if a.teacher else None,
            "updates": base, "fairseq-train arguments": extra}


def claim(out: str, wanted: dict):
    """Make ``out`` this run's directory, or refuse in one line when it holds another run."""
    if os.path.isfile(out):
        raise RunError(f"--out {out}: a file; give a directory (new, or this run's to resume)")
    path = os.path.join(out, MANIFEST)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            held = json.load(f)
        for key, value in wanted.items():
            if held.get(key) != value:
                raise RunError(f"--out {out} holds a run with {key} {held.get(key)!r}; this "
                               f"command has {value!r}; give another --out, or remove {out} to "
                               "start over")
        return
    if os.path.isdir(out) and os.listdir(out):
        raise RunError(f"--out {out}: not empty and not a fullyqt-compress run (no {MANIFEST}); "
                       "give a new or empty directory")
    os.makedirs(out, exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(wanted, f, indent=1)
    os.replace(path + ".tmp", path)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


class Progress:
    """The live line of a training stage: rewritten in place on a terminal, a line every tenth
    of the stage otherwise."""

    def __init__(self, label: str, total: int, stream=sys.stdout):
        self.label, self.total, self.stream = label, total, stream
        self.start = time.time()
        self.first = None  # (update, time) of the first record this run saw
        self.shown = -1
        self.live = stream.isatty()

    def update(self, record: dict):
        n = int(record.get("num_updates", 0))
        now = time.time()
        if self.first is None:
            self.first = (n, now)
        done, then = self.first
        rate = (n - done) / (now - then) if n > done and now > then else None
        left = f", ~{_minutes((self.total - n) / rate)} left" if rate else ""
        text = (f"{self.label}: update {n}/{self.total}, loss {record.get('loss', '?')}, "
                f"{_minutes(now - self.start)} elapsed{left}")
        if self.live:
            self.stream.write("\r" + text.ljust(100)[:120])
            self.stream.flush()
        elif n * 10 // max(1, self.total) > self.shown:
            self.shown = n * 10 // max(1, self.total)
            print(text, file=self.stream, flush=True)

    def close(self):
        if self.live and self.first is not None:
            self.stream.write("\n")


_CHILD: List[subprocess.Popen] = []


def run_step(step: Step, env: dict, progress: Optional[Progress] = None):
    """Run ``step.cmd`` exactly, appending its output to ``step.log``."""
    from ..eval.decode import train_record

    os.makedirs(os.path.dirname(step.log), exist_ok=True)
    with open(step.log, "a", encoding="utf-8") as log:
        log.write(f"$ {step.shell()}\n")
        log.flush()
        proc = subprocess.Popen(step.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env)
        _CHILD.append(proc)
        for line in proc.stdout:
            log.write(line)
            record = train_record(line) if progress else None
            if record:
                progress.update(record)
        proc.wait()
        _CHILD.remove(proc)
    if progress:
        progress.close()
    if proc.returncode != 0:
        with open(step.log, encoding="utf-8") as f:
            last = [x.rstrip() for x in f if x.strip()][-1:]
        raise RunError(f"{step.cmd[0]} ({step.name}) failed with exit {proc.returncode}: "
                       f"{last[0] if last else ''}  (full log: {step.log})")


def _restore_last(folder: str, label: str, say) -> bool:
    """Whether the stage has a checkpoint to resume from; one cut short by a kill while fairseq
    copied it is replaced by the newest complete one beside it."""
    last = os.path.join(folder, "checkpoint_last.pt")
    if not os.path.exists(last):
        return False
    if zipfile.is_zipfile(last):
        return True
    from ..errors import complete_checkpoints

    others = [p for p in complete_checkpoints(folder) if p != last]
    if not others:
        os.unlink(last)
        say(f"{label}: checkpoint_last.pt was cut short by the kill and nothing else was saved: "
            "the stage starts over")
        return False
    shutil.copyfile(others[0], last + ".tmp")
    os.replace(last + ".tmp", last)
    say(f"{label}: checkpoint_last.pt was cut short by the kill; resuming from "
        f"{os.path.basename(others[0])}")
    return True


def _newer(output: str, source: str) -> bool:
    return os.path.exists(output) and os.path.getmtime(output) > os.path.getmtime(source)


def execute(plan: Plan, out: str, say) -> List[dict]:
    """Run the plan's steps that are not done yet; returns each stage's updates and seconds."""
    from ..eval.decode import BIN

    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    stages, n = [], len(plan.stages)
    for step in plan.steps:
        if step.kind == "train":
            k = plan.stages.index(step) + 1
            done = os.path.join(step.output, "done.json")
            label = f"stage {k}/{n} {step.name}"
            if os.path.isfile(done):
                with open(done, encoding="utf-8") as f:
                    stages.append(json.load(f))
                say(f"{label}: finished earlier ({stages[-1]['updates']} updates), reused")
                continue
            resumed = _restore_last(step.output, label, say)
            say(f"{label}: {'resuming' if resumed else 'starting'}, {step.updates} updates "
                f"(log: {os.path.relpath(step.log, out)})")
            started = time.time()
            run_step(step, env, Progress(label, step.updates))
            record = {"name": step.name, "updates": step.updates,
                      "seconds": round(time.time() - started, 1)}
            with open(done + ".tmp", "w", encoding="utf-8") as f:
                json.dump(record, f)
            os.replace(done + ".tmp", done)
            for name in os.listdir(step.output):  # mid-stage copies, kept only for a resume
                if re.fullmatch(r"checkpoint_\d+_\d+\.pt", name):
                    os.unlink(os.path.join(step.output, name))
            stages.append(record)
            say(f"{label}: done in {_minutes(record['seconds'])}")
        elif _newer(step.output, step.cmd[1]):  # exported from this very checkpoint before
            say(f"export {step.name}: {os.path.relpath(step.output, out)} (made earlier)")
        else:
            say(f"export {step.name}: {os.path.relpath(step.output, out)}")
            run_step(step, env)
    return stages


def _split(argv: List[str]):
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    own, extra = _split(list(argv))
    p = argparse.ArgumentParser(prog="fullyqt-compress", description=__doc__.splitlines()[0],
                                epilog="\n".join(__doc__.splitlines()[2:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="the trained float model (a fairseq checkpoint)")
    p.add_argument("data", help="its binarized data directory (fairseq-preprocess --destdir)")
    p.add_argument("--recipe", required=True, help=f"one of: {', '.join(recipes.names())}")
    p.add_argument("--out", required=True, help="the run's directory (a rerun resumes it)")
    p.add_argument("--updates", type=int, metavar="N",
                   help="the recipe's base length in updates; each stage runs a stated "
                        "multiple of it (default: the input's own update count, at least "
                        f"{BASE_FLOOR})")
    p.add_argument("--teacher", metavar="CKPT",
                   help="distil from this model instead of the input (say a wider one)")
    p.add_argument("--dry-run", action="store_true",
                   help="print every command the recipe would run, in order, and stop")
    p.add_argument("--no-eval", dest="evaluate", action="store_false",
                   help="skip decoding the test split (BLEU, speed) for the report")
    p.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 4),
                   help="CPU threads for the evaluation's decoding (default: min(cores, 4))")
    p.add_argument("--post-process", default="auto",
                   choices=["auto", "sentencepiece", "subword_nmt", "none"],
                   help="how the evaluation detokenizes (fairseq's --post-process; auto: from "
                        "the dictionary's symbols)")
    p.add_argument("--reference", metavar="FILE",
                   help="raw reference text of the test split (default: its binarized "
                        "targets, post-processed)")
    a = p.parse_args(own)
    logging.getLogger("fairseq").setLevel(logging.WARNING)  # its in-process readers' chatter
    try:
        return run(a, extra)
    except UserError as e:
        p.exit(2, f"{p.prog}: error: {e}\n")


def _post_process(choice: str, data: str, tgt: str) -> Optional[str]:
    if choice != "auto":
        return None if choice == "none" else choice
    with open(os.path.join(data, f"dict.{tgt}.txt"), encoding="utf-8") as f:
        symbols = [line.split(" ", 1)[0] for line in f]
    if any(s.startswith("\u2581") for s in symbols):
        return "sentencepiece"
    return "subword_nmt" if any(s.endswith("@@") for s in symbols) else None


def run(a, extra: List[str]) -> int:
    recipe = recipes.load(a.recipe)
    if a.updates is not None and a.updates < 1:
        raise UserError(f"--updates: got {a.updates}; allowed: an integer >= 1")
    if a.threads < 1:
        raise UserError(f"--threads: got {a.threads}; allowed: an integer >= 1")
    if a.reference and not os.path.isfile(a.reference):
        raise UserError(f"--reference {a.reference}: no such file")
    source = read_source(a.checkpoint)
    check_data(a.data, source, a.checkpoint, test=a.evaluate)
    if a.teacher:
        from ..distill.teacher import read_teacher

        read_teacher(a.teacher)
        check_data(a.data, read_source(a.teacher), a.teacher, test=False)
    base = a.updates or default_base(source)
    out = os.path.abspath(a.out)
    plan = make_plan(recipe, source, os.path.abspath(a.data), out, base=base,
                     teacher=a.teacher and os.path.abspath(a.teacher), extra=extra)
    if a.dry_run:
        for step in plan.steps:
            print(step.shell())
        return 0

    def say(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    claim(out, manifest(a, recipe, source, base, extra))
    lengths = ", ".join(f"{s.name} {s.updates}" for s in plan.stages)
    say(f"recipe {recipe.name}: {len(plan.stages)} stages ({lengths} updates; base length "
        f"{base}{'' if a.updates else f', from the input: {source.num_updates} updates'})")
    with open(os.path.join(out, "commands.sh"), "w", encoding="utf-8") as f:
        f.write("".join(step.shell() + "\n" for step in plan.steps))
    signal.signal(signal.SIGTERM, _stop)
    started = time.time()
    stages = execute(plan, out, say)
    shipped = {fmt: plan.shipped(fmt) for fmt in recipe.ship}
    from ..eval.size import model_size

    float_bytes = 4 * model_size(source.path, None)["params"]
    systems = None
    src, tgt = languages(source, a.data)
    if a.evaluate:
        from .evaluate import evaluate

        bits = next((s.quantized for s in reversed(recipe.stages)), None)
        systems = evaluate(source.path, plan.final, shipped, os.path.abspath(a.data),
                           os.path.join(out, "eval"), languages=(src, tgt), threads=a.threads,
                           post_process=_post_process(a.post_process, a.data, tgt),
                           reference=a.reference, bits=bits, vmap=recipe.vmap, say=say)
    from .report import write

    meta = {"date": datetime.date.today().isoformat(), "input": source.path,
            "input updates": source.num_updates, "base length": base,
            "teacher": a.teacher or "the input", "threads (evaluation)": a.threads,
            "target vocabulary": source.embedding_rows[1],
            "wall time of this invocation (min)": round((time.time() - started) / 60, 1)}
    from ..eval.decode import cpu_name

    meta["machine"] = cpu_name()
    path = write(out, recipe, meta, stages, systems, float_bytes, shipped)
    say(f"done: {', '.join(os.path.relpath(p, out) for p in shipped.values())}; report "
        f"{os.path.relpath(path, out)}")
    return 0


def _stop(*_):
    for proc in list(_CHILD):
        proc.terminate()
    sys.exit(143)


if __name__ == "__main__":
    sys.exit(main())
