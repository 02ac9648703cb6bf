"""fairseq models registered by the plugin."""
from . import fullyqt_transformer  # noqa: F401  (registers the model and its archs)
