"""The compile pipeline, one pass per module, in order:

load -> normalize -> check -> propagate -> keygen -> fold -> boundary -> emit -> verify

Analysis passes (check, propagate, keygen) leave the model unchanged and store
their results on the shared :class:`eeonnx.compiler.pipeline.Compilation`; transform
passes (normalize, fold) are onnx_ir in-place passes on the model.
"""
