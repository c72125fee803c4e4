"""A throttle on failed logins, per operator name and per client address.

Pure: no I/O and no sleeping, the clock is given, so the node's API, the counter's
login page and the tests share it, and a test moves time instead of waiting.

Why these numbers (the OWASP Authentication Cheat Sheet, "Login Throttling" and
"Account Lockout"):

- `FREE_FAILURES = 5`: a cashier mistyping a password twice or three times at a
  busy desk must not be slowed down; five is the usual threshold.
- After that, each further failure doubles the lock, from `FIRST_DELAY_S = 1` up to
  `MAX_DELAY_S = 15 min`. A guesser gets about one try per quarter hour (about 100
  a day per name, and as many per address), yet an operator who was locked out
  by someone else waits at most 15 minutes, never "until the owner unlocks",
  which would let anyone on the LAN lock every till for good by typing names.
- Counted by name *and* by address: by name stops many addresses guessing one
  password; by address stops one address trying many names (password spraying).
- While locked, an attempt is refused *without* checking its password: a locked-out
  guesser learns nothing, not even that a guess was right. Such refusals do not
  lengthen the lock, so the real operator can log in as soon as it ends.
- An attempt counts as a failure when it starts (`begin`) and a success forgives
  it (`succeeded`): guesses sent all at once cannot slip past the threshold while
  their slow password checks run.
- A success resets the counters of its name and its address (`succeeded`); at a door
  open to anyone, where a stranger may hold a secret of their own, the name's and
  this attempt's count on the address only (`proved`). A key quiet for
  `FORGET_AFTER_S` (a day) is forgotten.
- At most `MAX_KEYS` keys are remembered (least recently used dropped first, but a
  locked one only when every key is locked, an address's before a name's), so a
  flood of made-up names or addresses cannot grow memory, push a name's lock out
  cheaply, nor lock everyone out. An IPv6 address counts by its /64 (one
  subscriber's).
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain, islice

FREE_FAILURES = 5
FIRST_DELAY_S = 1.0
MAX_DELAY_S = 15 * 60.0
FORGET_AFTER_S = 24 * 3600.0
MAX_KEYS = 100_000  # about 20 MB at most


@dataclass
class _Key:
    failures: int = 0
    locked_until: float = 0.0
    last_failure: float = 0.0


class LoginThrottle:
    """Failures per operator name and per client address, and the locks they earn."""

    def __init__(self, *, free_failures: int = FREE_FAILURES,
                 first_delay_s: float = FIRST_DELAY_S, max_delay_s: float = MAX_DELAY_S,
                 forget_after_s: float = FORGET_AFTER_S, max_keys: int = MAX_KEYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.free_failures = free_failures
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.forget_after_s = forget_after_s
        self.max_keys = max_keys
        self._clock = clock
        self._keys: OrderedDict[tuple[str, str], _Key] = OrderedDict()

    @staticmethod
    def _of(name: str, address: str) -> tuple[tuple[str, str], tuple[str, str]]:
        return ("name", name), ("address", network_of(address))

    def _get(self, key: tuple[str, str], now: float) -> _Key | None:
        state = self._keys.get(key)
        if state is not None and now - state.last_failure > self.forget_after_s:
            del self._keys[key]
            return None
        return state

    def wait(self, name: str, address: str) -> int:
        """Whole seconds until `name` may try again from `address`; 0: now."""
        now = self._clock()
        left = 0.0
        for key in self._of(name, address):
            state = self._get(key, now)
            if state is not None:
                left = max(left, state.locked_until - now)
        return math.ceil(left) if left > 0 else 0

    def begin(self, name: str, address: str) -> int:
        """Before a password is checked: 0 and the attempt counted as a failure until
        `succeeded` says otherwise, or the seconds to wait (nothing counted)."""
        left = self.wait(name, address)
        if left:
            return left
        now = self._clock()
        keys = self._of(name, address)
        self._make_room(sum(k not in self._keys for k in keys), now)
        for key in keys:
            state = self._get(key, now) or _Key()
            state.failures += 1
            state.last_failure = now
            over = state.failures - self.free_failures
            if over >= 0:
                # 2**over grows without bound as an int; cap the exponent first.
                delay = self.first_delay_s * 2.0 ** min(over, 64)
                state.locked_until = now + min(delay, self.max_delay_s)
            self._keys[key] = state
            self._keys.move_to_end(key)
        return 0

    def _make_room(self, new: int, now: float) -> None:
        """Room for `new` keys: the least recently used keys not locked go first. A
        flood of made-up names from many addresses (each of a few failures, costing the
        flooder nothing) pushed a real phone's lock out, least recently used first, and
        it was sent codes again."""
        over = len(self._keys) + new - self.max_keys
        if over <= 0:
            return
        for key in list(islice((k for k, st in self._keys.items() if st.locked_until <= now),
                               over)):
            del self._keys[key]
            over -= 1
        # Every key locked: the oldest addresses' locks go first, then the oldest
        # names'. Refusing new keys instead let a stranger who filled the table with
        # made-up names lock every member out; pushing a name's lock out costs a
        # stranger MAX_KEYS locked keys (five failures each) for one more round.
        oldest = chain((k for k in self._keys if k[0] == "address"),
                       (k for k in self._keys if k[0] != "address"))
        for key in list(islice(oldest, over)):
            del self._keys[key]

    def succeeded(self, name: str, address: str) -> None:
        """The password was right: forgive the name's and the address's failures."""
        for key in self._of(name, address):
            self._keys.pop(key, None)

    def proved(self, name: str, address: str) -> None:
        """The secret of `name` was right, at a door open to anyone (the member pages):
        forgive the name's failures, and on the address this attempt's count only.
        `succeeded` forgives the address's failures too, so there a stranger holding a
        card of their own signed in with it every four guesses and tried PINs on other
        members' cards without end; forgiving nothing of the address would lock out,
        after five sign-ins, the members who share one (a shop's Wi-Fi, a carrier's
        NAT)."""
        self._keys.pop(("name", name), None)
        key = ("address", network_of(address))
        state = self._keys.get(key)
        if state is None:
            return
        state.failures -= 1
        if state.failures <= 0:
            del self._keys[key]
        elif state.failures < self.free_failures:
            # The lock this attempt's count earned at `begin`; fewer failures earn none.
            state.locked_until = 0.0

    def __len__(self) -> int:
        return len(self._keys)


def network_of(address: str) -> str:
    """The key of a client address: an IPv6 address by its /64, which one subscriber
    holds whole (2**64 addresses, one key each, would be a lock each to spend)."""
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address.split("%")[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:  # an IPv4 client of a dual-stack socket: its own
        return str(ip.ipv4_mapped)
    if not ip.is_global:  # loopback, link-local, private: one machine each, as given
        return str(ip)
    return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))


def too_many_attempts(seconds: int) -> str:
    """The sentence a refused login shows."""
    return (f"too many failed logins for this operator or from this address; "
            f"try again in {seconds} s")


__all__ = ["LoginThrottle", "too_many_attempts"]
