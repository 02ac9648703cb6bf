"""The user-facing documents: the options reference is what the code registers, every link
resolves, and the README stays short."""
import glob
import json
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


# a measured figure: a ratio (0.27x), a signed difference (+1.63), a BLEU score, a speed
FIGURE = re.compile(r"\b\d+(\.\d+)?x\b|[+\u2212-]\d+\.\d+|\d+(\.\d+)? BLEU|\d[\d,]* tok(en)?s/s")


def outside_generated_blocks(text: str) -> str:
    """``text`` without its generated blocks (``<!-- NAME:begin -->`` to ``<!-- NAME:end -->``)
    and code blocks."""
    text = re.sub(r"<!-- ([\w-]+):begin -->.*?<!-- \1:end -->", "", text, flags=re.S)
    return re.sub(r"```.*?```", "", text, flags=re.S)


def test_every_figure_the_readme_quotes_is_generated_from_a_run():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        prose = outside_generated_blocks(f.read())
    assert [m.group(0) for m in FIGURE.finditer(prose)] == []
    assert FIGURE.search("int8 at 0.27x the bytes, +1.63 [+1.17, +2.15]")  # the pattern bites


def test_the_readme_stays_short():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        assert len(f.read().splitlines()) <= 350


def test_the_readme_results_regenerate_from_the_main_job_kept_in_docs():
    """Each generated README block is, line for line, what its section makes of the newest
    main-job results file kept in docs/results/ (the run the README describes)."""
    from fullyqt.bench.readme import SECTIONS, markers

    runs = sorted(glob.glob(os.path.join(REPO, "docs", "results", "*-main-job.json")))
    assert runs, "no main-job results file in docs/results/"
    with open(runs[-1], encoding="utf-8") as f:
        data = json.load(f)
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    for name, block in SECTIONS.items():
        begin, end = markers(name)
        held = readme.split(begin)[1].split(end)[0].strip("\n").splitlines()
        assert held == block(data), name
    assert data["meta"]["commit"] in readme
