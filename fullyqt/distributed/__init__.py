"""What a run on many processes needs beyond fairseq's own engine: identical quantizer state."""
from .range_sync import RangeSync

__all__ = ["RangeSync"]
