"""Progress of a long run: how many crops are done, how fast, and how long the rest will take.

On a terminal it is a bar on stderr (tqdm); anywhere else (a container's log, a pipe, a file) a
bar's carriage returns would be noise, so it is one log line every LOG_INTERVAL_S seconds.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import TextIO, TypeVar

log = logging.getLogger(__name__)

LOG_INTERVAL_S = 10.0  # between two log lines when stderr is not a terminal
Batch = TypeVar("Batch", bound=Sized)


def tracked(
    batches: Iterable[Batch],
    total: int,
    *,
    stream: TextIO | None = None,
    interval: float = LOG_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Batch]:
    """`batches` unchanged, their progress towards `total` items shown on `stream` (default stderr):
    a bar on a terminal, else a log line every `interval` seconds of `clock`.

    A batch's items count as done when the caller asks for the next batch, that is once it has
    been classified, so the rate is the whole pipeline's.
    """
    stream = stream or sys.stderr
    if stream.isatty():
        yield from _with_bar(batches, total, stream)
    else:
        yield from _with_log_lines(batches, total, interval, clock)


def _with_bar(batches: Iterable[Batch], total: int, stream: TextIO) -> Iterator[Batch]:
    # Imported here: a run without a terminal (grand-challenge's) never pays for the import.
    from tqdm import tqdm

    # Its width is the terminal's when the bar starts (tqdm's dynamic width draws nothing at all
    # on a terminal that reports 0 columns, as some container terminals do).
    with tqdm(total=total, unit="crop", desc="classifying", file=stream) as bar:
        for batch in batches:
            yield batch
            bar.update(len(batch))


def _with_log_lines(
    batches: Iterable[Batch], total: int, interval: float, clock: Callable[[], float]
) -> Iterator[Batch]:
    log.info("classifying %d crops", total)
    start = last = clock()
    done = 0
    for batch in batches:
        yield batch
        done += len(batch)
        now = clock()
        if now - last >= interval and done < total:
            log.info("%s", progress_line(done, total, now - start))
            last = now
    if done:
        elapsed = clock() - start
        log.info("classified %d crops in %s (%s crops/s)", done, duration(elapsed), _rate(done, elapsed))


def progress_line(done: int, total: int, elapsed: float) -> str:
    """'1200/5000 crops (24%), 31.6 crops/s, 2 min 00 s left'."""
    left = (total - done) * elapsed / done
    share = 100 * done // max(total, 1)
    return f"{done}/{total} crops ({share}%), {_rate(done, elapsed)} crops/s, {duration(left)} left"


def duration(seconds: float) -> str:
    """'45 s', '2 min 05 s', '3 h 07 min': as precise as a person waiting needs."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _rate(done: int, elapsed: float) -> str:
    return f"{done / elapsed:.1f}" if elapsed > 0 else "-"
