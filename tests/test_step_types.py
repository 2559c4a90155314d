"""Steps' lock, effect and guard are enums (otelmig.ddl) that render as the
words PostgreSQL and `plan` have always used: in text, in JSON, on every Python."""

import json

from conftest import load_legacy, run_cli, sql
from otelmig.ddl import Concurrent, Effect, Guard, Lock, Statement, lock_taken

PLAN_REFUSAL_EFFECT = "stops the upgrade (exit 8)"


def test_enum_members_render_as_their_words():
    for member in list(Lock) + list(Effect) + list(Guard):
        assert "%s" % member == "{}".format(member) == str(member) == member.value
        assert json.loads(json.dumps({"field": member})) == {"field": member.value}
    assert lock_taken(Statement("SELECT 1"), False) == "" and not lock_taken(Statement("SELECT 1"), False)
    assert lock_taken(Concurrent("x", lock=Lock.SHARE), True) == "SHARE UPDATE EXCLUSIVE"
    assert lock_taken(Concurrent("x", lock=Lock.SHARE), False) == "SHARE"


def test_plan_prints_and_serialises_the_words(db_url):
    """A legacy store's plan renders the enums as words; no enum name leaks."""
    load_legacy(db_url, traces=30)
    sql(db_url, "analyze")
    text = run_cli("plan", url=db_url)
    result = run_cli("plan", "--format", "json", url=db_url)
    assert text.code == result.code == 5, (text.err, result.err)
    statements = [s for revision in result.json()["pending"] for s in revision["statements"]]
    locks = {s["lock"] for s in statements}
    assert {"ACCESS EXCLUSIVE", "SHARE UPDATE EXCLUSIVE"} <= locks
    assert locks <= {m.value for m in Lock} | {"none"}
    assert {s["effect"] for s in statements} <= {m.value for m in Effect} | {PLAN_REFUSAL_EFFECT}
    assert "lock: ACCESS EXCLUSIVE; catalog only" in text.out and "lock: SHARE UPDATE EXCLUSIVE" in text.out
    for name in ("Lock.", "Effect.", "Guard."):
        assert name not in text.out and name not in result.out
