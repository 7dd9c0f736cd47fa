"""Preemption: SIGTERM, SIGINT and SIGUSR1 become a request that the training loop honours between two steps.

SLURM (on preemption or with ``--signal``), Kubernetes and torchrun send SIGTERM and wait a while before SIGKILL;
stopping at a step boundary leaves the last epoch's checkpoint as it was, so ``--resume=auto`` continues exactly.
A second Ctrl-C stops at once.
"""
from __future__ import annotations

import signal
from types import FrameType

__all__ = ["Preempted", "StopRequests", "EXIT_PREEMPTED"]

# sysexits.h's EX_TEMPFAIL: "try again later", what a requeue wrapper checks for.
EXIT_PREEMPTED = 75


class Preempted(Exception):
    """A stop signal arrived and the loop stopped at a step boundary; the message says how to continue."""

    def __init__(self, signum: int, message: str = "") -> None:
        self.signum = signum
        super().__init__(message or f"stopped by {signal.Signals(signum).name}")


class StopRequests:
    """While active (a ``with`` block), remembers the first stop signal; ``check`` raises ``Preempted`` after it."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequests":
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def check(self, where: str) -> None:
        """Raise ``Preempted`` naming ``where`` when a stop signal has arrived."""
        if self.signum is not None:
            raise Preempted(self.signum, f"stopped by {signal.Signals(self.signum).name} {where}")
