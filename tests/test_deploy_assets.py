"""The SRE assets in deploy/ and docs/operations.md agree with the metrics the code exports.

No Prometheus, Grafana or promtool is needed: the PromQL is checked with regular expressions
over the expressions (metric names, label names in selectors and in ``by``/``without``/``on``
clauses, ``rate`` only on counters, ``histogram_quantile`` grouped by ``le``), the rule file
against the Prometheus rule-file shape, and every ``runbook_url`` against the headings of the
runbook. The catalogue of what exists is built from :class:`reconciler.metrics.Metrics` itself,
so adding, renaming or relabelling a metric there without updating these files fails here.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.metrics import MetricWrapperBase

from reconciler.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "reconciler-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
RUNBOOK = ROOT / "docs" / "operations.md"
RUNBOOK_PREFIX = "docs/operations.md#"

# Added by Prometheus to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
# Gauges that describe the fleet, not one process (read from the shared database by every replica,
# or set by whichever replica ran the last GC pass): they must be aggregated with max/min/avg,
# never summed (docs/operations.md, "Reading the numbers").
DB_GAUGES = frozenset(
    {
        "reconciler_instances",
        "reconciler_not_converged",
        "reconciler_queue_due",
        "reconciler_queue_oldest_due_seconds",
        "reconciler_orphans",
        "reconciler_jobs",
        "reconciler_job_oldest_running_seconds",
        "reconciler_ledger_transfers",
        "reconciler_escrow_credits",
        "reconciler_ledger_violations",
        "reconciler_webhook_pending",
        "reconciler_webhook_oldest_undelivered_seconds",
        "reconciler_webhook_oldest_due_seconds",
    }
)
SEVERITIES = frozenset({"page", "ticket"})
REQUIRED_ROWS = ("Overview", "Providers", "Convergence", "Drift and GC", "Jobs and ledger", "Process", "Webhooks")
GRAFANA_BUILTINS = frozenset({"__rate_interval", "__interval", "__range", "__all"})
# What prometheus_client's ProcessCollector exports on Linux; used where there is no /proc.
PROCESS_FALLBACK = {
    "process_virtual_memory_bytes": "gauge",
    "process_resident_memory_bytes": "gauge",
    "process_start_time_seconds": "gauge",
    "process_cpu_seconds": "counter",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
}

AGGREGATIONS = "count_values|bottomk|topk|quantile|stddev|stdvar|limitk|limit_ratio|count|group|sum|min|max|avg"
PREFIX_AGG = re.compile(rf"\b({AGGREGATIONS})\s*(by|without)\s*\(([^()]*)\)\s*\(")
PLAIN_AGG = re.compile(rf"\b({AGGREGATIONS})\s*\(")
POSTFIX_GROUPING = re.compile(r"\s*(by|without)\s*\(([^()]*)\)")
MATCHING = re.compile(r"\b(on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
OUR_METRIC = re.compile(r"(?<![\w$:])((?:reconciler|process|python)_[A-Za-z0-9_]*)")
SELECTOR = re.compile(r"(?<![\w$:.])([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^{}]*)\}")
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
RANGE_FUNCTION = re.compile(r"\b(rate|irate|increase)\s*\(\s*([A-Za-z_:][A-Za-z0-9_:]*)")
HISTOGRAM_QUANTILE = re.compile(r"\bhistogram_quantile\s*\(")
LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.*),\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$", re.S)
TEMPLATE_LABEL = re.compile(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)")
GRAFANA_VARIABLE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)(?::[^}]*)?\}|([A-Za-z0-9_]+))")
DURATION = re.compile(r"^(?:\d+(?:ms|s|m|h|d|w|y))+$")


# -- what exists -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    name: str
    type: str
    labels: frozenset[str]

    def series(self) -> tuple[str, ...]:
        if self.type == "counter":
            return (f"{self.name}_total", f"{self.name}_created")
        if self.type == "histogram":
            return tuple(f"{self.name}{suffix}" for suffix in ("_bucket", "_count", "_sum", "_created"))
        return (self.name,)


@dataclass(frozen=True)
class Catalogue:
    families: dict[str, Family]
    series: dict[str, Family]  # every exported series name -> its family

    def labels(self, series: str) -> frozenset[str]:
        """The label names a series can be selected or grouped by."""
        extra = {"le"} if series.endswith("_bucket") else set()
        return self.series[series].labels | TARGET_LABELS | extra

    def cumulative(self, series: str) -> bool:
        family = self.series[series]
        return family.type == "counter" or (family.type == "histogram" and series != family.name)


def _reconciler_families() -> list[Family]:
    metrics = Metrics(CollectorRegistry())
    families = []
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            (described,) = metric.describe()
            families.append(Family(described.name, described.type, frozenset(metric._labelnames)))
    return families


def _runtime_families() -> list[Family]:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    families = [
        Family(f.name, f.type, frozenset(label for s in f.samples for label in s.labels)) for f in registry.collect()
    ]
    if not any(f.name.startswith("process_") for f in families):
        families += [Family(name, kind, frozenset()) for name, kind in PROCESS_FALLBACK.items()]
    return families


def build_catalogue() -> Catalogue:
    families = {f.name: f for f in _reconciler_families() + _runtime_families()}
    series = {name: family for family in families.values() for name in family.series()}
    return Catalogue(families, series)


CATALOGUE = build_catalogue()


# -- where the expressions are ---------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    where: str
    expr: str
    label_values_label: str | None = None  # for Grafana label_values(selector, label)


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def load_alerts() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(ALERTS.read_text())
    return data


def _walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _walk_panels(panel.get("panels", []))


def dashboard_queries() -> list[Query]:
    dashboard = load_dashboard()
    found = [
        Query(f"panel {panel.get('title')!r} target {target.get('refId')}", target["expr"])
        for panel in _walk_panels(dashboard["panels"])
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    for variable in dashboard["templating"]["list"]:
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = LABEL_VALUES.match(text)
        if match:
            found.append(Query(f"variable ${variable['name']}", match[1] or "", match[2]))
        else:
            found.append(Query(f"variable ${variable['name']}", text))
    return found


def alert_queries() -> list[Query]:
    return [
        Query(f"alert {rule.get('alert')}", rule["expr"])
        for group in load_alerts()["groups"]
        for rule in group["rules"]
        if "expr" in rule
    ]


def all_queries() -> list[Query]:
    return dashboard_queries() + alert_queries()


# -- a little PromQL, by regular expression --------------------------------------------------------


def blank_strings(expr: str) -> str:
    """The expression with the inside of every string literal blanked (offsets unchanged)."""
    return re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: '"' + " " * (len(m[0]) - 2) + '"', expr)


def closing(text: str, opening: int) -> int:
    """The index of the parenthesis closing the one at ``opening``."""
    depth = 0
    for index in range(opening, len(text)):
        if text[index] == "(":
            depth += 1
        elif text[index] == ")":
            depth -= 1
            if depth == 0:
                return index
    raise AssertionError(f"unbalanced parentheses after offset {opening}: {text!r}")


@dataclass(frozen=True)
class Aggregation:
    op: str
    grouping: str | None  # by | without | None
    labels: tuple[str, ...]
    start: int  # the argument's parentheses, inclusive
    end: int


def split_labels(text: str) -> tuple[str, ...]:
    return tuple(label.strip() for label in text.split(",") if label.strip())


def aggregations(text: str) -> list[Aggregation]:
    found = []
    for match in PREFIX_AGG.finditer(text):
        opening = match.end() - 1
        found.append(Aggregation(match[1], match[2], split_labels(match[3]), opening, closing(text, opening)))
    for match in PLAIN_AGG.finditer(text):
        opening = match.end() - 1
        end = closing(text, opening)
        postfix = POSTFIX_GROUPING.match(text, end + 1)
        grouping, labels = (postfix[1], split_labels(postfix[2])) if postfix else (None, ())
        found.append(Aggregation(match[1], grouping, labels, opening, end))
    return found


def metric_uses(text: str) -> list[tuple[int, str]]:
    """(offset, name) of every metric name we know the prefix of, and of every selector's name."""
    uses = {(m.start(1), m[1]) for m in OUR_METRIC.finditer(text)}
    uses |= {(m.start(1), m[1]) for m in SELECTOR.finditer(text)}
    return sorted(uses)


