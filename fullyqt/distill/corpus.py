"""``fullyqt-distill-data``: sequence-level distillation data (Kim & Rush, 2016).

Translates a binarized training set with the teacher's beam search and writes a binarized data
directory ready for ``fairseq-train``: the same dictionaries and source side, the teacher's
translations as targets, the other splits copied unchanged.  Translations are saved in parts
as they are made, so a stopped run resumes where it was; the output directory appears only
when it is complete.

``--num-shards N --shard-id I`` translates every N-th batch (on another process or machine);
``--merge-shards N`` then writes the one data directory an unsharded run writes, byte for byte
(the batches are fixed by the data and settings, and each is translated whole).
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

from ..checkpoint import file_sha256
from ..errors import UserError, checked_action, integer, parse_number
from .teacher import load_teacher, read_teacher

PART_SENTENCES = 2000  # translations per saved part (what a stopped run can lose at most)
SHARD_DONE = "shard-done.json"  # written into a shard's folder once all its batches are done


def _positive_int(option, value):
    return parse_number(option, value, integer, lambda n: n >= 1, "an integer >= 1")


def _non_negative_int(option, value):
    return parse_number(option, value, integer, lambda n: n >= 0, "an integer >= 0")


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
    p.add_argument("--num-shards", action=checked_action(_positive_int), default=1,
                   help="split the batches into N shards (default 1: all of them)")
    p.add_argument("--shard-id", action=checked_action(_non_negative_int), default=0,
                   help="the shard this run translates, 0..N-1, into OUT.shard-I-of-N")
    p.add_argument("--merge-shards", action=checked_action(_positive_int), default=None,
                   metavar="N", help="write OUT from the N finished OUT.shard-*-of-N folders")
    p.add_argument("--restart", action="store_true",
                   help="discard the translations an interrupted run left and start over")
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


def _task(args):
    """The teacher's task on ``args.data`` (with the split loaded) and the teacher's states."""
    from fairseq import tasks

    states = read_teacher(args.teacher)
    task_cfg = states[1]["cfg"].task
    if hasattr(task_cfg, "data"):
        task_cfg.data = args.data
    if not os.path.isdir(args.data):
        raise UserError(f"{args.data}: no such data directory")
    if not glob.glob(os.path.join(args.data, "dict.*.txt")):
        raise UserError(f"{args.data}: not a binarized data directory (no dict.*.txt); make it "
                        "with fairseq-preprocess")
    task = tasks.setup_task(task_cfg)
    try:
        task.load_dataset(args.subset)
    except FileNotFoundError as e:
        raise UserError(f"--subset {args.subset}: not in {args.data} ({e})") from None
    return task, states


def _setup(args):
    """The teacher's task and the teacher model, dictionaries checked."""
    task, states = _task(args)
    return task, load_teacher(args.teacher, task, states)


def shard_dir(out, shard_id, num_shards):
    return f"{out.rstrip('/')}.shard-{shard_id}-of-{num_shards}"


class Parts:
    """The translations made so far, in ``directory`` (``OUT.partial/`` or a shard's folder): one
    file per part, written atomically, and the settings they were made with (a resumed run must
    use the same)."""

    def __init__(self, directory, settings):
        self.dir = directory
        os.makedirs(self.dir, exist_ok=True)
        path = os.path.join(self.dir, "settings.json")
        if os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
            changed = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
            if "teacher_sha256" in changed:
                then = (saved.get("teacher_sha256") or "not recorded")[:12]
                raise UserError(f"{settings['teacher']}: not the teacher that made the "
                                f"translations in {self.dir} (sha256 {then} then, "
                                f"{settings['teacher_sha256'][:12]} now); pass --restart to "
                                "start over with this teacher, or choose another --out")
            if changed:
                detail = ", ".join(f"{k} {a!r} then, {b!r} now" for k, (a, b) in changed.items())
                raise UserError(f"{self.dir}: an earlier run used other settings ({detail}); "
                                "rerun with the same settings, or pass --restart")
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
    # A batch is redone whole, so a resumed run pads and decodes exactly as an unstopped one.
    batches = [b for b in shard_batches(dataset, args)
               if not all(int(i) in parts.done for i in b)]
    if not batches:
        return 0
    generator = task.build_generator([model], GenerationConfig(
        beam=args.beam, lenpen=args.lenpen, max_len_a=args.max_len_a, max_len_b=args.max_len_b))
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


