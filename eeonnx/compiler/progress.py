"""Progress on stderr for long compiles: tensors and bytes written.

Silent unless enabled (the CLI enables it when stderr is a terminal and
--quiet is not given); redraws at most ten times a second.
"""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total_bytes: int, stream=None):
        self.total_bytes = max(1, total_bytes)
        self.done_bytes = 0
        self.count = 0
        self.stream = stream or sys.stderr
        self._last = 0.0

    def tensor_written(self, tensor, info) -> None:
        """onnx_ir save callback: one tensor goes to external data."""
        self.count += 1
        self.done_bytes += tensor.nbytes
        now = time.monotonic()
        if now - self._last > 0.1 or self.count == info.total:
            self._last = now
            self.stream.write(f"\r  writing weights: {self.count}/{info.total} tensors, "
                              f"{self.done_bytes / 1e9:.2f}/{self.total_bytes / 1e9:.2f} GB")
            self.stream.flush()

    def close(self) -> None:
        if self.count:
            self.stream.write("\n")
            self.stream.flush()