def problems(query: Query) -> list[str]:
    """Everything wrong with one expression (an empty list when it is fine)."""
    text = blank_strings(query.expr)
    errors: list[str] = []
    try:
        closing("(" + text + ")", 0)
    except AssertionError:
        return [f"{query.where}: unbalanced parentheses"]
    uses = metric_uses(text)
    unknown = sorted({name for _, name in uses if name not in CATALOGUE.series})
    errors += [f"{query.where}: metric {name} is not defined in reconciler/metrics.py" for name in unknown]
    known = [(offset, name) for offset, name in uses if name in CATALOGUE.series]

    for match in SELECTOR.finditer(text):
        name = match[1]
        if name not in CATALOGUE.series:
            continue
        for label in MATCHER.findall(match[2]):
            if label not in CATALOGUE.labels(name):
                errors.append(f"{query.where}: {name} has no label {label!r} (selector)")

    aggs = aggregations(text)
    for agg in aggs:
        inside = [name for offset, name in known if agg.start <= offset <= agg.end]
        for label in agg.labels:
            for name in inside:
                if label not in CATALOGUE.labels(name):
                    errors.append(f"{query.where}: {name} has no label {label!r} ({agg.op} {agg.grouping})")

    everywhere = {name for _, name in known}
    for match in MATCHING.finditer(text):
        for label in split_labels(match[2]):
            owners = [name for name in everywhere if label in CATALOGUE.labels(name)]
            lacking = [name for name in everywhere if label not in CATALOGUE.labels(name)]
            if match[1] in ("on", "ignoring") and lacking:
                errors.append(f"{query.where}: {', '.join(sorted(lacking))} have no label {label!r} ({match[1]})")
            elif match[1].startswith("group_") and not owners:
                errors.append(f"{query.where}: no metric has label {label!r} ({match[1]})")

    for match in RANGE_FUNCTION.finditer(text):
        name = match[2]
        if name in CATALOGUE.series and not CATALOGUE.cumulative(name):
            errors.append(f"{query.where}: {match[1]}() of {name}, which is a gauge")

    for match in HISTOGRAM_QUANTILE.finditer(text):
        end = closing(text, match.end() - 1)
        inside = [name for offset, name in known if match.end() <= offset <= end]
        if not inside or not all(name.endswith("_bucket") for name in inside):
            errors.append(f"{query.where}: histogram_quantile() over something other than _bucket series")
        nested = [agg for agg in aggs if match.end() <= agg.start <= end]
        if nested:
            outer = min(nested, key=lambda agg: agg.start)
            keeps_le = (outer.grouping == "by" and "le" in outer.labels) or (
                outer.grouping == "without" and "le" not in outer.labels
            )
            if not keeps_le:
                errors.append(f"{query.where}: histogram_quantile() aggregation drops the le label")

    for offset, name in known:
        if name not in DB_GAUGES:
            continue
        enclosing = [agg for agg in aggs if agg.start <= offset <= agg.end]
        innermost = min(enclosing, key=lambda agg: agg.end - agg.start, default=None)
        if innermost is None or innermost.op not in ("max", "min", "avg"):
            errors.append(
                f"{query.where}: {name} is the same on every replica; aggregate it with max, not "
                f"{innermost.op if innermost else 'nothing'}"
            )

    if query.label_values_label is not None:
        for name in everywhere:
            if query.label_values_label not in CATALOGUE.labels(name):
                errors.append(f"{query.where}: {name} has no label {query.label_values_label!r}")
    return errors


