"""Training on many processes: every rank holds the same quantizer state.

In-process tests run two "ranks" as threads whose collective is a barrier; the launch tests start
two real processes through ``torchrun`` and fairseq-train's own entry point (gloo, loopback).
"""
import copy
import io
import os
import re
import socket
import subprocess
import threading

import pytest
import torch
from fairseq import checkpoint_utils
from fairseq.distributed import utils as distributed_utils
from torch import nn

from fullyqt import serialization
from fullyqt.distributed import RangeSync
from fullyqt.quant.quantizer import ActivationQuantizer

from conftest import BIN, REPO, TINY, TRAIN, USER_DIR, build_model, sample_batch


class ThreadCollective:
    """A max all-reduce between threads: each rank's ``reduce_max(rank)`` is its collective."""

    def __init__(self, world: int):
        self.barrier = threading.Barrier(world)
        self.slots = [None] * world

    def reduce_max(self, rank):
        def reduce(t):
            self.slots[rank] = t.clone()
            self.barrier.wait()
            t.copy_(torch.stack(self.slots).amax(0))
            self.barrier.wait()
        return reduce


def run_ranks(*jobs):
    """Run one callable per rank in threads; re-raise the first failure."""
    errors = []

    def guarded(job):
        try:
            job()
        except BaseException as e:  # noqa: B902
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise errors[0]


def quantizers():
    return nn.ModuleList([ActivationQuantizer(8), ActivationQuantizer(8, unsigned=True)])


def ranges(module):
    return [(q.lo.clone(), q.hi.clone(), bool(q.initialized)) for q in module.modules()
            if isinstance(q, ActivationQuantizer)]


def test_distributed_reduced_ranges_equal_one_quantizer_seeing_every_rank_batch():
    torch.manual_seed(3)
    # Three steps of (rank 0 batch, rank 1 batch, rank 1's padding mask): a plain step, one
    # where rank 1 is all padding, and two observations in one forward (a shared quantizer).
    steps = [[(torch.randn(4, 3, 8), torch.randn(5, 3, 8) * 3, None)],
             [(torch.randn(4, 3, 8) - 2, torch.randn(4, 3, 8) + 9, torch.zeros(4, 3, dtype=torch.bool))],
             [(torch.randn(2, 8), torch.randn(3, 8) * 5, None), (torch.rand(2, 8), torch.rand(6, 8), None)]]
    ranks = [quantizers().train(), quantizers().train()]
    alone = quantizers().train()  # one process that sees both ranks' batches
    collective = ThreadCollective(2)
    syncs = [RangeSync(m, collective.reduce_max(r)) for r, m in enumerate(ranks)]

    def rank_job(r):
        def job():
            for step in steps:
                syncs[r].begin()
                for x0, x1, valid1 in step:
                    for q in ranks[r]:
                        q(x0 if r == 0 else x1, None if r == 0 else valid1)
                syncs[r].reduce(torch.tensor(True))
        return job

    run_ranks(rank_job(0), rank_job(1))
    for step in steps:
        for x0, x1, valid1 in step:
            x1 = x1 if valid1 is None else x1[valid1]
            both = torch.cat([x0.reshape(-1), x1.reshape(-1)])
            for q in alone:
                q(both)
    assert ranges(ranks[0]) == ranges(ranks[1]) == ranges(alone)
    assert syncs[0].collectives == len(steps)


@pytest.fixture(scope="module")
def tiny_model(toy_data):
    model, task, _ = build_model(toy_data[1], "--quant-bits", "8", "--dropout", "0")
    return model, sample_batch(task, "train", 8), sample_batch(task, "valid", 8)


def train_forward_backward(model, sample, dummy=False):
    model.train()
    logits = model(**sample["net_input"])[0]
    loss = logits.log_softmax(-1).gather(-1, sample["target"].unsqueeze(-1)).sum().neg()
    if dummy:
        loss = loss * 0  # fairseq's dummy batch: task.train_step(..., ignore_grad=True)
    loss.backward()


def test_distributed_ranges_agree_and_a_dummy_batch_moves_none(tiny_model):
    model, batch0, batch1 = tiny_model
    for dummy, reference_batches in ((False, None), (True, [batch0])):
        ranks = [copy.deepcopy(model), copy.deepcopy(model)]
        collective = ThreadCollective(2)
        for r, m in enumerate(ranks):
            m.range_sync = RangeSync(m, collective.reduce_max(r))
        run_ranks(lambda: train_forward_backward(ranks[0], batch0),
                  lambda: train_forward_backward(ranks[1], batch1, dummy=dummy))
        assert ranks[0].range_sync.collectives == ranks[1].range_sync.collectives == 1
        assert ranges(ranks[0]) == ranges(ranks[1])
        local = copy.deepcopy(model)  # no sync: its own batch only
        train_forward_backward(local, batch0)
        if dummy:  # the dummy rank's batch counts for nothing: rank 0's batch alone
            assert ranges(ranks[1]) == ranges(local)
        else:  # the reduction took rank 1's batch into account
            assert ranges(ranks[0]) != ranges(local)


def test_allowlisted_types_are_exactly_what_a_resume_broadcast_needs(trained_8bit):
    """Rank 0 loads the checkpoint and broadcasts it; the other ranks unpickle it
    with weights_only. Every allowlisted type is needed, and together they suffice."""
    state = checkpoint_utils.load_checkpoint_to_cpu(str(trained_8bit))
    payload = io.BytesIO()
    torch.save(distributed_utils._split_tensors_from_obj(state, []), payload)

    def loads(types):
        payload.seek(0)
        with torch.serialization.safe_globals(types):
            torch.load(payload, weights_only=True)

    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        allowed = serialization.FAIRSEQ_CHECKPOINT_TYPES
        loads(allowed)
        for t in allowed:
            rest = [u for u in allowed if u is not t]
            with pytest.raises(Exception, match="Unsupported global"):
                loads(rest)
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(saved)


