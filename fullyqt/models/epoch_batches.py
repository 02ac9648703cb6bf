"""Training batches that depend on the epoch alone, so that a resumed run trains as if never stopped.

fairseq's translation task makes its batches once, shuffled by ``seed + the epoch the process
started in``, and keeps them for every later epoch: a run resumed after its first epoch trains
on other batches than one never stopped.  fairseq rebuilds them at every epoch from ``seed +
epoch`` where a task's config sets ``rebuild_batches`` (its audio tasks do); a fullyqt model
sets it on the task it is built for.
"""
from omegaconf import DictConfig, open_dict


def rebuild_each_epoch(task) -> bool:
    """Set ``rebuild_batches`` on ``task``'s config; False where the config cannot hold it."""
    cfg = getattr(task, "cfg", None)
    if cfg is None:
        return False
    if isinstance(cfg, DictConfig):
        with open_dict(cfg):
            cfg.rebuild_batches = True
    else:
        setattr(cfg, "rebuild_batches", True)
    return True
