"""Cards: issue, swipe (status, expiry, PIN), report lost or found, return, replace."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pycrdt import Array, Map

from crdtledger import views
from crdtledger.auth import TooManyAttempts, acting_client, check_secret, hash_secret
from crdtledger.commit import Write, put
from crdtledger.errors import CardInactive, CardLost, InvalidInput, NotFound, WrongPin
from crdtledger.inputs import check_card_no, check_date
from crdtledger.members import Members
from crdtledger.model import CARD_TYPES, PIN, CardStatus, CardType, is_one_of, member_doc
from crdtledger.money import check_amount
from crdtledger.projection import CARD_EVENTS_WRITABLE, SEEN, card_frontier


class Cards(Members):
    """Card status is a growing list of events, so nothing is ever deleted from a
    card's Map; the status is that of the events no later one has seen."""

    # --- cards --------------------------------------------------------------

    def issue_card(self, operator: str, member: str, card_no: str, *,
                   card_type: str = "stored_value", pin: str | None = None,
                   expiry: str = "", fee: int = 0) -> str:
        self.authorise(operator, "card.issue")
        self._live_member(member)
        card_no = check_card_no(card_no)
        if not is_one_of(card_type, CARD_TYPES):
            raise InvalidInput(f"unknown card type {card_type!r}; one of {CARD_TYPES}")
        if expiry:
            check_date(expiry, "expiry")
            # A card whose last day has passed was issued (and its fee taken) only to be
            # refused at its first swipe; a coupon's valid-to is refused alike.
            if expiry < self.today():
                raise InvalidInput(f"expiry {expiry} has passed already (today is "
                                   f"{self.today()}): a card is valid through its expiry day")
        fee = check_amount(fee, allow_zero=True)
        self._card_free(card_no)
        cid = self.clock.mint()
        card = self._card_record(cid, member, card_no, card_type, pin, expiry)
        entry = self._entry("card", member, amount=fee, paid=fee, card=cid, op=operator)
        self._write(put(member_doc(member), "cards", cid, Map(card)), self._entry_write(entry))
        return cid

    def _card_record(self, cid: str, member: str, card_no: str, card_type: CardType,
                     pin: str | None, expiry: str) -> dict[str, Any]:
        if pin is not None and not PIN.match(pin):
            raise InvalidInput("a card PIN is 4 to 8 digits")
        return {"card_no": card_no, "member": member, "type": card_type,
                "pin": hash_secret(pin) if pin else "", "expiry": expiry, "node": self.node,
                "events": Array([[cid, "active", ""]])}

    def _card_free(self, card_no: str) -> None:
        row = self.storage.conn.execute(
            "SELECT member FROM cards WHERE card_no = ? AND status IN ('active', 'lost')",
            (card_no,),
        ).fetchone()
        if row:
            raise InvalidInput(f"card {card_no} is already issued (member {row[0]})")

    def card(self, card_no: str, member: str | None = None) -> dict[str, Any]:
        """The card with this number: the active one if any, else the newest; `member`:
        the one of that member (a number two branches issued while apart)."""
        return self._card(card_no, member)[0]

    def _card(self, card_no: str, member: str | None = None
              ) -> tuple[dict[str, Any], list[str]]:
        """`card`, and the members an active or lost card of this number is held by:
        more than one where two branches issued it while apart (read from the same
        rows: a swipe pays no second query)."""
        card_no = check_card_no(card_no)  # stored upper-case by issue_card
        conn = self.storage.conn
        rows = conn.execute(
            "SELECT id, member, status, body FROM cards WHERE card_no = ? "
            "ORDER BY status = 'active' DESC, status = 'lost' DESC, id DESC",
            (card_no,),
        ).fetchall()
        held = {r[1] for r in rows if r[2] in ("active", "lost")}
        memo: dict[str, str] = {}  # (rows of one number: a chain of merges once)
        if len(held) > 1:  # members merged since may hold one each: one holder
            held = {views.canonical(conn, m, memo) for m in held}
        if member is not None:
            want = views.canonical(conn, member, memo)
            rows = [r for r in rows if views.canonical(conn, r[1], memo) == want]
            if not rows:
                raise NotFound(f"card {card_no} is not member {member}'s")
        if not rows:
            raise NotFound(f"unknown card {card_no}")
        cid, owner, status, body = rows[0]
        data = json.loads(body)
        return ({"id": cid, "card_no": card_no, "member": owner, "status": status,
                 "type": data.get("type"), "expiry": data.get("expiry", ""),
                 "has_pin": bool(data.get("pin"))}, sorted(held))

    def _pin_hash(self, card_id: str) -> str:
        row = self.storage.conn.execute(
            "SELECT body FROM cards WHERE id = ?", (card_id,)).fetchone()
        return str(json.loads(row[0]).get("pin", "")) if row else ""

    def use_card(self, card_no: str, pin: str | None = None, *,
                 throttle: bool = True) -> dict[str, Any]:
        """Resolve a swiped card to its member, refusing lost, replaced, expired cards
        and wrong PINs with a message for the cashier, and a number issued to two
        members (by two branches while they were apart): it would pay from either.
        `throttle=False`: the caller limits guesses its own way (the members' pages,
        open to the internet, whose guesses must not lock the card at the till)."""
        card, holders = self._card(card_no)
        if len(holders) > 1:
            raise CardInactive(
                f"card {card['card_no']} was issued to {len(holders)} members "
                f"({', '.join(holders)}) by branches while they were apart: nobody pays "
                "with it until all but one have a new card (card replace --card "
                f"{card['card_no']} --member MEMBER --new NUMBER)")
        if card["status"] == "lost":
            raise CardLost(f"card {card_no} is reported lost")
        if card["status"] != "active":
            raise CardInactive(f"card {card_no} is {card['status']}")
        if card["expiry"]:  # a clock set back would take it after its expiry
            self.check_clock_for(f"card {card_no}'s expiry", until=str(card["expiry"]))
        if card["expiry"] and card["expiry"] < self.today():
            raise CardInactive(f"card {card_no} expired on {card['expiry']}")
        pin_hash = self._pin_hash(card["id"]) if card["has_pin"] else ""
        if not pin_hash:
            return card
        if pin is None:  # not typed at all: not a guess, nothing to count
            raise WrongPin(f"wrong PIN for card {card_no}")
        # Wrong PINs are throttled as logins are (crdtledger.throttle), per card and
        # per operator asking, at every door that takes a card and its PIN (the API,
        # the counter, the command line through the node; the members' pages count
        # their own): a PIN has few digits. Locked, the PIN is not even checked.
        key = f"card:{card['card_no']}"
        client = acting_client(key)
        wait = self.pins.begin(key, client) if throttle else 0
        if wait:
            raise TooManyAttempts(f"too many wrong PINs for card {card['card_no']} or by "
                                  f"this operator; try again in {wait} s", wait)
        if not check_secret(pin, pin_hash):
            raise WrongPin(f"wrong PIN for card {card_no}")
        if throttle:
            self.pins.succeeded(key, client)
        return card

    def _card_held(self, card_no: str, member: str | None) -> dict[str, Any]:
        """The card a loss report, a return or a replacement is about: where two
        branches issued the number to two members while apart, only the member named
        says which. The newest was taken: X's stolen card reported lost marked Y's,
        and X's replacement was written as Y's card, with Y's money behind it."""
        card, holders = self._card(card_no, member)
        if member is None and len(holders) > 1:
            raise InvalidInput(
                f"card {card['card_no']} was issued to {len(holders)} members "
                f"({', '.join(holders)}) by branches while they were apart: name whose "
                "card this is (--member MEMBER)")
        return card

    def _card_event(self, operator: str, permission: str, card_no: str, status: CardStatus,
                    allowed_from: tuple[CardStatus, ...], member: str | None) -> str:
        self.authorise(operator, permission)
        card = self._card_held(card_no, member)
        if card["status"] not in allowed_from:
            raise InvalidInput(f"card {card_no} is {card['status']}; cannot mark it {status}")
        if status in ("lost", "active") and self._card_events(card["id"]) >= CARD_EVENTS_WRITABLE:
            # Beyond MAX_CARD_EVENTS every replica would refuse the card (projection.py);
            # returning or replacing it ends it, so those stay open.
            raise InvalidInput(f"card {card_no} has been reported lost and found too often "
                               f"({CARD_EVENTS_WRITABLE} changes); replace it (补卡) instead")
        eid = self.clock.mint()
        self._write(self._card_status(card, (eid, status, "", operator)))
        return str(card["id"])

    def _card_events(self, card_id: str) -> int:
        row = self.storage.conn.execute(
            "SELECT json_array_length(body, '$.events') FROM cards WHERE id = ?",
            (card_id,)).fetchone()
        return int(row[0] or 0) if row else 0

    def _card_status(self, card: Mapping[str, Any], event: tuple[str, CardStatus, str, str]
                     ) -> Write:
        """Card status is a growing list of events [id, status, note, operator, seen]:
        `seen`, the ids of the events this writer knew of that no other had seen
        (read from the document inside the write), makes the event win over them
        whatever the clocks say (projection.card_frontier). Events written before the
        audit trail have no operator, those before causality no `seen`."""
        cid = str(card["id"])
        row = [*event, *[""] * (SEEN - len(event))]

        def append(root: Map[Any]) -> None:
            events = root[cid]["events"]
            events.append([*row, [e[0] for e in card_frontier(events.to_py())]])

        return Write(member_doc(str(card["member"])), "cards", cid, append)

    def report_lost(self, operator: str, card_no: str, member: str | None = None) -> str:
        return self._card_event(operator, "card.lost", card_no, "lost", ("active",), member)

    def report_found(self, operator: str, card_no: str, member: str | None = None) -> str:
        return self._card_event(operator, "card.lost", card_no, "active", ("lost",), member)

    def return_card(self, operator: str, card_no: str, member: str | None = None) -> str:
        return self._card_event(operator, "card.return", card_no, "returned",
                                ("active", "lost"), member)

    def replace_card(self, operator: str, old_no: str, new_no: str, *,
                     pin: str | None = None, member: str | None = None) -> str:
        """补卡: a new card for the same member, carrying everything the old one did
        (type, expiry, PIN and any other field; packages and purses belong to the
        member and stay). `pin` gives the new card a new PIN instead of the old one;
        `member`: whose card, where two branches issued one number to two members."""
        self.authorise(operator, "card.replace")
        old = self._card_held(old_no, member)
        if old["status"] not in ("active", "lost"):
            raise InvalidInput(f"card {old_no} is {old['status']}; cannot replace it")
        new_no = check_card_no(new_no)
        self._card_free(new_no)
        cid = self.clock.mint()
        eid = self.clock.mint()
        row = self.storage.conn.execute(
            "SELECT body FROM cards WHERE id = ?", (old["id"],)).fetchone()
        carried = {k: v for k, v in json.loads(row[0]).items()
                   if k not in ("card_no", "member", "node", "events", "replaces")}
        # The type and expiry as the old card's record holds them (checked where it was
        # issued); its PIN hash as it is, so the member's PIN keeps working.
        card = {**carried, **self._card_record(cid, old["member"], new_no, old["type"], pin,
                                               str(old["expiry"]))}
        if pin is None:
            card["pin"] = str(carried.get("pin", ""))
        card["replaces"] = old["id"]
        self._write(self._card_status(old, (eid, "replaced", cid, operator)),
                    put(member_doc(str(old["member"])), "cards", cid, Map(card)))
        return cid
