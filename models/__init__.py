"""Demo/test model builders (see README.md). Not part of the installed eeonnx package."""
