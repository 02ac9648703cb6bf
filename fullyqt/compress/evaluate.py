"""Score a compressed model against what the user had: the input float model in fairseq, the
input converted by CTranslate2 to int8 (the zero-effort alternative), and the result's shipped
files, all on the test split in one run with the same threads."""
import os
from dataclasses import dataclass
from typing import Callable, List, Optional

from ..eval.decode import ct2_decode, translate
from ..eval.significance import compare
from ..eval.size import model_size, tree_bytes


@dataclass
class System:
    """One decoded model of the report."""
    name: str
    engine: str  # "fairseq" or "ctranslate2"
    path: str  # the file or folder decoded
    bleu: float
    tokens_per_second: float
    bytes: int  # on disk
    params: Optional[int] = None
    delta: Optional[float] = None  # BLEU minus the input's
    interval: Optional[List[float]] = None  # 95% paired-bootstrap interval of ``delta``
    candidates: Optional[float] = None  # with a vocabulary map: target tokens a batch keeps


def test_sources(data: str, src: str, tgt: str) -> List[List[str]]:
    """The test split's source sentences as the model's tokens (no end of sentence)."""
    from fairseq.data import Dictionary, data_utils

    dictionary = Dictionary.load(os.path.join(data, f"dict.{src}.txt"))
    dataset = data_utils.load_indexed_dataset(os.path.join(data, f"test.{src}-{tgt}.{src}"),
                                              dictionary)
    eos = dictionary.eos()
    return [dictionary.string(t[:-1] if len(t) and t[-1] == eos else t).split()
            for t in (dataset[i] for i in range(len(dataset)))]


def detokenizer(post_process: Optional[str]) -> Callable[[List[str]], str]:
    """fairseq's own post-processing of a token list (what fairseq-generate's ``D-`` lines hold)."""
    from fairseq.data.data_utils import post_process as fairseq_post_process

    return lambda tokens: fairseq_post_process(" ".join(tokens), post_process or "none")


def input_ctranslate2(checkpoint: str, data: str, out: str, src: str, tgt: str,
                      vmap: bool) -> str:
    """CTranslate2 int8 of the input float model (converted once), with the vocabulary map of
    the training data when ``vmap``."""
    if not os.path.exists(os.path.join(out, "model.bin")):
        from ..checkpoint import arch_of, read_checkpoint
        from ..export.vmap import VmapSize, build_vmap

        if str(arch_of(read_checkpoint(checkpoint))).startswith("fullyqt"):
            from ..export.cli import export

            export(checkpoint, "ctranslate2", out, force=True, data=data,
                   vmap=VmapSize() if vmap else None)
        else:
            from ..export.ctranslate2 import convert

            os.makedirs(out + ".vmap", exist_ok=True)
            words = build_vmap(data, src, tgt, os.path.join(out + ".vmap", "vmap.txt")) \
                if vmap else None
            convert(checkpoint, data, out, src, tgt, vmap=words)
    return out


def evaluate(source_path: str, final: str, shipped: dict, data: str, workdir: str, *,
             languages, threads: int, post_process: Optional[str], reference: Optional[str],
             bits: Optional[int], vmap: bool = False, say=print) -> List[System]:
    """Decode the input and the result in fairseq and in CTranslate2 (also with the vocabulary
    map, when ``vmap``); ``shipped`` maps the recipe's export formats to their paths."""
    src, tgt = languages
    os.makedirs(workdir, exist_ok=True)
    systems = []

    def fairseq(name, path, size_of, bits_of):
        say(f"evaluating: {name} (fairseq-generate)")
        dec = translate(path, data, reference, os.path.join(workdir, f"{name}.generate.txt"),
                        threads=threads, post_process=post_process)
        size = model_size(size_of, bits_of)
        systems.append(System(name, "fairseq", path, dec.bleu, dec.tokens_per_second,
                              tree_bytes(path) if path != size_of else 4 * size["params"],
                              size["params"]))
        return dec

    base = fairseq("input", source_path, source_path, None)
    refs = base.references
    sources = test_sources(data, src, tgt)
    detok = detokenizer(post_process)
    hyps = {"input": base.hypotheses}

    def ctranslate2(name, model_dir):
        for mapped in (False, True) if vmap else (False,):
            label = name + (" + vmap" if mapped else "")
            say(f"evaluating: {label} (CTranslate2, one batch per thread, {threads} "
                f"thread{'s' if threads > 1 else ''})")
            res = ct2_decode(model_dir, sources, refs, detok, threads=threads, use_vmap=mapped)
            systems.append(System(label, "ctranslate2", model_dir, res["bleu"],
                                  res["tokens_per_second"], res["model_bytes"]))
            if mapped:
                from ..export.vmap import mean_candidates

                systems[-1].candidates = mean_candidates(
                    os.path.join(model_dir, "vmap.txt"),
                    [sources[i:i + 32] for i in range(0, len(sources), 32)])
            hyps[label] = res["hypotheses"]

    try:
        ctranslate2("input → CTranslate2 int8",
                    input_ctranslate2(source_path, data, os.path.join(workdir, "input-ct2" + ("-vmap" if vmap else "")),
                                      src, tgt, vmap))
    except ImportError:
        say("CTranslate2 is not installed (pip install ctranslate2): its rows are left out")
    integer = next((shipped[f] for f in ("int8", "int6", "int4") if f in shipped), None)
    dec = fairseq("result", integer or final, final, bits)
    hyps["result"] = dec.hypotheses
    if "ctranslate2" in shipped and any(s.engine == "ctranslate2" for s in systems):
        ctranslate2("result → CTranslate2", shipped["ctranslate2"])
    for s in systems:
        if s.name != "input":
            diff = compare(hyps[s.name], hyps["input"], refs)
            s.delta, s.interval = diff.delta, [diff.low, diff.high]
    return systems
