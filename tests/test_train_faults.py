"""A real fairseq-train killed (SIGKILL) as it saves: rerunning the same command resumes from a
complete checkpoint and ends with the updates asked for; where the kill cut checkpoint_last.pt
short, the rerun says so in one line with the command that restores the newest complete one."""
import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch

from tests.conftest import BIN, TINY, TRAIN, USER_DIR, cli

MODELS = {"8-bit": ["--quant-bits", "8"],
          "pruned": ["--quant-bits", "8", "--prune-method", "topk", "--prune-density", "0.5",
                     "--prune-attn-block", "head", "--prune-warmup-updates", "2",
                     "--prune-cooldown-updates", "4"]}


def updates_logged(stdout: str):
    return [int(json.loads(line[line.index("{"):])["num_updates"])
            for line in stdout.splitlines() if "train_inner" in line and '"num_updates"' in line]


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(MODELS))
def test_a_run_killed_as_it_saves_resumes_on_a_rerun(toy_data, tmp_path, model):
    args = [toy_data[1], "--save-dir", tmp_path, *TRAIN, *TINY, *MODELS[model], "--user-dir",
            USER_DIR, "--max-update", "12", "--save-interval-updates", "4",
            "--disable-validation", "--log-format", "json", "--log-interval", "1"]
    proc = subprocess.Popen([os.path.join(BIN, "fairseq-train"), *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # fairseq writes the interval checkpoint whole (a temporary file renamed), then copies it
    # over checkpoint_last.pt: the kill lands as that copy starts, or inside it
    second = tmp_path / "checkpoint_1_8.pt"
    deadline = time.time() + 300
    while not second.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.0005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert second.exists(), "the run ended before its second interval checkpoint"
    for _ in range(2):
        rerun = cli("fairseq-train", *args, check=False)
        if rerun.returncode == 0:
            break
        line = rerun.stderr.strip().splitlines()[-1]
        assert "Traceback" not in rerun.stderr and "cut short" in line, rerun.stderr[-2000:]
        source, target = line.split("`cp ")[1].split("`")[0].split()
        shutil.copyfile(source, target)  # what the line says to do
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    done = updates_logged(rerun.stdout)
    assert done and done[0] in (5, 9) and done[-1] == 12  # resumed, not started over
    state = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert state["optimizer_history"][-1]["num_updates"] == 12
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
