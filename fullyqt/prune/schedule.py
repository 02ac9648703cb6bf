"""The pruning schedule: no pruning during a warm-up, a cubic ramp, a cool-down at the end value.

``ramp(t) = 1 - (1 - p)^3`` with ``p`` the share of the ramp done at update ``t``; the sigmoid
method's threshold and penalty weight are ``final * ramp(t)``, top-k's density is
``1 - (1 - final) * ramp(t)`` (Zhu & Gupta's cubic schedule, as in movement pruning).
"""
from typing import NamedTuple


class Schedule(NamedTuple):
    warmup: int
    cooldown: int
    total: int

    def ramp(self, num_updates: int) -> float:
        span = self.total - self.cooldown - self.warmup
        p = min(max((num_updates - self.warmup) / span, 0.0), 1.0)
        return 1.0 - (1.0 - p) ** 3

    def rising(self, final: float, num_updates: int) -> float:
        """From 0 to ``final``: the threshold, the penalty weight."""
        return final * self.ramp(num_updates)

    def falling(self, final: float, num_updates: int) -> float:
        """From 1 to ``final``: the kept density."""
        return 1.0 - (1.0 - final) * self.ramp(num_updates)
