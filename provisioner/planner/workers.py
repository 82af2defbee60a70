"""The planner's second core: independent parts of one round's work run side by side in worker processes.

Costing every group's offerings is independent per group and pure (and so are a large LP's two roundings,
`solve._lp_repair`), so `Workers.map` hands the parts out to this process and to its workers as each
finishes one. A worker is a Python process of its own, started on first use and kept for the next rounds,
fed pickled parts through a pipe. Not a fork of the
broker: forking a large process copies its page tables and, on a virtual machine, makes it pay a page
fault for every page it or the child writes afterwards (in a 5 GB benchmark process that ate everything
the second core gained); and not multiprocessing's fork server, whose workers import the parent's main
script again (an unguarded script then plans in every worker).

The planner stays deterministic: a part's result does not depend on where it ran. A worker that fails,
dies or hangs has its part redone here, with the same result, so a worker can cost time but never
change or lose a plan; `redone` counts those parts, and a worker that failed is replaced next round.
A worker ends when its pipe closes: when `close()` is called or this process ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from itertools import pairwise
from typing import IO, Any, TypeVar

from provisioner.planner.gc_pause import gc_paused

T = TypeVar("T")
R = TypeVar("R")

# A worker still on its part this many times as long as a part takes here on average (and at least
# MIN_WAIT seconds) after this process ran out of parts is taken for hung: killed, its part redone here.
PATIENCE = 10.0
MIN_WAIT = 60.0
_HEADER = struct.Struct("!Q")  # the length of the pickle that follows
_PARENT = "PROVISIONER_WORKER_PARENT"  # set: the worker dies with this process (its pid)
_PR_SET_PDEATHSIG = 1


class Workers:
    """`count` processes for a round's parts: this one and `count - 1` kept workers.

    `fn` given to `map` must be a module-level function (it is pickled by name) and the parts picklable."""

    def __init__(self, count: int = 1) -> None:
        if count < 1:
            raise ValueError(f"workers: must be at least 1, got {count}")
        self.count = count
        self.redone = 0  # parts a worker did not deliver, done here instead
        self._workers: list[_Worker | None] = [None] * (count - 1)

    def map(self, fn: Callable[[T], R], parts: Sequence[T]) -> list[R]:
        """[fn(part) for part in parts]. This process and each worker (fed by a thread of its own, which
        waits on the pipe without holding the GIL) take the next part as they finish one, so a slower
        worker or a dearer part does not hold the others up: give more parts than processes."""
        if self.count == 1 or len(parts) < 2:
            return [fn(part) for part in parts]
        queue = _Queue(len(parts))
        results: dict[int, R] = {}
        handed_back: list[int] = []  # parts a worker did not deliver
        feeders = [
            threading.Thread(target=self._feed, args=(k, fn, parts, queue, results, handed_back), daemon=True)
            for k in range(self.count - 1)
        ]
        for feeder in feeders:
            feeder.start()
        t0, mine = time.monotonic(), 0
        try:
            while (i := queue.take()) is not None:
                results[i] = fn(parts[i])
                mine += 1
        except BaseException:  # no worker left computing for a round that is over
            queue.close()
            for k, feeder in enumerate(feeders):
                self._kill(k)  # not a polite close: its feeder may be reading the pipe
                feeder.join()
            raise
        # a worker still on its part this many times as long as a part takes here is taken for hung
        deadline = time.monotonic() + max(MIN_WAIT, PATIENCE * (time.monotonic() - t0) / max(mine, 1))
        for k, feeder in enumerate(feeders):
            feeder.join(max(0.0, deadline - time.monotonic()))
            if feeder.is_alive():
                self._kill(k)  # its feeder then reads the end of the pipe and hands the part back
                feeder.join()
        for i in handed_back:
            self.redone += 1
            results[i] = fn(parts[i])
        return [results[i] for i in range(len(parts))]

    def close(self) -> None:
        for k in range(len(self._workers)):
            worker, self._workers[k] = self._workers[k], None
            if worker is not None:
                worker.stop()

    def _feed(
        self,
        k: int,
        fn: Callable[[T], R],
        parts: Sequence[T],
        queue: _Queue,
        results: dict[int, R],
        handed_back: list[int],
    ) -> None:
        """Worker k's thread: its parts down the pipe, their results back, until the queue is empty or the
        worker fails (its part is handed back, the worker replaced next round)."""
        while (i := queue.take()) is not None:
            found = None
            try:
                worker = self._workers[k] or _Worker()
                self._workers[k] = worker
                found = worker.ask(pickle.dumps((fn, parts[i]), protocol=pickle.HIGHEST_PROTOCOL))
            # no process, a part or result that cannot travel, the pipe closed under it (the round was
            # stopped): whatever it is, the part is done here, which raises a real error there
            except Exception:
                found = None
            if found is None:
                handed_back.append(i)
                failed, self._workers[k] = self._workers[k], None
                if failed is not None:
                    failed.stop()
                return
            results[i] = found[0]

    def _kill(self, k: int) -> None:
        worker = self._workers[k]
        if worker is not None:
            worker.process.kill()


class _Queue:
    """The next part to take, for this process and the feeders."""

    def __init__(self, size: int) -> None:
        self._next, self._size = 0, size
        self._lock = threading.Lock()

    def take(self) -> int | None:
        with self._lock:
            if self._next >= self._size:
                return None
            self._next += 1
            return self._next - 1

    def close(self) -> None:
        with self._lock:
            self._next = self._size


class _Worker:
    """One kept worker process."""

    def __init__(self, *, die_with_parent: bool = False) -> None:
        """`die_with_parent`: killed by the kernel when the thread that started it ends, busy or not (a
        worker otherwise ends when its pipe closes, once its part is done: never, for a hung HiGHS run)."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        if die_with_parent:
            env[_PARENT] = str(os.getpid())
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from provisioner.planner.workers import serve; serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self.error: str | None = None  # the last part's error, when it raised in the worker

    def ask(self, request: bytes) -> tuple[Any] | None:
        """The result of a pickled (fn, part) (in a 1-tuple), or None when the worker failed or died."""
        return self.ask_within(request, None)

    def ask_within(self, request: bytes, seconds: float | None) -> tuple[Any] | None:
        """`ask`, but a worker with no answer after `seconds` (None: no limit) is killed, and None returned.
        `error` then tells a part that raised there (its message) from a worker that died or was killed."""
        self.error = None
        _write(_pipe(self.process.stdin), request)
        answers = _pipe(self.process.stdout)
        # one answer per request, so nothing is buffered ahead: the pipe is readable once the answer starts
        if seconds is not None and not select.select([answers], [], [], max(seconds, 0.0))[0]:
            self.process.kill()
            self.process.wait()
            return None
        answer = _read(answers)
        if answer is None:  # it died, or was killed as hung
            return None
        status, result = pickle.loads(answer)
        if status != "ok":
            self.error = str(result)
            return None
        return (result,)

    def stop(self) -> None:
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):  # its unread request: the worker is gone
                    pipe.close()
        try:
            self.process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _pipe(pipe: IO[bytes] | None) -> IO[bytes]:
    assert pipe is not None  # both ends are PIPE
    return pipe


