"""fairseq's batch-prefetch thread at exit: a process that leaves it inside a torch op aborts
without the plugin (fairseq-train stopped by --max-update mid-epoch did, in CI) and exits 0
with it."""
import subprocess
import sys

import torch
from fairseq.data.iterators import BufferedIterator

from fullyqt import prefetch

# Takes one batch of a prefetching iterator whose batches are slow torch products, then exits
# while the prefetch thread computes the next one.
LEAVES_THE_THREAD_IN_AN_OP = """
import sys, torch
from fairseq.data.iterators import BufferedIterator
if sys.argv[1] == "plugin":
    import fullyqt
torch.set_num_threads(1)
class Batches:
    def __len__(self):
        return 100
    def __iter__(self):
        a = torch.randn(800, 800)
        for _ in range(100):
            yield a @ a @ a @ a @ a
next(iter(BufferedIterator(2, Batches())))
print("took one batch")
"""


def exit_code(with_plugin: bool):
    proc = subprocess.run([sys.executable, "-c", LEAVES_THE_THREAD_IN_AN_OP,
                           "plugin" if with_plugin else "stock"], capture_output=True, text=True)
    assert "took one batch" in proc.stdout, proc.stderr[-2000:]
    return proc.returncode, proc.stderr


def test_the_plugin_stops_the_prefetch_thread_before_the_interpreter_exits():
    code, err = exit_code(with_plugin=False)
    assert code != 0 and "terminate called" in err  # the race the plugin removes
    code, err = exit_code(with_plugin=True)
    assert code == 0, err[-2000:]


class Counted:
    def __init__(self, n):
        self.n, self.produced = n, 0

    def __len__(self):
        return self.n

    def __iter__(self):
        for i in range(self.n):
            self.produced += 1
            yield torch.full((4,), i)


def test_stopping_takes_the_thread_down_after_the_batch_in_hand():
    prefetch.stop_threads()  # any an earlier test of this process left
    batches = Counted(1000)
    itr = iter(BufferedIterator(3, batches))
    assert int(next(itr)[0]) == 0
    assert prefetch.stop_threads() == 1
    # it stopped long before the end: at most the queue's batches and the one in hand
    assert batches.produced <= 1 + 3 + 2
    assert prefetch.stop_threads() == 0
