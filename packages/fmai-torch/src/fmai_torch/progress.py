"""A small progress indicator for slow steps (loading or converting a model)."""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import TextIO

__all__ = ["Progress"]

_FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class Progress:
    """Show what is happening and the seconds spent, on stderr, while a block runs.

    On a terminal a spinner line is redrawn ten times a second; elsewhere (a pipe, a log)
    one line is printed when the step starts and one when it ends. A disabled `Progress`
    prints nothing, so library code can always use one.

    Args:
        message: What is being done (`"loading SmolLM2-135M-Instruct"`).
        enabled: Print anything at all.
        stream: Where to print (default `sys.stderr`).

    Example:
        ```python
        with Progress("converting the model") as p:
            p.update("dequantizing the weights")
            ...
        ```
    """

    def __init__(self, message: str, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.message = message
        self.detail = ""
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = 0.0
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def update(self, detail: str) -> None:
        """Describe the current sub-step."""
        self.detail = detail
        if self.enabled and not self.tty:
            print(f"fmai: {self.message}: {detail}", file=self.stream, flush=True)

    def _line(self, frame: str) -> str:
        elapsed = time.perf_counter() - self.start
        detail = f" ({self.detail})" if self.detail else ""
        return f"\r\033[2K{frame} {self.message}{detail} {elapsed:.1f}s"

    def _spin(self) -> None:
        i = 0
        while not self._stop.wait(0.1):
            self.stream.write(self._line(_FRAMES[i % len(_FRAMES)]))
            self.stream.flush()
            i += 1

    def __enter__(self) -> Progress:
        self.start = time.perf_counter()
        if not self.enabled:
            return self
        if self.tty:
            self._thread = threading.Thread(target=self._spin, name="fmai-progress", daemon=True)
            self._thread.start()
        else:
            print(f"fmai: {self.message}...", file=self.stream, flush=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.seconds = time.perf_counter() - self.start
        if not self.enabled:
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.stream.write("\r\033[2K")
        status = "failed" if exc_type is not None else "done"
        print(
            f"fmai: {self.message}: {status} in {self.seconds:.1f}s", file=self.stream, flush=True
        )
