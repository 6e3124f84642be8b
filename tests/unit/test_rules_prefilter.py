"""Screening (rules/prefilter.py): skipping an incremental rule for a batch never changes
what fires. The same events through an engine that screens and one that runs every rule
on every batch must give the same firings, for the shipped rules and for generated
hostile ones (mixed types, NULLs, case, double-quoted literals, subqueries, 'now', joins,
errors at run time)."""

from __future__ import annotations

import itertools
import random
import re
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlglot import exp, parse_one

from daemoneye.rules.engine import Engine
from daemoneye.rules.live import EventIn
from daemoneye.rules.model import Rule
from daemoneye.rules.prefilter import PieceFinder, _trie_pattern, screen_of, screening_sql

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "rules"

NAMES = ["sh", "bash", "Bash", "nginx", "xmrig", "ls", "python3", "5", ""]
PATHS = ["/tmp/x", "/TMP/y", "/dev/shm/z", "/usr/bin/ls", "/bin/bash", "/opt/gen1", ""]
WORDS = ["-c", "/dev/tcp/1.2.3.4/4444", "--donate-level", "STRATUM+TCP://pool", "%", "_", "é"]
TEXT_COLUMNS = ["name", "path", "cmdline", "cwd", "parent_name", "username", "state", "tty"]
INT_COLUMNS = ["uid", "euid", "pid", "parent", "on_disk", "threads"]
LIKES = ["%sh%", "/tmp/%", "%BASH%", "_s", "%/dev/tcp/%", "%stratum%", "%\\%%", "%é%", "%"]


def screen(sql: str) -> tuple[str | None, tuple]:
    tree = parse_one(sql, read="sqlite")
    table = tree.args["from_"].this
    return screen_of(tree, table.name, table.alias or table.name)


# --- what a screen keeps and drops -------------------------------------------------------


def test_needs_come_from_text_equalities_and_in_lists() -> None:
    sql = "SELECT pid FROM processes WHERE name IN ('sh', 'bash') AND path = '/bin/x' AND uid = 0"
    text, needs = screen(sql)
    assert needs == (
        ("in", "name", frozenset({"sh", "bash"})),
        ("in", "path", frozenset({"/bin/x"})),
    )
    assert text == "(name IN ('sh', 'bash')) AND (path = '/bin/x') AND (uid = 0)"


def test_or_and_like_needs() -> None:
    text, needs = screen(
        "SELECT pid FROM processes WHERE name = 'a' OR path LIKE '/TMP/%x_y%' AND uid = 0"
    )
    assert text == "(name = 'a' OR path LIKE '/TMP/%x_y%' AND uid = 0)"
    # AND binds tighter: the uid term has no need, so the AND needs only the LIKE pieces
    # (folded as SQLite folds ASCII)
    like = ("like", "path", ("/tmp/", "x", "y"))
    assert needs == (("any", "", (("in", "name", frozenset({"a"})), like)),)


def test_no_needs_from_negations_escapes_globs_or_an_unknown_alternative() -> None:
    for where in (
        "name NOT LIKE '%a%'",
        "NOT name IN ('a')",
        "name NOT IN ('a')",
        "name LIKE '%a%' ESCAPE '!'",
        "name GLOB 'a*'",
        "name LIKE '%'",
        "name = 'a' OR uid = 0",
        "lower(name) = 'a'",
        "uid IN ('0')",  # not a TEXT column: affinity would convert
        "name IN ('a', 5)",
    ):
        assert screen(f"SELECT pid FROM processes WHERE {where}")[1] == (), where


def test_what_cannot_be_judged_on_the_row_alone_is_dropped() -> None:
    sql = (
        "SELECT pid FROM processes WHERE parent IN (SELECT pid FROM processes WHERE name = 'x')"
        " AND start_time > strftime('%s', 'now') - 5 AND random() > 0 AND name = 5"
        " AND \"bash\" = name AND unixepoch() > 0 AND path = '/x'"
    )
    text, needs = screen(sql)
    # only the integer comparison (no need: not text) and the path equality remain;
    # the double-quoted "bash" may be SQLite's string literal, so it is left to the rule
    assert text == "(name = 5) AND (path = '/x')"
    assert needs == (("in", "path", frozenset({"/x"})),)