def shard_batches(dataset, args):
    """This shard's batches: every ``num_shards``-th of the split's batches, which a fixed seed
    makes the same in every run (the dataset breaks ties between equal lengths at random)."""
    from fairseq.data import data_utils

    with data_utils.numpy_seed(1):
        order = dataset.ordered_indices()
    batches = dataset.batch_by_size(order, max_tokens=args.max_tokens,
                                    max_sentences=args.batch_size, required_batch_size_multiple=1)
    return [b for k, b in enumerate(batches) if k % args.num_shards == args.shard_id]


def _progress(total, disabled):
    from tqdm import tqdm

    return tqdm(total=total, unit="sent", desc="translating", disable=disabled, file=sys.stderr)


def write_data_dir(args, task, translations: dict, seconds: float):
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
        tokens = translations[i]
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
    return summary


def merge(args, settings):
    """OUT from the finished shard folders (checked: same settings, every sentence once)."""
    n = args.merge_shards
    dirs = [shard_dir(args.out, i, n) for i in range(n)]
    missing = [d for d in dirs if not os.path.isdir(d)]
    if missing:
        raise UserError(f"--merge-shards {n}: no shard folder {', '.join(missing)}")
    unfinished = [d for d in dirs if not os.path.exists(os.path.join(d, SHARD_DONE))]
    if unfinished:
        raise UserError(f"--merge-shards {n}: {', '.join(unfinished)} not finished (rerun "
                        "its --shard-id: it resumes)")
    task, _ = _task(args)
    merged, seconds = {}, 0.0
    for i, d in enumerate(dirs):
        shard = Parts(d, dict(settings, num_shards=n, shard_id=i))
        overlap = merged.keys() & shard.done.keys()
        if overlap:
            raise UserError(f"{d}: {len(overlap)} sentences are in an earlier shard too")
        merged.update(shard.done)
        with open(os.path.join(d, SHARD_DONE)) as f:
            seconds += json.load(f)["translate_seconds"]
    total = len(task.dataset(args.subset))
    if len(merged) != total:
        raise UserError(f"--merge-shards {n}: the shards hold {len(merged)} of {total} "
                        f"sentences of {args.subset}")
    summary = write_data_dir(args, task, merged, seconds)
    for d in dirs:
        shutil.rmtree(d)
    return summary


def run(argv=None):
    args = build_parser().parse_args(argv)
    if os.path.exists(args.out):
        raise UserError(f"--out {args.out}: already exists; choose a new directory")
    if args.shard_id >= args.num_shards:
        raise UserError(f"--shard-id {args.shard_id}: allowed 0 to {args.num_shards - 1} "
                        f"(--num-shards {args.num_shards})")
    if args.merge_shards and args.num_shards > 1:
        raise UserError("--merge-shards: merges finished shards; run it without --num-shards")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.user_dir:
        from fairseq import utils

        utils.import_user_module(args)
    settings = {"teacher": os.path.abspath(args.teacher), "data": os.path.abspath(args.data),
                "teacher_sha256": file_sha256(args.teacher) if os.path.isfile(args.teacher)
                else None, "subset": args.subset, "beam": args.beam, "lenpen": args.lenpen,
                "max_len_a": args.max_len_a, "max_len_b": args.max_len_b,
                "batch_size": args.batch_size, "max_tokens": args.max_tokens}
    if args.merge_shards:
        summary = merge(args, settings)
        print(f"fullyqt-distill-data: {summary['sentences']} sentences from "
              f"{args.merge_shards} shards -> {args.out}")
        return summary
    task, model = _setup(args)
    if torch.cuda.is_available() and not args.cpu:
        model.cuda()
    sharded = args.num_shards > 1
    if sharded:
        settings.update(num_shards=args.num_shards, shard_id=args.shard_id)
    partial = (shard_dir(args.out, args.shard_id, args.num_shards) if sharded
               else args.out.rstrip("/") + ".partial")
    if args.restart and os.path.isdir(partial):
        shutil.rmtree(partial)
    parts = Parts(partial, settings)
    resumed = len(parts.done)
    if resumed:
        print(f"fullyqt-distill-data: resuming, {resumed} sentences already translated",
              file=sys.stderr)
    started = time.perf_counter()
    translated = translate(task, model, args, parts)
    seconds = time.perf_counter() - started
    if sharded:
        done = {"sentences": len(parts.done), "translate_seconds": round(seconds, 1)}
        Parts._write_json(os.path.join(parts.dir, SHARD_DONE), done)
        print(f"fullyqt-distill-data: shard {args.shard_id} of {args.num_shards}: "
              f"{len(parts.done)} sentences -> {parts.dir}; when every shard is done, merge "
              f"with the same command and --merge-shards {args.num_shards} instead of "
              "--num-shards/--shard-id")
        return done
    summary = write_data_dir(args, task, parts.done, seconds)
    shutil.rmtree(parts.dir)
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
