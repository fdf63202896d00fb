"""The compiler (holds the secret): layout algebra (``layout``, ``values``), op
rules (``rules/``), one pass per module (``passes/``), the pipeline, keys, and
the compile/check reports."""
