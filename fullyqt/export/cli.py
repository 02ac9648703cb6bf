"""fullyqt-export: turn a trained fullyqt checkpoint into something to ship.

    fullyqt-export CKPT --format int8 --out model.int8.pt        # packed integer weights
    fullyqt-export CKPT --format float16 --out model.fp16.pt     # a float model, half the bytes
    fullyqt-export CKPT --format fairseq --out model.stock.pt    # plain stock transformer
    fullyqt-export CKPT --format ctranslate2 --out ct2_model/    # CTranslate2 int8 directory
    fullyqt-export CKPT --format compact --out model.compact.pt  # pruned heads / units removed
"""
import argparse
import logging
import os
import shutil
import signal
import sys
from typing import Optional

import torch

from ..checkpoint import (
    CheckpointError,
    arch_of,
    atomic_save,
    load_model,
    load_model_and_task,
    model_args,
    publish,
    read_checkpoint,
    remove_stale_scratch,
    scratch_dir,
    with_model_args,
)
from ..errors import UserError
from ..feature import Build, features
from ..quant.feature import INTEGER_FORMATS
from ..quant.packed_state import FORMAT_KEY, bundle, pack_state

logger = logging.getLogger(__name__)

# The formats written here; features add their own (``Feature.export_formats``).
BASE_FORMATS = INTEGER_FORMATS + ("float16", "fairseq", "ctranslate2")


def extra_formats() -> dict:
    out = {}
    for feature in features():
        out.update(feature.export_formats())
    return out


def formats():
    return BASE_FORMATS + tuple(extra_formats())


def export_options(args, fmt) -> dict:
    """The options every feature writes into an export of format ``fmt``."""
    out = {}
    for feature in features():
        out.update(feature.export_options(args, fmt))
    return out


class ExportError(UserError):
    """The checkpoint cannot be written in the format asked for, or not to that place."""


def _replace_dir(tmp_dir, out):
    publish(tmp_dir)
    if os.path.isdir(out):
        shutil.rmtree(out)
    elif os.path.exists(out):
        os.unlink(out)
    os.replace(tmp_dir, out)


def _languages(args, data_dir):
    src, tgt = getattr(args, "source_lang", None), getattr(args, "target_lang", None)
    if src is None or tgt is None:
        from fairseq.data.data_utils import infer_language_pair
        src, tgt = infer_language_pair(data_dir)
    return src, tgt


def _vmap_file(size, args, data, folder) -> Optional[str]:
    """The vocabulary map of the training data, written into ``folder`` (None without one)."""
    if size is None:
        return None
    from .vmap import build_vmap

    data_dir = str(data or getattr(args, "data", "")).split(os.pathsep)[0]
    src, tgt = _languages(args, data_dir)
    logger.info("fullyqt-export: building the vocabulary map from %s (IBM model 1, %d passes)",
                data_dir, size.iterations)
    return build_vmap(data_dir, src, tgt, os.path.join(folder, "vmap.txt"), size)


