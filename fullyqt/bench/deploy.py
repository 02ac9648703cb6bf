"""Deployment rows of the benchmark: the integer export decoded by fairseq, and CTranslate2
models (int8 post-training quantization of the float model, and conversion of a QAT model)."""
import os
import time
from typing import List, Optional

import sentencepiece as spm

from ..eval.bleu import corpus_bleu
from ..export.cli import export
from ..export.ctranslate2 import convert


def tree_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def export_int(checkpoint: str, bits: int, out: str) -> str:
    """The integer export, written anew (seconds) so that it always has the current format."""
    export(checkpoint, f"int{bits}", out, force=True)
    return out


def ctranslate2_model(checkpoint: str, out: str, data_bin: str, *, from_fullyqt: bool) -> str:
    """CTranslate2 int8 directory: a fullyqt model via its stock export, a stock one directly."""
    if not os.path.exists(os.path.join(out, "model.bin")):
        if from_fullyqt:
            export(checkpoint, "ctranslate2", out, force=True, data=data_bin)
        else:
            convert(checkpoint, data_bin, out, "src", "tgt")
    return out


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
    translator = ct2_translator(model_dir, threads)
    start = time.perf_counter()
    results = translator.translate_batch(batch, beam_size=beam, max_batch_size=batch_size,
                                         **({} if max_len is None else
                                            {"max_decoding_length": max_len}))
    seconds = time.perf_counter() - start
    sp = spm.SentencePieceProcessor(model_file=spm_model)
    hyps = [sp.decode(r.hypotheses[0]) for r in results]
    tokens = sum(len(r.hypotheses[0]) + 1 for r in results)  # + EOS, as fairseq counts
    score, sig = corpus_bleu(hyps, refs)
    return {"bleu": score, "signature": sig, "tokens_per_second": tokens / seconds,
            "decode_seconds": seconds, "model_bytes": tree_bytes(model_dir), "scored": len(hyps)}
