"""The README's quickstart command, run as written on the toy task (its paths swapped for the
toy model and data, and tiny stage lengths added)."""
import os
import re
import shlex

import pytest

from conftest import REPO, cli


def quickstart_commands():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def test_the_quickstart_is_one_fullyqt_compress_command():
    (cmd,) = quickstart_commands()
    assert cmd[0] == "fullyqt-compress" and "--recipe" in cmd and "--out" in cmd


@pytest.mark.slow
def test_the_quickstart_runs_as_written(toy_data, teacher, tmp_path):
    (cmd,) = quickstart_commands()
    checkpoint, data = cmd[1], cmd[2]
    out = cmd[cmd.index("--out") + 1]
    swap = {checkpoint: str(teacher), data: str(toy_data[1]), out: str(tmp_path / "out")}
    args = [swap.get(a, a) for a in cmd[1:]]
    cli("fullyqt-compress", *args, "--updates", "8", "--threads", "1", "--no-eval")
    recipe = cmd[cmd.index("--recipe") + 1]
    shipped = {"int8": "model.int8.pt", "int4": "model.int4.pt", "fast": "ct2",
               "smallest": "model.int4.pt"}[recipe]
    assert os.path.exists(tmp_path / "out" / shipped)
    assert os.path.exists(tmp_path / "out" / "report.json")
