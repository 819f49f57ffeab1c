"""A one-line progress bar on standard error: chunks done, configurations per second, time left."""

from __future__ import annotations

import sys
import time


class ProgressBar:
    def __init__(self, chunks: int, configurations: int, enabled: bool, stream=None):
        self.chunks, self.configurations = chunks, configurations
        self.enabled = enabled
        self.stream = sys.stderr if stream is None else stream
        self.start = time.perf_counter()
        self.done_chunks = self.done_configurations = 0
        self.run_configurations = 0  # simulated in this process (not reused from an earlier run)

    def update(self, configurations: int, reused: bool = False):
        self.done_chunks += 1
        self.done_configurations += configurations
        if not reused:
            self.run_configurations += configurations
        if self.enabled:
            self.stream.write("\r" + self.line())
            self.stream.flush()

    def line(self) -> str:
        seconds = time.perf_counter() - self.start
        rate = self.run_configurations / seconds if seconds > 0 else 0.0
        left = self.configurations - self.done_configurations
        eta = f"{left / rate:,.0f} s left" if rate > 0 and left else ""
        width = 24
        filled = round(width * self.done_chunks / max(self.chunks, 1))
        return (f"[{'#' * filled}{'.' * (width - filled)}] {self.done_chunks}/{self.chunks} "
                f"chunks, {self.done_configurations:,}/{self.configurations:,} configurations, "
                f"{rate:,.1f}/s {eta}").rstrip()

    def close(self):
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
