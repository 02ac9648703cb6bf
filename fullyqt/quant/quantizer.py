"""Quantizer modules: small children that hold their state in buffers.

``WeightQuantizer`` takes its range from the tensor at every forward pass (one range per
bucket); ``ActivationQuantizer`` keeps a running range (EMA) that training updates and eval
freezes.  Both stay identity until ``set_num_updates`` reaches ``start_update`` (fairseq pushes
the update counter to every submodule), and the ``active`` flag is saved with the checkpoint.
"""
from typing import Optional

import torch
from torch import nn

from . import fused, saved_codes
from .grid import BUCKETS as WEIGHT_BUCKETS
from .fake_quant import fake_quantize, pass_inside_backward, quantize_values, save_mask
from .grid import Grid, GridNumbers, fake_quantize_frozen
from .mode_caches import DropCachesOnModeSwitch
from .observers import OBSERVERS, batch_min_max, mse_clip


class Quantizer(nn.Module):
    def __init__(self, bits: Optional[int], start_update: int = 0):
        super().__init__()
        self.bits = bits
        self.start_update = start_update
        self.register_buffer("active", torch.tensor(bits is not None and start_update == 0))
        self._active = bool(self.active)

    def _sync_flags(self):
        """Host copies of the flag buffers, so that forward never waits on the device."""
        self._active = bool(self.active)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._sync_flags()

    @property
    def hooked(self) -> bool:
        """Whether forward hooks watch it (a caller that would fuse its work away runs it as a
        module instead)."""
        return bool(self._forward_hooks or self._forward_pre_hooks
                    or nn.modules.module._global_forward_hooks
                    or nn.modules.module._global_forward_pre_hooks)

    @property
    def enabled(self) -> bool:
        return self.bits is not None and self._active

    def set_num_updates(self, num_updates: int):
        self._active = self.bits is not None and num_updates >= self.start_update
        self.active.fill_(self._active)


