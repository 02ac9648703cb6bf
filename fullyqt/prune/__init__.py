"""Block movement pruning (Lagunas et al. 2021): learned block masks, then a compacted model."""
