"""One error line, not a traceback, for a mistake the user can fix: a bad fullyqt option that
reaches the model through a fairseq tool's own code path (``--model-overrides``, a saved
checkpoint's arguments), an unreadable teacher checkpoint, a wrong dictionary."""
import argparse
import os
import sys


class UserError(ValueError):
    """A mistake in the user's input; its message names the bad value and what is allowed."""


def parse_number(option, value, cast, ok, allowed, error=UserError):
    """``cast(value)`` if ``ok`` accepts it, else ``error`` naming the value and ``allowed``."""
    try:
        x = cast(str(value))
    except ValueError:
        x = None
    if x is None or not ok(x):
        raise error(f"{option}: got {value!r}; allowed: {allowed}")
    return x


def one_of(allowed, error=UserError):
    """A parser ``(option, value)`` that accepts one of ``allowed`` and raises ``error`` naming
    them all otherwise."""

    def parse(option, value):
        if value not in allowed:
            raise error(f"{option}: got {value!r}; allowed: {', '.join(allowed)}")
        return value

    return parse


def integer(text: str) -> int:
    return int(text, 10)


def checked_action(parse, with_namespace=False):
    """An argparse action that validates with ``parse(option, value)`` (``with_namespace``:
    ``parse(option, value, namespace)``, to check one option against another) and exits with
    one error line (no usage dump) when it raises ``UserError``."""

    class CheckedAction(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            extra = (namespace,) if with_namespace else ()
            try:
                setattr(namespace, self.dest, parse(option_string, values, *extra))
            except UserError as e:
                parser.exit(2, f"{parser.prog}: error: {e}\n")

    return CheckedAction


# fairseq's trainer replaces any error met while loading a checkpoint's weights by this one
_CANNOT_LOAD = "Cannot load model parameters from checkpoint "


def load_failure(error: BaseException) -> str:
    """The line of a failed ``load_state_dict`` that says what did not fit (torch lists every
    mismatch on a line of its own under a header)."""
    lines = [r.strip() for r in str(error).strip().splitlines() if r.strip()]
    return next((r for r in lines if r.startswith(("size mismatch", "Missing key",
                                                      "Unexpected key"))),
                lines[0] if lines else type(error).__name__)


def one_line(error: BaseException):
    """The line to print for ``error``: a ``UserError``'s message, also where fairseq raised
    another exception while handling it; for fairseq's "cannot load model parameters", that
    message with the first line of what failed; None for anything else (a traceback)."""
    chain, seen = [], set()
    e = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        if isinstance(e, UserError):
            return str(e)
    text = str(error)
    if text.startswith(_CANNOT_LOAD) and len(chain) > 1:
        reason = load_failure(chain[1])
        checkpoint = text[len(_CANNOT_LOAD):].split(";")[0]
        return (f"{checkpoint}: its weights do not fit the model these options build "
                f"({reason}); pass the architecture and fullyqt options it was trained with")
    return None


def _frame(tb, function: str, fits):
    """The innermost frame of ``function`` on the traceback ``tb`` whose locals ``fits``
    accepts, or None."""
    found = None
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == function and fits(frame.f_locals):
            found = frame
        tb = tb.tb_next
    return found


def _checkpoint_in(tb):
    """The path fairseq's ``load_checkpoint_to_cpu`` was reading where ``tb`` was raised."""
    frame = _frame(tb, "load_checkpoint_to_cpu", lambda v: isinstance(v.get("path"), str))
    return None if frame is None else frame.f_locals["path"]


def complete_checkpoints(folder: str):
    """The checkpoints in ``folder`` whose archive is whole, newest first."""
    import zipfile

    found = []
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name.startswith("checkpoint") and name.endswith(".pt") and zipfile.is_zipfile(path):
            found.append((os.path.getmtime(path), path))
    return [p for _, p in sorted(found, reverse=True)]


def unreadable_checkpoint(error: BaseException, tb):
    """One line for a checkpoint fairseq could not read (empty, or cut short by a kill while
    fairseq copied it), naming the file and, when resuming a run, the newest complete checkpoint
    beside it and the command that restores it; None for any other error."""
    path = _checkpoint_in(tb)
    text = str(error)
    if path is None or not (isinstance(error, EOFError) or "PytorchStreamReader" in text
                            or "zip archive" in text):
        return None
    size = os.path.getsize(path) if os.path.exists(path) else 0
    line = f"{path}: {'empty' if size == 0 else 'cut short'} ({size:,} bytes), not a checkpoint"
    others = [p for p in complete_checkpoints(os.path.dirname(os.path.abspath(path)))
              if os.path.abspath(p) != os.path.abspath(path)]
    if others:
        return (f"{line}; the newest complete one beside it is {others[0]}: resume from it with "
                f"`cp {others[0]} {path}` and the same command")
    return f"{line}; a run killed while it was written: start over, or use another checkpoint"


def _option(args, name):
    try:
        return getattr(args, name, None)
    except Exception:  # an omegaconf config without the key
        return None


def optimizer_mismatch(error: BaseException, tb):
    """One line for a resumed run whose saved optimizer state does not fit the model the options
    build now (a run restarted in its folder with other --kron-* / --prune-* options, another
    criterion or optimizer): the file and the options that differ, then and now; None for any
    other error."""
    text = str(error)
    if not (isinstance(error, ValueError) and "doesn't match the size of optimizer's group" in
            text or isinstance(error, AssertionError) and "please reset the optimizer" in text):
        return None
    frame = _frame(tb, "load_checkpoint",  # fairseq's Trainer.load_checkpoint
                   lambda v: "filename" in v and hasattr(v.get("self"), "cfg"))
    if frame is None:
        return None
    from .feature import plugin_options

    path, state = frame.f_locals["filename"], frame.f_locals.get("state") or {}
    cfg = state.get("cfg")
    then = state.get("args") or (cfg.get("model") if hasattr(cfg, "get") else None)
    now = frame.f_locals["self"].cfg.model
    differ = [f"--{name.replace('_', '-')} {_option(then, name)} then, {_option(now, name)} now"
              for name in plugin_options()
              if then is not None and _option(then, name) != _option(now, name)]
    what = "; ".join(differ) if differ else text.split(";")[0].split(".")[0]
    return (f"{path}: its optimizer state does not fit the model these options build ({what});"
            f" resume with the options it was trained with, or start in a new --save-dir "
            f"(--finetune-from-model {path} starts from its weights)")


def install_excepthook():
    """Print an uncaught ``UserError`` (or fairseq's wrapping of one, see ``one_line``) as
    ``PROG: error: MESSAGE``; every other exception goes to the hook that was there before."""
    previous = sys.excepthook
    if getattr(previous, "fullyqt", False):
        return

    def hook(kind, value, tb):
        line = one_line(value)
        if line is None:
            line = unreadable_checkpoint(value, tb) or optimizer_mismatch(value, tb)
        if line is not None:
            prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "fullyqt"
            sys.stderr.write(f"{prog}: error: {line}\n")
        else:
            previous(kind, value, tb)

    hook.fullyqt = True
    sys.excepthook = hook
