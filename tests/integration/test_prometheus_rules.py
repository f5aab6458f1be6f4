"""The floor's Prometheus and Grafana files in ``etc/``: promtool accepts the scrape config
and the rules, the rules' unit tests pass (and fail when a rule is broken), the relabeling
gives every target its ``tester`` label, and the rules and the dashboard use only the series
listed in ``etc/prometheus/METRICS`` (every one of which they use).

``METRICS`` holds series names as PromQL names them (a histogram by its ``_bucket``
series).  :func:`known_metrics` reads it and :func:`unexposed` says which of them a
``/metrics`` text does not expose, for the test of the master's own ``/metrics``.

promtool comes from Debian's ``prometheus`` package (``.ci/run`` installs it).  Without it
these tests fail: they are part of the README's test command.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.twistdrun import ROOT

PROMETHEUS = os.path.join(ROOT, "etc", "prometheus")
CONFIG = os.path.join(PROMETHEUS, "prometheus.yml")
RULES = os.path.join(PROMETHEUS, "ate-rules.yml")
RULE_TESTS = os.path.join(PROMETHEUS, "ate-rules.test.yml")
METRICS = os.path.join(PROMETHEUS, "METRICS")
DASHBOARD = os.path.join(ROOT, "etc", "grafana", "ate-floor-dashboard.json")

#: series Prometheus makes itself, which the rules may use besides METRICS
PROMETHEUS_SERIES = frozenset({"up"})

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def known_metrics(path: str = METRICS) -> list[str]:
    """The series names of ``etc/prometheus/METRICS``, one per line, in file order."""
    with open(path, encoding="utf-8") as f:
        names = f.read().splitlines()
    for number, name in enumerate(names, 1):
        if not _NAME.fullmatch(name) or ":" in name:
            raise ValueError(f"{path}:{number}: {name!r} is not a metric name")
    return names


def unexposed(names: list[str], exposition: str) -> list[str]:
    """Those of ``names`` that the text exposition ``exposition`` (format 0.0.4) does not
    expose.  A name is exposed by its own ``# TYPE`` line (a labelled family with no
    sample yet counts), or, for ``X_bucket``, ``X_sum`` and ``X_count``, by
    ``# TYPE X histogram``."""
    types: dict[str, str] = {}
    for line in exposition.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[:2] == ["#", "TYPE"]:
            types[parts[2]] = parts[3]
    missing = []
    for name in names:
        if name in types:
            continue
        base = next((name[: -len(s)] for s in _HISTOGRAM_SUFFIXES if name.endswith(s)), None)
        if base is None or types.get(base) != "histogram":
            missing.append(name)
    return missing


# -- PromQL names ------------------------------------------------------------------------

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_IDENTIFIER = re.compile(r"(?<![0-9.a-zA-Z_:])[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = frozenset({"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
                       "group_right", "bool", "offset", "inf", "nan", "atan2"})
_LABEL_VALUES = re.compile(r"label_values\(\s*(?P<selector>[^,()]+?)\s*,\s*\w+\s*\)")


def series_names(expr: str) -> set[str]:
    """The series an expression selects (not its functions, keywords or label names)."""
    text = _STRINGS.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _RANGES.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group()
        if name in _KEYWORDS or text[match.end():].lstrip().startswith("("):
            continue
        names.add(name)
    return names


def test_series_names_finds_the_series_only():
    expr = ('histogram_quantile(0.95, sum by (tester, le) (rate(a_bucket{x="y(1)", le!=""}'
            '[5m] offset 1h)))\n  / ignoring (state) group_left (z) b:rec:ord and c > 1e3 '
            'unless on(i) (d == bool 1) or max(e) by (f)')
    assert series_names(expr) == {"a_bucket", "b:rec:ord", "c", "d", "e"}


