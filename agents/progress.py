"""Progress bars: a live bar on a terminal, a few whole lines in a log or a pipe."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TextIO

from tqdm import tqdm

LOG_INTERVAL = 60.0  # seconds between progress lines when stderr is not a terminal


class _Lines:
    """A stream for tqdm that turns each in-place redraw into one whole line."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:  # tqdm's clears and line ends carry no figures
            self.stream.write(line + "\n")
            self.stream.flush()

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs) -> tqdm:
    """A tqdm bar on stderr (`kwargs` go to tqdm). On a terminal it redraws in place as usual;
    otherwise it writes one plain line at the start, at most one every `LOG_INTERVAL` seconds
    and one at the end (kept even where the terminal bar would be cleared), so a log holds
    the figures without a line per redraw."""
    if enabled and not sys.stderr.isatty():
        kwargs |= {"file": _Lines(sys.stderr), "mininterval": LOG_INTERVAL,
                   "maxinterval": LOG_INTERVAL, "leave": True, "dynamic_ncols": False}
    return tqdm(iterable, disable=not enabled, **kwargs)
