"""``fullyqt-distill-data``: sequence-level distillation data (Kim & Rush, 2016).

Translates a binarized training set with the teacher's beam search and writes a binarized data
directory ready for ``fairseq-train``: the same dictionaries and source side, the teacher's
translations as targets, the other splits copied unchanged.  Translations are saved in parts
as they are made, so a stopped run resumes where it was; the output directory appears only
when it is complete.
"""
import argparse
import glob
import json
import os
import shutil
import signal
import sys
import time

import torch

from ..errors import UserError, checked_action, integer, parse_number
from .teacher import load_teacher, read_teacher

PART_SENTENCES = 2000  # translations per saved part (what a stopped run can lose at most)


def _positive_int(option, value):
    return parse_number(option, value, integer, lambda n: n >= 1, "an integer >= 1")


def _non_negative_float(option, value):
    return parse_number(option, value, float, lambda x: x >= 0, "a number >= 0")


def build_parser():
    p = argparse.ArgumentParser(
        prog="fullyqt-distill-data",
        description="Translate a binarized training set with a teacher (sequence-level "
                    "knowledge distillation) into a new binarized data directory.")
    p.add_argument("teacher", help="teacher checkpoint (any fairseq translation model)")
    p.add_argument("data", help="binarized data directory the teacher was trained on")
    p.add_argument("--out", required=True, help="new data directory (must not exist)")
    p.add_argument("--subset", default="train", help="split to translate (default train)")
    p.add_argument("--beam", action=checked_action(_positive_int), default=5)
    p.add_argument("--lenpen", action=checked_action(_non_negative_float), default=1.0)
    p.add_argument("--max-len-a", action=checked_action(_non_negative_float), default=1.2,
                   help="translations are at most a·source length + b tokens (default 1.2)")
    p.add_argument("--max-len-b", action=checked_action(_positive_int), default=10)
    p.add_argument("--batch-size", action=checked_action(_positive_int), default=64,
                   help="sentences per batch (default 64)")
    p.add_argument("--max-tokens", action=checked_action(_positive_int), default=None,
                   help="source tokens per batch (default: no limit)")
    p.add_argument("--threads", action=checked_action(_positive_int), default=None,
                   help="CPU threads (default: torch's)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is there")
    p.add_argument("--no-progress-bar", action="store_true")
    p.add_argument("--user-dir", default=None,
                   help="another fairseq plugin to import (a teacher of a custom architecture)")
    return p


def _split_prefix(data, subset, src, tgt):
    for a, b in ((src, tgt), (tgt, src)):
        prefix = os.path.join(data, f"{subset}.{a}-{b}.")
        if os.path.exists(prefix + f"{tgt}.idx"):
            return prefix
    raise UserError(f"{data}: no binarized {subset} split for {src}-{tgt} "
                    f"(looked for {subset}.{src}-{tgt}.{tgt}.idx)")


def _setup(args):
    """The teacher's task on ``args.data`` and the teacher model, dictionaries checked."""
    from fairseq import tasks

    states = read_teacher(args.teacher)
    task_cfg = states[1]["cfg"].task
    if hasattr(task_cfg, "data"):
        task_cfg.data = args.data
    if not os.path.isdir(args.data):
        raise UserError(f"{args.data}: no such data directory")
    task = tasks.setup_task(task_cfg)
    return task, load_teacher(args.teacher, task, states)


class Parts:
    """The translations made so far, in ``OUT.partial/``: one file per part, written atomically,
    and the settings they were made with (a resumed run must use the same)."""

    def __init__(self, out, settings):
        self.dir = out.rstrip("/") + ".partial"
        os.makedirs(self.dir, exist_ok=True)
        path = os.path.join(self.dir, "settings.json")
        if os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
            changed = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
            if changed:
                detail = ", ".join(f"{k} {a!r} then, {b!r} now" for k, (a, b) in changed.items())
                raise UserError(f"{self.dir}: an earlier run used other settings ({detail}); "
                                "rerun with the same settings or delete that folder")
        else:
            self._write_json(path, settings)
        self.done = {}
        for part in sorted(glob.glob(os.path.join(self.dir, "part-*.pt"))):
            self.done.update(torch.load(part))
        self.pending = {}

    @staticmethod
    def _write_json(path, obj):
        with open(path + ".tmp", "w") as f:
            json.dump(obj, f, indent=1)
        os.replace(path + ".tmp", path)

    def add(self, sentence_id: int, tokens: torch.Tensor):
        self.pending[sentence_id] = tokens
        if len(self.pending) >= PART_SENTENCES:
            self.flush()

    def flush(self):
        if not self.pending:
            return
        n = len(glob.glob(os.path.join(self.dir, "part-*.pt")))
        path = os.path.join(self.dir, f"part-{n:05d}.pt")
        torch.save(self.pending, path + ".tmp")
        os.replace(path + ".tmp", path)
        self.done.update(self.pending)
        self.pending = {}


