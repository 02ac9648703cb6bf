"""Evaluation: honest BLEU (detokenized hypotheses against raw references)."""
