"""Times as the people of a branch read them: in the chain's time-zone rule.

The zone is the rule `settings.timezone` in force (set at the head office, so every
branch's counter, command line and reports show one clock), and until one is set the
store's own zone (`crdtledger init --timezone`, Asia/Shanghai by default). A rule
naming no zone this machine knows falls back the same way rather than failing a page
(set_rule refuses such a rule; an older node may have written one).

Only what is shown to people goes through here; ids, sync and the days entries are
booked on keep their own clocks (crdtledger.hlc, Storage.tz).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from crdtledger.model import DEFAULT_RULES

if TYPE_CHECKING:
    from crdtledger.ledger import Ledger

SHOWN = "%Y-%m-%d %H:%M:%S"


# Names the zone database holds that are no place's zone: "localtime" is each reading
# machine's own (a technician's hours read so differed from branch to branch again).
MACHINE_ZONES = frozenset({"localtime", "posixrules", "Factory"})


def known_zone(name: object) -> ZoneInfo | None:
    """The zone of an IANA name, or None for anything else (never raises)."""
    if not isinstance(name, str) or not name or len(name) > 64 or name in MACHINE_ZONES:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def zone(ledger: Ledger) -> ZoneInfo:
    rule = ledger.rule("settings")
    # The default rule object itself means no version is in force: the store's zone.
    if rule is not DEFAULT_RULES["settings"] and isinstance(rule, dict):
        found = known_zone(rule.get("timezone"))
        if found is not None:
            return found
    return ledger.storage.tz


def show(seconds: float, tz: ZoneInfo | str, fmt: str = SHOWN) -> str:
    """A Unix time (seconds) as the branch reads it."""
    z = tz if isinstance(tz, ZoneInfo) else known_zone(tz)
    # No zone told (a node of an older version): this machine's, as before.
    when = datetime.fromtimestamp(seconds, z) if z else datetime.fromtimestamp(seconds)
    return when.strftime(fmt)
