"""Students of another depth than the model they start from: which of its layers initialise
theirs (a deep-encoder, shallow-decoder student for fast decoding, Kasai et al. 2021)."""
