"""Progress of long steps (calibration, sensitivity scans, bias correction, fine-tuning).

On a terminal: a tqdm bar.  In a log (stderr is not a terminal: a CI job, a build system): plain lines, one when
the step starts, one every ``interval`` seconds (30 by default), and one when it ends, e.g.::

    [calibrate] started: 512 samples
    [calibrate] 160/512 samples (31%), 30.1 s, about 66 s left
    [calibrate] done: 512 samples in 96.4 s

``mode``: ``bar``, ``lines`` or ``off``; :func:`mode_for` picks it from the ``--progress auto|on|off`` choice.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

#: seconds between two progress lines in a log
LINE_INTERVAL = 30.0


def mode_for(progress: bool | None, stream: TextIO | None = None) -> str:
    """``--progress on`` (True): a bar; ``off`` (False): nothing; ``auto`` (None): a bar on a terminal, else lines."""
    if progress is False:
        return "off"
    if progress is True:
        return "bar"
    s = stream if stream is not None else sys.stderr
    try:
        return "bar" if s.isatty() else "lines"
    except (AttributeError, ValueError):
        return "lines"


def _fmt_s(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


class Progress:
    """``with Progress("calibrate", total=512, unit="samples", mode="lines") as p: p.update(8)``."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "", *, mode: str = "lines",
                 stream: TextIO | None = None, interval: float = LINE_INTERVAL):
        self.desc, self.total, self.unit, self.mode = desc, total, unit, mode
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.n = 0
        self.t0 = time.monotonic()
        self._last = self.t0
        self._bar: Any = None
        self._note = ""
        if mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit or "it", leave=False, dynamic_ncols=True,
                             file=self.stream)
        elif mode == "lines":
            what = f"{total} {unit}".strip() if total else (unit or "")
            self._line(f"started{': ' + what if what else ''}")

    def _line(self, text: str) -> None:
        print(f"[{self.desc}] {text}", file=self.stream, flush=True)

    def update(self, n: int = 1, note: str = "") -> None:
        """``n`` more done; ``note`` (a loss, the current layer) is shown with the next line or on the bar."""
        self.n += n
        if note:
            self._note = note
        if self._bar is not None:
            self._bar.update(n)
            if note:
                self._bar.set_postfix_str(note, refresh=False)
        elif self.mode == "lines":
            now = time.monotonic()
            if now - self._last >= self.interval:
                self._last = now
                self._line(self.status(now))

    def status(self, now: float | None = None) -> str:
        elapsed = (now if now is not None else time.monotonic()) - self.t0
        done = f"{self.n}/{self.total} {self.unit}".strip() if self.total else f"{self.n} {self.unit}".strip()
        text = done
        if self.total:
            text += f" ({100 * self.n / self.total:.0f}%)"
        text += f", {_fmt_s(elapsed)}"
        if self.total and self.n:
            text += f", about {_fmt_s(elapsed * (self.total - self.n) / self.n)} left"
        return text + (f"; {self._note}" if self._note else "")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "lines":
            self._line(f"done: {self.n} {self.unit}".rstrip() + f" in {_fmt_s(time.monotonic() - self.t0)}"
                       + (f"; {self._note}" if self._note else ""))
            self.mode = "off"

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