class WeightQuantizer(DropCachesOnModeSwitch, Quantizer):
    """Fake-quantizes a weight on the min-max grid of each bucket (a row, or the whole tensor).

    ``symmetric`` (set where pruning masks apply) takes symmetric grids, which hold 0.0 exactly:
    a pruned weight stays exactly zero once quantized."""

    kind = "weight"

    def __init__(self, bits: Optional[int], buckets: str = "row", start_update: int = 0):
        super().__init__(bits, start_update)
        if buckets not in WEIGHT_BUCKETS:
            raise ValueError(f"weight buckets {buckets!r}: allowed {', '.join(WEIGHT_BUCKETS)}")
        self.buckets = buckets
        self.symmetric = False
        self._cache = None

    def drop_caches(self):
        self._cache = None

    def forward(self, w: torch.Tensor, range_of: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Quantized ``w``; ``range_of`` (defaults to ``w``) is the tensor whose buckets set the range."""
        if not self.enabled:
            return w
        cacheable = not self.training and not torch.is_grad_enabled() and range_of is None
        key = (w.data_ptr(), w._version, w.shape, w.dtype, w.device)
        if cacheable and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        # A range taken from w itself clips nothing: no gradient mask to compute or keep.
        out = fake_quantize(self.grid(w if range_of is None else range_of), w,
                            clip_gradient=range_of is not None)
        self._cache = (key, out) if cacheable else None
        return out

    def grid(self, w: torch.Tensor) -> Grid:
        """The grid of each bucket of ``w``."""
        return Grid.spanning(w, self.bits, self.buckets, self.symmetric)

    @torch.no_grad()
    def codes(self, w: torch.Tensor):
        """(float32 codes, float32 grid) of ``w``: ``grid.dequantize(codes)`` is ``forward(w)``."""
        grid = self.grid(w).to(torch.float32)
        return grid.codes(w.float()), grid

    def extra_repr(self):
        return (f"bits={self.bits}, buckets={self.buckets}, start_update={self.start_update}"
                + (", symmetric=True" if self.symmetric else ""))


class ActivationQuantizer(Quantizer):
    """Fake-quantizes an activation on a running (EMA) min-max range kept in buffers.

    ``unsigned`` fixes the lower end at 0 for tensors that are non-negative by construction.
    ``clip_gradient=False`` lets the gradient through where the range clipped the value (used for
    the LayerNorm denominator, which drifts faster than a running range follows).
    ``valid`` (a bool mask over the leading dims of x) excludes padding from range updates.
    ``record`` (set by ``fullyqt.distributed.RangeSync``) sees each batch's (lo, hi) before the
    update, so that ranks can agree on it.
    ``observer`` measures each batch's (lo, hi): ``minmax`` or ``mse`` (``observers.py``).
    """

    kind = "activation"

    def __init__(self, bits: Optional[int], momentum: float = 0.9, unsigned: bool = False,
                 start_update: int = 0, clip_gradient: bool = True, observer: str = "minmax"):
        super().__init__(bits, start_update)
        if observer not in OBSERVERS:
            raise ValueError(f"observer {observer!r}: allowed {', '.join(OBSERVERS)}")
        self.observer = observer
        self.momentum = momentum
        self.unsigned = unsigned
        self.clip_gradient = clip_gradient
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("initialized", torch.tensor(False))
        self._initialized = False
        self._frozen = None
        self.record = None  # set by a distributed run: called with each batch's (lo, hi)

    def _sync_flags(self):
        super()._sync_flags()
        self._initialized = bool(self.initialized)

    @torch.no_grad()
    def observe(self, x: torch.Tensor, valid: Optional[torch.Tensor] = None):
        """EMA update of (lo, hi) from the non-padding entries of x; the first update copies them.

        Padding is masked out with +-inf instead of indexed away, so the update never waits on
        the device; a batch that is all padding leaves the range as it was.
        """
        x = x.detach()
        lo, hi = batch_min_max(x, valid)
        if self.unsigned:
            lo = torch.zeros_like(lo)
        if self.observer == "mse":
            lo, hi = mse_clip(x, valid, lo, hi, self.bits)
        if self.record is not None:  # an empty x still records, so every rank records as many
            self.record(self, lo, hi)
        self.update_range(lo, hi)

    @torch.no_grad()
    def update_range(self, lo: torch.Tensor, hi: torch.Tensor):
        """The running update from one batch's (lo, hi); +-inf (nothing seen) leaves it as it was."""
        seen = torch.isfinite(lo) & torch.isfinite(hi)
        m = self.momentum if self._initialized else 0.0
        self.lo.copy_(torch.where(seen, m * self.lo + (1 - m) * lo, self.lo))
        self.hi.copy_(torch.where(seen, m * self.hi + (1 - m) * hi, self.hi))
        if not self._initialized:  # waits on the device only until the first observation
            self.initialized.logical_or_(seen)
            self._initialized = bool(self.initialized)

    @property
    def grid(self) -> Grid:
        """The grid of the running range (float32 scalars)."""
        return Grid(self.lo, self.hi, self.bits)

    @property
    def has_range(self) -> bool:
        """Whether its outputs lie on a grid: active and observed at least once."""
        return self.enabled and self._initialized

    def frozen_range(self):
        """(lo, hi, step) as Python floats, recomputed only when the buffers change."""
        return self.frozen_numbers()[:3]

    def frozen_numbers(self) -> GridNumbers:
        """The grid's numbers (``Grid.numbers``), recomputed only when the buffers change."""
        lo, hi = self._buffers["lo"], self._buffers["hi"]  # not nn.Module's slow __getattr__
        key = (lo._version, hi._version, lo.data_ptr(), hi.data_ptr())
        if self._frozen is None or self._frozen[0] != key:
            self._frozen = (key, self.grid.numbers())
        return self._frozen[1]

    def _one_pass(self, x: torch.Tensor, valid: Optional[torch.Tensor]):
        """``row_layout`` of ``x`` where the training step can run as one kernel call (CPU
        float32, min-max ranges already initialized, no distributed record), else None."""
        if not (self._initialized and self.observer == "minmax" and self.record is None
                and self.lo.dtype == torch.float32 and self.lo.device.type == "cpu"):
            return None
        return fused.row_layout(x, valid)

    def forward(self, x: torch.Tensor, valid: Optional[torch.Tensor] = None,
                masks: Optional[list] = None) -> torch.Tensor:
        """``masks``: a list that receives the straight-through mask (None where nothing was
        clipped), for a training caller that writes its own backward: the step then runs
        outside autograd."""
        if masks is not None:
            out, inside = self._train_values(x, valid)
            masks.append(inside)
            return out
        if not self.enabled:
            return x
        if self.training:
            layout = self._one_pass(x, valid)
            if layout is not None:
                return _ObserveFakeQuantize.apply(x, self, layout)
            self.observe(x, valid)
        if not self._initialized:
            return x
        if not self.training and not (torch.is_grad_enabled() and x.requires_grad):
            return fake_quantize_frozen(x, *self.frozen_range())
        return fake_quantize(self.grid.to(x.dtype), x, self.clip_gradient)

    def frozen_codes(self, x: torch.Tensor) -> torch.Tensor:
        """The float32 codes of ``forward(x)`` in evaluation with a known range (what exact
        evaluation's integer products take): one kernel pass where it applies and no hooks
        watch, else ``forward`` and then the grid's codes."""
        if fused.applies(x) and not (self.training or self.hooked) and self.has_range:
            return fused.quantized_codes(x, *self.frozen_range())
        return self.grid.codes(self(x).float())

    def _train_values(self, x: torch.Tensor, valid: Optional[torch.Tensor]):
        """The training step outside autograd: (the values ``forward`` gives, the
        straight-through mask or None where nothing was clipped or the gradient is not
        clipped)."""
        if not self.enabled:
            return x, None
        layout = self._one_pass(x, valid)
        if layout is not None:
            return self._kernel_step(x, layout, self.clip_gradient)
        self.observe(x, valid)
        if not self._initialized:
            return x, None
        grid = self.grid.to(x.dtype)
        return quantize_values(x, grid.lo, grid.hi, grid.bits, self.clip_gradient)

    def _kernel_step(self, x: torch.Tensor, layout, want_mask: bool):
        """``_one_pass``'s kernel call: (values, mask or None); the codes offered to
        ``saved_codes``."""
        grid = self.grid  # (its lo/hi buffers: the kernel updates them in place)
        out, inside, codes = fused.observe_fake_quantize(
            x, layout, self.lo, self.hi, self.momentum, self.unsigned, grid.top, want_mask,
            saved_codes.wanted(x, grid.top))
        if codes is not None:  # autograd may keep these instead of out
            saved_codes.offer(out, grid.lo, grid.step(), grid.top, codes)
        return out, inside

    def extra_repr(self):
        return (f"bits={self.bits}, momentum={self.momentum}, unsigned={self.unsigned}, "
                f"clip_gradient={self.clip_gradient}, start_update={self.start_update}"
                + (f", observer={self.observer}" if self.observer != "minmax" else ""))


class _ObserveFakeQuantize(torch.autograd.Function):
    """``ActivationQuantizer``'s training step as one kernel call: the running range's update
    from the batch (``observe``) and the fake quantization on the new grid with its
    straight-through mask, the same numbers as the two apart."""

    @staticmethod
    def forward(ctx, x, quantizer, layout):
        out, inside = quantizer._kernel_step(
            x, layout, quantizer.clip_gradient and ctx.needs_input_grad[0])
        save_mask(ctx, inside)
        return out

    @staticmethod
    def backward(ctx, grad):
        return pass_inside_backward(ctx, grad), None, None
