"""When to restart a crashed engine, and when to give up. Pure: the clock is passed in.

A crash is restarted after an exponential backoff (`base_delay`, doubling, at most
`max_delay`). Past `max_restarts` crashes within `window_seconds` the server gives up: the
engine stays FAILED and liveness turns NOT_SERVING, so Kubernetes restarts the pod (a machine
whose engine keeps dying is better replaced than retried).
"""

from dataclasses import dataclass, field


@dataclass
class RestartPolicy:
    """Backoff and give-up rule for engine crashes."""

    max_restarts: int = 3
    """Crashes within the window that are still restarted."""
    window_seconds: float = 600.0
    base_delay: float = 2.0
    """Seconds before the first restart; doubles with each crash in the window."""
    max_delay: float = 60.0
    _crashes: list[float] = field(default_factory=list)

    def after_crash(self, now: float) -> float | None:
        """Records a crash at `now`; returns the seconds to wait before restarting, or None to
        give up."""
        self._crashes = [t for t in self._crashes if now - t < self.window_seconds] + [now]
        if len(self._crashes) > self.max_restarts:
            return None
        return min(self.max_delay, self.base_delay * float(2 ** (len(self._crashes) - 1)))
