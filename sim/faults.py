"""Faults and the scenarios that schedule them.

A scenario is a list of faults drawn from the run's fault stream (derived from the
seed) before the run starts. Each fault has an index, so a shrinking run can switch
some off (`Config.fault_mask`) without changing the others or the workload.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sim.engine import DAY, HOUR, MINUTE, SECOND
from sim.net import Cut

if TYPE_CHECKING:
    from sim.world import World


@dataclass
class Fault:
    kind: str  # partition | crash | skew | jump
    start: int
    end: int | None  # None: until the end of the workload
    label: str
    nodes: tuple[str, ...] = ()
    cuts: list[Cut] = field(default_factory=list)
    ms: int = 0  # clock skew or jump

    def describe(self) -> str:
        end = "end" if self.end is None else f"{self.end / HOUR:.2f}h"
        what = ",".join(self.nodes) if len(self.nodes) <= 4 else f"{len(self.nodes)} nodes"
        extra = f" {self.ms:+d}ms" if self.ms else ""
        return f"{self.kind} {self.label} [{self.start / HOUR:.2f}h..{end}] {what}{extra}"


SCENARIOS = {
    "steady": "no faults beyond the links' own loss and jitter",
    "partition-heal": "the chain splits in two along its hubs for hours, later a random "
                      "group is cut off and one branch can send but not receive; all heal",
    "flapping-wan": "branches' internet uplinks and the hubs' link go down and up every "
                    "few minutes for hours",
    "branch-offline-week": "one branch loses its internet for most of the run (a week "
                           "with --days 7) and keeps selling on its own",
    "crash-loop": "a few nodes, a hub among them, crash and restart again and again",
    "clock-skew": "branch clocks off by seconds to minutes, one beyond the 5-minute "
                  "limit, one jumping an hour ahead and back",
    "hot-member": "many members share cards used at several branches within seconds",
}


def _open_window(world: World, rng: random.Random, length: int) -> int:
    """A start time inside business hours of a random day of the run, such that the
    fault ends before the workload does."""
    days = world.config.days
    for _ in range(20):
        day = rng.randrange(days)
        start = world.day_start(day) + rng.randint(11 * HOUR, 17 * HOUR)
        if start + length < world.workload_end - HOUR:
            return start
    return max(0, world.workload_end - length - HOUR)


def link_cuts(world: World, rng: random.Random) -> list[Fault]:
    """Single links down while the nodes at both ends stay up and reach each other
    through a third (A-B cut, A-C and C-B up), one after another through the day,
    each for minutes: past the heartbeat, so the connection dies and is dialled again.
    What A and B write then reaches the other by a detour, and a record's funding
    and the entry it funds may come by different paths (the projection's deferral:
    crdtledger.projection, "Funding in log order"). Only links that are configured
    connections, between two sites, and whose ends have another common peer."""
    peers: dict[str, set[str]] = {n.name: set() for n in world.nodes}
    for a, b in world.edges:
        peers[world.nodes[a].name].add(world.nodes[b].name)
        peers[world.nodes[b].name].add(world.nodes[a].name)
    site = world.net.site_of
    links = [(world.nodes[a].name, world.nodes[b].name) for a, b in world.edges]
    links = [(a, b) for a, b in links if site[a] != site[b] and peers[a] & peers[b]]
    faults: list[Fault] = []
    if not links:
        return faults
    for day in range(world.config.days):  # business hours, 09:00 to 21:00
        t = world.day_start(day) + rng.randint(9 * HOUR, 10 * HOUR)
        end = min(world.day_start(day) + 21 * HOUR, world.workload_end - HOUR)
        while t < end:
            one, two = rng.choice(links)
            down = rng.randint(2 * MINUTE, 20 * MINUTE)
            faults.append(Fault("partition", t, t + down, "link", (one, two),
                                Cut.split({one}, {one, two}, label=f"link {one}-{two}")))
            t += down + rng.randint(10 * MINUTE, 40 * MINUTE)
    return faults


def schedule(world: World) -> list[Fault]:
    cfg = world.config
    rng = random.Random(f"{cfg.seed}:faults")
    names = [n.name for n in world.nodes]
    everyone = frozenset(names)
    faults: list[Fault] = []
    span = world.workload_end
    name = cfg.scenario
    # Branches alone on their site: losing the internet cuts them off (a branch on
    # a hub's LAN would still reach that hub).
    site = world.net.site_of
    alone = [n for n in names if sum(site[m] == site[n] for m in names) == 1
             and not world.by_name[n].hub] or names

    if name == "partition-heal":
        regions = sorted(set(world.region_of))
        if len(regions) >= 2:
            half = {names[i] for i, r in enumerate(world.region_of)
                    if r < (len(regions) + 1) // 2}
        else:
            half = set(rng.sample(names, max(1, len(names) // 2)))
        length = rng.randint(2 * HOUR, 4 * HOUR)
        start = _open_window(world, rng, length)
        faults.append(Fault("partition", start, start + length, "split",
                            tuple(sorted(half)), Cut.split(half, everyone, label="split")))
        group = set(rng.sample(names, max(1, len(names) // 5)))
        length = rng.randint(30 * MINUTE, 90 * MINUTE)
        start = _open_window(world, rng, length)
        faults.append(Fault("partition", start, start + length, "group",
                            tuple(sorted(group)), Cut.split(group, everyone, label="group")))
        deaf = rng.choice(names)
        length = rng.randint(10 * MINUTE, 40 * MINUTE)
        start = _open_window(world, rng, length)
        faults.append(Fault("partition", start, start + length, "one-way",
                            (deaf,), [Cut(everyone - {deaf}, frozenset({deaf}),
                                          label="one-way")]))
        faults += link_cuts(world, rng)
    elif name == "flapping-wan":
        flappers = rng.sample(alone, max(1, min(len(alone), len(names) // 4)))
        hubs = [n.name for n in world.nodes if n.hub]
        length = min(span - 2 * HOUR, rng.randint(3 * HOUR, 6 * HOUR))
        window = _open_window(world, rng, length)
        for who in flappers:
            t = window + rng.randint(0, 10 * MINUTE)
            while t < window + length:
                down = rng.randint(5 * SECOND, 4 * MINUTE)
                faults.append(Fault("partition", t, t + down, "uplink", (who,),
                                    Cut.split({who}, everyone, wan_only=True,
                                              label=f"uplink {who}")))
                t += down + rng.randint(20 * SECOND, 8 * MINUTE)
        if len(hubs) >= 2:
            t = window
            while t < window + length:
                down = rng.randint(5 * SECOND, 2 * MINUTE)
                a, b = hubs[0], hubs[1]
                faults.append(Fault("partition", t, t + down, "hub-link", (a, b),
                                    Cut.split({a}, {a, b}, label="hub-link")))
                t += down + rng.randint(1 * MINUTE, 15 * MINUTE)
    elif name == "branch-offline-week":
        who = rng.choice(alone)
        start = world.day_start(0) + 9 * HOUR
        end = max(start + HOUR, span - 2 * HOUR)
        if cfg.days >= 7:
            end = min(end, start + 7 * DAY - 9 * HOUR)
        faults.append(Fault("partition", start, end, "offline", (who,),
                            Cut.split({who}, everyone, wan_only=True, label=f"offline {who}")))
    elif name == "crash-loop":
        hubs = [n.name for n in world.nodes if n.hub]
        victims = sorted(set(rng.sample(names, max(1, min(4, len(names) // 5)))
                             + hubs[:1]))
        for who in victims:
            t = world.day_start(0) + rng.randint(9 * HOUR, 11 * HOUR)
            while t < span - 2 * HOUR:
                down = rng.randint(2 * SECOND, 90 * SECOND)
                faults.append(Fault("crash", t, t + down, "crash", (who,)))
                t += down + rng.randint(5 * MINUTE, 50 * MINUTE)
    elif name == "clock-skew":
        for who in rng.sample(names, max(1, len(names) // 3)):
            faults.append(Fault("skew", 0, None, "skew", (who,),
                                ms=rng.choice((-1, 1)) * rng.randint(200, 90_000)))
        far = rng.choice(names)
        faults.append(Fault("skew", 0, None, "beyond-limit", (far,), ms=6 * 60_000))
        jumper = rng.choice([n for n in names if n != far] or names)
        start = _open_window(world, rng, HOUR)
        faults.append(Fault("jump", start, start + HOUR, "jump", (jumper,), ms=3_600_000))
    elif name in ("steady", "hot-member"):
        pass
    else:
        raise ValueError(f"unknown scenario {name!r}; one of {', '.join(SCENARIOS)}")
    return faults
