"""Prepare a corpus for fairseq: joint SentencePiece BPE, then ``fairseq-preprocess``.

The layout (shared with ``scripts/prepare-wmt14.sh``):
``DEST/raw/{train,valid,test}.{src,tgt}`` plain text, ``DEST/spm.model``, ``DEST/bin/`` binarized
with a joined dictionary.
"""
import os
import subprocess
import sys
from typing import Optional

import sentencepiece as spm

from . import bible

SPLITS = ("train", "valid", "test")


def _head(src, dst, n: Optional[int]):
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as g:
        for i, line in enumerate(f):
            if n is not None and i >= n:
                break
            g.write(line)


def prepare_bible(dest: str, vocab: int, limits: Optional[dict] = None) -> dict:
    """Extract the shipped Spanish→English corpus into ``dest`` and binarize it.

    ``limits`` ({split: n}) keeps the first n sentences of a split (the smoke preset).
    """
    raw = os.path.join(dest, "raw")
    full = os.path.join(dest, "full")
    if not os.path.exists(os.path.join(dest, "bin", "dict.src.txt")):
        bible.extract(full)
        os.makedirs(raw, exist_ok=True)
        for split in SPLITS:
            for lang, side in (("es", "src"), ("en", "tgt")):
                _head(os.path.join(full, f"{split}.{lang}"), os.path.join(raw, f"{split}.{side}"),
                      (limits or {}).get(split))
        binarize(dest, vocab)
    return layout(dest)


def layout(dest: str) -> dict:
    return {"bin": os.path.join(dest, "bin"), "raw": os.path.join(dest, "raw"),
            "spm": os.path.join(dest, "spm.model"),
            "test_ref": os.path.join(dest, "raw", "test.tgt"),
            "test_tok": os.path.join(dest, "tok", "test.src")}


def binarize(dest: str, vocab: int):
    """Learn a joint SentencePiece BPE on raw/train.{src,tgt}, encode all splits, binarize."""
    raw, tok = os.path.join(dest, "raw"), os.path.join(dest, "tok")
    os.makedirs(tok, exist_ok=True)
    prefix = os.path.join(dest, "spm")
    spm.SentencePieceTrainer.train(
        input=f"{raw}/train.src,{raw}/train.tgt", model_prefix=prefix, vocab_size=vocab,
        model_type="bpe", character_coverage=1.0, input_sentence_size=2_000_000,
        shuffle_input_sentence=True, num_threads=2, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    for split in SPLITS:
        for side in ("src", "tgt"):
            with open(f"{raw}/{split}.{side}", encoding="utf-8") as f, \
                    open(f"{tok}/{split}.{side}", "w", encoding="utf-8") as g:
                for line in f:
                    g.write(" ".join(sp.encode(line.rstrip("\n"), out_type=str)) + "\n")
    preprocess = os.path.join(os.path.dirname(sys.executable), "fairseq-preprocess")
    subprocess.run([preprocess, "--source-lang", "src", "--target-lang", "tgt",
                    "--trainpref", f"{tok}/train", "--validpref", f"{tok}/valid",
                    "--testpref", f"{tok}/test", "--destdir", os.path.join(dest, "bin"),
                    "--joined-dictionary", "--workers", "2"],
                   check=True, capture_output=True, text=True)
