"""The ``int8``/``int6``/``int4`` export: weights as packed integer codes plus the range of each
bucket, exactly as the weight quantizers computed them.

A weight ``W`` is stored as ``W@codes`` (packed bytes), ``W@min`` and ``W@max`` (fp32, one per
bucket; the scale is ``(max - min) / (2^b - 1)``, the zero point ``min``) and ``W@shape``.  On
load the weight is ``codes * scale + min`` with the top code written as ``max`` itself: its
range, hence its scale, codes, fake-quantized values and integer form, is the trained one bit
for bit.  Biases, activation ranges and other buffers stay as they are.  Tied weights
are stored once, and the many scalar buffers (activation ranges, flags) travel as one tensor.
``bundle`` then concatenates the tensors into one flat tensor per dtype with an index: torch's
archive spends a few hundred bytes on each tensor, a quarter of a small int4 file.  The lists
(the index, the scalars' names and dtypes: a few tens of KB of repetitive names) travel as one
zlib-compressed JSON byte tensor, ``@bundle_lists``.
The quantization feature (``quant/feature.py``) unbundles and unpacks on load, so the
file loads wherever a fullyqt checkpoint does.
"""
import json
import math
import zlib

import torch

from .grid import Grid
from .weights import quantized_parameters, storage_key
from .packing import pack_codes, unpack_codes

SEP = "@"
FORMAT_KEY = "fullyqt_export"
BUNDLE_INDEX = f"{SEP}bundle_index"
BUNDLE_LISTS = f"{SEP}bundle_lists"


def pack_state(model, bits: int) -> dict:
    """The model's state dict with every quantized weight replaced by its packed form."""
    state = model.state_dict()
    quantized = quantized_parameters(model)
    packed, first_of, scalars = {}, {}, []
    for name, t in state.items():
        t, q = quantized.get(name, (t, None))  # the tensor its module stores quantized
        if q is None:
            if t.dim() == 0:
                scalars.append((name, t))
            else:
                packed[name] = t
            continue
        if q.bits != bits:
            raise ValueError(f"{name} was trained with {q.bits}-bit weights, not {bits}")
        key = storage_key(t)
        if key in first_of:
            packed[f"{name}{SEP}alias"] = first_of[key]
            continue
        first_of[key] = name
        codes, grid = q.codes(t)
        packed[f"{name}{SEP}codes"] = pack_codes(codes, bits)
        packed[f"{name}{SEP}min"] = grid.lo.reshape(-1).clone()
        packed[f"{name}{SEP}max"] = grid.hi.reshape(-1).clone()
        packed[f"{name}{SEP}shape"] = torch.tensor(list(t.shape))
    packed[f"{SEP}scalars"] = torch.stack([t.double() for _, t in scalars])
    packed[f"{SEP}scalar_names"] = [n for n, _ in scalars]
    packed[f"{SEP}scalar_dtypes"] = [str(t.dtype).replace("torch.", "") for _, t in scalars]
    return packed


def bundle(state: dict) -> dict:
    """``state`` with its tensors concatenated into one flat tensor per dtype (``@bundle.<dtype>``)
    and ``@bundle_index`` naming each tensor's dtype, offset and shape; other entries stay."""
    out, index, flat, size, first_of = {}, [], {}, {}, {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            out[name] = value
            continue
        key = storage_key(value) + (value.storage_offset(), value.stride(), value.dtype)
        if key in first_of:  # tied (unquantized) tensors: stored once, as torch.save does
            index.append((name, first_of[key]))
            continue
        first_of[key] = name
        dtype = str(value.dtype).replace("torch.", "")
        flat.setdefault(dtype, []).append(value.detach().reshape(-1))
        offset = size.get(dtype, 0)
        size[dtype] = offset + value.numel()
        index.append((name, dtype, offset, list(value.shape)))
    for dtype, parts in flat.items():
        out[f"{SEP}bundle.{dtype}"] = torch.cat(parts)
    lists = {k: out.pop(k) for k in list(out) if isinstance(out[k], list)}
    lists[BUNDLE_INDEX] = index
    text = zlib.compress(json.dumps(lists).encode("utf-8"), 9)
    out[BUNDLE_LISTS] = torch.frombuffer(bytearray(text), dtype=torch.uint8)
    return out


def unbundle(state: dict) -> dict:
    """In place: the inverse of ``bundle`` (views into the flat tensors, tied names shared)."""
    if BUNDLE_LISTS in state:  # (exports before it kept the lists as pickled entries)
        state.update(json.loads(zlib.decompress(state.pop(BUNDLE_LISTS).numpy().tobytes())))
    index = state.pop(BUNDLE_INDEX)
    flat = {k[len(f"{SEP}bundle."):]: state.pop(k) for k in list(state)
            if k.startswith(f"{SEP}bundle.")}
    for entry in index:
        if len(entry) == 2:
            state[entry[0]] = state[entry[1]]
            continue
        name, dtype, offset, shape = entry
        state[name] = flat[dtype][offset:offset + math.prod(shape)].reshape(shape)
    return state


def is_bundled(state_dict) -> bool:
    return BUNDLE_INDEX in state_dict or BUNDLE_LISTS in state_dict


def is_packed(state_dict) -> bool:
    return any(SEP in k for k in state_dict)


def unpack_state(state_dict: dict, bits: int):
    """In place: replace packed entries by float weights ``codes * scale + min`` (``max`` at the
    top code), in a state already unbundled (``unbundle``)."""
    values = state_dict.pop(f"{SEP}scalars")
    dtypes = state_dict.pop(f"{SEP}scalar_dtypes")
    for name, value, dtype in zip(state_dict.pop(f"{SEP}scalar_names"), values, dtypes):
        state_dict[name] = value.to(getattr(torch, dtype))
    names = {k.split(SEP)[0] for k in state_dict if SEP in k}
    aliases = {}
    for name in sorted(names):
        if f"{name}{SEP}alias" in state_dict:
            aliases[name] = state_dict.pop(f"{name}{SEP}alias")
            continue
        shape = state_dict.pop(f"{name}{SEP}shape").tolist()
        codes = unpack_codes(state_dict.pop(f"{name}{SEP}codes"), bits, shape)
        lo = state_dict.pop(f"{name}{SEP}min")
        bshape = (-1,) + (1,) * (len(shape) - 1) if lo.numel() > 1 else ()
        lo = lo.reshape(bshape)
        if f"{name}{SEP}scale" in state_dict:  # fullyqt 0.1.0 exports: codes, scale and min
            state_dict[name] = codes.float() * state_dict.pop(f"{name}{SEP}scale").reshape(
                bshape) + lo
            continue
        hi = state_dict.pop(f"{name}{SEP}max").reshape(bshape)
        state_dict[name] = Grid(lo, hi, bits).restore(codes)
    for name, target in aliases.items():
        state_dict[name] = state_dict[target]
