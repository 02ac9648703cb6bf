"""Fake-quantized activations saved for backward as their byte codes.

A fake-quantized tensor holds only values ``lo + k * step`` with ``k`` in ``0 .. 2^b - 1``:
autograd can keep ``k`` in one byte instead of the float in four and give backward the same
floats back, bit for bit.  Within ``packing()`` (a training forward) each fake quantization
``offer``s its output with its grid (and its codes, which the CPU kernel writes as it
quantizes), and torch's saved-tensor hooks (``torch.autograd.graph.saved_tensors_hooks``)
replace every saved view of an offered output by its codes.  ``--quant-saved-codes`` turns it on
(``FullyQTTransformerModel.forward``).
"""
import contextlib
import threading
import weakref
from typing import Dict, Optional

import torch

from . import grid

_local = threading.local()
_DTYPES = (torch.float32, torch.float16)  # recovering k needs about 8 more bits than b
SMALLEST = 1 << 16  # values: smaller tensors stay float (a pass each way costs more than it saves)


class _Codes:
    """The codes of one fake-quantized tensor and its grid, shared by all its saved views; the
    floats are rebuilt once and kept until the last saved view has been used."""

    __slots__ = ("codes", "lo", "step", "dtype", "uses", "_values")

    def __init__(self, codes, lo, step, dtype):
        self.codes, self.lo, self.step, self.dtype = codes, lo, step, dtype
        self.uses = 0  # saved views not unpacked yet
        self._values = None

    def values(self) -> torch.Tensor:
        got = self._values
        if got is None:
            got = grid.byte_code_values(self.codes, self.lo, self.step, self.dtype)
        self.uses -= 1
        self._values = got if self.uses > 0 else None
        return got


class _Offer:
    __slots__ = ("ref", "version", "lo", "step", "top", "packed")

    def __init__(self, out, lo, step, top, codes, forget):
        self.ref = weakref.ref(out, forget)
        self.version = out._version
        self.lo, self.step, self.top = lo, step, top
        # _Codes once known (the kernel's, or made when a view is first saved); False: cannot be
        self.packed = None if codes is None else _Codes(codes, lo, step, out.dtype)


def active() -> bool:
    """Whether fake quantizations are offered now (within ``packing()``)."""
    return getattr(_local, "offers", None) is not None


def wanted(x: torch.Tensor, top: int) -> bool:
    """Whether a fake quantization of ``x`` onto ``top + 1`` levels should write its codes now."""
    return top <= 255 and x.numel() >= SMALLEST and active()


def offer(out: torch.Tensor, lo: torch.Tensor, step: torch.Tensor, top: int,
          codes: Optional[torch.Tensor] = None):
    """Within ``packing()``: ``out`` holds only ``lo + k * step``, k in 0..top (``lo`` and
    ``step`` one value, or one per row of a matrix), and ``codes`` are its k where known; a
    saved view of it may be kept as codes."""
    if not wanted(out, top) or out.dtype not in _DTYPES or out.storage_offset() != 0:
        return
    if out.untyped_storage().nbytes() != out.numel() * out.element_size():
        return  # not one dense block of exactly its values
    offers: Dict[int, _Offer] = _local.offers
    ptr = out.untyped_storage().data_ptr()

    def forget(ref, offers=offers, ptr=ptr):  # the output died unsaved: drop its codes
        if offers.get(ptr) is not None and offers[ptr].ref is ref:
            del offers[ptr]

    offers[ptr] = _Offer(out, lo.detach().clone(), step.detach().clone(), top, codes, forget)


@contextlib.contextmanager
def packing(enabled: bool = True):
    """Tensors that autograd saves within it are kept as codes where they are views of an
    offered fake quantization's output (``enabled=False``: a no-op)."""
    if not enabled:
        yield
        return
    before = getattr(_local, "offers", None)
    offers: Dict[int, _Offer] = {}
    _local.offers = offers
    try:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: _pack(offers, t), _unpack):
            yield
    finally:
        _local.offers = before


def _pack(offers: Dict[int, _Offer], t: torch.Tensor):
    entry = offers.get(t.untyped_storage().data_ptr()) if t.layout == torch.strided else None
    base = None if entry is None or entry.packed is False else entry.ref()
    # the same live tensor's memory (not reused after it died), unchanged since it was offered
    if (base is None or base.untyped_storage().data_ptr() != t.untyped_storage().data_ptr()
            or base.dtype != t.dtype or t._version != entry.version):
        return t.detach()  # not the tensor itself: a saved output would hold its own grad_fn
    if entry.packed is None:
        codes = grid.byte_codes(base, entry.lo, entry.step, entry.top)
        entry.packed = False if codes is None else _Codes(codes, entry.lo, entry.step, t.dtype)
        if codes is None:
            return t.detach()
    entry.packed.uses += 1
    return (entry.packed, t.size(), t.stride(), t.storage_offset())


def _unpack(packed):
    if isinstance(packed, torch.Tensor):
        return packed
    codes, size, stride, offset = packed
    return codes.values().as_strided(size, stride, offset)
