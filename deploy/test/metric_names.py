#!/usr/bin/env python3
"""Checks that every metric name the deploy files query is one the worker exports.

Owns: reading the exported names out of worker/src/telemetry/metrics.rs (the `pub const`
names listed in `ALL`; histograms, recognised by `describe_histogram!`, are exported only as
`_bucket`, `_sum` and `_count` series), pulling metric names out of PromQL (the dashboard's
panel and variable queries, the PrometheusRule expressions) and out of the HPA's metric
names, and comparing the two. It never talks to Prometheus or Grafana and never changes a
file.

Usage: metric_names.py --metrics-rs FILE [--dashboard FILE] [--rules FILE] [--manifests FILE]...
Exit 0 when every name is exported (and at least one was found), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

# PromQL words that look like identifiers but are not metric names.
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def exported_names(metrics_rs: str) -> set[str]:
    """The series names the worker exports, from the source of its metrics module."""
    consts = dict(re.findall(r'pub const ([A-Z0-9_]+): &str = "([^"]+)";', metrics_rs))
    all_list = re.search(r"pub const ALL: &\[&str\] = &\[(.*?)\];", metrics_rs, re.S)
    if not consts or not all_list:
        raise ValueError("metrics.rs: no `pub const NAME: &str` constants or no `ALL` list")
    listed = re.findall(r"[A-Z0-9_]+", all_list.group(1))
    unknown = [c for c in listed if c not in consts]
    if unknown:
        raise ValueError(f"metrics.rs: ALL lists unknown constants {unknown}")
    histograms = set(re.findall(r"describe_histogram!\(\s*([A-Z0-9_]+)", metrics_rs))
    names: set[str] = set()
    for const in listed:
        name = consts[const]
        if const in histograms:
            names.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
        else:
            names.add(name)
    return names


def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (Grafana variables allowed)."""
    text = _strip_strings(expr)
    text = re.sub(r"\$\{[^}]*\}|\$\w+", " ", text)        # Grafana variables
    text = re.sub(r"\{[^}]*\}", " ", text)                 # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)                # ranges, subqueries
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )                                                      # label lists
    names = set()
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?", text):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in KEYWORDS:
            continue
        names.add(word)
    return names


def grafana_query_names(query: str) -> set[str]:
    """Metric names in a Grafana Prometheus variable query (`label_values(m, l)`, ...)."""
    q = query.strip()
    m = re.fullmatch(r"label_values\((.*),\s*[A-Za-z_]\w*\s*\)", q, re.S)
    if m:
        return promql_metric_names(m.group(1))
    m = re.fullmatch(r"label_values\(\s*[A-Za-z_]\w*\s*\)", q)
    if m:
        return set()
    m = re.fullmatch(r"(?:query_result|metrics)\((.*)\)", q, re.S)
    if m:
        return promql_metric_names(m.group(1))
    return promql_metric_names(q)


def dashboard_queries(dashboard: dict) -> list[tuple[str, set[str]]]:
    """(where, names) for every panel target and every query variable of a dashboard."""
    found = []

    def panels(items):
        for p in items or []:
            yield p
            yield from panels(p.get("panels"))

    for p in panels(dashboard.get("panels")):
        for t in p.get("targets") or []:
            if "expr" in t:
                found.append((f"panel {p.get('title')!r}", promql_metric_names(t["expr"])))
    for v in (dashboard.get("templating") or {}).get("list") or []:
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        found.append((f"variable {v.get('name')!r}", grafana_query_names(q)))
    return found


def rule_queries(doc: dict) -> list[tuple[str, set[str]]]:
    """(where, names) for every rule of a PrometheusRule object or a plain rules file."""
    groups = (doc.get("spec") or {}).get("groups") if doc.get("kind") else doc.get("groups")
    found = []
    for g in groups or []:
        for r in g.get("rules") or []:
            where = f"rule {r.get('alert') or r.get('record')!r}"
            found.append((where, promql_metric_names(str(r["expr"]))))
    return found


def manifest_metric_names(docs: list[dict]) -> list[tuple[str, set[str]]]:
    """(where, names) for HorizontalPodAutoscaler metrics and PrometheusRules in manifests."""
    found = []
    for d in docs:
        kind = d.get("kind")
        if kind == "PrometheusRule":
            found += rule_queries(d)
        elif kind == "HorizontalPodAutoscaler":
            for m in d["spec"].get("metrics") or []:
                source = m.get(m.get("type", "")[:1].lower() + m.get("type", "")[1:]) or {}
                metric = (source.get("metric") or {}).get("name")
                if metric:
                    found.append((f"HPA {d['metadata']['name']!r}", {metric}))
    return found


def unknown_names(
    found: list[tuple[str, set[str]]], exported: set[str]
) -> list[str]:
    """One line per name that is queried but not exported."""
    problems = []
    for where, names in found:
        for name in sorted(names - exported):
            base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), "")
            if name + "_bucket" in exported:
                hint = " (a histogram: query its _bucket, _sum or _count series)"
            elif base in exported:
                hint = f" ({base} is not a histogram)"
            else:
                hint = ""
            problems.append(f"{where}: {name} is not exported by the worker{hint}")
    return problems


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metrics-rs", required=True, type=Path)
    ap.add_argument("--dashboard", action="append", default=[], type=Path)
    ap.add_argument("--rules", action="append", default=[], type=Path)
    ap.add_argument("--manifests", action="append", default=[], type=Path)
    args = ap.parse_args(argv)

    exported = exported_names(args.metrics_rs.read_text())
    found: list[tuple[str, set[str]]] = []
    for path in args.dashboard:
        found += [(f"{path}: {w}", n) for w, n in dashboard_queries(json.loads(path.read_text()))]
    for path in args.rules:
        found += [(f"{path}: {w}", n) for w, n in rule_queries(yaml.safe_load(path.read_text()))]
    for path in args.manifests:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        found += [(f"{path}: {w}", n) for w, n in manifest_metric_names(docs)]

    used = set().union(*(n for _, n in found)) if found else set()
    problems = unknown_names(found, exported)
    if not used:
        problems.append("no metric name found in the given files: nothing was checked")
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"metric names: {len(used)} names in {len(found)} queries, all exported "
          f"({len(exported)} series names exported)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
