"""Bit-packing of b-bit integer codes (b <= 8) into bytes, and back, exactly."""
import numpy as np
import torch


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 bytes holding ``codes`` (values < 2^bits) at ``bits`` bits each, little-endian."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits {bits}: packing supports 1..8")
    flat = codes.reshape(-1).to(torch.uint8).numpy()
    if bits == 8:
        return torch.from_numpy(flat.copy())
    planes = np.unpackbits(flat[:, None], axis=1, bitorder="little")[:, :bits]
    return torch.from_numpy(np.packbits(planes.reshape(-1), bitorder="little"))


def unpack_codes(packed: torch.Tensor, bits: int, shape) -> torch.Tensor:
    """Inverse of ``pack_codes``: int64 codes of the given shape."""
    n = int(np.prod(shape))
    raw = packed.numpy()
    if bits == 8:
        return torch.from_numpy(raw[:n].astype(np.int64)).reshape(shape)
    planes = np.unpackbits(raw, count=n * bits, bitorder="little").reshape(n, bits)
    codes = (planes.astype(np.int64) << np.arange(bits)).sum(axis=1)
    return torch.from_numpy(codes).reshape(shape)
