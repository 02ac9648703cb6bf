"""Deployment rows of the benchmark: the integer export decoded by fairseq, and CTranslate2
models (int8 post-training quantization of the float model, and conversion of a QAT model)."""
import os

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


