"""Let torch >= 2.6's ``weights_only`` loader read fairseq checkpoints.

fairseq pickles its run configuration (an ``argparse.Namespace`` and a few plain types) beside
the tensors.  Instead of turning ``weights_only`` off, allowlist exactly those types, so
``fairseq-generate``, ``fairseq-interactive`` and ``from_pretrained`` load checkpoints once the
plugin is imported, while arbitrary pickled objects stay refused.
"""
import argparse

import torch

FAIRSEQ_CHECKPOINT_TYPES = [argparse.Namespace]


def allow_fairseq_checkpoints():
    torch.serialization.add_safe_globals(FAIRSEQ_CHECKPOINT_TYPES)
