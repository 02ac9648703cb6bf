"""A padded teacher-forced batch of raw sentences of the reversal task, built from a model's own
dictionaries (shared by the legacy-checkpoint fixture and its test)."""
import torch
from fairseq.data import data_utils


def read_lines(path):
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def padded_batch(model, lines):
    """``net_input`` for ``lines`` and their reversal targets: left-padded source, right-padded
    previous output tokens (fairseq's defaults)."""
    sd, td = model.encoder.dictionary, model.decoder.dictionary
    src = [sd.encode_line(s, add_if_not_exist=False).long() for s in lines]
    tgt = [td.encode_line(" ".join(w.upper() for w in reversed(s.split())),
                          add_if_not_exist=False).long() for s in lines]
    return {
        "src_tokens": data_utils.collate_tokens(src, sd.pad(), sd.eos(), left_pad=True),
        "src_lengths": torch.tensor([len(s) for s in src]),
        "prev_output_tokens": data_utils.collate_tokens(tgt, td.pad(), td.eos(), left_pad=False,
                                                        move_eos_to_beginning=True),
    }
