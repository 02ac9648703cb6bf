"""Integer inference: the trained quantized linears run as int8 x int8 -> int32 matmuls."""
from .convert import NativeConversionError, to_native_int8  # noqa: F401
from .int8_linear import Int8Linear  # noqa: F401
