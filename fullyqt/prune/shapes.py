"""Per-layer head counts and FFN sizes of a compacted model, kept in its arguments.

fairseq builds every layer from one global config; a compacted model carries
``--prune-compact-shapes`` (JSON, written by ``fullyqt-export --format compact``) and its layers
are built from it.  ``fairseq-train --finetune-from-model COMPACT`` needs no option: the shapes
are read from that checkpoint.
"""
import json
from typing import List, NamedTuple, Optional

from .blocks import PruneOptionError


class LayerShape(NamedTuple):
    heads: int  # self-attention heads
    cross_heads: Optional[int]  # encoder-decoder attention heads (decoder layers)
    ffn: int


class CompactShapes(NamedTuple):
    encoder: List[LayerShape]
    decoder: List[LayerShape]

    def to_json(self) -> str:
        def rows(layers):
            return [{"heads": s.heads, "ffn": s.ffn, **({"cross_heads": s.cross_heads}
                                                       if s.cross_heads is not None else {})}
                    for s in layers]

        return json.dumps({"encoder": rows(self.encoder), "decoder": rows(self.decoder)},
                          separators=(",", ":"))

    @classmethod
    def parse(cls, text: str) -> "CompactShapes":
        try:
            d = json.loads(text)
            out = cls(*[[LayerShape(int(r["heads"]), None if r.get("cross_heads") is None
                                    else int(r["cross_heads"]), int(r["ffn"]))
                         for r in d[stack]] for stack in ("encoder", "decoder")])
        except (ValueError, TypeError, KeyError) as e:
            raise PruneOptionError(f"--prune-compact-shapes: not a shapes record ({e}); it is "
                                   "written by fullyqt-export --format compact") from None
        return out

    def check(self, args):
        """Refuse shapes that do not fit the architecture's depth and widths."""
        for stack, layers in (("encoder", self.encoder), ("decoder", self.decoder)):
            depth = getattr(args, f"{stack}_layers")
            heads = getattr(args, f"{stack}_attention_heads")
            if len(layers) != depth:
                raise PruneOptionError(f"--prune-compact-shapes: {len(layers)} {stack} layers, "
                                       f"the architecture has {depth}")
            for i, s in enumerate(layers):
                counts = [s.heads] + ([s.cross_heads] if s.cross_heads is not None else [])
                if not all(1 <= h <= heads for h in counts) or s.ffn < 1:
                    raise PruneOptionError(f"--prune-compact-shapes: {stack} layer {i} has "
                                           f"{counts} heads and {s.ffn} FFN units; allowed 1.."
                                           f"{heads} heads and at least 1 unit")


def compact_shapes(args) -> Optional[CompactShapes]:
    """The shapes of ``args`` (or of the checkpoint ``--finetune-from-model`` names), or None."""
    text = getattr(args, "prune_compact_shapes", None)
    if text is None and getattr(args, "finetune_from_model", None):
        from ..checkpoint import finetune_args

        text = getattr(finetune_args(args), "prune_compact_shapes", None)
        args.prune_compact_shapes = text or ""  # recorded: "" stands for "none there"
    if not text:
        return None
    shapes = CompactShapes.parse(text)
    shapes.check(args)
    return shapes
