"""Progress as JSON lines: what the service reads from a running trainer."""

import json
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from trainer.contract import TrainerEvent


class EventWriter:
    """Appends one JSON object per line, flushed at once; to a file, or nowhere."""

    def __init__(self, path: Path | None) -> None:
        self._file: IO[str] | None = path.open("a", encoding="utf-8") if path else None

    def emit(self, event: TrainerEvent, **fields: Any) -> None:
        """Writes `{"event": event, "time": <unix seconds>, **fields}`."""
        if self._file is not None:
            record = {"event": event.value, "time": round(time.time(), 3), **fields}
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def __enter__(self) -> "EventWriter":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is not None:
            self._file.close()
