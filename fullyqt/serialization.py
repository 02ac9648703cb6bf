"""Let torch >= 2.6's ``weights_only`` loader read fairseq checkpoints.

fairseq pickles its run configuration (an ``argparse.Namespace`` and a few plain types) beside
the tensors.  Instead of turning ``weights_only`` off, allowlist exactly those types, so
``fairseq-generate``, ``fairseq-interactive`` and ``from_pretrained`` load checkpoints once the
plugin is imported, while arbitrary pickled objects stay refused.

A distributed run resumes by loading the checkpoint on rank 0 and broadcasting it
(``fairseq.distributed.utils.broadcast_object``): the other ranks unpickle the loaded state,
whose ``cfg`` is an omegaconf ``DictConfig`` by then, with the tensors replaced by placeholders.
``BROADCAST_CHECKPOINT_TYPES`` is what that state holds beyond the file's types, found by
unpickling it one refused type at a time (``tests/test_distributed.py`` checks that the whole
list is needed and enough).
"""
import argparse
import collections
import typing

import torch
from fairseq.distributed.utils import _TensorPlaceholder
from omegaconf import DictConfig, ListConfig
from omegaconf.base import ContainerMetadata, Metadata
from omegaconf.nodes import AnyNode

BROADCAST_CHECKPOINT_TYPES = [DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode,
                              typing.Any, dict, list, int, collections.defaultdict,
                              _TensorPlaceholder]
FAIRSEQ_CHECKPOINT_TYPES = [argparse.Namespace] + BROADCAST_CHECKPOINT_TYPES


def allow_fairseq_checkpoints():
    torch.serialization.add_safe_globals(FAIRSEQ_CHECKPOINT_TYPES)
