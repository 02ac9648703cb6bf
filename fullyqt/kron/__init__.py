"""Kronecker-factorized layers (KroneckerBERT): weights as sums of Kronecker products."""
