"""A progress bar: tqdm when it is installed, else a plain one on stderr."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``update()`` once per finished request; ``close()`` at the end. Disabled: does nothing."""

    def __init__(self, total: int, desc: str, *, enabled: bool = True, stream: TextIO | None = None):
        self.total = total
        self.desc = desc
        self.enabled = enabled
        self.done = 0
        self._stream = stream or sys.stderr
        self._tqdm = None
        self._last = 0.0
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            self._draw()
        else:
            self._tqdm = tqdm(total=total, desc=desc, unit="req", file=self._stream, leave=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.update(n)
            return
        now = time.monotonic()
        if now - self._last >= 0.2 or self.done >= self.total:
            self._draw()
            self._last = now

    def _draw(self) -> None:
        width = 30
        filled = width * self.done // self.total if self.total else width
        bar = "#" * filled + "." * (width - filled)
        self._stream.write(f"\r{self.desc} [{bar}] {self.done}/{self.total}")
        self._stream.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.close()
        else:
            self._draw()
            self._stream.write("\n")
            self._stream.flush()
