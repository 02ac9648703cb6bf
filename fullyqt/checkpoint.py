"""Reading fairseq checkpoints with errors a user can act on, and writing them whole."""
import argparse
import hashlib
import os
import pickle
import shutil
import tempfile
import zipfile
from typing import List, Optional

import torch

from .errors import UserError, load_failure


class CheckpointError(UserError):
    """The file is missing, unreadable, or not the kind of checkpoint asked for."""


def read_checkpoint(path: str) -> dict:
    """The checkpoint's top-level dict (tensors on CPU), or a CheckpointError."""
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: a directory, not a checkpoint file (a training run's "
                              "is DIR/checkpoint_best.pt or DIR/checkpoint_last.pt)")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (not a zip archive); "
                              "is the file truncated or of another kind?")
    try:
        state = torch.load(path, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a fairseq checkpoint (no 'model' entry)")
    return state


def file_sha256(path: str) -> str:
    """The hash that tells one teacher file from another (a file replaced at the same path)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_args(state: dict):
    """The argparse Namespace (or model config) the checkpoint was trained with."""
    if state.get("args") is not None:
        return state["args"]
    cfg = state.get("cfg") or {}
    model = cfg.get("model") if isinstance(cfg, dict) else getattr(cfg, "model", None)
    if model is None:
        raise CheckpointError("checkpoint holds no model configuration")
    return model


_FINETUNE_ARGS: dict = {}


def finetune_args(args):
    """The model options ``--finetune-from-model`` was trained with (None without the option or
    the file); the checkpoint is read once per file version, however many features ask."""
    path = getattr(args, "finetune_from_model", None)
    if not path or not os.path.isfile(path):  # gone since (an export): nothing to take
        return None
    key = (os.path.abspath(path), os.path.getmtime(path))
    if key not in _FINETUNE_ARGS:
        _FINETUNE_ARGS.clear()
        _FINETUNE_ARGS[key] = model_args(read_checkpoint(path))
    return _FINETUNE_ARGS[key]


def recorded_data(state: dict) -> Optional[str]:
    """The data directory the checkpoint was trained on (its dictionaries are read from there)."""
    if state.get("args") is not None:
        return getattr(state["args"], "data", None)
    task = (state.get("cfg") or {}).get("task")
    return getattr(task, "data", None) if not isinstance(task, dict) else task.get("data")


def arch_of(state: dict) -> str:
    args = model_args(state)
    return getattr(args, "arch", None) or getattr(args, "_name", None) or (
        args.get("arch") or args.get("_name") if isinstance(args, dict) else None)


def load_model_and_task(path: str, data: Optional[str] = None, **model_overrides):
    """The model of a checkpoint with its saved weights, in eval mode, and its fairseq task.

    ``data`` overrides the data directory recorded in the checkpoint (the dictionaries are read
    from there); ``model_overrides`` override other saved options (``quant_kernels="fake"``).
    """
    state = read_checkpoint(path)
    where = data or recorded_data(state)
    if where and not os.path.isdir(where):
        said = f"--data {where}" if data else (f"{path}: its data directory {where} (recorded "
                                                "when it was trained)")
        raise CheckpointError(f"{said}: no such directory; pass --data DIR, a directory with "
                              "the model's dictionaries")
    from fairseq import checkpoint_utils

    overrides = dict(model_overrides, **({"data": data} if data else {})) or None
    try:
        models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(
            [path], arg_overrides=overrides)
    except RuntimeError as e:
        if "loading state_dict" not in str(e):
            raise
        raise CheckpointError(f"{path}: its weights do not fit the model built from its options "
                              f"and the dictionaries in {where} ({load_failure(e)}); pass --data "
                              "with the data directory it was trained on") from None
    return models[0].eval(), task


def load_model(path: str, data: Optional[str] = None, **model_overrides):
    """``load_model_and_task``'s model."""
    return load_model_and_task(path, data, **model_overrides)[0]


# Temporary files and folders of a write are made beside its output, named with the writer's
# process id: removed when the write fails or is stopped (SIGTERM included, where the command
# turns it into an exit), and by the next write into that folder when a kill -9 left them.
SCRATCH = ".fullyqt-tmp-"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_scratch(folder: str) -> List[str]:
    """Remove what writes into ``folder`` left behind when they were killed; returns the names."""
    gone = []
    for name in os.listdir(folder):
        pid = name[len(SCRATCH):].split("-", 1)[0]
        if not (name.startswith(SCRATCH) and pid.isdigit()) or _running(int(pid)):
            continue
        path = os.path.join(folder, name)
        shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.unlink(path)
        gone.append(name)
    return gone


def scratch_dir(beside: str) -> str:
    """A new temporary folder in the folder of ``beside`` (an output path)."""
    return tempfile.mkdtemp(prefix=f"{SCRATCH}{os.getpid()}-",
                            dir=os.path.dirname(os.path.abspath(beside)))


def publish(path: str):
    """Give a finished file or folder the permissions the user's umask gives new files, as
    fairseq's checkpoints have (temporary files are made private)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~umask)


def atomic_save(obj, path: str):
    """``torch.save`` to a temporary file beside ``path``, then renamed: ``path`` is never
    half-written."""
    fd, tmp = tempfile.mkstemp(prefix=f"{SCRATCH}{os.getpid()}-", suffix=".pt",
                               dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        torch.save(obj, tmp)
        publish(tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


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