def rules() -> list[dict[str, Any]]:
    with open(RULES, encoding="utf-8") as f:
        return [rule for group in yaml.safe_load(f)["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    with open(DASHBOARD, encoding="utf-8") as f:
        return json.load(f)


def dashboard_targets() -> list[tuple[str, dict[str, Any]]]:
    return [(panel["title"], target) for panel in dashboard()["panels"]
            for target in panel.get("targets", ())]


def dashboard_expressions() -> list[str]:
    """Every PromQL query of the dashboard: the panels' and the template variables'."""
    exprs = [target["expr"] for _, target in dashboard_targets()]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        match = _LABEL_VALUES.fullmatch(query)
        assert match, f"template variable {variable['name']}: {query!r} is not label_values()"
        exprs.append(match.group("selector"))
    return exprs


def test_metrics_list_is_sorted_unique_names():
    names = known_metrics()
    assert names, "etc/prometheus/METRICS is empty"
    assert names == sorted(set(names)), "METRICS: one name per line, sorted, no duplicate"


def test_rules_and_dashboard_use_exactly_the_listed_metrics():
    known = set(known_metrics())
    records = {rule["record"] for rule in rules() if "record" in rule}
    in_rules = set().union(*(series_names(rule["expr"]) for rule in rules()))
    in_dashboard = set().union(*(series_names(expr) for expr in dashboard_expressions()))
    assert in_rules - known - records - PROMETHEUS_SERIES == set(), "rules: not in METRICS"
    assert in_dashboard - known == set(), "dashboard: not in METRICS"
    assert known - in_rules - in_dashboard == set(), "METRICS: used by neither"


def test_unexposed_names_the_series_a_metrics_text_lacks():
    text = "\n".join([
        "# HELP ate_uph Units per hour.", "# TYPE ate_uph gauge", 'ate_uph{window="1h"} 1',
        "# TYPE ate_alarms_total counter",
        "# TYPE ate_cycle_seconds histogram", 'ate_cycle_seconds_bucket{le="+Inf"} 0',
        "ate_cycle_seconds_sum 0", "ate_cycle_seconds_count 0",
        "# TYPE ate_lot_parts gauge", "ate_lot_parts 3", ""])
    names = ["ate_uph", "ate_alarms_total", "ate_cycle_seconds_bucket", "ate_cycle_seconds_count",
             "ate_lot_held", "ate_uph_bucket", "ate_lot_parts_count"]
    assert unexposed(names, text) == ["ate_lot_held", "ate_uph_bucket", "ate_lot_parts_count"]


def test_known_metrics_refuses_a_line_that_is_no_name(tmp_path):
    path = tmp_path / "METRICS"
    path.write_text("ate_uph\nate uph\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"METRICS:2: 'ate uph' is not a metric name"):
        known_metrics(str(path))


# -- promtool ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install Debian's prometheus package "
                    "(apt-get install prometheus; .ci/run does)")
    return path


def run(promtool: str, *args: str, cwd: str = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def test_promtool_check_config(promtool):
    proc = run(promtool, "check", "config", "etc/prometheus/prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_promtool_check_rules(promtool):
    proc = run(promtool, "check", "rules", "etc/prometheus/ate-rules.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules())} rules found" in proc.stdout


def test_promtool_test_rules(promtool):
    proc = run(promtool, "test", "rules", "etc/prometheus/ate-rules.test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_has_unit_tests_that_see_it_fire_and_stay_quiet():
    with open(RULE_TESTS, encoding="utf-8") as f:
        tests = yaml.safe_load(f)["tests"]
    checks = [check for test in tests for check in test.get("alert_rule_test", ())]
    for alert in (rule["alert"] for rule in rules() if "alert" in rule):
        mine = [check for check in checks if check["alertname"] == alert]
        assert any(check["exp_alerts"] for check in mine), f"{alert}: never seen firing"
        assert any(not check["exp_alerts"] for check in mine), f"{alert}: never seen quiet"
    records = [rule["record"] for rule in rules() if "record" in rule]
    tested = {check["expr"] for test in tests for check in test.get("promql_expr_test", ())}
    assert set(records) - tested == set(), "recording rules without a promql_expr_test"


SOFTERROR = "softerror or error for more than a minute"
UPH = "UPH drop while a lot runs, and a held lot"
YIELD = "lot yield below 80% after more than 200 parts"
DOWN = "controller unreachable, broker lost"
RECORDS = "recording rules"

#: (what is broken, text of ate-rules.yml, what it becomes, the unit test that notices)
MUTATIONS = [
    ("softerror for 30s", 'state=~"softerror|error"} == 1\n        for: 1m',
     'state=~"softerror|error"} == 1\n        for: 30s', SOFTERROR),
    ("any state alerts", 'state=~"softerror|error"} == 1', 'state=~"softerror|error|testing"} == 1',
     SOFTERROR),
    ("UPH for 2m", "unless on (job, instance) (ate_lot_held == 1)\n        for: 5m",
     "unless on (job, instance) (ate_lot_held == 1)\n        for: 2m", UPH),
    ("UPH while held", "\n          unless on (job, instance) (ate_lot_held == 1)", "", UPH),
    ("UPH without a lot", "\n          and on (job, instance) tester:ate_lot_running:bool\n"
     "          unless", "\n          unless", UPH),
    ("UPH at a third", "< ignoring (window) 0.5 *", "< ignoring (window) 0.3 *", UPH),
    ("yield below 70%", 'group="BT_PASS"} < 0.80', 'group="BT_PASS"} < 0.70', YIELD),
    ("yield at 200 parts", "(ate_lot_parts > 200)", "(ate_lot_parts >= 200)", YIELD),
    ("yield of any site", 'ate_yield_ratio{site="-1", group="BT_PASS"}',
     'ate_yield_ratio{group="BT_PASS"}', YIELD),
    ("yield of any group", 'ate_yield_ratio{site="-1", group="BT_PASS"}',
     'ate_yield_ratio{site="-1"}', YIELD),
    ("yield after unload", "(ate_lot_parts > 200)\n"
     "          and on (job, instance) tester:ate_lot_running:bool", "(ate_lot_parts > 200)",
     YIELD),
    ("held without hold", "expr: ate_lot_held == 1", "expr: ate_lot_held >= 0", UPH),
    ("held after a minute", "expr: ate_lot_held == 1\n",
     "expr: ate_lot_held == 1\n        for: 1m\n", UPH),
    ("down for 30s", 'up{job="ate-master"} == 0\n        for: 2m',
     'up{job="ate-master"} == 0\n        for: 30s', DOWN),
    ("broker at once", "expr: ate_mqtt_connected == 0\n        for: 1m",
     "expr: ate_mqtt_connected == 0", DOWN),
    ("running in testing only", 'ate_master_state{state=~"ready|testing"} == 1)',
     'ate_master_state{state=~"testing"} == 1)', RECORDS),
    ("utilisation inverted", "sum by (job, instance, tester) (rate(ate_site_slots_tested_total",
     "1 - sum by (job, instance, tester) (rate(ate_site_slots_tested_total", RECORDS),
    ("p95 is p90", "histogram_quantile(0.95, sum by (job, instance, tester, le) "
     "(rate(ate_test_seconds", "histogram_quantile(0.9, sum by (job, instance, tester, le) "
     "(rate(ate_test_seconds", RECORDS),
    ("E10 share of the hour's first half", "(increase(ate_e10_seconds_total[1h]))\n",
     "(increase(ate_e10_seconds_total[1h] offset 30m))\n", RECORDS),
]


@pytest.mark.parametrize(("what", "old", "new", "unit"), MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_rule_tests_fail_on_a_broken_rule(promtool, tmp_path, what, old, new, unit):
    """Each mutation of a rule makes its unit test (that test group alone) fail."""
    with open(RULES, encoding="utf-8") as f:
        text = f.read()
    assert text.count(old) == 1, f"{what}: the mutated text must occur once in ate-rules.yml"
    with open(RULE_TESTS, encoding="utf-8") as f:
        tests = yaml.safe_load(f)
    tests["tests"] = [test for test in tests["tests"] if test["name"] == unit]
    assert tests["tests"], f"{what}: no unit test named {unit!r}"
    (tmp_path / "unit.test.yml").write_text(yaml.safe_dump(tests), encoding="utf-8")
    (tmp_path / "ate-rules.yml").write_text(text.replace(old, new), encoding="utf-8")
    proc = run(promtool, "test", "rules", "unit.test.yml", cwd=str(tmp_path))
    assert proc.returncode != 0, f"{what}: {unit} did not notice\n{proc.stdout}{proc.stderr}"
    assert "FAILED" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


# -- prometheus.yml ----------------------------------------------------------------------

def _relabel(labels: dict[str, str], rule: dict[str, Any]) -> dict[str, str]:
    """One ``replace`` relabel rule as Prometheus applies it (anchored regex)."""
    assert rule.get("action", "replace") == "replace", rule
    value = rule.get("separator", ";").join(labels.get(s, "") for s in rule["source_labels"])
    match = re.fullmatch(rule.get("regex", "(.*)"), value)
    if match is None:
        return labels
    replacement = re.sub(r"\$\{?(\d+)\}?", r"\\\1", rule.get("replacement", "$1"))
    return {**labels, rule["target_label"]: match.expand(replacement)}


def test_scrape_config_labels_every_tester_every_15s():
    with open(CONFIG, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    assert config["global"]["scrape_interval"] == "15s"
    assert config["rule_files"] == ["ate-rules.yml"]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "ate-master"]
    assert job["scrape_interval"] == "15s" and job["metrics_path"] == "/metrics"
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert len(targets) >= 2
    testers = []
    for target in targets:
        labels = {"__address__": target}
        for rule in job["relabel_configs"]:
            labels = _relabel(labels, rule)
        assert labels.get("tester"), f"{target}: no tester label"
        testers.append(labels["tester"])
    assert testers[0] == targets[0].split(".")[0]
    assert len(set(testers)) == len(testers), f"two targets share a tester label: {testers}"


def test_relabel_rule_takes_the_first_label_of_the_host():
    with open(CONFIG, encoding="utf-8") as f:
        (job,) = yaml.safe_load(f)["scrape_configs"]
    (rule,) = job["relabel_configs"]
    for address, tester in (("t07.floor.example:8081", "t07"), ("cell-3:9100", "cell-3"),
                            ("ate12.b2.fab:8081", "ate12")):
        assert _relabel({"__address__": address}, rule)["tester"] == tester
    assert "tester" not in _relabel({"__address__": "no-port"}, rule)


# -- the Grafana dashboard ---------------------------------------------------------------

def test_dashboard_panels_are_laid_out_and_use_the_datasource_variable():
    dash = dashboard()
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["tester"]["includeAll"] and variables["tester"]["allValue"] == ".*"
    ids = [panel["id"] for panel in dash["panels"]]
    assert len(set(ids)) == len(ids), "panel ids must be unique"
    cells: dict[tuple[int, int], str] = {}
    for panel in dash["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(set(refs)) == len(refs), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
            assert 'tester=~"$tester"' in target["expr"], f"{panel['title']}: not per $tester"


def test_state_timeline_names_the_state_its_query_encodes():
    (panel,) = [p for p in dashboard()["panels"] if p["title"] == "State per tester"]
    (target,) = panel["targets"]
    encoded = {number: state for state, number in
               re.findall(r'state="([a-z]+)"\} \* ([0-9]+)', target["expr"])}
    (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
    assert {n: m["text"] for n, m in mapping["options"].items()} == encoded
    assert set(encoded.values()) == {"connecting", "initialized", "loading", "ready", "testing",
                                     "unloading", "softerror", "error", "stopped"}


#: Grafana's variables as the dashboard's queries get them in the test below
GRAFANA_VARIABLES = {"$tester": ".*", "$__rate_interval": "5m", "$__range": "10m"}
_T1 = 'job="ate-master",instance="t01.floor.example:8081",tester="t01"'
_T2 = 'job="ate-master",instance="t02.floor.example:8081",tester="t02"'
#: per minute 300 cycles <= 0.5 s, 240 more <= 1 s, 60 more <= 2 s: p50 0.5 s, p95 1.5 s
_BUCKETS = [(le, f"0+{per_minute}x10")
            for le, per_minute in (("0.5", 300), ("1", 540), ("2", 600), ("+Inf", 600))]
#: two testers for 10 minutes, a sample a minute: t01 testing; t02 was productive until 4m,
#: and is down (softerror) since
FLOOR_SERIES = [
    (f'ate_master_state{{{_T1},state="testing"}}', "1x10"),
    (f'ate_master_state{{{_T2},state="softerror"}}', "1x10"),
    (f'ate_yield_ratio{{{_T1},site="-1",group="BT_PASS"}}', "0.9x10"),
    (f'ate_yield_ratio{{{_T1},site="-1",group="BT_FAIL"}}', "0.1x10"),
    (f'ate_yield_ratio{{{_T1},site="0",group="BT_PASS"}}', "0.95x10"),
    (f'ate_yield_ratio{{{_T1},site="1",group="BT_PASS"}}', "0.85x10"),
    (f'ate_yield_ratio{{{_T2},site="-1",group="BT_PASS"}}', "0.5x10"),
    (f'ate_yield_ratio{{{_T2},site="0",group="BT_PASS"}}', "0.5x10"),
    (f"ate_lot_parts{{{_T1}}}", "0+10x10"),
    (f"ate_lot_parts{{{_T2}}}", "50x10"),
    (f"ate_lot_held{{{_T1}}}", "0x10"),
    (f"ate_lot_held{{{_T2}}}", "0x10"),
    (f"ate_mqtt_connected{{{_T1}}}", "1x10"),
    (f"ate_mqtt_connected{{{_T2}}}", "1x10"),
    (f"ate_softerrors_total{{{_T1}}}", "0x10"),
    (f"ate_softerrors_total{{{_T2}}}", "0x4 1x5"),
    (f'ate_uph{{{_T1},window="1h"}}', "600x10"),
    (f'ate_uph{{{_T1},window="5m"}}', "480x10"),
    (f'ate_uph{{{_T2},window="1h"}}', "300x10"),
    (f'ate_uph{{{_T2},window="5m"}}', "0x10"),
    (f"ate_site_slots_offered_total{{{_T1}}}", "0+8x10"),
    (f"ate_site_slots_tested_total{{{_T1}}}", "0+4x10"),
    (f"ate_site_slots_offered_total{{{_T2}}}", "0+8x4 32x5"),
    (f"ate_site_slots_tested_total{{{_T2}}}", "0+8x4 32x5"),
    (f'ate_alarms_total{{{_T1},kind="site_yield",action="notify"}}', "0x7 1x2"),
    *[(f'{name}_bucket{{{_T1},le="{le}"}}', values)
      for name in ("ate_cycle_seconds", "ate_index_seconds", "ate_test_seconds")
      for le, values in _BUCKETS],
    (f'ate_e10_seconds_total{{{_T1},state="productive"}}', "0+45x10"),
    (f'ate_e10_seconds_total{{{_T1},state="standby"}}', "0+15x10"),
    (f'ate_e10_seconds_total{{{_T1},state="unscheduled_down"}}', "0x10"),
    (f'ate_e10_seconds_total{{{_T1},state="non_scheduled"}}', "0x10"),
    (f'ate_e10_seconds_total{{{_T2},state="productive"}}', "0+60x4 240x5"),
    (f'ate_e10_seconds_total{{{_T2},state="standby"}}', "0x10"),
    (f'ate_e10_seconds_total{{{_T2},state="unscheduled_down"}}', "0x4 60+60x5"),
    (f'ate_e10_seconds_total{{{_T2},state="non_scheduled"}}', "0x10"),
]
_QUANTILES = {"A": [('{tester="t01"}', 0.5)], "B": [('{tester="t01"}', 1.5)]}
#: (panel title, refId) -> the samples its query gives at 10m on FLOOR_SERIES
DASHBOARD_SAMPLES: dict[tuple[str, str], list[tuple[str, float]]] = {
    ("State per tester", "A"): [('{tester="t01"}', 5), ('{tester="t02"}', 7)],
    ("Lot yield (BT_PASS, all sites)", "A"): [
        (f'ate_yield_ratio{{{_T1},site="-1",group="BT_PASS"}}', 0.9),
        (f'ate_yield_ratio{{{_T2},site="-1",group="BT_PASS"}}', 0.5)],
    ("Lot parts", "A"): [(f"ate_lot_parts{{{_T1}}}", 100), (f"ate_lot_parts{{{_T2}}}", 50)],
    ("Lot held", "A"): [(f"ate_lot_held{{{_T1}}}", 0), (f"ate_lot_held{{{_T2}}}", 0)],
    ("Broker", "A"): [(f"ate_mqtt_connected{{{_T1}}}", 1), (f"ate_mqtt_connected{{{_T2}}}", 1)],
    ("Softerrors in the range", "A"): [('{tester="t01"}', 0), ('{tester="t02"}', 1)],
    ("Units per hour", "A"): [(f'ate_uph{{{_T1},window="1h"}}', 600),
                              (f'ate_uph{{{_T1},window="5m"}}', 480),
                              (f'ate_uph{{{_T2},window="1h"}}', 300),
                              (f'ate_uph{{{_T2},window="5m"}}', 0)],
    ("Yield per site (BT_PASS)", "A"): [
        (f'ate_yield_ratio{{{_T1},site="0",group="BT_PASS"}}', 0.95),
        (f'ate_yield_ratio{{{_T1},site="1",group="BT_PASS"}}', 0.85),
        (f'ate_yield_ratio{{{_T2},site="0",group="BT_PASS"}}', 0.5)],
    # t02 offered nothing in the last 5 minutes: no figure rather than a division by zero
    ("Site utilisation", "A"): [('{tester="t01"}', 0.5)],
    ("Alarms", "A"): [('{tester="t01",kind="site_yield",action="notify"}', 1)],
    **{(f"{title} p50 / p95", ref): samples for title in ("Cycle time", "Index time", "Test time")
       for ref, samples in _QUANTILES.items()},
    # the last 5 minutes: t01 is 3/4 productive and 1/4 standby, t02 down
    ("Testers in each E10 state", "A"): [('{state="productive"}', 0.75),
                                         ('{state="standby"}', 0.25),
                                         ('{state="unscheduled_down"}', 1),
                                         ('{state="non_scheduled"}', 0)],
    # the 10 minutes: t02 was productive for 4 and down for 6 (the sample at 4m is the last
    # productive one)
    ("E10 share in the range per tester", "A"): [
        ('{tester="t01",state="productive"}', 0.75), ('{tester="t01",state="standby"}', 0.25),
        ('{tester="t01",state="unscheduled_down"}', 0),
        ('{tester="t01",state="non_scheduled"}', 0),
        ('{tester="t02",state="productive"}', 0.4), ('{tester="t02",state="standby"}', 0),
        ('{tester="t02",state="unscheduled_down"}', 0.6),
        ('{tester="t02",state="non_scheduled"}', 0)],
    ("Alarms in the range", "A"): [('{tester="t01",kind="site_yield",action="notify"}', 1)],
}


def grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


def test_dashboard_queries_give_the_floor_figures(promtool, tmp_path):
    """Every panel's query, run by promtool on a floor of two testers, gives the figure the
    panel means (so each is valid PromQL, too)."""
    targets = {(title, target["refId"]): target["expr"] for title, target in dashboard_targets()}
    assert set(targets) == set(DASHBOARD_SAMPLES), "a query without expected samples, or gone"
    tests = [{"expr": grafana_to_promql(targets[key]), "eval_time": "10m",
              "exp_samples": [{"labels": labels, "value": value} for labels, value in samples]}
             for key, samples in DASHBOARD_SAMPLES.items()]
    (tmp_path / "none.yml").write_text("groups: []\n", encoding="utf-8")
    unit = {"rule_files": ["none.yml"], "evaluation_interval": "1m", "tests": [{
        "name": "dashboard", "interval": "1m",
        "input_series": [{"series": series, "values": values} for series, values in FLOOR_SERIES],
        "promql_expr_test": tests}]}
    (tmp_path / "dashboard.test.yml").write_text(yaml.safe_dump(unit, sort_keys=False),
                                                 encoding="utf-8")
    proc = run(promtool, "test", "rules", "dashboard.test.yml", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
