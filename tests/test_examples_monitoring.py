"""examples/grafana-dashboard.json and examples/prometheus-alerts.yml name only
metrics the gateway exports and docs/operations.md documents (issue 17), and the
alert file has the shape Prometheus loads (promtool checks it for real)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.ops.metrics import Metrics
from tests.test_metrics_documented import documented_metrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "examples" / "grafana-dashboard.json"
ALERTS = ROOT / "examples" / "prometheus-alerts.yml"
NAME = re.compile(r"\bportcullis_[a-z_]+")
# Prometheus's own series (the scrape's health): not ours to export.
PROMETHEUS_OWN = {"up"}


def exported() -> set[str]:
    """Every series name the gateway's Metrics registry serves, as PromQL names them."""
    metrics = Metrics(listeners=["inbound", "submission", "submissions"],
                      downstreams=["inbound", "outbound"])
    names: set[str] = set()
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        # The parser names a counter's family without _total, its series with it; a
        # labelled family with no series yet still counts as exported.
        names.add(family.name + "_total" if family.type == "counter" else family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_count", "_sum"))
    return names


def base_name(series: str) -> str:
    """portcullis_downstream_seconds_bucket → portcullis_downstream_seconds."""
    return re.sub(r"_(bucket|count|sum)$", "", series)


def names_in(expr: str) -> set[str]:
    return set(NAME.findall(expr))


def dashboard_expressions() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in data["panels"] for t in panel.get("targets", ())]


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_the_dashboard_uses_only_exported_and_documented_metrics():
    exprs = dashboard_expressions()
    assert len(exprs) >= 10
    have, documented = exported(), documented_metrics()
    for expr in exprs:
        used = names_in(expr)
        assert used, f"no portcullis metric in {expr!r}"
        assert used <= have, f"{sorted(used - have)} not exported (in {expr!r})"
        assert {base_name(n) for n in used} <= set(documented), expr


def test_the_dashboard_shows_every_documented_metric():
    used = {base_name(n) for expr in dashboard_expressions() for n in names_in(expr)}
    assert set(documented_metrics()) <= used, sorted(set(documented_metrics()) - used)


def test_every_alert_names_exported_and_documented_metrics():
    have, documented = exported(), documented_metrics()
    for rule in alert_rules():
        used = names_in(rule["expr"])
        others = {w for w in re.findall(r"\b([a-z_]+)\{", rule["expr"])} - used
        assert used or others <= PROMETHEUS_OWN, rule["alert"]
        assert others <= PROMETHEUS_OWN, (rule["alert"], others)
        assert used <= have, (rule["alert"], sorted(used - have))
        assert {base_name(n) for n in used} <= set(documented), rule["alert"]


def test_the_alerts_cover_what_an_isp_pages_on():
    used = {n for rule in alert_rules() for n in names_in(rule["expr"])}
    for needed in ("portcullis_downstream_errors_total", "portcullis_store_up",
                   "portcullis_suspended_accounts", "portcullis_smtp_replies_total",
                   "portcullis_tls_certificate_expiry_timestamp_seconds"):
        assert needed in used, needed


def test_the_alert_file_has_the_shape_of_a_prometheus_rule_file():
    data = yaml.safe_load(ALERTS.read_text())
    assert set(data) == {"groups"}
    names = []
    for group in data["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["rules"], group.get("name")
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert isinstance(rule["alert"], str) and isinstance(rule["expr"], str)
            if "for" in rule:
                assert re.fullmatch(r"\d+[smhd]", rule["for"]), rule["for"]
            assert rule["labels"]["severity"] in ("page", "ticket")
            assert rule["annotations"]["summary"]
            names.append(rule["alert"])
    assert len(names) == len(set(names))


def test_promtool_accepts_the_alert_rules():
    """Debian's `prometheus` package (scripts/setup.sh) ships promtool: it parses every
    expression with Prometheus's own PromQL parser."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/setup.sh installs Debian's prometheus package"
    done = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout, done.stdout