def translate(task, model, args, parts: Parts):
    """Beam-translate every sentence of the split not already in ``parts``."""
    from fairseq import utils
    from fairseq.dataclass.configs import GenerationConfig

    dataset = task.dataset(args.subset)
    if len(parts.done) == len(dataset):
        return 0
    generator = task.build_generator([model], GenerationConfig(
        beam=args.beam, lenpen=args.lenpen, max_len_a=args.max_len_a, max_len_b=args.max_len_b))
    batches = dataset.batch_by_size(dataset.ordered_indices(), max_tokens=args.max_tokens,
                                    max_sentences=args.batch_size, required_batch_size_multiple=1)
    # A batch is redone whole, so a resumed run pads and decodes exactly as an unstopped one.
    batches = [b for b in batches if not all(int(i) in parts.done for i in b)]
    device = next(model.parameters()).device
    todo = sum(len(b) for b in batches)
    bar = _progress(todo, args.no_progress_bar)
    try:
        for batch in batches:
            sample = dataset.collater([dataset[i] for i in batch])
            if device.type == "cuda":
                sample = utils.move_to_cuda(sample, device=device)
            hypos = task.inference_step(generator, [model], sample)
            for k, sentence_id in enumerate(sample["id"].tolist()):
                parts.add(sentence_id, hypos[k][0]["tokens"].to("cpu", torch.int32))
            bar.update(len(batch))
    finally:  # a stopped run keeps what it translated
        parts.flush()
        bar.close()
    return todo


def _progress(total, disabled):
    from tqdm import tqdm

    return tqdm(total=total, unit="sent", desc="translating", disable=disabled, file=sys.stderr)


def write_data_dir(args, task, parts: Parts, seconds: float):
    """The distilled data directory, built in ``OUT.tmp`` and renamed into place."""
    from fairseq.data import indexed_dataset

    src, tgt = task.cfg.source_lang, task.cfg.target_lang
    prefix = _split_prefix(args.data, args.subset, src, tgt)
    tmp = args.out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    target_name = os.path.basename(prefix) + tgt
    for name in sorted(os.listdir(args.data)):
        path = os.path.join(args.data, name)
        if os.path.isfile(path) and not name.startswith(target_name + "."):
            shutil.copy2(path, os.path.join(tmp, name))
    dataset = task.dataset(args.subset)
    builder = indexed_dataset.make_builder(os.path.join(tmp, target_name + ".bin"), impl="mmap",
                                           vocab_size=len(task.target_dictionary))
    lengths = []
    for i in range(len(dataset)):
        tokens = parts.done[i]
        builder.add_item(tokens)
        lengths.append(len(tokens))
    builder.finalize(os.path.join(tmp, target_name + ".idx"))
    reference = sum(int(dataset.tgt_sizes[i]) for i in range(len(dataset)))
    summary = {"teacher": os.path.abspath(args.teacher), "data": os.path.abspath(args.data),
               "subset": args.subset, "beam": args.beam, "lenpen": args.lenpen,
               "sentences": len(dataset), "target_tokens": sum(lengths),
               "reference_target_tokens": reference, "translate_seconds": round(seconds, 1)}
    Parts._write_json(os.path.join(tmp, "distill.json"), summary)
    os.replace(tmp, args.out)
    shutil.rmtree(parts.dir)
    return summary


def run(argv=None):
    args = build_parser().parse_args(argv)
    if os.path.exists(args.out):
        raise UserError(f"--out {args.out}: already exists; choose a new directory")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.user_dir:
        from fairseq import utils

        utils.import_user_module(args)
    task, model = _setup(args)
    task.load_dataset(args.subset)
    if torch.cuda.is_available() and not args.cpu:
        model.cuda()
    settings = {"teacher": os.path.abspath(args.teacher), "data": os.path.abspath(args.data),
                "subset": args.subset, "beam": args.beam, "lenpen": args.lenpen,
                "max_len_a": args.max_len_a, "max_len_b": args.max_len_b}
    parts = Parts(args.out, settings)
    resumed = len(parts.done)
    if resumed:
        print(f"fullyqt-distill-data: resuming, {resumed} of {len(task.dataset(args.subset))} "
              "sentences already translated", file=sys.stderr)
    started = time.perf_counter()
    translated = translate(task, model, args, parts)
    summary = write_data_dir(args, task, parts, time.perf_counter() - started)
    print(f"fullyqt-distill-data: {summary['sentences']} sentences ({translated} translated now, "
          f"{resumed} resumed), {summary['target_tokens']} target tokens "
          f"(references: {summary['reference_target_tokens']}) -> {args.out}")
    return summary


def main(argv=None):
    import fullyqt  # noqa: F401  (registers the models, allowlists checkpoint types)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # runs the flush in translate()
    try:
        run(argv)
    except UserError as e:
        sys.exit(f"fullyqt-distill-data: error: {e}")


if __name__ == "__main__":
    main()
