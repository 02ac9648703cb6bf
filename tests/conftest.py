import os
import subprocess
import sys

import pytest
import torch

import fullyqt  # noqa: F401  (registers the model, allowlists checkpoint types)
from fullyqt.data.synthetic import write_reversal_task

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
USER_DIR = os.path.join(REPO, "fullyqt")
STUDIES = os.path.join(REPO, "scripts", "studies")  # study tools: python scripts/studies/X.py
if STUDIES not in sys.path:
    sys.path.insert(0, STUDIES)
# A small 8-bit checkpoint saved by an earlier release, with its dictionaries and test lines.
FIXTURE = os.path.join(REPO, "tests", "fixtures", "legacy")
CKPT = os.path.join(FIXTURE, "checkpoint.pt")

# A model small enough to train the reversal task in well under a minute on 2 CPU cores.
TINY = ["--arch", "fullyqt_transformer_tiny", "--encoder-embed-dim", "64",
        "--decoder-embed-dim", "64", "--encoder-ffn-embed-dim", "128",
        "--decoder-ffn-embed-dim", "128", "--encoder-layers", "2", "--decoder-layers", "2",
        "--share-all-embeddings"]
TRAIN = ["--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", "3e-3",
         "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "100", "--max-tokens", "2000",
         "--dropout", "0.1", "--criterion", "label_smoothed_cross_entropy",
         "--label-smoothing", "0.1", "--no-progress-bar", "--cpu", "--seed", "1",
         "--no-epoch-checkpoints"]


def cli(name, *args, check=True, **kw):
    """Run a fairseq console script of this environment; returns the CompletedProcess."""
    proc = subprocess.run([os.path.join(BIN, name), *map(str, args)], capture_output=True,
                          text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    """Raw and binarized reversal data: returns (raw_dir, bin_dir)."""
    root = tmp_path_factory.mktemp("toy")
    raw, binarized = root / "raw", root / "bin"
    write_reversal_task(str(raw))
    cli("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt",
        "--trainpref", raw / "train", "--validpref", raw / "valid", "--testpref", raw / "test",
        "--destdir", binarized, "--joined-dictionary", "--workers", "1")
    return raw, binarized


def train(data, save_dir, *extra, user_dir=True):
    args = [data, "--save-dir", save_dir, *TRAIN, *extra]
    if user_dir:
        args += ["--user-dir", USER_DIR]
    else:  # stock fairseq may abort at exit inside its prefetch thread (fullyqt/prefetch.py)
        args += ["--data-buffer-size", "0"]
    return cli("fairseq-train", *args)


@pytest.fixture(scope="session")
def trained_8bit(toy_data, tmp_path_factory):
    """An 8-bit FullyQT model trained on the reversal task (about half a minute)."""
    save = tmp_path_factory.mktemp("ckpt8")
    train(toy_data[1], save, *TINY, "--quant-bits", "8", "--max-update", "300",
          "--disable-validation")
    return save / "checkpoint_last.pt"


# A stock fairseq transformer teacher, two layers of width 64.
TEACHER_ARCH = ["--arch", "transformer", "--encoder-embed-dim", "64", "--decoder-embed-dim", "64",
                "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128",
                "--encoder-layers", "2", "--decoder-layers", "2", "--encoder-attention-heads", "4",
                "--decoder-attention-heads", "4", "--share-all-embeddings"]


@pytest.fixture(scope="session")
def teacher(toy_data, tmp_path_factory):
    """A float teacher trained on the reversal task (about 20 s)."""
    save = tmp_path_factory.mktemp("teacher")
    train(toy_data[1], save, *TEACHER_ARCH, "--max-update", "300", "--disable-validation",
          user_dir=False)
    return save / "checkpoint_last.pt"


def make_trainer(data, save_dir, *extra):
    """A fairseq Trainer on TRAIN + TINY + extra that has loaded save_dir's last checkpoint."""
    from fairseq import checkpoint_utils, options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [str(data), "--user-dir", USER_DIR, "--save-dir",
                                                str(save_dir), *TRAIN, *TINY, *extra])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    trainer = Trainer(cfg, task, model, task.build_criterion(cfg.criterion))
    checkpoint_utils.load_checkpoint(cfg.checkpoint, trainer)
    return trainer, model


def build_model(data, *extra, arch_args=TINY):
    """Build a model through fairseq's own parser and task, as fairseq-train does."""
    from fairseq import options, tasks

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser, [str(data), "--user-dir", USER_DIR, "--cpu", *arch_args, *map(str, extra)])
    task = tasks.setup_task(args)
    return task.build_model(args), task, args


def calibrated(model, batch, steps=3):
    """Train-mode forwards so that every running range has been observed, then eval."""
    model.train()
    for _ in range(steps):
        model(**batch["net_input"])
    return model.eval()


def row(variant, **fields):
    """A trained row as the benchmark writes it (float-like defaults)."""
    from fullyqt.bench.row import Row

    return Row(**{"variant": variant, "description": "d", "bits": None, "bleu": 30.0,
                  "signature": "s", "params": 1000, "model_bytes": 4000,
                  "tokens_per_second": 100.0, "num_updates": 10, "sec_per_update": 1.0,
                  **fields})


def sample_batch(task, split="valid", n=16):
    task.load_dataset(split)
    ds = task.dataset(split)
    return ds.collater([ds[i] for i in range(n)])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# Fixtures that train a model with fairseq-train: every test that uses one is end to end.
TRAINING_FIXTURES = {"trained_8bit", "teacher", "pruned"}


def pytest_collection_modifyitems(items):
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
