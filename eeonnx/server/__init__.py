"""The server half (never sees a secret): the ONNX Runtime session that runs
``server/model.onnx``. Nothing under this package may import the compiler,
the client or anything that reads a key or a client file."""
