#!/usr/bin/env bash
# Tiny end-to-end demo on a generated reversal task: train float and 8-bit FullyQT with
# fairseq-train, translate with fairseq-generate, score with sacrebleu.  About 3 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
out=${1:-runs/demo}
mkdir -p "$out"
python -m fullyqt.data.synthetic "$out/raw"
fairseq-preprocess --source-lang src --target-lang tgt --trainpref "$out/raw/train" \
  --validpref "$out/raw/valid" --testpref "$out/raw/test" --destdir "$out/bin" \
  --joined-dictionary --workers 1 > "$out/preprocess.log" 2>&1
common=(--user-dir fullyqt --arch fullyqt_transformer_tiny --encoder-embed-dim 64
  --decoder-embed-dim 64 --encoder-ffn-embed-dim 128 --decoder-ffn-embed-dim 128
  --encoder-layers 2 --decoder-layers 2 --share-all-embeddings --optimizer adam
  --adam-betas '(0.9,0.98)' --lr 3e-3 --lr-scheduler inverse_sqrt --warmup-updates 100
  --max-tokens 2000 --max-update 400 --dropout 0.1 --criterion label_smoothed_cross_entropy
  --label-smoothing 0.1 --no-progress-bar --cpu --disable-validation --no-epoch-checkpoints)
for variant in float 8bit; do
  flags=(--quant-bits 8); [ "$variant" = float ] && flags=(--no-quant)
  echo "== training $variant"
  fairseq-train "$out/bin" "${common[@]}" "${flags[@]}" --save-dir "$out/$variant" \
    > "$out/$variant.train.log" 2>&1
  fairseq-generate "$out/bin" --user-dir fullyqt --path "$out/$variant/checkpoint_last.pt" \
    --beam 5 --batch-size 64 --required-batch-size-multiple 1 --cpu > "$out/$variant.gen.txt" 2> "$out/$variant.gen.log"
  echo -n "$variant: "
  python -m fullyqt.eval.bleu "$out/$variant.gen.txt" "$out/raw/test.tgt"
done
