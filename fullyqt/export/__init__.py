"""Exports of a trained fullyqt model: packed integer weights, a stock fairseq checkpoint, and a
CTranslate2 model directory (``fullyqt-export``)."""
