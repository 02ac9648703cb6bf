"""The user-facing documents: the options reference is what the code registers, every link
resolves, and the README stays short."""
import os
import re
import subprocess

from conftest import BIN, REPO

DOCS = os.path.join(REPO, "docs")


def _markdown_files():
    yield os.path.join(REPO, "README.md")
    for root, _, names in os.walk(DOCS):
        yield from (os.path.join(root, n) for n in sorted(names) if n.endswith(".md"))


def test_the_options_reference_is_what_fullyqt_options_prints():
    proc = subprocess.run([os.path.join(BIN, "fullyqt-options"), "--markdown"],
                          capture_output=True, text=True, check=True)
    with open(os.path.join(DOCS, "options.md"), encoding="utf-8") as f:
        assert f.read() == proc.stdout, "regenerate: fullyqt-options --markdown > docs/options.md"
    # every option a feature registers is there, e.g. one of each feature and the criterion
    for option in ("--quant-bits", "--prune-method", "--kron-layers", "--teacher-path"):
        assert f"`{option} " in proc.stdout or f"`{option}`" in proc.stdout, option


def test_every_relative_link_resolves():
    broken = []
    for path in _markdown_files():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            if not os.path.exists(os.path.join(os.path.dirname(path), target)):
                broken.append(f"{os.path.relpath(path, REPO)} -> {target}")
    assert not broken, broken


def test_the_readme_stays_short():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        assert len(f.read().splitlines()) <= 350
