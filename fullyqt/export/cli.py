"""fullyqt-export: turn a trained fullyqt checkpoint into something to ship.

    fullyqt-export CKPT --format int8 --out model.int8.pt        # packed integer weights
    fullyqt-export CKPT --format fairseq --out model.stock.pt    # plain stock transformer
    fullyqt-export CKPT --format ctranslate2 --out ct2_model/    # CTranslate2 int8 directory
    fullyqt-export CKPT --format compact --out model.compact.pt  # pruned heads / units removed
"""
import argparse
import logging
import os
import shutil
import sys
import tempfile

import torch

from ..checkpoint import (
    CheckpointError,
    arch_of,
    load_model,
    load_model_and_task,
    model_args,
    read_checkpoint,
)
from ..errors import UserError
from ..quant.config import QuantConfig
from .integer import FORMAT_KEY, bundle, pack_state

logger = logging.getLogger(__name__)

FORMATS = ("int8", "int6", "int4", "fairseq", "ctranslate2", "compact")


class ExportError(UserError):
    """The checkpoint cannot be written in the format asked for, or not to that place."""


def _atomic_save(obj, path):
    fd, tmp = tempfile.mkstemp(prefix="tmp-export-", suffix=".pt",
                               dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _replace_dir(tmp_dir, out):
    if os.path.isdir(out):
        shutil.rmtree(out)
    elif os.path.exists(out):
        os.unlink(out)
    os.replace(tmp_dir, out)


def with_model_args(state: dict, **updates) -> dict:
    """Copies of the checkpoint's ``args`` / ``cfg`` entries with model options changed."""
    out = {}
    if state.get("args") is not None:
        out["args"] = argparse.Namespace(**{**vars(state["args"]), **updates})
    cfg = state.get("cfg")
    if cfg is not None:
        cfg = dict(cfg)
        if isinstance(cfg.get("model"), argparse.Namespace):
            cfg["model"] = argparse.Namespace(**{**vars(cfg["model"]), **updates})
        out["cfg"] = cfg
    return out


def export(checkpoint: str, fmt: str, out: str, force: bool = False, data=None) -> str:
    """Write ``checkpoint`` in format ``fmt`` to ``out``; returns ``out``."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: allowed: {', '.join(FORMATS)}")
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
    state = read_checkpoint(checkpoint)
    arch = arch_of(state) or "unknown"
    if not arch.startswith("fullyqt_transformer"):
        raise ExportError(f"{checkpoint}: not a fullyqt model (arch {arch!r}); "
                          "export takes checkpoints of fullyqt_transformer* architectures")
    if FORMAT_KEY in state:
        raise ExportError(f"{checkpoint}: already an export ({state[FORMAT_KEY]['format']}); "
                          "export from the training checkpoint")
    args = model_args(state)
    if fmt == "compact":
        return _compact(checkpoint, state, args, out, data)
    if getattr(args, "prune_compact_shapes", None) and fmt == "fairseq":
        raise ExportError(f"--format fairseq: {checkpoint} is a compacted model with per-layer "
                          "head counts and FFN sizes, which a stock fairseq transformer cannot "
                          "hold; use --format int8/int6/int4 or ctranslate2")
    if getattr(args, "prune_compact_shapes", None) and fmt == "ctranslate2":
        return _compact_ctranslate2(checkpoint, args, out, data)
    qcfg = QuantConfig.from_args(argparse.Namespace(**vars(args)))
    if fmt.startswith("int"):
        bits = int(fmt[3:])
        if qcfg.weight_bits != bits:
            raise ExportError(f"--format {fmt}: the model was trained with "
                              f"{qcfg.weight_bits or 'no'}-bit weights; use "
                              + (f"--format int{qcfg.weight_bits}" if qcfg.weight_bits in (4, 6, 8)
                                 else "--format fairseq"))
    model = load_model(checkpoint, data)
    num_updates = state["optimizer_history"][-1].get("num_updates", 0)
    if getattr(args, "kron_layers", None) and not fmt.startswith("int"):
        logger.warning("fullyqt-export: --format %s multiplies the Kronecker factors out "
                       "into dense matrices (as big as a dense model's); the int8/int6/int4 "
                       "export of a quantized model keeps them", fmt)
    if fmt.startswith("int"):
        packed = {k: v for k, v in state.items() if k in ("args", "cfg", "extra_state")}
        # the export decodes with integer kernels unless --model-overrides says otherwise
        packed.update(with_model_args(state, quant_kernels="int8"))
        packed.update(model=bundle(pack_state(model, bits)), optimizer_history=[
            {**state["optimizer_history"][-1], "num_updates": num_updates}],
            last_optimizer_state=None)
        packed[FORMAT_KEY] = {"format": fmt, "bits": bits}
        _atomic_save(packed, out)
        return out
    from .stock import stock_checkpoint

    stock = stock_checkpoint(model, args, num_updates)
    if fmt == "fairseq":
        _atomic_save(stock, out)
        return out
    from .ctranslate2 import convert_to_dir

    with tempfile.TemporaryDirectory() as tmp:
        stock_path = os.path.join(tmp, "stock.pt")
        torch.save(stock, stock_path)
        data_dir = data or stock["args"].data
        src, tgt = stock["args"].source_lang, stock["args"].target_lang
        if src is None or tgt is None:
            from fairseq.data.data_utils import infer_language_pair
            src, tgt = infer_language_pair(data_dir)
        new_dir = convert_to_dir(stock_path, data_dir, out, src, tgt)
    _replace_dir(new_dir, out)
    return out


def _compact(checkpoint, state, args, out, data):
    if not getattr(args, "prune_method", None):
        raise ExportError(f"--format compact: {checkpoint} was not trained with --prune-method; "
                          "there is nothing to remove")
    if getattr(args, "quant_weight_buckets", "row") != "row":
        raise ExportError("--format compact: needs one weight range per row (the model was "
                          f"trained with --quant-weight-buckets {args.quant_weight_buckets}): "
                          "removing heads would move a per-tensor range")
    from ..prune.compact import compact_state

    model = load_model(checkpoint, data)
    compact, shapes = compact_state(model)
    saved = {k: v for k, v in state.items() if k == "extra_state"}
    saved.update(with_model_args(state, prune_method=None,
                                 prune_compact_shapes=shapes.to_json()))
    saved.update(model=compact, last_optimizer_state=None, optimizer_history=[
        {**state["optimizer_history"][-1], "num_updates":
         state["optimizer_history"][-1].get("num_updates", 0)}])
    _atomic_save(saved, out)
    return out


def _compact_ctranslate2(checkpoint, args, out, data):
    from .ctranslate2_compact import check_supported, convert_compact

    check_supported(args)
    model, task = load_model_and_task(checkpoint, data)
    tmp = tempfile.mkdtemp(prefix=".ct2-", dir=os.path.dirname(os.path.abspath(out)))
    try:
        convert_compact(model, args, task, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace_dir(tmp, out)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="fullyqt-export", description=__doc__.splitlines()[0],
                                epilog="\n".join(__doc__.splitlines()[2:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--format", required=True, metavar="F", help=f"one of {', '.join(FORMATS)}")
    p.add_argument("--out", required=True, help="output file (a directory for ctranslate2)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--data", help="data directory with the dictionaries (default: the one "
                                  "recorded in the checkpoint)")
    a = p.parse_args(argv)
    try:
        out = export(a.checkpoint, a.format, a.out, a.force, a.data)
    except (UserError, CheckpointError, RuntimeError, FileNotFoundError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    except OSError as e:  # e.g. the disk filled up while writing: nothing was left behind
        p.exit(2, f"{p.prog}: error: writing {a.out}: {e.strerror or e}\n")
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs) \
        if os.path.isdir(out) else os.path.getsize(out)
    print(f"wrote {out} ({a.format}, {size:,} bytes)")


if __name__ == "__main__":
    sys.exit(main())