def test_joins_screen_only_on_the_driving_alias() -> None:
    sql = (
        "SELECT p.pid FROM processes p JOIN processes pp ON p.parent = pp.pid "
        "WHERE pp.name = 'nginx' AND p.name IN ('sh') AND name = 'x'"
    )
    text, needs = screen(sql)
    assert text == "(name IN ('sh'))"
    assert needs == (("in", "name", frozenset({"sh"})),)


def test_no_where_nothing_to_screen() -> None:
    assert screen("SELECT pid FROM processes") == (None, ())


def test_screening_statements_are_chunked() -> None:
    statements = screening_sql("processes", [f"(pid = {i})" for i in range(450)])
    assert [n for _, n in statements] == [200, 200, 50]
    assert all(sql.endswith("FROM processes WHERE rowid >= ?") for sql, _ in statements)


# --- the differential property ---------------------------------------------------------------


_ticks = itertools.count(100)


def record(rnd: random.Random, pid: int, ppid: int) -> dict:
    path = rnd.choice(PATHS)
    return {
        "pid": pid,
        "ppid": ppid,
        "startTicks": next(_ticks),
        "startTime": time.time() - rnd.choice([0, 100]),
        # not only text: a test record may hold what the wire never does (SQLite's TEXT
        # affinity stores 5 as '5'; None is NULL)
        "name": rnd.choice([*NAMES, 5, None]),
        "exePath": path,
        "cmdline": [path, *rnd.sample(WORDS, rnd.randrange(3))],
        "cwd": rnd.choice(["/", "/tmp", "/srv/gen5/www"]),
        "uid": rnd.choice([0, 1000]),
        "euid": rnd.choice([0, 1000]),
        "username": rnd.choice(["root", "user", ""]),
        "onDisk": rnd.choice([-1, 0, 1]),
        "threads": rnd.randrange(3),
        "tty": rnd.choice(["", "", "pts/0"]),  # mostly none, as daemons (see _rank)
    }


def workload(seed: int, n: int) -> list[tuple[str, dict]]:
    rnd = random.Random(seed)
    live: dict[int, dict] = {}
    out = []
    for _ in range(n):
        roll = rnd.random()
        if roll < 0.5 or not live:
            pid = rnd.randrange(2, 40)
            rec = record(rnd, pid, rnd.choice([1, *live]))
            live[pid] = rec
            out.append(("start", rec))
        elif roll < 0.75:
            pid = rnd.choice(list(live))
            rec = {**live[pid], "name": rnd.choice([*NAMES, 5]), "euid": rnd.choice([0, 1000])}
            live[pid] = rec
            out.append(("modify", rec))
        elif roll < 0.9:
            out.append(("stop", live.pop(rnd.choice(list(live)))))
        else:
            rec = live[rnd.choice(list(live))]
            out.append(("suspicious", rec))
    return out


def leaf(qualifier: str) -> st.SearchStrategy[str]:
    q = qualifier
    text = st.sampled_from(TEXT_COLUMNS).map(lambda c: q + c)
    ints = st.sampled_from(INT_COLUMNS).map(lambda c: q + c)
    value = st.sampled_from([*NAMES, *PATHS, "pts/0"]).map(
        lambda v: "'" + v.replace("'", "''") + "'"
    )
    return st.one_of(
        st.tuples(text, value).map(lambda t: f"{t[0]} = {t[1]}"),
        st.tuples(value, text).map(lambda t: f"{t[0]} = {t[1]}"),
        st.tuples(text, st.lists(value, min_size=1, max_size=3)).map(
            lambda t: f"{t[0]} IN ({', '.join(t[1])})"
        ),
        st.tuples(text, st.sampled_from(LIKES)).map(lambda t: f"{t[0]} LIKE '{t[1]}'"),
        st.tuples(text, st.sampled_from(LIKES)).map(lambda t: f"{t[0]} LIKE '{t[1]}' ESCAPE '\\'"),
        st.tuples(ints, st.sampled_from(["=", "!=", "<", ">="]), st.integers(-1, 1000)).map(
            lambda t: f"{t[0]} {t[1]} {t[2]}"
        ),
        st.tuples(text, st.integers(0, 6)).map(lambda t: f"{t[0]} = {t[1]}"),  # mixed types
        st.sampled_from(TEXT_COLUMNS).map(lambda c: f'"{c}" = "bash"'),  # quoted literal
        st.just(f"{q}parent_name IS NULL"),
        st.just(f"length({q}cmdline) > 12"),
        st.just(f"regex_match({q}cmdline, '(tcp|stratum)', 1) IS NOT NULL"),
        st.just(f"lower({q}name) = 'bash'"),
        st.just(f"{q}start_time <= CAST(strftime('%s', 'now') AS INTEGER) - 50"),
        st.just(f"{q}parent IN (SELECT pid FROM processes WHERE name = 'nginx')"),
        st.just(f"abs(-9223372036854775807 - {q}threads) > 0"),  # overflows at threads 1
    )


