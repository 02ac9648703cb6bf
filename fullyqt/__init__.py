"""fullyqt: a fairseq plugin (``--user-dir``) for fully quantized Transformers."""
from . import errors, serialization

serialization.allow_fairseq_checkpoints()
errors.install_excepthook()

from . import models  # noqa: E402,F401  (registers fullyqt_transformer and its archs)
from . import distill  # noqa: E402,F401  (registers --criterion fullyqt_distill)

__version__ = "0.1.0"
