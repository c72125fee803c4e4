"""Coupons (issue 15, part 2): redeemed at most once in the whole chain, also while
branches are cut off from each other.

Real components throughout: the `crdtledger` CLI as a process, library ledgers on real
SQLite files synced by real sessions (helpers.sync), a forger writing its own signed
log (helpers.Forger), and branch nodes as real processes over mutual TLS, partitioned
by cutting a TCP relay (tests/linkproxy.py).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli
from helpers import (
    FakeClock,
    Forger,
    data_snapshot,
    name_branches,
    new_ledger,
    snapshot,
    sqlite_steps,
    sync,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map

from crdtledger.coupons import (
    CouponElsewhere,
    CouponExpired,
    CouponMinSpend,
    CouponNotYetValid,
    CouponOtherMember,
    CouponRedeemed,
    CouponRefused,
)
from crdtledger.errors import InvalidInput, NotFound, PermissionDenied
from crdtledger.hlc import HybridClock, id_time_ms
from crdtledger.ledger import Ledger
from crdtledger.model import _checked_entry, _quick_entry, entry_doc, normalise_entry

PHONE = "13812345678"


def member_with_cash(ledger: Ledger, fen: int = 50_000, phone: str = PHONE) -> str:
    m = ledger.add_member(ledger.owner, name="张伟", phone=phone)
    ledger.topup(ledger.owner, m, fen)
    return m


def redemptions(ledger: Ledger, coupon: str) -> list[dict[str, Any]]:
    return [json.loads(b) for (b,) in ledger.storage.conn.execute(
        "SELECT body FROM entries WHERE json_extract(body, '$.coupon') = ?", (coupon,))]


def coupon_rights(ledger: Ledger, member: str, coupon: str) -> dict[str, int]:
    return ledger.rights(member, f"cpn:{coupon}")


# --- the command line, as a shop owner and a script meet it -------------------------------


def test_issue_list_and_redeem_through_the_cli(cli: Cli, make_node: Callable[..., Path]
                                              ) -> None:
    data = make_node("SH01")
    member = cli("member", "add", "--name", "张伟", "--phone", PHONE, "--json",
                 data=data).json()["member_id"]
    assert cli("topup", "--member", member, "--amount", "200.00", data=data).code == 0

    issued = cli("coupon", "issue", "--member", member, "--off", "10.00", "--valid-to",
                 "2099-12-31", "--json", data=data).json()
    cid = issued["coupon"]
    assert (issued["kind"], issued["off"], issued["status"], issued["at"]) == (
        "amount", 1000, "available", "SH01")
    percent = cli("coupon", "issue", "--member", member, "--percent", "20", "--min-spend",
                  "100.00", "--reason", "promotion", "--json", data=data).json()["coupon"]
    free = cli("coupon", "issue", "--member", member, "--service", "HAIR", "--json",
               data=data).json()["coupon"]

    listed = cli("coupon", "list", "--member", member, "--json", data=data).json()
    assert [c["coupon"] for c in listed] == [cid, percent, free]
    assert all(c["status"] == "available" for c in listed)

    # A debit it discounts: 128.00 less 10.00 from stored value, points on what was paid.
    charged = cli("debit", "--member", member, "--service", "FOOT60", "--coupon", cid,
                  "--json", data=data).json()
    assert (charged["amount"], charged["coupon"], charged["off"]) == (11800, cid, 1000)
    assert charged["points"] == 118
    assert cli("balance", "--member", member, "--json", data=data).json()["cash"] == 8200

    # Twice: refused with a sentence naming where and when, nothing changed.
    before = cli("history", "--member", member, "--json", data=data).json()
    again = cli("debit", "--member", member, "--amount", "50.00", "--coupon", cid, "--json",
                data=data)
    assert again.code == 1
    assert json.loads(again.out)["error"] == "coupon_redeemed"
    assert f"coupon {cid} was redeemed already, at SH01 on" in again.err
    alone = cli("coupon", "redeem", "--coupon", cid, "--json", data=data)
    assert alone.code == 1 and json.loads(alone.out)["error"] == "coupon_redeemed"
    assert cli("history", "--member", member, "--json", data=data).json() == before

    # On its own: the minimum spend needs the bill, then it is checked.
    short = cli("coupon", "redeem", "--coupon", percent, "--spend", "99.99", "--json",
                data=data)
    assert short.code == 1 and json.loads(short.out)["error"] == "coupon_min_spend"
    used = cli("coupon", "redeem", "--coupon", percent, "--spend", "150.00", "--json",
               data=data).json()
    assert (used["kind"], used["coupon"], used["off"]) == ("coupon_use", percent, 3000)
    assert used["deltas"] == [[f"cpn:{percent}", "SH01", -1]]

    shown = {c["coupon"]: c for c in cli("coupon", "list", "--member", member, "--json",
                                         data=data).json()}
    assert shown[cid]["status"] == "redeemed" and shown[cid]["at"] == "SH01"
    assert shown[cid]["entry"] == charged["id"]
    assert shown[percent]["status"] == "redeemed" and shown[percent]["entry"] == used["id"]
    assert shown[free]["status"] == "available"
    text = cli("coupon", "list", "--member", member, data=data).out
    assert f"10.00 off  redeemed at SH01 on {shown[cid]['on']}  [{cid}]" in text
    assert f"one free HAIR  available at SH01  [{free}]" in text
    # A coupon is no balance.
    assert set(cli("balance", "--member", member, "--json", data=data).json()) == {
        "cash", "bonus", "points", "packages"}


def test_cli_refuses_bad_coupons_with_a_sentence(cli: Cli, make_node: Callable[..., Path]
                                                ) -> None:
    data = make_node("SH01")
    member = cli("member", "add", "--name", "张伟", "--phone", PHONE, "--json",
                 data=data).json()["member_id"]
    for argv, code in (
        (("--off", "10.00", "--percent", "5"), 2),  # two kinds: a usage error
        (("--off", "10.001"), 1),
        (("--percent", "0"), 1),
        (("--service", "NOPE"), 1),
        (("--off", "1.00", "--valid-to", "2020-01-01"), 1),
        (("--off", "1.00", "--valid-from", "2099-02-01", "--valid-to", "2099-01-01"), 1),
    ):
        r = cli("coupon", "issue", "--member", member, *argv, data=data)
        assert r.code == code, (argv, r.err)
        assert "Traceback" not in r.err
    assert cli("coupon", "list", "--member", member, "--json", data=data).json() == []
    missing = cli("coupon", "redeem", "--coupon", "0000000000000.HZ01", data=data)
    assert missing.code == 1 and "issued at HZ01: sync with it first" in missing.err


# --- the library: terms, validity, members ------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def shop(tmp_path: Path, clock: FakeClock) -> Iterator[Ledger]:
    ledger = new_ledger(tmp_path, "SH01", now_ms=clock)
    yield ledger
    ledger.close()


def test_expired_and_not_yet_valid_are_refused_and_change_nothing(
        shop: Ledger, clock: FakeClock) -> None:
    m = member_with_cash(shop)
    today = shop.today()
    c = shop.issue_coupon(shop.owner, m, off=500, valid_to=today)["coupon"]
    later = shop.issue_coupon(shop.owner, m, off=500, valid_from="2026-01-03")["coupon"]
    with pytest.raises(CouponNotYetValid, match="valid from 2026-01-03"):
        shop.debit(shop.owner, m, amount=1000, coupon=later)
    clock.advance_days(1.5)
    assert shop.today() > today
    before = snapshot(shop, [m])
    with pytest.raises(CouponExpired, match=f"coupon {c} expired on {today}"):
        shop.debit(shop.owner, m, amount=1000, coupon=c)
    with pytest.raises(CouponExpired):
        shop.redeem_coupon(shop.owner, c)
    assert snapshot(shop, [m]) == before
    status = {v["coupon"]: v["status"] for v in shop.coupons(m)}
    assert status == {c: "expired", later: "not_yet_valid"}
    clock.advance_days(1)
    assert shop.debit(shop.owner, m, amount=1000, coupon=later)["amount"] == 500


def test_terms_percent_free_service_and_minimum_spend(shop: Ledger) -> None:
    m = member_with_cash(shop)
    o = shop.owner
    pct = shop.issue_coupon(o, m, percent=15)["coupon"]
    # 15% of 99.99, rounded half-up to the fen (14.9985 -> 15.00).
    e = shop.debit(o, m, amount=9999, coupon=pct)
    assert (e["gross"], e["off"], e["amount"]) == (9999, 1500, 8499)
    free = shop.issue_coupon(o, m, service="FOOT60")["coupon"]
    with pytest.raises(CouponRefused, match="for a free FOOT60, not for HAIR"):
        shop.debit(o, m, service="HAIR", coupon=free)
    two = shop.debit(o, m, service="FOOT60", qty=2, coupon=free)
    assert (two["gross"], two["off"], two["amount"]) == (25600, 12800, 12800)
    least = shop.issue_coupon(o, m, off=2000, min_spend=10000)["coupon"]
    with pytest.raises(CouponMinSpend, match=r"at least 100\.00; this comes to 99\.99"):
        shop.debit(o, m, amount=9999, coupon=least)
    with pytest.raises(CouponMinSpend, match="give the bill's amount"):
        shop.redeem_coupon(o, least)
    big = shop.issue_coupon(o, m, off=5000)["coupon"]
    small = shop.debit(o, m, amount=3000, pay="cash", coupon=big)  # never below zero
    assert (small["off"], small["amount"], small["pay"]) == (3000, 0, "cash")
    with pytest.raises(InvalidInput, match="package"):
        shop.debit(o, m, service="FOOT60", pay="package",
                   coupon=shop.issue_coupon(o, m, off=1)["coupon"])


def test_another_members_coupon_and_permissions(shop: Ledger) -> None:
    m = member_with_cash(shop)
    other = member_with_cash(shop, phone="13900000000")
    c = shop.issue_coupon(shop.owner, m, off=1000)["coupon"]
    before = snapshot(shop, [m, other])
    with pytest.raises(CouponOtherMember, match="belongs to another member"):
        shop.debit(shop.owner, other, amount=5000, coupon=c)
    with pytest.raises(CouponOtherMember):
        shop.redeem_coupon(shop.owner, c, member=other)
    assert snapshot(shop, [m, other]) == before
    cashier = shop.add_operator(shop.owner, "小李", "secret-1", ["cashier"])
    with pytest.raises(PermissionDenied):
        shop.issue_coupon(cashier, m, off=100)
    assert shop.debit(cashier, m, amount=5000, coupon=c)["amount"] == 4000
    with pytest.raises(NotFound):
        shop.coupon_view("0000000000000.SH01")


def test_a_merged_members_coupon_serves_the_survivor(shop: Ledger) -> None:
    a = member_with_cash(shop)
    b = member_with_cash(shop, phone="13900000000")
    c = shop.issue_coupon(shop.owner, a, off=1000)["coupon"]
    shop.merge_member(shop.owner, a, b)
    assert [v["coupon"] for v in shop.coupons(b)] == [c]
    assert shop.debit(shop.owner, b, amount=3000, coupon=c)["off"] == 1000
    assert shop.coupon_view(c)["status"] == "redeemed"
    with pytest.raises(CouponRedeemed):
        shop.redeem_coupon(shop.owner, c, member=a)


def test_quick_and_careful_entry_checks_agree_on_coupons(shop: Ledger) -> None:
    m = member_with_cash(shop)
    c = shop.issue_coupon(shop.owner, m, percent=10, min_spend=100, valid_from="2026-01-01",
                          valid_to="2026-12-31", reason="referral")["coupon"]
    debit = shop.debit(shop.owner, m, amount=5000, coupon=c)
    for e in (shop.entry(c), debit):
        assert _quick_entry(e["id"], e) == _checked_entry(e["id"], e) == normalise_entry(
            e["id"], e)
        assert _quick_entry(e["id"], e) is not None


# --- a partition: the right sits with one branch ------------------------------------------


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[dict[str, Ledger]]:
    ledgers = {n: new_ledger(tmp_path, n) for n in ("SH01", "SH02", "HZ01")}
    yield ledgers
    for ledger in ledgers.values():
        ledger.close()


def sync_all(ledgers: dict[str, Ledger]) -> None:
    names = sorted(ledgers)
    for _ in range(2):
        for i, x in enumerate(names):
            for y in names[i + 1:]:
                sync(ledgers[x], ledgers[y])


def test_presented_at_two_partitioned_branches_it_is_accepted_once(
        chain: dict[str, Ledger]) -> None:
    sh01, sh02, hz01 = chain["SH01"], chain["SH02"], chain["HZ01"]
    m = member_with_cash(sh01)
    c = sh01.issue_coupon(sh01.owner, m, off=1000)["coupon"]
    sync_all(chain)
    # Cut off: SH02 and HZ01 hold no right; the refusal names SH01 and is a
    # RightsElsewhere, which a node answers by asking SH01 for it.
    for branch in (sh02, hz01):
        before = data_snapshot(branch, [m])
        with pytest.raises(CouponElsewhere) as refused:
            branch.debit(branch.owner, m, amount=3000, pay="cash", coupon=c)
        assert refused.value.holders == {"SH01": 1} and refused.value.member == m
        assert f"coupon {c} is held at branch SH01" in str(refused.value)
        assert data_snapshot(branch, [m]) == before
    # SH01 gives it to SH02 (as its node does when asked), then SH02 and HZ01 are cut
    # off from each other and from SH01: only SH02 can take it.
    sh01.grant_rights(m, f"cpn:{c}", "SH02", 1)
    sync(sh01, sh02)
    with pytest.raises(CouponElsewhere, match="held at branch SH02"):
        sh01.redeem_coupon(sh01.owner, c)
    with pytest.raises(CouponElsewhere, match="held at branch SH01"):  # HZ01 has not heard
        hz01.redeem_coupon(hz01.owner, c)
    taken = sh02.debit(sh02.owner, m, amount=3000, pay="cash", coupon=c)
    with pytest.raises(CouponRedeemed, match=f"at SH02 on {sh02.today()}"):
        sh02.redeem_coupon(sh02.owner, c)
    sync_all(chain)
    for branch in chain.values():
        assert [e["id"] for e in redemptions(branch, c)] == [taken["id"]]
        assert coupon_rights(branch, m, c) == {}
        view = branch.coupon_view(c)
        assert (view["status"], view["at"], view["entry"]) == ("redeemed", "SH02", taken["id"])
        with pytest.raises(CouponRedeemed, match="at SH02"):
            branch.redeem_coupon(branch.owner, c)


def test_a_forged_entry_lowering_sh01s_coupon_right_is_refused(
        chain: dict[str, Ledger]) -> None:
    """SH02, with its own valid key, writes a redemption that lowers SH01's right:
    the write rule own-rights refuses the record at every replica, and the coupon
    stays SH01's to redeem."""
    sh01, hz01 = chain["SH01"], chain["HZ01"]
    m = member_with_cash(sh01)
    c = sh01.issue_coupon(sh01.owner, m, off=1000)["coupon"]
    sync_all(chain)
    _forged_by_sh02(chain, m, {"kind": "coupon_use", "amount": 0, "coupon": c,
                                "deltas": [[f"cpn:{c}", "SH01", -1]]}, "own-rights")
    for victim in (sh01, hz01):
        assert victim.coupon_view(c)["status"] == "available"
    assert sh01.redeem_coupon(sh01.owner, c)["node"] == "SH01"


