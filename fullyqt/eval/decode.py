"""Running fairseq's tools and reading their logs; translating a test set and timing it:
fairseq-generate on a checkpoint, CTranslate2 on a converted model; BLEU of the detokenized
output against the raw references."""
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import sentencepiece as spm
import torch

from .bleu import corpus_bleu, hypotheses_from_generate
from .size import tree_bytes

USER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
_TRANSLATED = re.compile(r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in ([\d.]+)s")


def cpu_name():
    """The CPU model, as speeds are only comparable on one machine."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(x.split(":", 1)[1].strip() for x in f if x.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def source_commit() -> Optional[str]:
    """The fullyqt source's git commit (``+changes`` where the work tree differs from it), or
    None outside a git checkout: which code produced a result."""
    repo = os.path.dirname(USER_DIR)
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=30)
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


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
            log.flush()  # the log shows progress as it happens (tail -f)
            if on_line:
                on_line(line)
        proc.wait()
    if proc.returncode != 0:
        with open(log_path, encoding="utf-8") as f:
            tail = "".join(f.readlines()[-15:])
        raise RuntimeError(f"{os.path.basename(cmd[0])} failed (exit {proc.returncode}); "
                           f"log: {log_path}\n{tail}")


def train_record(line: str):
    """The JSON record of a fairseq-train ``train_inner`` log line (None for other lines)."""
    if "| train_inner |" not in line:
        return None
    try:
        return json.loads(line[line.index("{"):])
    except ValueError:
        return None


def length_flags(max_len: Optional[int]) -> List[str]:
    """fairseq's flags for hypotheses of at most ``max_len`` target tokens (none: its own)."""
    return [] if max_len is None else ["--max-len-a", "0", "--max-len-b", str(max_len)]


@dataclass
class DecodeResult:
    bleu: float
    signature: str
    translated: int  # sentences with a non-empty hypothesis
    target_tokens: int
    seconds: float
    hypotheses: List[str] = field(default_factory=list, repr=False)
    references: List[str] = field(default_factory=list, repr=False)

    @property
    def scored(self) -> int:
        """Sentences BLEU was computed on (every reference: fullyqt.eval.bleu refuses less)."""
        return len(self.hypotheses)

    @property
    def tokens_per_second(self):
        return self.target_tokens / self.seconds


_TARGET = re.compile(r"^T-(\d+)\t(.*)$")


def references_from_generate(lines: List[str]) -> List[str]:
    """The ``T-`` lines of a fairseq-generate log in input order: the test set's targets as the
    binarized data holds them, post-processed as the hypotheses are."""
    by_id = {}
    for line in lines:
        m = _TARGET.match(line.rstrip("\n"))
        if m:
            by_id[int(m.group(1))] = m.group(2)
    return [by_id.get(i, "") for i in range(max(by_id) + 1 if by_id else 0)]


def translate(checkpoint: str, data_bin: str, reference: Optional[str], out_path: str, *,
              threads: int, beam: int = 5, batch_size: int = 32, post_process="sentencepiece",
              max_len: Optional[int] = None, extra: List[str] = ()) -> DecodeResult:
    """fairseq-generate on the test split; BLEU of detokenized output against the raw text
    (``reference``; None: the binarized targets, post-processed)."""
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
    if reference is None:
        refs = references_from_generate(lines)
    else:
        with open(reference, encoding="utf-8") as f:
            refs = [x.rstrip("\n") for x in f]
    hyps = hypotheses_from_generate(lines, len(refs))
    score, sig = corpus_bleu(hyps, refs)
    return DecodeResult(score, sig, len(refs) - sum(not h for h in hyps),
                        int(m.group(2).replace(",", "")), float(m.group(3)), hyps, refs)


def ct2_translator(model_dir: str, threads: int):
    """A CTranslate2 CPU translator with one batch per thread (``inter_threads=threads``,
    ``intra_threads=1``), its throughput setting: at small widths one batch on two threads
    spends its time synchronizing them (1.9x slower per sentence than on one thread on 2 cores
    of an Intel Xeon at d=128), so two batches side by side ran 3.6x faster than one on both."""
    import ctranslate2

    return ctranslate2.Translator(model_dir, device="cpu", inter_threads=threads,
                                  intra_threads=1)


def ct2_translate(model_dir: str, tok_src: str, spm_model: str, reference: str, *,
                  threads: int, beam: int = 5, batch_size: int = 32,
                  max_len: Optional[int] = None) -> dict:
    """Decode the tokenized test source with CTranslate2 (one batch per thread); BLEU of the
    detokenized output."""
    with open(tok_src, encoding="utf-8") as f:
        batch: List[List[str]] = [line.split() for line in f]
    with open(reference, encoding="utf-8") as f:
        refs = [line.rstrip("\n") for line in f]
    sp = spm.SentencePieceProcessor(model_file=spm_model)
    return ct2_decode(model_dir, batch, refs, sp.decode, threads=threads, beam=beam,
                      batch_size=batch_size, max_len=max_len)


def ct2_decode(model_dir: str, batch: List[List[str]], refs: List[str],
               detokenize: Callable[[List[str]], str], *, threads: int, beam: int = 5,
               batch_size: int = 32, max_len: Optional[int] = None, **options) -> dict:
    """Decode token lists with CTranslate2 (one batch per thread; ``options`` to its
    ``translate_batch``); BLEU of the detokenized output, and the hypotheses."""
    translator = ct2_translator(model_dir, threads)
    start = time.perf_counter()
    results = translator.translate_batch(batch, beam_size=beam, max_batch_size=batch_size,
                                         **({} if max_len is None else
                                            {"max_decoding_length": max_len}), **options)
    seconds = time.perf_counter() - start
    hyps = [detokenize(r.hypotheses[0]) for r in results]
    tokens = sum(len(r.hypotheses[0]) + 1 for r in results)  # + EOS, as fairseq counts
    score, sig = corpus_bleu(hyps, refs)
    return {"bleu": score, "signature": sig, "tokens_per_second": tokens / seconds,
            "decode_seconds": seconds, "model_bytes": tree_bytes(model_dir), "scored": len(hyps),
            "hypotheses": hyps}
