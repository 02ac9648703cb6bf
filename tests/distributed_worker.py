"""One rank of a ``torchrun`` launch of fairseq-train's own entry point (``cli_main``).

When training ends, the rank saves its model's parameters and buffers to
``$FULLYQT_RANK_DUMP/rank{RANK}.pt``, so that a test can compare the ranks with each other and
with the checkpoint rank 0 wrote.
"""
import os

import fairseq_cli.train as fairseq_train
import torch
from fairseq.trainer import Trainer


class RecordingTrainer(Trainer):
    """fairseq's Trainer, remembered so that its model can be read once training returns."""

    last = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        RecordingTrainer.last = self


if __name__ == "__main__":
    fairseq_train.Trainer = RecordingTrainer
    fairseq_train.cli_main()
    state = {k: v.detach().cpu().clone()
             for k, v in RecordingTrainer.last.get_model().state_dict().items()}
    torch.save(state, os.path.join(os.environ["FULLYQT_RANK_DUMP"], f"rank{os.environ['RANK']}.pt"))
