"""Block shapes (``RxC``; ``row``: one score per FFN unit; ``head``: one score per attention
head) and how they tile a matrix."""
from typing import NamedTuple, Optional, Tuple

from ..errors import UserError


class PruneOptionError(UserError):
    """A pruning option has a value outside what is allowed, or does not fit the model."""


class BlockShape(NamedTuple):
    """``rows x cols`` of one block; ``None`` stands for "the whole side" (``row``: 1 x all;
    ``head``: no fixed side, a head's slice of each projection)."""

    rows: Optional[int]
    cols: Optional[int]

    @classmethod
    def parse(cls, option: str, text: str, allow_row: bool = False,
              allow_head: bool = False) -> "BlockShape":
        if allow_row and text == "row":
            return cls(1, None)
        if allow_head and text == "head":
            return cls(None, None)
        parts = str(text).lower().split("x")
        ok = len(parts) == 2 and all(p.isdigit() and int(p) > 0 for p in parts)
        if not ok:
            allowed = ("RxC with positive integers (e.g. 32x32)" + (", or row" if allow_row else "")
                       + (", or head" if allow_head else ""))
            raise PruneOptionError(f"{option}: got {text!r}; allowed: {allowed}")
        return cls(int(parts[0]), int(parts[1]))

    @property
    def head(self) -> bool:
        return self.rows is None

    def __str__(self):
        return "head" if self.head else "row" if self.cols is None else f"{self.rows}x{self.cols}"

    def tiles(self, shape: Tuple[int, int], matrix: str) -> Tuple[int, int]:
        """How many blocks fit along each side of a ``shape`` matrix named ``matrix``; a shape
        that does not divide it is refused."""
        rows, cols = shape
        r, c = self.rows, cols if self.cols is None else self.cols
        if rows % r or cols % c:
            raise PruneOptionError(f"block {self} does not divide {matrix} ({rows}x{cols}); "
                                   f"use a block shape whose sides divide {rows} and {cols}")
        return rows // r, cols // c