def condition(qualifier: str) -> st.SearchStrategy[str]:
    return st.recursive(
        leaf(qualifier),
        lambda inner: st.one_of(
            st.tuples(inner, inner).map(lambda t: f"({t[0]} AND {t[1]})"),
            st.tuples(inner, inner).map(lambda t: f"({t[0]} OR {t[1]})"),
            inner.map(lambda c: f"NOT ({c})"),
        ),
        max_leaves=4,
    )


def rule_sql() -> st.SearchStrategy[str]:
    single = st.tuples(st.sampled_from(["", "processes."]), st.data()).flatmap(
        lambda t: st.tuples(condition(t[0]), condition(t[0])).map(
            lambda c: f"SELECT pid, name FROM processes WHERE {c[0]} AND {c[1]}"
        )
    )
    joined = st.tuples(condition("p."), condition("pp.")).map(
        lambda c: (
            "SELECT p.pid, pp.name AS parent FROM processes p "
            f"JOIN processes pp ON p.parent = pp.pid WHERE {c[0]} AND {c[1]}"
        )
    )
    events = condition("").map(
        lambda c: f"SELECT pid, event FROM process_events WHERE event != 'modify' AND {c}"
    )
    return st.one_of(single, joined, events)


def run_both(rules: list[Rule], events: list[tuple[str, dict]], sizes: list[int]):
    results = []
    for screening in (True, False):
        disabled: list[str] = []
        engine = Engine(
            on_disable=lambda rule, why, out=disabled: out.append(rule.id), screening=screening
        )
        checked = [engine.validator.check(r) for r in rules]
        engine.load([c for c in checked if not hasattr(c, "reason")])
        fired = []
        at = 0
        for size in itertools.cycle(sizes):
            if at >= len(events):
                break
            chunk = events[at : at + size]
            at += size
            firings, _ = engine.apply([EventIn(k, dict(r)) for k, r in chunk])
            fired.append([(f.rule.id, f.identity, sorted(f.row.items())) for f in firings])
        results.append((fired, disabled, engine.screened_out))
    return results


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sqls=st.lists(rule_sql(), min_size=1, max_size=8),
    seed=st.integers(0, 10_000),
    sizes=st.lists(st.integers(1, 80), min_size=1, max_size=4),
)
def test_hypothesis_screening_never_changes_what_fires(sqls, seed, sizes) -> None:
    rules = [Rule(id=f"r{i}", name=f"r{i}", sql=sql) for i, sql in enumerate(sqls)]
    (fired, disabled, _), (want, want_disabled, _) = run_both(rules, workload(seed, 120), sizes)
    # The one difference: a rule's run-time error is seen only on batches where the rule
    # runs. Without screening, a rule failing on a row it could never match (say its
    # `abs()` overflows on a row whose name is not the one it wants) is disabled; with
    # screening it may not be run on that batch at all. A rule is never disabled *only*
    # with screening, and every rule that neither disables fires exactly the same.
    assert set(disabled) <= set(want_disabled)
    gone = set(want_disabled)
    assert [[f for f in batch if f[0] not in gone] for batch in fired] == [
        [f for f in batch if f[0] not in gone] for batch in want
    ]
    if not want_disabled:
        assert fired == want


