"""SIGINT / SIGTERM during training: stop at once while the step computes, never while it changes
state (the stop rules are in the docstring of minisdit/training/trainer.py)."""
from __future__ import annotations

import contextlib
import signal
import threading


class StopSignals:
    """SIGINT / SIGTERM handling for the training loop (see the module docstring).

    Outside ``deferred()`` a signal raises KeyboardInterrupt at once; inside, it is remembered and
    raised when the block ends.  After ``finishing()`` signals are only remembered (the final save
    must not be cut short).  Handlers are installed only in the main thread (Python allows no
    other) and put back by ``restore()``.
    """

    def __init__(self):
        self.signal_number = None
        self._depth = 0
        self._finishing = False
        self._previous = {}

    def install(self):
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def restore(self):
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _handle(self, number, frame):
        self.signal_number = number
        if self._depth == 0 and not self._finishing:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self):
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self.signal_number is not None and self._depth == 0 and not self._finishing:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def held(self):
        """A block in which a signal is only remembered, also at its end (the mpi and nccl ranks
        decide together, in the step's exchange, whether to stop: minisdit/training/trainer.py)."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1

    def finishing(self):
        self._finishing = True

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as shells report it; 130 (SIGINT) for a plain KeyboardInterrupt."""
        return 128 + int(self.signal_number or signal.SIGINT)

    @property
    def name(self) -> str:
        return signal.Signals(self.signal_number).name if self.signal_number else "KeyboardInterrupt"
