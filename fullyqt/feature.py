"""The plug-in interface of the fullyqt transformer.

A feature (quantization, block pruning, Kronecker factors, range sync across processes) is one
``Feature`` subclass registered with ``register_feature``.  The model asks every registered
feature, in ``order``, to add its options, to read its config once per build, to attach to the
built model, to take part in the training forward, and to read and upgrade checkpoints; the
exporters ask it which formats it can go to and which options it added.  Neither the model nor
the exporters name a feature's options.  Every hook has a default that does nothing, so a
feature implements only what it changes.
"""
import argparse
import contextlib
import contextvars
from typing import Callable, Dict, Iterator, List, Optional, Tuple


class Feature:
    name = ""  # key of its config in a ``Build``
    order = 0  # lower first: the order of attach and of every other hook

    def add_args(self, parser):
        """Add the feature's command-line options to fairseq's parser."""

    def set_defaults(self, args):
        """Fill the feature's options that ``args`` lacks (an older checkpoint's, or options not
        given: fairseq's model options default to absent)."""

    def config(self, args):
        """The feature's validated config, read from ``args`` once per build (None: off).
        Raises a ``UserError`` naming the bad value and what is allowed."""
        return None

    def layer_shapes(self, cfg):
        """Per-layer head counts and FFN sizes (``prune.shapes.CompactShapes``), or None for the
        architecture's uniform ones."""
        return None

    def attach(self, model, cfg):
        """Change the built, wired model in place (swap weight sources, add child modules)."""

    def training_forward(self, model, cfg, forward: Callable, prev_output_tokens):
        """Run ``forward()`` (the rest of the chain) in training and return its output, possibly
        changed; the default runs it as it is."""
        return forward()

    def set_num_updates(self, model, cfg, num_updates: int):
        """Called by fairseq at every update (after the model's own bookkeeping)."""

    def prepare_for_inference(self, model, cfg):
        """Ready the loaded model for decoding (fairseq-generate, from_pretrained)."""

    def read_state(self, model, cfg, state_dict: dict, prefix: str):
        """Turn a saved form of the state (an integer export) into plain tensors, in place,
        before fairseq's own upgrade of older parameter names."""

    def upgrade_state(self, model, cfg, state_dict: dict, prefix: str):
        """After fairseq's upgrade: convert what the checkpoint holds to what the model expects,
        or refuse a checkpoint of other options in one ``UserError`` line."""

    def starts_fresh(self, module) -> bool:
        """Whether ``module``'s tensors may be missing from a checkpoint and start as built (the
        state this feature adds to a model trained without it)."""
        return False

    def export_formats(self) -> Dict[str, Callable]:
        """Formats this feature adds to ``fullyqt-export``: ``{name: write(checkpoint, state,
        args, out, data)}``."""
        return {}

    def check_export(self, args, fmt: str, checkpoint: str):
        """Raise a ``UserError`` if a checkpoint trained with ``args`` cannot go to ``fmt``; log
        a warning where it can but loses something."""

    def export_options(self, args, fmt: str) -> dict:
        """Options written into an export of format ``fmt`` (e.g. the kernels it decodes with)."""
        return {}

    def float_options(self, args) -> dict:
        """Options that make a float model with dense weights of the same shape (the model the
        CTranslate2 converter reads)."""
        return {}


_REGISTRY: List[Feature] = []


def register_feature(feature: Feature) -> Feature:
    """Add ``feature`` (an instance) to every fullyqt model built from now on; returns it."""
    if any(f.name == feature.name for f in _REGISTRY):
        raise ValueError(f"a feature named {feature.name!r} is already registered")
    _REGISTRY.append(feature)
    _REGISTRY.sort(key=lambda f: f.order)
    return feature


def unregister_feature(name: str):
    _REGISTRY[:] = [f for f in _REGISTRY if f.name != name]


def features() -> List[Feature]:
    return list(_REGISTRY)


def option_group(parser, title: str):
    """A titled group of ``parser`` for a feature's options; fairseq hands models an argument
    group already, which takes them as they are (argparse no longer nests groups)."""
    if isinstance(parser, argparse.ArgumentParser):
        return parser.add_argument_group(title)
    return parser


def set_feature_defaults(args):
    """Every registered feature's defaults on ``args`` (the architectures call this)."""
    for f in _REGISTRY:
        f.set_defaults(args)


def plugin_options() -> List[str]:
    """The ``args`` names of every option the registered features add (what a stock export
    drops)."""
    parser = argparse.ArgumentParser(add_help=False, conflict_handler="resolve")
    for f in _REGISTRY:
        f.add_args(parser)
    return [a.dest for a in parser._actions]


class Build:
    """The registered features and their configs for one model, each config read once."""

    def __init__(self, args):
        self.configs: List[Tuple[Feature, object]] = [(f, f.config(args)) for f in _REGISTRY]

    def __iter__(self) -> Iterator[Tuple[Feature, object]]:
        return iter(self.configs)

    def __getitem__(self, name: str):
        for f, cfg in self.configs:
            if f.name == name:
                return cfg
        raise KeyError(name)

    def layer_shapes(self):
        for f, cfg in self.configs:
            shapes = f.layer_shapes(cfg)
            if shapes is not None:
                return shapes
        return None

    def training_forward(self, model, forward: Callable, prev_output_tokens):
        """``forward()`` run through every feature's ``training_forward``, the first outermost."""
        run = forward
        for f, cfg in reversed(self.configs):
            run = _bind(f, model, cfg, run, prev_output_tokens)
        return run()


def _bind(f: Feature, model, cfg, inner: Callable, prev_output_tokens) -> Callable:
    return lambda: f.training_forward(model, cfg, inner, prev_output_tokens)


_CURRENT: contextvars.ContextVar[Optional[Build]] = contextvars.ContextVar("fullyqt_build",
                                                                          default=None)


@contextlib.contextmanager
def building(args):
    """Within: ``current_build(args)`` is one ``Build`` of ``args`` (fairseq builds the
    embeddings, the encoder, the decoder and the model in separate calls)."""
    token = _CURRENT.set(Build(args))
    try:
        yield _CURRENT.get()
    finally:
        _CURRENT.reset(token)


def current_build(args) -> Build:
    """The build under way, or a new one of ``args`` (a model constructed directly)."""
    build = _CURRENT.get()
    return build if build is not None else Build(args)