def export(checkpoint: str, fmt: str, out: str, force: bool = False, data=None,
           vmap=None) -> str:
    """Write ``checkpoint`` in format ``fmt`` to ``out``; returns ``out``.  ``vmap`` (a
    ``VmapSize``): include a vocabulary map of the training data (ctranslate2 only)."""
    if fmt not in formats():
        raise ExportError(f"--format {fmt!r}: allowed: {', '.join(formats())}")
    if vmap is not None and fmt != "ctranslate2":
        raise ExportError(f"--vmap: a CTranslate2 option; --format {fmt} has no vocabulary map")
    if os.path.exists(out) and not force:
        raise ExportError(f"{out} exists; pass --force to overwrite it")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise ExportError(f"--out {out}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ExportError(f"--out {out}: directory {parent} is not writable")
    if fmt != "ctranslate2" and os.path.isdir(out):
        raise ExportError(f"--out {out} is a directory; --format {fmt} writes a file")
    if fmt == "ctranslate2" and os.path.isfile(out):
        raise ExportError(f"--out {out} is a file; --format ctranslate2 writes a directory")
    for name in remove_stale_scratch(parent):
        logger.info("fullyqt-export: removed %s, left in %s by an export that was killed",
                    name, parent)
    state = read_checkpoint(checkpoint)
    arch = arch_of(state) or "unknown"
    if not arch.startswith("fullyqt_transformer"):
        raise ExportError(f"{checkpoint}: not a fullyqt model (arch {arch!r}); "
                          "export takes checkpoints of fullyqt_transformer* architectures")
    if FORMAT_KEY in state:
        raise ExportError(f"{checkpoint}: already an export ({state[FORMAT_KEY]['format']}); "
                          "export from the training checkpoint")
    args = argparse.Namespace(**vars(model_args(state)))
    extra = extra_formats()
    if fmt in extra:
        extra[fmt](checkpoint, state, args, out, data)
        return out
    for feature in features():
        feature.check_export(args, fmt, checkpoint)
    if fmt == "ctranslate2" and Build(argparse.Namespace(**vars(args))).layer_shapes():
        return _compact_ctranslate2(checkpoint, args, out, data, vmap)
    model = load_model(checkpoint, data)
    num_updates = state["optimizer_history"][-1].get("num_updates", 0)
    if fmt in INTEGER_FORMATS or fmt == "float16":
        if fmt == "float16":
            weights, info = _half(state["model"]), {"format": fmt}
        else:
            bits = int(fmt[3:])
            weights, info = pack_state(model, bits), {"format": fmt, "bits": bits}
        packed = {k: v for k, v in state.items() if k in ("args", "cfg")}
        packed.update(with_model_args(state, **export_options(args, fmt)))
        packed.update(_inference_only(packed, state))
        packed.update(model=bundle(weights), optimizer_history=[
            {**state["optimizer_history"][-1], "num_updates": num_updates}],
            last_optimizer_state=None)
        packed[FORMAT_KEY] = info
        atomic_save(packed, out)
        return out
    from .stock import stock_checkpoint

    stock = stock_checkpoint(model, args, num_updates)
    if fmt == "fairseq":
        atomic_save(stock, out)
        return out
    from .ctranslate2 import convert_to_dir

    tmp = scratch_dir(out)
    try:
        stock_path = os.path.join(tmp, "stock.pt")
        torch.save(stock, stock_path)
        data_dir = data or stock["args"].data
        src, tgt = _languages(stock["args"], data_dir)
        new_dir = convert_to_dir(stock_path, data_dir, out, src, tgt,
                                 vmap=_vmap_file(vmap, stock["args"], data_dir, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _replace_dir(new_dir, out)
    return out


def _inference_only(packed: dict, state: dict) -> dict:
    """What a shipped file keeps of the training run's bookkeeping: the data iterator's position
    (fairseq's loader expects it), not the metrics history nor the loss's options."""
    out = {"extra_state": {k: v for k, v in (state.get("extra_state") or {}).items()
                           if k != "metrics"}}
    if isinstance(packed.get("cfg"), dict) and packed["cfg"].get("criterion") is not None:
        out["cfg"] = {**packed["cfg"], "criterion": None}
    return out


def _half(weights: dict) -> dict:
    """A float model's weights as float16 (``--format float16``): its file at half the bytes, in
    its own architecture (a Kronecker model keeps its factors, which the stock formats multiply
    out); loading widens them again.  Pruning scores stay float32, so a masked model keeps the
    trained masks."""
    return {k: v.half() if v.is_floating_point() and not k.endswith(".raw") else v
            for k, v in weights.items()}


def _compact_ctranslate2(checkpoint, args, out, data, vmap):
    from .ctranslate2_compact import check_supported, convert_compact

    check_supported(args)
    model, task = load_model_and_task(checkpoint, data)
    tmp = scratch_dir(out)
    words = scratch_dir(out)
    try:
        convert_compact(model, args, task, tmp, vmap=_vmap_file(vmap, args, data, words))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(words, ignore_errors=True)
    _replace_dir(tmp, out)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="fullyqt-export", description=__doc__.splitlines()[0],
                                epilog="\n".join(__doc__.splitlines()[2:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--format", required=True, metavar="F", help=f"one of {', '.join(formats())}")
    p.add_argument("--out", required=True, help="output file (a directory for ctranslate2)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--data", help="data directory with the dictionaries (default: the one "
                                  "recorded in the checkpoint)")
    p.add_argument("--vmap", action="store_true",
                   help="ctranslate2: include a vocabulary map built from the training data "
                        "(translate with use_vmap=True to score only likely target tokens)")
    p.add_argument("--vmap-per-token", default="10", metavar="K",
                   help="candidates kept per source token (default 10)")
    p.add_argument("--vmap-frequent", default="100", metavar="N",
                   help="most frequent target tokens always kept (default 100)")
    a = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # cleans up as an error does
    try:
        vmap = None
        if a.vmap:
            from .vmap import VmapSize

            vmap = VmapSize.parse(a.vmap_per_token, a.vmap_frequent)
        out = export(a.checkpoint, a.format, a.out, a.force, a.data, vmap)
    except (UserError, CheckpointError, FileNotFoundError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    except RuntimeError as e:  # torch's writer on a full disk: nothing was left behind
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if "inline_container" in first:  # torch's zip writer could not write what it wrote
            free = shutil.disk_usage(os.path.dirname(os.path.abspath(a.out))).free
            first = (f"the file could not be written whole: is the disk full? ({free:,} bytes "
                     f"free there; torch said: {first})")
        p.exit(2, f"{p.prog}: error: writing {a.out}: {first}\n")
    except OSError as e:  # e.g. the disk filled up while writing: nothing was left behind
        p.exit(2, f"{p.prog}: error: writing {a.out}: {e.strerror or e}\n")
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs) \
        if os.path.isdir(out) else os.path.getsize(out)
    print(f"wrote {out} ({a.format}, {size:,} bytes)")


if __name__ == "__main__":
    sys.exit(main())
