"""Graceful shutdown: on SIGTERM (or Ctrl-C) the server keeps listening but answers new
requests with 503 (and ``/ready`` with 503), lets running requests finish for up to
``server.drain_timeout_s``, ends what is left with 503 ``shutting_down`` (an error event in a
stream), then exits with status 0.
A second signal exits at once.
"""

from __future__ import annotations

import logging
import time
from types import FrameType

import uvicorn

from infer_core.server.errors import SHUTDOWN_ERROR
from infer_core.server.state import ServerState

log = logging.getLogger("infer.server")


class Drain:
    def __init__(self, state: ServerState, timeout_s: float) -> None:
        self.state = state
        self.timeout_s = timeout_s
        self.deadline: float | None = None
        self._failed = False

    @property
    def started(self) -> bool:
        return self.deadline is not None

    def begin(self) -> None:
        self.state.draining = True
        self.deadline = time.monotonic() + self.timeout_s
        log.info("draining: %d requests running; new requests get 503; exit within %.0f s",
                 self.state.engine.num_unfinished, self.timeout_s)

    def finished(self) -> bool:
        """True once nothing runs any more, or the deadline passed (what still ran is then
        ended with an error)."""
        if self.state.engine.num_unfinished == 0:
            return True
        if self.deadline is not None and time.monotonic() >= self.deadline:
            if not self._failed:
                log.warning("drain timeout: ending %d requests", self.state.engine.num_unfinished)
                self.state.engine.fail_unfinished(SHUTDOWN_ERROR)
                self._failed = True
            return True
        return False


class GracefulServer(uvicorn.Server):
    """``uvicorn.Server`` whose first exit signal starts a :class:`Drain` instead of closing
    the listening socket; uvicorn's own shutdown runs once the drain is over."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain.started:
            self.should_exit = self.force_exit = True
        else:
            self.drain.begin()

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        return self.drain.started and self.drain.finished()
