"""fairseq's batch-prefetch threads, stopped before the interpreter exits.

fairseq fills a queue of batches in a daemon thread (``BackgroundConsumer``).  When training
stops mid-epoch (``--max-update``), the process exits while that thread may be inside a torch
op; Python then ends the thread in a C++ frame and the process aborts ("terminate called
without an active exception", exit -6) after the checkpoint is saved.  At exit the plugin asks
each such thread to stop after the batch in hand, drains its queue and joins it.
"""
import atexit
import queue
import threading
import time


def stop_threads(timeout: float = 60.0) -> int:
    """Stop every live fairseq prefetch thread; returns how many were stopped."""
    from fairseq.data.iterators import BackgroundConsumer

    stopped = 0
    for thread in threading.enumerate():
        if not isinstance(thread, BackgroundConsumer) or not thread.is_alive():
            continue
        thread._max_len = 0  # its loop breaks after the next put
        deadline = time.monotonic() + timeout
        while thread.is_alive() and time.monotonic() < deadline:
            try:  # a full queue would block the thread's put
                thread._queue.get(timeout=0.01)
            except queue.Empty:
                pass
        stopped += not thread.is_alive()
    return stopped


def stop_at_exit():
    """Stop the prefetch threads when the interpreter exits (the plugin's import calls it)."""
    atexit.register(stop_threads)
