"""fullyqt: a fairseq plugin (``--user-dir``) for fully quantized Transformers."""
from . import errors, prefetch, serialization

serialization.allow_fairseq_checkpoints()
errors.install_excepthook()
prefetch.stop_at_exit()

from . import models  # noqa: E402,F401  (registers fullyqt_transformer and its archs)
# The model's features, each registering itself (``feature.py``).
from .quant import feature as _quantization  # noqa: E402,F401
from .kron import feature as _kronecker  # noqa: E402,F401
from .prune import feature as _pruning  # noqa: E402,F401
from .distributed import feature as _range_sync  # noqa: E402,F401
from .depth import feature as _depth  # noqa: E402,F401
from . import distill  # noqa: E402,F401  (--criterion fullyqt_distill and its option guards)

__version__ = "0.1.0"