def test_shipped_and_generated_rules_fire_the_same_and_most_runs_are_skipped() -> None:
    engine = Engine()
    checked, problems = engine.validator.load([SHIPPED])
    assert not problems
    rules = [c.rule for c in checked]
    shapes = [
        "SELECT pid, path FROM processes WHERE path LIKE '%/gen{i}%'",
        "SELECT pid, name FROM processes WHERE name = 'gen{i}' AND uid = 0",
        "SELECT p.pid, pp.name FROM processes p JOIN processes pp ON p.parent = pp.pid "
        "WHERE pp.name = 'nginx' AND p.name IN ('sh', 'bash')",
        "SELECT pid, path FROM process_events WHERE event = 'stop' AND path = '/opt/gen{i}'",
    ]
    rules += [
        Rule(id=f"gen-{i}", name=f"gen {i}", sql=shapes[i % len(shapes)].format(i=i))
        for i in range(20)
    ]
    events = workload(7, 400)
    events += [("start", {**record(random.Random(1), 77, 1), "exePath": "/tmp/gen3/x"})]
    (fired, disabled, skipped), (want, _, not_skipped) = run_both(rules, events, [1, 16, 100])
    assert fired == want
    assert sum(len(f) for f in fired) > 10  # the workload does make rules fire
    assert not disabled
    assert not_skipped == 0
    assert skipped > 0.5 * len(rules) * len(fired)  # most rule runs were skipped


def test_a_screen_that_fails_alone_is_dropped_and_its_rule_still_decides() -> None:
    # the screen errors on threads = 1 (integer overflow), as does the rule itself: the
    # rule is disabled exactly as without screening, and the other rule keeps firing
    rules = [
        Rule(id="ok", name="ok", sql="SELECT pid FROM processes WHERE path LIKE '/tmp/%'"),
        Rule(
            id="bad",
            name="bad",
            sql="SELECT pid FROM processes WHERE abs(-9223372036854775807 - threads) > 0",
        ),
    ]
    events = [("start", {**record(random.Random(2), 9, 1), "threads": 1, "exePath": "/tmp/a"})]
    events += [("start", {**record(random.Random(3), 10, 1), "threads": 0, "exePath": "/tmp/b"})]
    (fired, disabled, _), (want, want_disabled, _) = run_both(rules, events, [1])
    assert fired == want
    assert [ids[0] for ids in fired[0]] == ["ok"] and [ids[0] for ids in fired[1]] == ["ok"]
    assert disabled == want_disabled == ["bad"]


def test_screen_of_every_shipped_incremental_rule_parses_back() -> None:
    engine = Engine()
    checked, _ = engine.validator.load([SHIPPED])
    engine.load(checked)
    for active in engine.rules.values():
        if active.plan.mode == "incremental" and active.plan.screen:
            assert isinstance(parse_one(active.plan.screen, read="sqlite"), exp.Expression)
            ((sql, _),) = screening_sql(active.plan.driver, [active.plan.screen])
            assert engine.sandbox.run(sql, 1.0, 1, (0,))[1] == [(None,)]  # no rows: NULL


def test_values_that_are_not_text_get_no_verdict() -> None:
    # SQLite stores 5 in a TEXT column as '5': the rules match it, so no screen may skip
    rules = [
        Rule(id="eq", name="eq", sql="SELECT pid FROM processes WHERE name = '5'"),
        Rule(id="in", name="in", sql="SELECT pid FROM processes WHERE name IN ('5', 'x')"),
        Rule(id="like", name="like", sql="SELECT pid FROM processes WHERE name LIKE '%5%'"),
        Rule(id="null", name="null", sql="SELECT pid FROM processes WHERE name IS NULL"),
    ]
    rnd = random.Random(4)
    events = [("start", {**record(rnd, 3, 1), "name": 5}), ("start", record(rnd, 4, 1))]
    events += [("start", {**record(rnd, 6, 1), "name": None})]
    (fired, _, _), (want, _, _) = run_both(rules, events, [3])
    assert fired == want
    assert [f[0] for f in fired[0]] == ["eq", "in", "like", "null"]


def test_a_rule_whose_branches_each_need_a_name_is_indexed_by_their_union() -> None:
    engine = Engine()
    rule = Rule(
        id="either",
        name="either",
        sql="SELECT pid FROM processes WHERE (name = 'touch' AND cmdline LIKE '% -t %') "
        "OR (name IN ('at', 'batch') AND uid = 0)",
    )
    engine.load([engine.validator.check(rule)])
    screening = engine.lanes()["processes"].screening
    assert screening is not None and not screening.checked and not screening.free
    (by_value,) = screening.index.values()
    assert set(by_value) == {"touch", "at", "batch"}
    # a batch with none of those names does not even reach the screening statement
    other = [EventIn("start", {"pid": 7, "startTicks": 7, "name": "ls", "cmdline": ["ls"]})]
    assert engine.apply(other)[0] == [] and engine.rules["either"].runs == 0
    hit = {"pid": 8, "startTicks": 8, "name": "touch", "cmdline": ["touch", "-t", "1", "f"]}
    assert [f.row["pid"] for f in engine.apply([EventIn("start", hit)])[0]] == [8]