def _forged_by_sh02(chain: dict[str, Ledger], member: str, fields: dict[str, Any],
                    rule: str) -> None:
    """SH02 signs a record of one forged entry (`fields` for `member`): SH01 and HZ01
    refuse it by `rule`, block SH02, and change nothing."""
    forger = Forger(chain["SH02"])
    eid = HybridClock("SH02").mint()
    forged = {"id": eid, "member": member, "node": "SH02", "op": "x", "at": id_time_ms(eid),
              **fields}

    def put(doc: Doc[Any]) -> None:
        doc.get("entries", type=Map)[eid] = forged

    forger.write(entry_doc(eid, chain["SH01"].storage.day_of), put)
    for victim in (chain["SH01"], chain["HZ01"]):
        before = data_snapshot(victim, [member])
        victim.apply_batch(forger.batch())
        assert [(f["node"], f["rule"]) for f in victim.faults()] == [("SH02", rule)]
        assert data_snapshot(victim, [member]) == before


def test_a_branch_cannot_make_itself_a_new_unit_of_a_redeemed_coupon(
        chain: dict[str, Ledger]) -> None:
    """SH02, with its own valid key, gives itself a fresh unit of a coupon SH01 issued
    and redeemed (a `coupon` entry of its own raising that coupon's purse, which no
    rule on rights forbids: raising is what a top-up does): the write rule
    coupon-unit refuses the record at every replica, and the coupon stays redeemed."""
    sh01, hz01 = chain["SH01"], chain["HZ01"]
    m = member_with_cash(sh01)
    c = sh01.issue_coupon(sh01.owner, m, off=1000)["coupon"]
    sh01.redeem_coupon(sh01.owner, c)
    sync_all(chain)
    _forged_by_sh02(chain, m, {"kind": "coupon", "amount": 1000,
                                "deltas": [[f"cpn:{c}", "SH02", 1]]}, "coupon-unit")
    for victim in (sh01, hz01):
        assert victim.coupon_view(c)["status"] == "redeemed"