def _write(pipe: IO[bytes], payload: bytes) -> None:
    pipe.write(_HEADER.pack(len(payload)))
    pipe.write(payload)
    pipe.flush()


def _read(pipe: IO[bytes]) -> bytes | None:
    header = pipe.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    payload = pipe.read(size)
    return payload if len(payload) == size else None


def serve() -> None:
    """The worker's loop: a pickled (fn, part) in, ("ok", fn(part)) or ("error", message) out, until the
    pipe closes. Its stdout is the pipe, so anything printed goes to stderr instead."""
    parent = os.environ.pop(_PARENT, None)
    if parent is not None:
        _die_with(int(parent))
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr
    while (payload := _read(requests)) is not None:
        try:
            with gc_paused():  # as in the planner's own process (`gc_pause.py`)
                fn, part = pickle.loads(payload)
                answer = pickle.dumps(("ok", fn(part)), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # the parent redoes the part and raises it there, with its traceback
            answer = pickle.dumps(("error", f"{type(exc).__name__}: {exc}"))
        try:
            _write(answers, answer)
        except BrokenPipeError:  # the planner gave up on this part and closed the pipe
            return


def _die_with(parent: int) -> None:
    """SIGKILL from the kernel when the parent ends (Linux's PR_SET_PDEATHSIG); elsewhere, nothing."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it ended before the signal was asked for
        os._exit(0)


def split(keys: Sequence[Hashable], count: int, min_size: int = 1) -> list[list[int]]:
    """Positions 0..len(keys)-1 in at most `count` parts of nearly equal size and at least `min_size` (a
    worker costs more than a few items' work), equal keys kept together where the sizes allow (a key's
    items share cached work), each part in ascending order."""
    count = min(count, len(keys) // max(min_size, 1))
    if count <= 1:
        return [list(range(len(keys)))]
    first: dict[Hashable, int] = {}
    for pos, key in enumerate(keys):
        first.setdefault(key, pos)
    order = sorted(range(len(keys)), key=lambda pos: (first[keys[pos]], pos))
    cuts = [len(keys) * k // count for k in range(count + 1)]  # sizes differ by one at most
    return [sorted(order[a:b]) for a, b in pairwise(cuts)]
