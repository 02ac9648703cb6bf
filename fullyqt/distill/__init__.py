"""Knowledge distillation from a teacher checkpoint: ``--criterion fullyqt_distill`` (word-level
soft targets and hidden states) and ``fullyqt-distill-data`` (sequence-level)."""
from . import criterion  # noqa: F401  (registers fullyqt_distill)