# A hypothesis property: any interleaving of attempts at three partitioned branches,
# with some of them meeting and the right moving, then everyone syncing.
NODES = ("SH01", "SH02", "HZ01")
steps = st.lists(st.one_of(
    st.tuples(st.just("redeem"), st.sampled_from(NODES)),
    st.tuples(st.just("debit"), st.sampled_from(NODES)),
    st.tuples(st.just("give"), st.sampled_from(NODES), st.sampled_from(NODES)),
    st.tuples(st.just("meet"), st.sampled_from(NODES), st.sampled_from(NODES)),
), max_size=14)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """Three branches that all know a member and her coupon, held at SH01."""
    root = tmp_path_factory.mktemp("coupon-chain")
    ledgers = {n: new_ledger(root, n) for n in NODES}
    m = member_with_cash(ledgers["SH01"])
    c = ledgers["SH01"].issue_coupon(ledgers["SH01"].owner, m, off=1000)["coupon"]
    sync_all(ledgers)
    for ledger in ledgers.values():
        ledger.close()
    return root, m, c


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=steps)
def test_any_interleaving_redeems_at_most_once(template: tuple[Path, str, str],
                                               plan: list[tuple[str, ...]]) -> None:
    root, m, c = template
    with tempfile.TemporaryDirectory() as tmp:
        for n in NODES:
            shutil.copytree(root / n.lower(), Path(tmp) / n.lower())
        ledgers = {n: Ledger.open(Path(tmp) / n.lower(), synchronous="NORMAL") for n in NODES}
        try:
            accepted = []
            for step in plan:
                here = ledgers[step[1]]
                try:
                    if step[0] == "redeem":
                        accepted.append(here.redeem_coupon(here.owner, c)["id"])
                    elif step[0] == "debit":
                        accepted.append(here.debit(here.owner, m, amount=2000, pay="cash",
                                                   coupon=c)["id"])
                    elif step[0] == "give":
                        if here.grant_rights(m, f"cpn:{c}", step[2], 1) is not None:
                            assert step[2] != step[1]
                    elif step[1] != step[2]:
                        sync(here, ledgers[step[2]])
                except (CouponElsewhere, CouponRedeemed):
                    pass
            assert len(accepted) <= 1
            sync_all(ledgers)
            views = []
            for ledger in ledgers.values():
                assert [e["id"] for e in redemptions(ledger, c)] == accepted
                rights = ledger.storage.conn.execute(
                    "SELECT node, amount FROM rights WHERE purse = ?", (f"cpn:{c}",)).fetchall()
                assert all(a >= 0 for _n, a in rights)
                assert sum(a for _n, a in rights) == 1 - len(accepted)
                assert ledger.storage.conn.execute(
                    "SELECT COUNT(*) FROM deferred").fetchone() == (0,)
                views.append(ledger.coupon_view(c))
            assert all(v == views[0] for v in views)
            assert views[0]["status"] == ("redeemed" if accepted else "available")
        finally:
            for ledger in ledgers.values():
                ledger.close()


