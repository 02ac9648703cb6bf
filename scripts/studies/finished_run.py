"""The command line the report-section studies share: a finished benchmark's --out folder."""
import argparse
import json
import os


def parse(script: str, doc: str, argv=None, threads: bool = True, options=None):
    """(parser, arguments, the folder's results.json) of ``python scripts/studies/SCRIPT OUT
    [--threads N]`` (``options``: a function that adds the script's own to the parser); a
    folder without results.json is refused in one line."""
    p = argparse.ArgumentParser(prog=f"python scripts/studies/{script}",
                                description=doc.splitlines()[0])
    p.add_argument("out", help="a finished benchmark's --out folder (with results.json)")
    if threads:
        p.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 4))
    if options is not None:
        options(p)
    a = p.parse_args(argv)
    path = os.path.join(a.out, "results.json")
    if not os.path.isfile(path):
        p.error(f"{a.out}: no results.json (not a finished benchmark run)")
    with open(path, encoding="utf-8") as f:
        return p, a, json.load(f)
