"""What `python -m lab run` shows in the terminal: one line when a stage starts, one live progress
line while it works, one line when it ends. Everything else a stage prints (its messages, library
warnings, the notebook kernel's own chatter) goes to the stage's log file in the report folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from pathlib import Path

from lab.core.progress import PROGRESS_FILE, progress_line, read_progress


class Console:
    """The terminal of a batch run. While a stage runs, file descriptors 1 and 2 (this process's
    and the kernel's it starts) point at the stage's log; the console writes to copies of the
    terminal's descriptors."""

    def __init__(self) -> None:
        self.out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
        self.err = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1, encoding="utf-8")
        self.tty = self.out.isatty()

    def say(self, text: str, *, error: bool = False) -> None:
        (self.err if error else self.out).write(text + "\n")

    @contextlib.contextmanager
    def captured(self, log: Path, progress: Path):
        """Route the stage's output to `log` and show its progress file live until the block ends."""
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        progress.unlink(missing_ok=True)
        os.environ[PROGRESS_FILE] = str(progress)
        stop = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(progress, stop), daemon=True)
        with open(log, "a", encoding="utf-8") as f:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            watcher.start()
            try:
                yield f
            finally:
                stop.set()
                watcher.join()
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                for fd in saved:
                    os.close(fd)
                os.environ.pop(PROGRESS_FILE, None)
                progress.unlink(missing_ok=True)

    def _watch(self, progress: Path, stop: threading.Event) -> None:
        """A live line on a terminal; in a log or pipe, a line a minute while the work changes."""
        shown, last_print = "", time.time()
        width = shutil.get_terminal_size((100, 20)).columns - 1
        while not stop.wait(0.5):
            bars = read_progress(progress)
            if not bars:
                continue
            text = "    " + progress_line(bars, width - 4)
            if text == shown:
                continue
            if self.tty:
                self.out.write("\r\x1b[K" + text)
                self.out.flush()
                shown = text
            elif time.time() - last_print >= 60:
                self.say(text)
                shown, last_print = text, time.time()
        if self.tty and shown:
            self.out.write("\r\x1b[K")
            self.out.flush()