def test_a_rule_is_indexed_under_its_selective_need_not_the_empty_tty_of_every_daemon() -> None:
    # `tty = ''` holds for nearly every process (daemons, services, build jobs): a rule
    # indexed under it would be judged on every batch; under its names, on almost none
    engine = Engine()
    rules = [
        Rule(id="su", name="su", sql="SELECT pid FROM processes WHERE tty = '' "
             "AND name IN ('su', 'sudo') AND cmdline LIKE '% -%'"),
        Rule(id="pick", name="pick", sql="SELECT pid FROM processes WHERE tty = '' "
             "AND (name = 'xclip' OR cmdline LIKE '%/dev/input/%')"),
        Rule(id="glob", name="glob", sql="SELECT pid FROM processes WHERE cmdline LIKE '%[%' "
             "AND cmdline LIKE '%--evil%'"),
    ]  # fmt: skip
    engine.load([engine.validator.check(r) for r in rules])
    screening = engine.lanes()["processes"].screening
    assert screening is not None
    daemon = [{"pid": 7, "startTicks": 7, "name": "true", "cmdline": ["true", "[x]"]}]
    rows = [
        p.row for p in engine.tables.apply([EventIn("start", r) for r in daemon]).procs.values()
    ]
    assert screening.candidates(rows, [{} for _ in rows]) == []
    # and each still fires on what it is for (the differential tests hold the rest)
    hits = [
        {"pid": 8, "startTicks": 8, "name": "sudo", "cmdline": ["sudo", "-i"]},
        {"pid": 9, "startTicks": 9, "name": "cat", "cmdline": ["cat", "/dev/input/event0"]},
        {"pid": 10, "startTicks": 10, "name": "x", "cmdline": ["x", "[", "--evil"]},
    ]
    fired = engine.apply([EventIn("start", r) for r in hits])[0]
    assert sorted((f.rule.id, f.row["pid"]) for f in fired) == [
        ("glob", 10),
        ("pick", 9),
        ("su", 8),
    ]


@settings(max_examples=300, deadline=None)
@given(
    st.sets(st.text("ab/.é*", min_size=1, max_size=4), min_size=1, max_size=30),
    st.lists(st.text("ab/.é*x", max_size=24), min_size=1, max_size=5),
)
def test_piece_finder_finds_what_a_substring_test_per_piece_finds(pieces, texts) -> None:
    """Overlapping pieces, pieces within pieces, regex metacharacters: the same groups."""
    by_piece = {p: [f"rule-{p}"] for p in pieces}
    finder = PieceFinder(by_piece)
    for text in texts:
        want = {g for p in pieces if p in text for g in by_piece[p]}
        assert {g for group in finder.groups_in(text) for g in group} == want, text


@settings(max_examples=300, deadline=None)
@given(
    st.sets(st.text("ab/.é*(", min_size=1, max_size=5), min_size=1, max_size=30),
    st.lists(st.text("ab/.é*(x", max_size=30), min_size=1, max_size=5),
)
def test_piece_finder_trie_finds_the_longest_piece_at_the_leftmost_position(pieces, texts) -> None:
    """The trie regex stops where the alternation of the pieces (longest first) stops:
    the same position and the same piece, search after search."""
    alternation = re.compile("|".join(map(re.escape, sorted(pieces, key=len, reverse=True))))
    trie = re.compile(_trie_pattern(pieces))
    for text in texts:
        for at in range(len(text) + 1):
            a, b = alternation.search(text, at), trie.search(text, at)
            assert (a and (a.start(), a.group())) == (b and (b.start(), b.group())), (text, at)


def test_piece_finder_takes_pieces_nested_beyond_the_stack() -> None:
    """A piece whose every prefix is a piece nests a group per character: past what the
    regex compiler can recurse into, the finder falls back to the plain alternation."""
    long = "ab" * 550
    by_piece = {long[:n]: [n] for n in range(1, len(long) + 1)}
    finder = PieceFinder(by_piece)
    assert {g for group in finder.groups_in("xx" + long[:7] + "x") for g in group} == set(
        range(1, 8)
    )
