"""
The soak's report: what the client saw, what restygate logged about it, and
whether the targets were met.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from datetime import datetime
from typing import Any, Counter as CounterType, Deque, Dict, List, NamedTuple, Optional, Sequence, Tuple

from soak_chaos import Backend, Chaos
from soak_procs import say
from soak_traffic import IDEMPOTENT, MIX, Record, by_cause, percentile

RSS_GROWTH_LIMIT = 0.20
# An answer from an instance counts as "from a critical one" only when Consul
# had said critical this long before the request started: discovery
# propagation (blocking query, rate limit) takes some time by design.
CRITICAL_GRACE = 2.0
DETAILED = 3
# Idempotent failures further apart than this start a new episode.
EPISODE_GAP = 1.0
EPISODES = 20
# restygate's retry budget (restygate/retry.py): 20 % of the requests of the
# last 10 s, at least 3 per second.
BUDGET_WINDOW = 10

# twistd's text log: "<time> [<namespace>#<level>] <message>"
_LINE = re.compile(r"^(?P<ts>\S+) \[(?P<system>[^\]]*)\] (?P<msg>.*)$")
# restygate's combined access line ends with: upstream dc service duration retries
_ACCESS = re.compile(
    r'"(?P<method>\S+) (?P<uri>\S+) [^"]*" (?P<status>\d{3}) \S+ "(?:[^"\\]|\\.)*" "(?:[^"\\]|\\.)*" '
    r"(?P<upstream>\S+) \S+ \S+ (?P<duration>\d+\.\d+) (?P<retries>\d+)$"
)
_RID = re.compile(r"/dc1/web/soak/(\d+)")
_RETRYING = re.compile(r"retrying on another instance after (?P<upstream>\S+) failed: (?P<reason>.*)$")
_FINAL = re.compile(r"upstream (?P<upstream>\S+) failed: (?P<reason>.*)$")
_EJECTING = re.compile(r"ejecting (?P<upstream>\S+) for (?P<seconds>\d+)s")
_RETURNS = re.compile(r"(?P<upstream>\S+) returns from ejection")
_PORT = re.compile(r"127\.0\.0\.1:\d+")


class Sample(NamedTuple):
    t: float
    rss_kib: Optional[int]
    fds: Optional[int]
    mark: str = ""


class LogFacts:
    """
    What restygate's log says, counted.
    """

    def __init__(self) -> None:
        self.access = 0
        self.access_status: CounterType[str] = Counter()
        self.retried_requests = 0
        self.retries = 0
        self.retry_lines = 0
        self.retry_reasons: CounterType[str] = Counter()
        self.ejections = 0
        self.ejection_seconds: CounterType[int] = Counter()
        self.returns = 0
        self.discovery_updates = 0
        self.final_failures: CounterType[str] = Counter()
        self.cut_short = 0
        self.tracebacks = 0
        self.other: CounterType[str] = Counter()
        # rid -> (access line, the nearest earlier final-failure line for its upstream, if any)
        self.details: Dict[int, Tuple[str, Optional[str]]] = {}
        # rid -> (upstream host:port, retries) of the failed requests asked about
        self.failed: Dict[int, Tuple[str, int]] = {}
        # epoch second -> [requests, retries], from the access log
        self.per_second: Dict[int, List[int]] = {}
        # (line number, epoch second, upstream host:port, seconds) of each
        # ejection; returns likewise without seconds.  Line numbers order
        # what happened within one second (a return and the next ejection).
        self.ejected_at: List[Tuple[int, int, str, int]] = []
        self.returned_at: List[Tuple[int, int, str]] = []


def _epoch(stamp: str) -> int:
    try:
        return int(datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").timestamp())
    except ValueError:
        return 0


def read_log(path: str, detailed: Sequence[int], failed_rids: Sequence[int]) -> LogFacts:
    """
    Count what restygate logged; for the request ids in C{failed}, note
    upstream and retries; for those in C{detailed}, keep their access line
    and the log line that says why the gateway gave up.
    """
    facts = LogFacts()
    wanted_ids = set(detailed)
    failed_ids = set(failed_rids)
    # Recent non-access lines: a request's "upstream X failed" line is logged
    # just before its access line, with other requests' lines in between.
    recent: Deque[str] = deque(maxlen=400)
    try:
        f = open(path, encoding="utf-8", errors="replace")
    except OSError:
        return facts
    with f:
        for number, raw in enumerate(f):
            line = raw.rstrip("\n")
            if line.startswith("\t") or "Traceback" in line:
                if "Traceback" in line:
                    facts.tracebacks += 1
                continue
            m = _LINE.match(line)
            if m is None:
                continue
            system, msg = m.group("system"), m.group("msg")
            if system == "restygate.access#info":
                a = _ACCESS.search(msg)
                if a is None:
                    facts.other["unparsed access line: " + msg[:120]] += 1
                    continue
                facts.access += 1
                facts.access_status[a.group("status")] += 1
                retries = int(a.group("retries"))
                if retries:
                    facts.retried_requests += 1
                    facts.retries += retries
                second = facts.per_second.setdefault(_epoch(m.group("ts")), [0, 0])
                second[0] += 1
                second[1] += retries
                r = _RID.search(a.group("uri"))
                if r is not None and int(r.group(1)) in failed_ids:
                    facts.failed[int(r.group(1))] = (a.group("upstream"), retries)
                if r is not None and int(r.group(1)) in wanted_ids:
                    upstream = a.group("upstream")
                    failed = next(
                        (x for x in reversed(recent) if _FINAL.search(x) and f"upstream {upstream} failed" in x),
                        None,
                    )
                    facts.details[int(r.group(1))] = (line, failed)
                continue
            recent.append(line)
            level = system.rpartition("#")[2]
            retrying = _RETRYING.search(msg)
            if retrying is not None:
                facts.retry_lines += 1
                facts.retry_reasons[retrying.group("reason")] += 1
                continue
            ejecting = _EJECTING.search(msg)
            if ejecting is not None:
                facts.ejections += 1
                facts.ejection_seconds[int(ejecting.group("seconds"))] += 1
                facts.ejected_at.append(
                    (number, _epoch(m.group("ts")), ejecting.group("upstream"), int(ejecting.group("seconds")))
                )
                continue
            returned = _RETURNS.search(msg)
            if returned is not None:
                facts.returns += 1
                facts.returned_at.append((number, _epoch(m.group("ts")), returned.group("upstream")))
                continue
            if "passing instance(s)" in msg:
                facts.discovery_updates += 1
                continue
            final = _FINAL.search(msg)
            if final is not None and system.startswith("restygate.proxy.resource"):
                facts.final_failures[final.group("reason")] += 1
                continue
            if "cut the response body short" in msg:
                facts.cut_short += 1
                continue
            if level in ("warn", "error", "critical"):
                facts.other[f"[{system}] " + _PORT.sub("127.0.0.1:PORT", msg)[:200]] += 1
    return facts


def _mib(kib: Optional[int]) -> str:
    return "?" if kib is None else f"{kib / 1024:.1f} MiB"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _critical_answers(records: List[Record], backends: List[Backend]) -> List[Tuple[Record, float, Optional[float]]]:
    """
    The answers that came from an instance Consul had said critical for
    over CRITICAL_GRACE seconds when the request started, each with that
    critical span.
    """
    spans = {b.name: b.critical_spans for b in backends}
    found = []
    for r in records:
        for start, end in spans.get(r.backend, ()):
            if start + CRITICAL_GRACE <= r.start and (end is None or r.start < end):
                found.append((r, start, end))
                break
    return found


def _last_event(timeline: List[Tuple[float, str]], t: float) -> str:
    before = [e for e in timeline if e[0] <= t]
    if not before:
        return "no chaos event before it"
    when, what = before[-1]
    return f"{t - when:.2f} s after chaos: {what}"


def _explain(
    idem_failures: List[Record],
    failures: List[Record],
    facts: LogFacts,
    chaos: Chaos,
    backends: List[Backend],
    origin_wall: float,
) -> None:
    """
    The idempotent failures, grouped into episodes (bursts), each with what
    was out, what restygate had ejected, and what its retries looked like.
    """
    names = {f"127.0.0.1:{b.port}": b.name for b in backends}

    def name(upstream: str) -> str:
        return names.get(upstream, upstream)

    say("")
    say(f"idempotent failures, first {min(DETAILED, len(idem_failures))} in full:")
    for r in idem_failures[:DETAILED]:
        say(f"  t={r.start:8.3f}s {r.method:4s} #{r.rid}: {r.outcome} after {_ms(r.latency)}; "
            f"{_last_event(chaos.timeline, r.start)}")
        access, failed = facts.details.get(r.rid, (None, None))
        say(f"      access: {access or '(no access line for it)'}")
        if failed:
            say(f"      cause:  {failed}")

    episodes: List[List[Record]] = []
    for r in idem_failures:
        if episodes and r.start - episodes[-1][-1].start <= EPISODE_GAP:
            episodes[-1].append(r)
        else:
            episodes.append([r])
    say("")
    say(f"idempotent failures in {len(episodes)} episode(s) (failures less than {EPISODE_GAP:g} s apart):")
    for episode in episodes[:EPISODES]:
        t0, t1 = episode[0].start, episode[-1].start
        posts = sum(1 for r in failures if r.method not in IDEMPOTENT and t0 <= r.start <= t1)
        by_method = Counter(r.method for r in episode)
        upstreams = Counter(name(facts.failed[r.rid][0]) for r in episode if r.rid in facts.failed)
        retries = Counter(facts.failed[r.rid][1] for r in episode if r.rid in facts.failed)
        causes = Counter(r.outcome for r in episode)
        say(f"  t={t0:.1f}-{t1:.1f}s: {len(episode)} idempotent ("
            f"{', '.join(f'{m} {c}' for m, c in sorted(by_method.items()))}) and {posts} POST failed: "
            f"{'; '.join(f'{c}x {k}' for k, c in causes.most_common(3))}")
        say(f"      failed upstream (access log): "
            f"{', '.join(f'{u} {c}' for u, c in upstreams.most_common()) or '?'}; retries field: "
            f"{', '.join(f'{k} x{c}' for k, c in sorted(retries.items())) or '?'}")
        say(f"      out then: {_state_at(chaos.states, t0)}; last event: {_last_event(chaos.timeline, t0)}")
        wall0 = int(origin_wall + t0)
        ejected = []
        for number, at, upstream, seconds in facts.ejected_at:
            # The ejection's own return, if it was logged (restygate logs it
            # lazily, at the next request after the ejection ended).
            back = [b for n, b, u in facts.returned_at if u == upstream and n > number]
            if at <= wall0 < at + seconds and (not back or min(back) > wall0):
                restarted = [t for t, what in chaos.timeline
                             if t <= t0 and what.startswith(f"restarted {name(upstream)} ")]
                since = f"; running again since t={restarted[-1]:.1f}s" if restarted else ""
                ejected.append(f"{name(upstream)} (ejected at t={at - origin_wall:.0f}s for {seconds}s{since})")
        say(f"      restygate had ejected: {', '.join(ejected) or 'nothing'}")
        window = [facts.per_second.get(wall0 - k, [0, 0]) for k in range(1, BUDGET_WINDOW + 1)]
        asked, retried = sum(w[0] for w in window), sum(w[1] for w in window)
        say(f"      in the {BUDGET_WINDOW} s before: {asked} requests, {retried} retries "
            f"(the retry budget allows max({3 * BUDGET_WINDOW}, 20 % = {asked // 5}))")
    if len(episodes) > EPISODES:
        say(f"  ... and {len(episodes) - EPISODES} more episode(s)")


def _state_at(states: List[Tuple[float, str]], t: float) -> str:
    before = [s for s in states if s[0] <= t]
    return before[-1][1] if before else "none"


def report(
    records: List[Record],
    chaos_window: Optional[Tuple[float, float]],
    planned: float,
    wall: float,
    origin_wall: float,
    samples: List[Sample],
    cpu: Tuple[Optional[float], Optional[float], Optional[float]],
    chaos: Chaos,
    backends: List[Backend],
    log_path: str,
    consul_stats: Optional[Dict[str, Any]],
    connections: int,
    concurrency: int,
    seed: int,
    rerun: str,
) -> List[str]:
    """
    Print the report; returns the targets missed (empty: all met).
    """
    failures = [r for r in records if r.outcome != "ok"]
    idem_failures = [r for r in failures if r.method in IDEMPOTENT]
    facts = read_log(log_path, [r.rid for r in idem_failures[:DETAILED]], [r.rid for r in failures])
    total = len(records)
    methods = Counter(r.method for r in records)
    idem_total = sum(n for m, n in methods.items() if m in IDEMPOTENT)
    causes = by_cause(records)

    say("")
    say("==== restygate soak report ====")
    say(f"seed          {seed}  (re-run: {rerun})")
    mix = ", ".join(f"{m} {methods.get(m, 0)}" for m, _ in MIX)
    say(f"requests      {total} in {wall:.1f} s: {total / max(wall, 1e-9):.1f} req/s ({mix})")
    if chaos_window is not None:
        since, until = chaos_window
        seconds = max(until - since, 1e-9)
        during = sum(1 for r in records if since <= r.start < until)
        say(f"              during the {seconds:.0f} s of chaos: {during} ({during / seconds:.1f} req/s); "
            f"{concurrency} client connections, {connections} opened in all")
    for idempotent, label, n in ((True, "idempotent (GET/HEAD/PUT)", idem_total),
                                 (False, "non-idempotent (POST)", total - idem_total)):
        mine = sorted(((c, k[1]) for k, c in causes.items() if k[0] == idempotent), reverse=True)
        say(f"failures      {label}: {sum(c for c, _ in mine)} of {n}")
        for count, cause in mine:
            by_method = Counter(r.method for r in failures if r.outcome == cause and (r.method in IDEMPOTENT) == idempotent)
            say(f"              {count:7d}  {cause}  ({', '.join(f'{m} {c}' for m, c in sorted(by_method.items()))})")
        if not idempotent:
            # restygate's own message for a connect error: the request never
            # reached the upstream, so restygate may retry it whatever its method.
            unreached = sum(c for c, cause in mine if cause.startswith("502 upstream unreachable"))
            if unreached:
                say(f"              ({unreached} of these never reached an upstream: connection refused, which "
                    f"restygate retries for any method)")
    latencies = sorted(r.latency for r in records)
    per_method = []
    for m, _ in MIX:
        mine_l = sorted(r.latency for r in records if r.method == m)
        if mine_l:
            per_method.append(f"{m} {_ms(percentile(mine_l, 0.5))}/{_ms(percentile(mine_l, 0.99))}")
    if latencies:
        say(f"latency       p50 {_ms(percentile(latencies, 0.5))}, p99 {_ms(percentile(latencies, 0.99))}, "
            f"max {_ms(latencies[-1])}  (p50/p99: {', '.join(per_method)})")
    answered = Counter(r.backend for r in records if r.backend)
    say("answers by    " + ", ".join(f"{name} {answered.get(name, 0)}" for name in sorted(b.name for b in backends)))
    stale = _critical_answers(records, backends)
    say(f"              from an instance Consul had said critical for > {CRITICAL_GRACE:g} s: {len(stale)}")
    for r, crit_from, crit_to in stale[:5]:
        to = "" if crit_to is None else f" until {crit_to:.3f}s"
        say(f"              t={r.start:.3f}s {r.method} #{r.rid} answered by {r.backend}, critical since "
            f"{crit_from:.3f}s{to}")

    start = next((s for s in samples if s.mark == "start"), None)
    end = next((s for s in samples if s.mark == "end"), None)
    growth: Optional[float] = None
    if start is not None and end is not None and start.rss_kib and end.rss_kib is not None:
        growth = (end.rss_kib - start.rss_kib) / start.rss_kib
        say(f"restygate     RSS {_mib(start.rss_kib)} after warm-up -> {_mib(end.rss_kib)} at the end "
            f"({growth * 100:+.1f} %); open fds {start.fds} -> {end.fds}")
    else:
        say("restygate     RSS: no start/end sample (restygate gone?)")
    cpu_start, cpu_end, cpu_wall = cpu
    if cpu_start is not None and cpu_end is not None and cpu_wall:
        used = cpu_end - cpu_start
        say(f"              CPU {used:.1f} s over the last {cpu_wall:.0f} s ({used / cpu_wall * 100:.0f} % of one core)")
    series = [s for s in samples if s.rss_kib is not None]
    if series:
        say("              RSS MiB / fds every ~10 s: "
            + " ".join(f"{s.rss_kib / 1024:.1f}/{s.fds}" for s in series if s.mark == "" and s.rss_kib is not None))

    say(f"restygate log {facts.access} access lines (status {dict(sorted(facts.access_status.items()))}); "
        f"retried requests {facts.retried_requests} (retries {facts.retries} in the access log's retries "
        f"field, {facts.retry_lines} \"retrying\" lines)")
    say(f"              ejections {facts.ejections} "
        f"({', '.join(f'{c}x {s}s' for s, c in sorted(facts.ejection_seconds.items())) or '-'}), "
        f"returns from ejection {facts.returns}, discovery updates {facts.discovery_updates}, "
        f"bodies cut short {facts.cut_short}, tracebacks {facts.tracebacks}")
    for title, counter in (("retried after", facts.retry_reasons),
                           ("final upstream failures (the gateway answered 502/504)", facts.final_failures),
                           ("other warnings/errors", facts.other)):
        if counter:
            say(f"              {title}:")
            for reason, count in counter.most_common(12):
                say(f"              {count:7d}  {reason}")
            if len(counter) > 12:
                say(f"              ... and {len(counter) - 12} more kinds")
    c = chaos.counts
    say(f"chaos         kill {c['kill']}, Consul flip {c['flip']}, kill then critical {c['kill+critical']}, "
        f"kill one + flip another {c['kill+flip']}, skipped {c['skipped']}; chaos errors {len(chaos.errors)}")
    for error in chaos.errors[:10]:
        say(f"              ERROR {error}")
    if consul_stats is not None:
        requests = consul_stats.get("requests", {})
        health = sum(n for k, n in requests.items() if k.startswith("GET /v1/health/service/web"))
        writes = sum(n for k, n in requests.items() if k.startswith("PUT /v1/catalog/register"))
        say(f"consul        restygate's health queries for web: {health}; check flips written: {writes}")

    if idem_failures:
        _explain(idem_failures, failures, facts, chaos, backends, origin_wall)

    missed = []
    say("")
    if idem_failures:
        missed.append(f"zero failed idempotent requests: {len(idem_failures)} failed")
        say(f"target        zero failed idempotent requests: MISSED ({len(idem_failures)})")
    else:
        say("target        zero failed idempotent requests: met")
    if growth is None:
        missed.append("RSS growth < 20 %: not measured")
        say("target        RSS growth < 20 %: MISSED (not measured)")
    elif growth >= RSS_GROWTH_LIMIT:
        missed.append(f"RSS growth < 20 %: grew {growth * 100:+.1f} %")
        say(f"target        RSS growth < 20 %: MISSED ({growth * 100:+.1f} %)")
    else:
        say(f"target        RSS growth < 20 %: met ({growth * 100:+.1f} %)")
    return missed
