"""A vocabulary map for CTranslate2's dynamic vocabulary reduction, built from the training data.

For each source token, the target tokens it most likely translates to under a lexical
translation table (IBM model 1: a few EM passes over the binarized training set, the source's
end-of-sentence token standing in for the empty word), plus the most frequent target tokens
for every sentence.  Written as CTranslate2's ``vmap.txt`` (``source<TAB>candidates``; the empty
source lists those always kept); CTranslate2 scores only the candidates of a batch's source
tokens when it translates with ``use_vmap=True``.
"""
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch

from ..errors import UserError, parse_number


@dataclass
class VmapSize:
    per_token: int = 10  # best candidates per source token (docs/results/2026-12-07-vmap-size.md)
    frequent: int = 100  # most frequent target tokens, always candidates
    iterations: int = 5  # EM passes of IBM model 1
    sentences: int = 100_000  # training pairs read (the first ones), bounding time and memory

    @classmethod
    def parse(cls, per_token, frequent, iterations=5, sentences=100_000) -> "VmapSize":
        def count(option, value, least):
            return parse_number(option, value, int, lambda x: x >= least,
                                f"an integer >= {least}")

        return cls(count("--vmap-per-token", per_token, 1), count("--vmap-frequent", frequent, 0),
                   count("--vmap-iterations", iterations, 1),
                   count("--vmap-sentences", sentences, 1))


def _pairs(data: str, src: str, tgt: str, split: str, limit: int):
    from fairseq.data import Dictionary, data_utils

    dicts = [Dictionary.load(os.path.join(data, f"dict.{lang}.txt")) for lang in (src, tgt)]
    sets = [data_utils.load_indexed_dataset(os.path.join(data, f"{split}.{src}-{tgt}.{lang}"), d)
            for lang, d in zip((src, tgt), dicts)]
    if sets[0] is None or sets[1] is None:
        raise UserError(f"{data}: no {split} split ({split}.{src}-{tgt}.{src}.bin) to build the "
                        "vocabulary map from")
    n = min(len(sets[0]), limit)
    return dicts, [sets[0][i] for i in range(n)], [sets[1][i][:-1] for i in range(n)]  # no EOS


def lexical_table(sources: List[torch.Tensor], targets: List[torch.Tensor], iterations: int):
    """IBM model 1's t(target | source) on the co-occurring pairs: (source ids, target ids,
    probabilities), one entry per distinct pair."""
    keys, groups = [], []
    group = 0
    for s, t in zip(sources, targets):
        if len(t) == 0:
            continue
        pair = (s.long()[:, None] * (1 << 32) + t.long()[None, :])  # [source, target]
        keys.append(pair.reshape(-1))
        groups.append((torch.arange(len(t)) + group).repeat(len(s)))  # one group per target
        group += len(t)
    keys = torch.cat(keys)
    groups = torch.cat(groups)
    unique, index = torch.unique(keys, return_inverse=True)
    source_of = unique >> 32
    _, source_index = torch.unique(source_of, return_inverse=True)
    prob = torch.ones(len(unique), dtype=torch.float64)
    for _ in range(iterations):
        p = prob[index]
        norm = torch.zeros(group, dtype=torch.float64).index_add_(0, groups, p)
        counts = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, index, p / norm[groups])
        totals = torch.zeros(int(source_index.max()) + 1, dtype=torch.float64).index_add_(
            0, source_index, counts)
        prob = counts / totals[source_index]
    return source_of, unique & ((1 << 32) - 1), prob


def candidates(data: str, src: str, tgt: str, size: VmapSize, split: str = "train"):
    """``({source symbol: [target symbols, best first]}, [frequent target symbols])``."""
    (src_dict, tgt_dict), sources, targets = _pairs(data, src, tgt, split, size.sentences)
    source_of, target_of, prob = lexical_table(sources, targets, size.iterations)
    special = {tgt_dict.pad(), tgt_dict.eos(), tgt_dict.bos(), tgt_dict.unk()}
    order = np.lexsort((-prob.numpy(), source_of.numpy()))  # by source, best first
    by_source: Dict[str, List[str]] = {}
    for k in order:
        s, t = int(source_of[k]), int(target_of[k])
        if s in (src_dict.pad(), src_dict.eos(), src_dict.bos()) or t in special:
            continue
        row = by_source.setdefault(src_dict[s], [])
        if len(row) < size.per_token:
            row.append(tgt_dict[t])
    counts = torch.bincount(torch.cat(targets).long(), minlength=len(tgt_dict))
    counts[list(special)] = -1
    frequent = [tgt_dict[int(i)] for i in torch.argsort(counts, descending=True)[:size.frequent]
                if counts[i] >= 0]
    return by_source, frequent


def write_vmap(path: str, by_source: Dict[str, List[str]], frequent: List[str]):
    with open(path, "w", encoding="utf-8") as f:
        f.write("\t" + " ".join(frequent) + "\n")
        for s, ts in by_source.items():
            f.write(f"{s}\t{' '.join(ts)}\n")


def build_vmap(data: str, src: str, tgt: str, path: str, size: Optional[VmapSize] = None) -> str:
    """Write the vocabulary map of ``data``'s training split to ``path``; returns ``path``."""
    by_source, frequent = candidates(data, src, tgt, size or VmapSize())
    write_vmap(path, by_source, frequent)
    return path


def read_vmap(path: str):
    """``({source symbol: set of candidates}, always-kept set)`` of a written map."""
    rules, always = {}, set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            key, _, values = line.rstrip("\n").partition("\t")
            if key:
                rules[key] = set(values.split())
            else:
                always = set(values.split())
    return rules, always


def mean_candidates(path: str, batches: List[List[List[str]]]) -> float:
    """Target candidates a batch keeps under the map, averaged over ``batches`` (of source
    token lists), special tokens not counted."""
    rules, always = read_vmap(path)
    sizes = [len(set(always).union(*(rules.get(tok, ()) for sent in batch for tok in sent)))
             for batch in batches]
    return sum(sizes) / max(1, len(sizes))
