"""What the four steps tell the user: one line per step, and progress bars on long work.

One switch controls both: the ``show_progress`` argument of each public function (the CLI's
``--quiet`` turns it off).  The line goes to standard output, as the original package's
``print`` calls did, so a script's own log says what each step did; it is also logged at INFO
(``logging.getLogger("varsitysrch...")``) for applications that collect logs instead.

Progress bars (tqdm) go to standard error and only when it is a terminal: in a log file or a
CI job they would print one line per refresh.  ``VARSITYSRCH_PROGRESS=1`` forces them on,
``VARSITYSRCH_PROGRESS=0`` off.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

__all__ = ["bar", "bars_enabled", "progress", "say"]


_T = TypeVar("_T")


def bars_enabled(show_progress: bool) -> bool:
    """Whether a progress bar should be drawn for a call with ``show_progress``."""
    if not show_progress:
        return False
    forced = os.environ.get("VARSITYSRCH_PROGRESS", "").strip().lower()
    if forced in {"1", "true", "yes", "on"}:
        return True
    if forced in {"0", "false", "no", "off"}:
        return False
    stream = sys.stderr
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


def bar(*, total: int | None, desc: str, unit: str, show_progress: bool, **kwargs: Any) -> Any:
    """A tqdm bar (a no-op one when bars are off); use as a context manager and ``.update(n)``."""
    from tqdm.auto import tqdm

    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(total=total, desc=desc, unit=unit, disable=not bars_enabled(show_progress), **kwargs)


def progress(
    items: Iterable[_T], *, desc: str, unit: str, show_progress: bool, **kwargs: Any
) -> Iterator[_T]:
    """Iterate ``items`` with a progress bar when bars are on."""
    total = kwargs.pop("total", None)
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(total=total, desc=desc, unit=unit, show_progress=show_progress, **kwargs) as b:
        for item in items:
            yield item
            b.update(1)


def say(logger: logging.Logger, message: str, show_progress: bool) -> None:
    """The one line a step prints: to stdout when ``show_progress``, and to the log at INFO."""
    logger.info("%s", message)
    if show_progress:
        print(message, flush=True)
