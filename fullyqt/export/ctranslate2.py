"""The ``ctranslate2`` export: the stock checkpoint converted by CTranslate2's own converter."""
import os
import shutil
import subprocess
import sys
from typing import Optional

from ..checkpoint import scratch_dir


def convert(stock_checkpoint_path: str, data_dir: str, out_dir: str, source_lang: str,
            target_lang: str, quantization: str = "int8", vmap: Optional[str] = None):
    converter = shutil.which("ct2-fairseq-converter") or os.path.join(
        os.path.dirname(sys.executable), "ct2-fairseq-converter")
    if not os.path.exists(converter):
        raise RuntimeError("ct2-fairseq-converter not found: pip install 'fullyqt[deploy]' "
                           "(or pip install ctranslate2)")
    cmd = [converter, "--model_path", stock_checkpoint_path, "--data_dir", data_dir,
           "--output_dir", out_dir, "--quantization", quantization, "--unsafe_deserialization",
           "--source_lang", source_lang, "--target_lang", target_lang, "--force"]
    if vmap:
        cmd += ["--vocab_mapping", vmap]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"ct2-fairseq-converter failed: {last}")


def convert_to_dir(stock_checkpoint_path, data_dir, out_dir, source_lang, target_lang,
                   vmap: Optional[str] = None):
    """Convert into a fresh temporary directory next to out_dir, for an atomic rename."""
    tmp = scratch_dir(out_dir)
    try:
        convert(stock_checkpoint_path, data_dir, tmp, source_lang, target_lang, vmap=vmap)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp
