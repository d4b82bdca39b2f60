"""The listener's accept loop on a stand-in loop and socket: it drains the queue, skips
connections reset while queued, pauses (instead of spinning) when the process is out
of descriptors, and raises anything else."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from decisioning.listener import ACCEPT_RETRY_S, AcceptAll


class _Loop:
    def __init__(self) -> None:
        self.readers: dict[int, Any] = {}
        self.later: list[tuple[float, Any]] = []
        self.tasks: list[Any] = []

    def add_reader(self, fd: int, cb: Any) -> None:
        self.readers[fd] = cb

    def remove_reader(self, fd: int) -> bool:
        return self.readers.pop(fd, None) is not None

    def call_later(self, delay: float, cb: Any) -> Any:
        self.later.append((delay, cb))
        return _Timer()

    def create_task(self, coro: Any) -> Any:
        coro.close()                       # the hand-over itself is tested over sockets
        self.tasks.append(coro)
        return _Task()


class _Timer:
    def cancel(self) -> None:
        pass


class _Task:
    def add_done_callback(self, cb: Any) -> None:
        pass


class _Sock:
    def __init__(self, results: list[Any]) -> None:
        self.results = results
        self.backlog = 0
        self.closed = False

    def setblocking(self, flag: bool) -> None:
        assert flag is False

    def listen(self, backlog: int) -> None:
        self.backlog = backlog

    def fileno(self) -> int:
        return 7

    def accept(self) -> tuple[Any, Any]:
        item = self.results.pop(0) if self.results else BlockingIOError()
        if isinstance(item, BaseException):
            raise item
        return item, ("127.0.0.1", 1)

    def close(self) -> None:
        self.closed = True


def _listener(results: list[Any]) -> tuple[AcceptAll, _Loop, _Sock]:
    loop, sock = _Loop(), _Sock(results)
    return AcceptAll(loop, sock, object, backlog=64), loop, sock  # type: ignore[arg-type]


def test_one_wake_up_accepts_every_queued_connection() -> None:
    listener, loop, sock = _listener(["a", "b", ConnectionAbortedError(), "c"])
    assert sock.backlog == 64 and 7 in loop.readers
    loop.readers[7]()
    assert len(loop.tasks) == 3            # the reset one is skipped; the queue is empty
    listener.close()
    assert sock.closed and 7 not in loop.readers


def test_out_of_descriptors_pauses_accepting_then_resumes() -> None:
    listener, loop, _ = _listener(["a", OSError(errno.EMFILE, "Too many open files")])
    loop.readers[7]()
    assert len(loop.tasks) == 1 and 7 not in loop.readers
    delay, resume = loop.later[0]
    assert delay == ACCEPT_RETRY_S
    resume()
    assert 7 in loop.readers


def test_other_accept_errors_are_raised() -> None:
    _, loop, _ = _listener([OSError(errno.EBADF, "Bad file descriptor")])
    with pytest.raises(OSError, match="Bad file descriptor"):
        loop.readers[7]()
