"""The waypoint's compiled HTTP/1.1 fast lane (docs/waypoint.md, "Fast lane").

Before: `scripts/setup.sh` built `_lane` (`python -m waypoint.fastlane.build`). After:
`native` is that module, or None when it is not built or does not load (then one log line
says so and the waypoint runs its Python path for everything); `enabled()` says whether the
operator left the lane on (`LACEWING_WAYPOINT_FAST_LANE=0` turns it off).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("lacewing.waypoint.fastlane")

def _load():
    """The built module, unless it is missing or older than its source (a checkout changed
    `_lane.pyx` and setup has not rebuilt it: its classes may not match this code)."""
    from pathlib import Path

    here = Path(__file__).resolve().parent
    try:
        from waypoint.fastlane import _lane
    except ImportError as e:  # not built (or for another Python): the Python path serves
        log.info("waypoint fast lane not available (%s); requests take the Python path", e)
        return None
    source = here / "_lane.pyx"
    if source.exists() and Path(_lane.__file__).stat().st_mtime < source.stat().st_mtime:
        log.warning("waypoint fast lane is older than its source (run scripts/setup.sh); "
                    "requests take the Python path")
        return None
    return _lane


native = _load()


def enabled(requested: bool = True) -> bool:
    """Whether a server should use the lane: asked for, not turned off, and built."""
    if not requested or os.environ.get("LACEWING_WAYPOINT_FAST_LANE", "1") == "0":
        return False
    return native is not None
