"""One error line, not a traceback, for a bad fullyqt option that reaches the model through a
fairseq tool's own code path (``--model-overrides``, a saved checkpoint's arguments)."""
import os
import sys

from .quant.config import QuantOptionError


def install_excepthook():
    """Print an uncaught ``QuantOptionError`` as ``PROG: error: MESSAGE``; every other exception
    goes to the hook that was there before."""
    previous = sys.excepthook
    if getattr(previous, "fullyqt", False):
        return

    def hook(kind, value, tb):
        if issubclass(kind, QuantOptionError):
            prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "fullyqt"
            sys.stderr.write(f"{prog}: error: {value}\n")
        else:
            previous(kind, value, tb)

    hook.fullyqt = True
    sys.excepthook = hook