# -- runbook ---------------------------------------------------------------------------------------


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file (duplicates get -1, -2, ...)."""
    anchors: set[str] = set()
    seen: Counter[str] = Counter()
    in_fence = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        match = None if in_fence else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match[1].strip().lower()).replace(" ", "-")
        anchors.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return anchors


# -- the tests -------------------------------------------------------------------------------------


def test_the_catalogue_sees_every_metric() -> None:
    assert "reconciler_reconcile_total" in CATALOGUE.series
    assert "reconciler_provider_call_duration_seconds_bucket" in CATALOGUE.series
    assert CATALOGUE.labels("reconciler_provider_calls_total") >= {"provider", "operation", "outcome"}
    assert "process_resident_memory_bytes" in CATALOGUE.series
    assert CATALOGUE.series.keys() >= DB_GAUGES


def test_the_checker_catches_mistakes() -> None:
    """The checks below are only as good as this little parser: make sure it bites."""
    bad = {
        "reconciler_nonexistent_total": "not defined",
        'reconciler_reconcile_total{provider="x"}': "no label 'provider'",
        "sum by (provider) (rate(reconciler_reconcile_total[5m]))": "no label 'provider'",
        "sum(rate(reconciler_reconcile_total[5m])) by (outcome)": "no label 'outcome'",
        "rate(reconciler_queue_due[5m])": "gauge",
        "histogram_quantile(0.9, sum by (kind) (rate(reconciler_reconcile_duration_seconds_bucket[5m])))": (
            "drops the le"
        ),
        "sum(reconciler_instances)": "aggregate it with max",
        "reconciler_queue_due > 3": "aggregate it with max",
        "up{job='x'}": "not defined",
        "sum(rate(reconciler_reconcile_total[5m])": "unbalanced",
        "max by (job) (reconciler_queue_due) and on (provider) rate(reconciler_reconcile_total[5m])": (
            "no label 'provider' (on)"
        ),
    }
    for expr, expected in bad.items():
        found = problems(Query("test", expr))
        assert found, expr
        assert any(expected in problem for problem in found), (expr, found)
    good = (
        "histogram_quantile(0.99, sum by (le, provider)"
        ' (rate(reconciler_provider_call_duration_seconds_bucket{job=~"$job"}[$__rate_interval])))',
        'sum by (provider) (rate(reconciler_provider_calls_total{outcome!~"ok|throttled"}[10m]))',
        "max by (job, phase) (reconciler_instances)",
        'absent(reconciler_reconcile_total{job="reconciler_x"})',
    )
    for expr in good:
        assert problems(Query("test", expr)) == [], expr


def _queries_for_collection() -> list[Query]:
    try:
        return all_queries()
    except Exception:  # unreadable files: the shape tests below load them again and say why
        return []


@pytest.mark.parametrize("query", _queries_for_collection(), ids=lambda q: q.where)
def test_queries_use_only_defined_metrics_and_labels(query: Query) -> None:
    assert problems(query) == []


def test_the_assets_cover_every_area() -> None:
    """Every metric in metrics.py is shown on the dashboard; the alerts look at the key ones."""
    dashboard = " ".join(blank_strings(q.expr) for q in dashboard_queries())
    shown = {name for _, name in metric_uses(dashboard) if name in CATALOGUE.series}
    ours = {f.name for f in CATALOGUE.families.values() if f.name.startswith("reconciler_")}
    missing = sorted(f for f in ours if not any(CATALOGUE.series[s].name == f for s in shown))
    assert missing == [], f"metrics not on the dashboard: {missing}"
    alerts = " ".join(q.expr for q in alert_queries())
    for name in (
        "reconciler_not_converged",
        "reconciler_queue_oldest_due_seconds",
        "reconciler_provider_calls_total",
        "reconciler_provider_throttled_total",
        "reconciler_circuit_open",
        "reconciler_orphans",
        "reconciler_fencing_rejections_total",
        "reconciler_reconcile_total",
        "reconciler_time_to_ready_seconds_bucket",
        "reconciler_ledger_violations",
        "reconciler_job_oldest_running_seconds",
        "reconciler_jobs_finished_total",
    ):
        assert name in alerts, f"no alert looks at {name}"


def test_dashboard_is_an_importable_grafana_dashboard() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"]
    assert dashboard.get("id") is None, "an exported id would clash on import"

    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["job"]["type"] == "query"
    assert variables["instance"]["type"] == "query"
    assert variables["instance"]["multi"] and variables["instance"]["includeAll"]

    panels = list(_walk_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    rows = [panel["title"] for panel in panels if panel["type"] == "row"]
    assert list(REQUIRED_ROWS) == rows

    defined = set(variables) | GRAFANA_BUILTINS
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            used = {a or b for a, b in GRAFANA_VARIABLE.findall(target["expr"])}
            assert used <= defined, f"panel {panel['title']!r} uses undefined variables {used - defined}"
            assert 'job=~"$job"' in target["expr"], f"panel {panel['title']!r} ignores $job"


def test_alerts_have_the_prometheus_rule_file_shape() -> None:
    document = load_alerts()
    assert set(document) == {"groups"}
    groups = document["groups"]
    assert isinstance(groups, list) and groups
    group_names = [group["name"] for group in groups]
    assert len(group_names) == len(set(group_names)), "group names must be unique"
    alert_names: list[str] = []
    for group in groups:
        assert set(group) <= {"name", "interval", "limit", "rules"}, group["name"]
        assert isinstance(group["rules"], list) and group["rules"], group["name"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule
            name = rule["alert"]
            assert isinstance(name, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name), name
            alert_names.append(name)
            assert isinstance(rule["expr"], str) and rule["expr"].strip(), name
            assert isinstance(rule["for"], str) and DURATION.match(rule["for"]), name
            assert rule["labels"]["severity"] in SEVERITIES, name
            assert all(isinstance(v, str) for v in rule["labels"].values()), name
            annotations = rule["annotations"]
            for key in ("summary", "description", "runbook_url"):
                assert isinstance(annotations.get(key), str) and annotations[key].strip(), (name, key)
            # $labels.X in a template must be a label the alert's series carry.
            grouped = {label for agg in aggregations(blank_strings(rule["expr"])) for label in agg.labels}
            for text in annotations.values():
                for label in TEMPLATE_LABEL.findall(text):
                    assert label in grouped, f"{name}: annotation uses $labels.{label}, not kept by the expr"
    assert len(alert_names) == len(set(alert_names)), "alert names must be unique"


def test_every_runbook_url_has_a_section() -> None:
    anchors = heading_anchors(RUNBOOK.read_text())
    for group in load_alerts()["groups"]:
        for rule in group["rules"]:
            url = rule["annotations"]["runbook_url"]
            assert url.startswith(RUNBOOK_PREFIX), url
            assert url.removeprefix(RUNBOOK_PREFIX) in anchors, f"{rule['alert']}: no heading for {url}"


def test_runbook_catalogue_matches_metrics_py() -> None:
    text = RUNBOOK.read_text()
    section = text.split("## Metrics catalogue", 1)[1]
    rows = re.findall(r"^\|\s*`([a-z_]+)`\s*\|\s*(\w+)\s*\|([^|]*)\|", section, re.M)
    documented = {name: (kind, frozenset(re.findall(r"`(\w+)`", labels))) for name, kind, labels in rows}
    ours = {f.name: f for f in CATALOGUE.families.values() if f.name.startswith("reconciler_")}
    expected = {(f.name + "_total" if f.type == "counter" else f.name): (f.type, f.labels) for f in ours.values()}
    assert documented == expected
