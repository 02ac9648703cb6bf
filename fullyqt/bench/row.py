"""One row of a benchmark's results table: a trained variant, a shipped form of one (an export,
a CTranslate2 conversion) or a model a recipe shipped.  ``results.json`` stores each as an object
with these fields; a field is None where it was not measured for that kind of row."""
from dataclasses import asdict, dataclass, fields
from typing import Dict, List, Optional

KINDS = ("trained", "deploy", "recipe")


@dataclass
class Row:
    variant: str  # the name in the table; shipped forms: "VARIANT → CT2 int8", "VARIANT int8 native"
    description: str  # what the model is, one sentence
    bleu: float  # sacrebleu on detokenized hypotheses against the raw references
    model_bytes: int  # trained: the deployable size its bits give; exports: bytes on disk
    kind: str = "trained"  # one of KINDS
    bits: Optional[int] = None  # weight bits; None in float
    signature: Optional[str] = None  # sacrebleu's signature of the score
    params: Optional[int] = None  # parameters, tied tensors once
    tokens_per_second: Optional[float] = None  # target tokens (with EOS) per second of decoding
    decode_seconds: Optional[float] = None
    translated: Optional[int] = None  # sentences with a non-empty hypothesis
    scored: Optional[int] = None  # sentences the BLEU covers
    baseline: Optional[str] = None  # the row it is judged against (its control)
    vs_control_interval: Optional[List[float]] = None  # 95% paired-bootstrap interval vs baseline
    teacher: Optional[str] = None  # the variant it was distilled from
    teacher_share: Optional[float] = None  # the teacher's share of update time
    num_updates: Optional[int] = None
    sec_per_update: Optional[float] = None  # median seconds per update
    train_minutes: Optional[float] = None  # wall time of its training in this run
    ffn_attn_params: Optional[int] = None  # numbers in the FFN and attention matrices (or factors)
    embed_params: Optional[int] = None  # numbers in the embeddings and output projection
    kron_layers: Optional[str] = None  # --kron-layers of a Kronecker-factorized model
    layer_params: Optional[int] = None  # a pruned model's layer parameters
    dense: Optional[str] = None  # the dense model a pruned one was compacted from
    dense_layer_params: Optional[int] = None
    heads: Optional[Dict[str, List[int]]] = None  # heads kept per layer: enc, dec-self, dec-cross
    ffn: Optional[Dict[str, List[int]]] = None  # FFN units kept per layer: enc, dec
    same_as_fake_quant: Optional[float] = None  # integer export: share of translations
    #   identical to its fake-quant checkpoint's (exact evaluation)
    float_matmul_same_as_fake_quant: Optional[float] = None  # the same share with float matmuls
    float_matmul_bleu: Optional[float] = None  # BLEU of that float-matmul decode
    recipe: Optional[str] = None  # the fullyqt-compress recipe that made it
    candidates: Optional[float] = None  # target tokens a batch keeps under a vocabulary map
    goals: Optional[dict] = None  # the recipe's goals as its report judged them
    size_vs_float: Optional[float] = None  # model_bytes against the float row's (the report's)
    time_per_update_vs_float: Optional[float] = None  # sec_per_update against float's

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"row {self.variant!r}: kind {self.kind!r}: allowed: "
                             f"{', '.join(KINDS)}")

    @property
    def trained(self) -> bool:
        return self.kind == "trained"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Row":
        """A row of a results file; a field this version does not know is named."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"row {data.get('variant')!r}: unknown fields {unknown}")
        try:
            return cls(**data)
        except TypeError as e:  # a required field absent
            raise ValueError(f"row {data.get('variant')!r}: {e}") from None


def by_variant(rows: List[Row]) -> Dict[str, Row]:
    return {r.variant: r for r in rows}