# -- two real processes ---------------------------------------------------------------------

LAUNCH = ["--cpu", "--distributed-world-size", "2", "--distributed-init-method", "env://",
          "--distributed-no-spawn", "--distributed-rank", "-1", "--distributed-backend", "gloo"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_train(data, save_dir, dump_dir, *extra, ddp_backend="legacy_ddp"):
    """fairseq-train on two local processes; each rank dumps its model state into dump_dir."""
    os.makedirs(dump_dir, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", FULLYQT_RANK_DUMP=str(dump_dir))
    cmd = [os.path.join(BIN, "torchrun"), "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           os.path.join(REPO, "tests", "distributed_worker.py"), str(data), "--user-dir", USER_DIR,
           "--save-dir", str(save_dir), *TRAIN, *TINY, "--log-interval", "5", *LAUNCH,
           "--ddp-backend", ddp_backend, *map(str, extra)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout + proc.stderr


def rank_states(dump_dir):
    return [torch.load(os.path.join(dump_dir, f"rank{r}.pt")) for r in (0, 1)]


def assert_ranks_identical_and_saved(dump_dir, checkpoint):
    rank0, rank1 = rank_states(dump_dir)
    saved = torch.load(checkpoint, weights_only=False)["model"]
    assert rank0.keys() == rank1.keys() == saved.keys()
    ranges = [k for k in rank0 if k.endswith((".lo", ".hi"))]
    assert len(ranges) > 50  # the 8-bit model's activation ranges are among what is compared
    differ = [k for k in rank0 if not torch.equal(rank0[k], rank1[k])]
    assert not differ, f"{len(differ)} tensors differ across ranks, e.g. {differ[:3]}"
    unsaved = [k for k in rank0 if not torch.equal(rank0[k], saved[k])]
    assert not unsaved, f"{len(unsaved)} tensors differ from the checkpoint, e.g. {unsaved[:3]}"


def batches_per_epoch(data):
    _, task, _ = build_model(data)
    task.load_dataset("train")
    return len(task.get_batch_iterator(dataset=task.dataset("train"), max_tokens=2000,
                                       max_positions=(1024, 1024), seed=1))


@pytest.mark.slow
def test_distributed_two_processes_8bit_identical_ranks(toy_data, tmp_path):
    # An odd number of batches: rank 1 runs fairseq's dummy batch at the end of every epoch.
    assert batches_per_epoch(toy_data[1]) % 2 == 1
    log = torchrun_train(toy_data[1], tmp_path / "ckpt", tmp_path / "dump", "--quant-bits", "8",
                         "--max-update", "20")
    assert "range_sync_ms" in log
    assert_ranks_identical_and_saved(tmp_path / "dump", tmp_path / "ckpt" / "checkpoint_last.pt")


@pytest.mark.slow
def test_distributed_update_freq_and_resume_continue_exactly(toy_data, tmp_path):
    """--update-freq 2 on two processes, stopped in epoch 1 and resumed past an epoch boundary,
    ends with the same parameters and ranges as the uninterrupted run."""
    common = ["--quant-bits", "8", "--update-freq", "2"]
    torchrun_train(toy_data[1], tmp_path / "whole", tmp_path / "whole-dump", *common,
                   "--max-update", "7")
    torchrun_train(toy_data[1], tmp_path / "resumed", tmp_path / "part-dump", *common,
                   "--max-update", "2")
    torchrun_train(toy_data[1], tmp_path / "resumed", tmp_path / "resumed-dump", *common,
                   "--max-update", "7")
    assert_ranks_identical_and_saved(tmp_path / "whole-dump",
                                     tmp_path / "whole" / "checkpoint_last.pt")
    whole, resumed = rank_states(tmp_path / "whole-dump")[0], rank_states(tmp_path / "resumed-dump")[0]
    differ = [k for k in whole if not torch.equal(whole[k], resumed[k])]
    assert not differ, f"resumed run differs in {len(differ)} tensors, e.g. {differ[:3]}"


@pytest.mark.slow
def test_distributed_distillation_pruning_and_kronecker_with_no_c10d(toy_data, teacher,
                                                                      tmp_path):
    """The distillation criterion, pruning scores (their own learning rate) and masks, and
    Kronecker factors, all in one 8-bit model on two processes."""
    log = torchrun_train(toy_data[1], tmp_path / "ckpt", tmp_path / "dump", "--quant-bits", "8",
                         "--criterion", "fullyqt_distill", "--teacher-path", teacher,
                         "--kd-weight", "0.5", "--kd-hidden-weight", "1", "--max-update", "12",
                         "--kron-layers", "ffn,embed", "--kron-factor", "4", "--prune-method",
                         "topk", "--prune-density", "0.5", "--prune-attn-block", "16x16",
                         "--prune-warmup-updates", "2", "--prune-cooldown-updates", "5",
                         "--prune-score-lr", "0.01", ddp_backend="no_c10d")
    assert re.search(r"teacher_share=[0-9.]+", log)
    assert re.search(r"prune: update 10 target density 0\.\d+", log)
    assert_ranks_identical_and_saved(tmp_path / "dump", tmp_path / "ckpt" / "checkpoint_last.pt")
