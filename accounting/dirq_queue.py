"""The outgoing message queue APEL's sender (SSM) reads: a python-dirq `QueueSimple` directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from dirq.QueueSimple import QueueSimple


class OutgoingQueue:
    """Messages written here are picked up by `ssmsend` configured with the same `path`."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._queue = QueueSimple(str(self.path))

    def add(self, message: str) -> str:
        """Store one message atomically (dirq writes a temp file and renames it); returns its name."""
        return str(self._queue.add(message))

    def __len__(self) -> int:
        return int(self._queue.count())

    def messages(self) -> Iterator[tuple[str, str]]:
        """(name, text) of every message waiting, oldest first, read the way SSM reads them."""
        for name in self._queue:
            if self._queue.lock(name):
                try:
                    data = self._queue.get(name)
                    yield name, data.decode() if isinstance(data, bytes) else str(data)
                finally:
                    self._queue.unlock(name)
