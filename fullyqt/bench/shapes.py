"""The model shapes the speed benchmarks build: layers per stack, width, FFN size, heads, and the
joint vocabulary of data of that size (random-weight timings; training reads the data's own)."""
SHAPES = {
    "tiny": dict(layers=1, dim=32, ffn=64, heads=2, vocab=1000),
    "cpu-small": dict(layers=3, dim=128, ffn=512, heads=4, vocab=8000),
    "base": dict(layers=6, dim=512, ffn=2048, heads=8, vocab=32000),
    "big": dict(layers=6, dim=1024, ffn=4096, heads=16, vocab=32000),
}
