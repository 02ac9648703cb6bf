"""Benchmark: train float and compressed variants, translate, score, and report."""
