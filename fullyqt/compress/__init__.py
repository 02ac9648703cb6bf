"""fullyqt-compress: a trained float model to a shipped one by a named recipe (the stages run
with the real fairseq-train and fullyqt-export; a report compares the result with the input and
with CTranslate2's int8 conversion of it)."""
