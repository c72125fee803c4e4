"""A stopped store's points lots CHANGED with sqlite3 (the owner, or anyone with the
PC): a lot's points raised or its expiry put later went unseen by `status --check`
(audit.unprojected compared every other projection with its documents, not the lots),
and the member was shown points never earned, or spent points that had expired. The
check now replays every group's lots from the entries and says which members' differ;
a spend stays bounded by the points the entries give this branch (its rights)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Cli
from helpers import new_ledger
from test_store_rows_edited import edit

from crdtledger import audit, views
from crdtledger.errors import InsufficientFunds
from crdtledger.ledger import Ledger

PHONE = "13812345678"


def shop(root: Path) -> tuple[Path, str, int]:
    """A branch whose member earned points on two sales and redeemed some:
    (its data directory, the member, the points she holds)."""
    with new_ledger(root, "SH01") as ledger:
        o = ledger.owner
        member = ledger.add_member(o, name="张伟", phone=PHONE)
        ledger.topup(o, member, 100_000)
        ledger.debit(o, member, amount=10_000)
        ledger.debit(o, member, amount=5_000)
        ledger.redeem_points(o, member, 30, "毛巾")
        held = int(ledger.balance(member)["points"])
        assert views.points(ledger, member)["usable"] == held > 0
        data = ledger.storage.dir
    return data, member, held


EDITS = {
    # Ten times the points the sales earned, shown at the counter.
    "raised": "UPDATE points_lots SET left = left * 10",
    # Never expiring: points past their expiry would be spent, never written off.
    "later": "UPDATE points_lots SET expires = '2099-12-31'",
    # A lot nobody earned.
    "added": "INSERT INTO points_lots(member, earned, expires, left) "
             "SELECT member, earned || 'x', expires, 5000 FROM points_lots LIMIT 1",
    # A lot gone: points the member earned no longer shown, never written off.
    "deleted": "DELETE FROM points_lots WHERE earned = (SELECT MIN(earned) FROM points_lots)",
}


@pytest.mark.parametrize("how", sorted(EDITS))
def test_a_points_lot_changed_by_hand_is_said_by_the_store_check(tmp_path: Path,
                                                                 how: str) -> None:
    data, member, _held = shop(tmp_path)
    with Ledger.open(data) as ledger:
        assert audit.unprojected(ledger) == {}  # an honest store: no word
    assert edit(data, EDITS[how]) >= 1
    with Ledger.open(data) as ledger:
        found = audit.unprojected(ledger)
        assert found == {"points_lots changed": [member]}, found
        # Reading is all it did: asked again, the same.
        assert audit.unprojected(ledger) == found


def test_the_store_check_names_the_lots_and_a_spend_is_bounded_by_the_entries(
        tmp_path: Path, cli: Cli) -> None:
    data, member, held = shop(tmp_path)
    edit(data, EDITS["raised"])
    with Ledger.open(data) as ledger:
        # The counter shows the raised lot (the table is what it reads) ...
        assert views.points(ledger, member)["usable"] == 10 * held
        # ... but a spend is held to the points rights the entries give this branch:
        # nothing beyond what was earned is redeemed, and nothing changes.
        with pytest.raises(InsufficientFunds):
            ledger.redeem_points(ledger.owner, member, held + 1, "电饭煲")
        assert ledger.balance(member)["points"] == held
    r = cli("status", "--check", data=data)
    assert ("EDITED store: rows of its tables differ from its documents, changed by hand: "
            "points_lots (1 member)") in r.out, r.out
    assert cli("status", "--check", "--json", data=data).json()["store_unprojected"] == {
        "points_lots changed": 1}
