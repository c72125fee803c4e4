"""Names through the API: no direction override (U+202E and its kin), and none of
invisible characters alone (a command-line and API probe, 13th round). The real API
on 127.0.0.1 against a real SQLite store."""

from __future__ import annotations

from pathlib import Path

from helpers import snapshot
from test_api import AMY_PW, BOSS_PW, Api, drive, new_member

from crdtledger.ledger import Ledger


def test_a_member_renamed_to_a_reordering_or_invisible_name_is_refused(
        tmp_path: Path) -> None:
    async def go(ledger: Ledger, api: Api) -> None:
        token = await api.login("boss", BOSS_PW)
        member = await new_member(api, token)
        for bad in ("\u202e三张", "\u200b", "\u2067王芳\u2069", " \u200d "):
            status, said = await api.call("PATCH", f"/members/{member}", {"name": bad},
                                          token=token)
            assert status == 400 and "direction overrides" in said["message"], said
            status, said = await api.call("POST", "/members", {"name": bad,
                                                               "phone": "13900000009"},
                                          token=token)
            assert status == 400, said
        assert ledger.member(member)["name"] == "王芳"
        status, said = await api.call("PATCH", f"/members/{member}",
                                      {"name": "王芳 🙂\u200d"}, token=token)
        assert status == 200 and said["name"] == "王芳 🙂\u200d", said

    drive(tmp_path, go)


def test_a_tag_typed_otherwise_is_the_same_tag(tmp_path: Path) -> None:
    """"VIP", "ＶＩＰ" (an input method's full width) and "vip" were three tags: a
    broadcast to the VIP segment reached the first member alone, removing "ｖｉｐ" from
    a member tagged VIP left her so tagged and said done, and adding "ＶＩＰ" to her
    gave her two VIP tags."""
    async def go(ledger: Ledger, api: Api) -> None:
        amy = await api.login("amy", AMY_PW)
        boss = await api.login("boss", BOSS_PW)
        members = [await new_member(api, amy, phone=f"1381234567{i}", tags=[tag],
                                    email=f"m{i}@example.com", promo="yes")
                   for i, tag in enumerate(("VIP", "ＶＩＰ", "vip", "V\u0406P"))]
        status, body = await api.call("POST", "/notices/broadcast", {
            "subject": "双十二", "text": "{name} 好", "tags": ["VIP"]}, token=boss)
        assert status == 201 and (body["segment"], body["queued"]) == (4, 4), body
        first = members[0]
        status, m = await api.call("PATCH", f"/members/{first}", {"tags_add": ["ＶＩＰ"]},
                                   token=amy)
        assert status == 200 and m["tags"] == ["VIP"], m
        status, m = await api.call("PATCH", f"/members/{first}", {"tags_remove": ["ｖｉｐ"]},
                                   token=amy)
        assert status == 200 and m["tags"] == [], m

    drive(tmp_path, go)


def test_an_email_typed_in_full_width_is_refused_saying_how_to_type_it(
        tmp_path: Path) -> None:
    """"ａｂｃ@qq.com" (an input method's full-width letters) was taken: another mailbox
    than abc@qq.com, where no notice reaches the member."""
    async def go(ledger: Ledger, api: Api) -> None:
        amy = await api.login("amy", AMY_PW)
        member = await new_member(api, amy, email="abc@qq.com")
        for typed, half in (("ａｂｃ@qq.com", "abc@qq.com"), ("abc＠ｑｑ．ｃｏｍ", "abc@qq.com")):
            status, said = await api.call("PATCH", f"/members/{member}", {"email": typed},
                                          token=amy)
            assert (status, said["error"]) == (400, "invalid_input"), said
            assert said["message"].endswith(f"type it as {half}"), said
            status, said = await api.call("POST", "/members", {
                "name": "李四", "phone": "13900000009", "email": typed}, token=amy)
            assert (status, said["error"]) == (400, "invalid_input"), said
        assert ledger.member(member)["email"] == "abc@qq.com"
        status, said = await api.call("PATCH", f"/members/{member}",
                                      {"email": "王芳@例子.中国"}, token=amy)
        assert status == 200 and said["email"] == "王芳@例子.中国", said

    drive(tmp_path, go)


def test_a_custom_field_named_otherwise_is_the_same_field(tmp_path: Path) -> None:
    """"来源\u200b" (a zero-width space after it) or "ＳＯＵＲＣＥ" beside a member's 来源
    and source was a second field: her profile showed 来源 twice, with two values."""
    async def go(ledger: Ledger, api: Api) -> None:
        amy = await api.login("amy", AMY_PW)
        member = await new_member(api, amy, custom={"来源": "大众点评", "source": "web"})
        status, m = await api.call("PATCH", f"/members/{member}", {
            "custom": {"来源\u200b": "美团", "ＳＯＵＲＣＥ": "app"}}, token=amy)
        assert status == 200 and m["custom"] == {"来源": "美团", "source": "app"}, m
        status, said = await api.call("POST", "/members", {
            "name": "李四", "phone": "13900000009",
            "custom": {"房号": "1", "房\u200b号": "2"}}, token=amy)
        assert (status, said["error"]) == (400, "invalid_input"), said
        assert "read as one" in said["message"], said

    drive(tmp_path, go)


def test_a_role_named_as_another_is_refused(tmp_path: Path) -> None:
    """A role "\u043ewner" (a Cyrillic о), "Manager" or "前台\u200b" beside owner, manager
    and 前台 was defined: the operators' list then said a cashier holds owner, or two
    前台 of other permissions, and the one granting picked by a name that reads as
    the other."""
    async def go(ledger: Ledger, api: Api) -> None:
        boss = await api.login("boss", BOSS_PW)
        status, body = await api.call("POST", "/roles", {
            "name": "前台", "permissions": ["member.add"]}, token=boss)
        assert status == 200, body
        before = snapshot(ledger)
        for name, reads_as in (("\u043ewner", "owner"), ("Manager", "manager"),
                               ("ＣＡＳＨＩＥＲ", "cashier"), ("前台\u200b", "前台")):
            status, body = await api.call("POST", "/roles", {
                "name": name, "permissions": ["member.add"]}, token=boss)
            assert (status, body["error"]) == (400, "invalid_input"), (name, body)
            assert f"reads as {reads_as}'s" in body["message"], (name, body)
        assert snapshot(ledger) == before
        status, body = await api.call("POST", "/roles", {   # 前台 itself is redefined
            "name": "前台", "permissions": ["member.add", "member.edit"]}, token=boss)
        assert status == 200, body

    drive(tmp_path, go)
