"""Deployment rows of the benchmark: the integer export decoded by fairseq, and CTranslate2
models (int8 post-training quantization of the float model, and conversion of a QAT model)."""
import math
import os
import time

import torch

from ..export.cli import export
from ..export.ctranslate2 import convert


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


def ct2_sentence_ms(model_dir: str, d, *, threads: int, batch: int = 32, beam: int = 5,
                    src_len: int = 30, tgt_len: int = 30, repeats: int = 3) -> float:
    """CTranslate2 (int8) milliseconds per sentence: a batch of ``batch`` random sources of
    ``src_len`` tokens for each thread (one batch per thread), beam search forced to exactly
    ``tgt_len`` target tokens (the same work for any weights); the least disturbed of
    ``repeats``."""
    from ..eval.decode import ct2_translator

    g = torch.Generator().manual_seed(0)
    n = batch * threads
    ids = torch.randint(d.nspecial, len(d), (n, src_len), generator=g).tolist()
    source = [[d[i] for i in row] for row in ids]
    translator = ct2_translator(model_dir, threads)
    fixed = dict(beam_size=beam, max_batch_size=batch, min_decoding_length=tgt_len,
                 max_decoding_length=tgt_len)
    translator.translate_batch(source, **fixed)  # warm-up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        translator.translate_batch(source, **fixed)
        best = min(best, time.perf_counter() - start)
    return 1e3 * best / n