# --- real node processes: the right fetched, and refused across a partition ---------------


@pytest.mark.slow
def test_nodes_fetch_the_right_and_a_partition_accepts_it_once(tmp_path: Path) -> None:
    from cluster import cluster, member_with_cash, wait_for
    from linkproxy import LinkProxy

    with cluster(tmp_path) as cl, LinkProxy() as to_sh02, LinkProxy() as to_hz01:
        sh01 = cl.add("SH01").start()
        to_sh02.target = to_hz01.target = sh01.sync_port
        sh02, hz01 = cl.add("SH02"), cl.add("HZ01")
        sh02.peers = [f"wss://127.0.0.1:{to_sh02.port}"]
        hz01.peers = [f"wss://127.0.0.1:{to_hz01.port}"]
        sh02.start()
        hz01.start()
        member = member_with_cash(sh01, "100.00")
        c = sh01.cli("coupon", "issue", "--member", member, "--off", "10.00",
                     "--json").json()["coupon"]
        for node in (sh02, hz01):
            wait_for(lambda node=node: node.cli("coupon", "show", "--coupon", c).code == 0,
                     what=f"the coupon at {node.name}")
        # Both cut off from SH01: each refused, naming where the coupon sits.
        to_sh02.cut()
        to_hz01.cut()
        wait_for(lambda: not sh02.connected() and not hz01.connected(), what="the partition")
        for node in (sh02, hz01):
            r = node.cli("coupon", "redeem", "--coupon", c, "--json")
            assert r.code == 1 and json.loads(r.out)["error"] == "rights_elsewhere"
            assert f"coupon {c} is held at branch SH01" in r.err
        # SH02 reconnects and is served: its node fetches the right from SH01.
        to_sh02.heal()
        wait_for(lambda: "SH01" in sh02.connected(), what="SH02 back with SH01")
        used = sh02.cli("debit", "--member", member, "--amount", "30.00", "--coupon", c,
                        "--json").json()
        assert (used["node"], used["amount"], used["off"]) == ("SH02", 2000, 1000)
        late = hz01.cli("coupon", "redeem", "--coupon", c, "--json")  # still cut off
        assert late.code == 1 and "held at branch SH01" in late.err
        to_hz01.heal()
        wait_for(lambda: hz01.cli("coupon", "show", "--coupon", c, "--json").json()["status"]
                 == "redeemed", what="the redemption at HZ01")
        again = hz01.cli("coupon", "redeem", "--coupon", c, "--json")
        assert again.code == 1 and json.loads(again.out)["error"] == "coupon_redeemed"
        assert "at SH02 on" in again.err
        for node in (sh01, sh02, hz01):
            view = wait_for(lambda node=node: node.cli(
                "coupon", "show", "--coupon", c, "--json").json(), what="the coupon")
            assert (view["status"], view["at"], view["entry"]) == ("redeemed", "SH02",
                                                                   used["id"])

        # Presented at both at once, both connected: one of them gets it.
        second = sh01.cli("coupon", "issue", "--member", member, "--off", "1.00",
                          "--json").json()["coupon"]
        for node in (sh02, hz01):
            wait_for(lambda node=node: node.cli("coupon", "show", "--coupon",
                                                second).code == 0, what="the second coupon")
        results: dict[str, int] = {}

        def present(node: Any) -> None:
            results[node.name] = node.cli("coupon", "redeem", "--coupon", second).code

        threads = [threading.Thread(target=present, args=(n,)) for n in (sh02, hz01)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert sorted(results.values()) == [0, 1], results


def test_a_clock_a_little_behind_books_no_redemption_after_the_coupon_expired(
        tmp_path: Path) -> None:
    """SH02's clock is 90 s behind SH01's, under the limit at which peers correct it.
    After midnight SH01 refuses the coupon that expired the day before; SH02, having
    taken SH01's entry of after midnight, mints past it and books on the new day, but
    checked the coupon on its clock's day and redeemed it."""
    sh01_clock, sh02_clock = FakeClock(), FakeClock()
    a = new_ledger(tmp_path, "SH01", now_ms=sh01_clock)
    b = new_ledger(tmp_path, "SH02", now_ms=sh02_clock)
    try:
        name_branches(a, "SH01", "SH02")
        m = a.add_member(a.owner, name="张伟", phone="13812345678")
        a.topup(a.owner, m, 50000)
        sync(a, b)
        coupon = b.issue_coupon(b.owner, m, off=1000, valid_to="2026-01-01")["coupon"]
        sync(a, b)
        sh01_clock.ms = 1_767_283_230_000  # 2026-01-02 00:00:30 in Shanghai
        sh02_clock.ms = sh01_clock.ms - 90_000  # 2026-01-01 23:59:00
        with pytest.raises(CouponExpired, match="expired on 2026-01-01"):
            a.redeem_coupon(a.owner, coupon)
        a.topup(a.owner, m, 100)  # SH01's entry of after midnight reaches SH02
        sync(a, b)
        assert b.today() == "2026-01-02"  # the day its next entry is booked on
        before = snapshot(b, [m])
        with pytest.raises(CouponExpired, match="expired on 2026-01-01"):
            b.redeem_coupon(b.owner, coupon)
        assert snapshot(b, [m]) == before
    finally:
        a.close()
        b.close()


def test_a_members_coupon_list_reads_their_entries_once_not_once_per_coupon_redeemed(
        shop: Ledger) -> None:
    """The counter lists a member's coupons at every lookup: each coupon redeemed
    searched all of the member's entries for its redemption (800 coupons, 1.4 s; a liar
    writes them cheaply). Counted, not timed: twice the coupons, about twice the work;
    and each redeemed coupon still says where and when."""
    o = shop.owner

    def member_with(n: int, phone: str) -> str:
        m = member_with_cash(shop, phone=phone)
        for _ in range(n):
            shop.redeem_coupon(o, shop.issue_coupon(o, m, off=1)["coupon"])
        return m

    few, many = member_with(20, "13800000011"), member_with(80, "13800000012")
    listed: list[list[dict[str, Any]]] = []
    steps = [sqlite_steps(shop, lambda m=m: listed.append(shop.coupons(m)))
             for m in (few, many)]
    assert steps[1] <= 6 * steps[0], steps  # four times the coupons; 14x before
    assert len(listed[1]) == 80
    assert {(v["status"], v["at"]) for v in listed[1]} == {("redeemed", "SH01")}
    assert all(v["entry"] and v["on"] for v in listed[1])
