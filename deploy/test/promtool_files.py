#!/usr/bin/env python3
"""Writes the plain Prometheus rule files that promtool reads, from the PrometheusRule object.

Owns the extraction of `spec.groups` into OUT_DIR: `rules.full.yaml` (the rules as deployed,
for `promtool check rules`) and `rules.generated.yaml` (the same rules with only their
`summary` annotation, which the unit test file names in `rule_files` so that its expectations
need not repeat every description and runbook), plus a copy of the unit test file; and the
check that the unit tests make every alert fire at least once and show at least one
evaluation where an alert does not fire. It never runs promtool.

Usage: promtool_files.py PROMETHEUSRULE.yaml RULES_TEST.yaml OUT_DIR
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import yaml


def rule_groups(doc: dict) -> list[dict]:
    """The rule groups of a PrometheusRule object."""
    if doc.get("kind") != "PrometheusRule":
        raise ValueError(f"expected a PrometheusRule, got {doc.get('kind')!r}")
    groups = (doc.get("spec") or {}).get("groups")
    if not groups:
        raise ValueError("the PrometheusRule has no groups")
    return groups


def summary_only(groups: list[dict]) -> list[dict]:
    """The groups with every annotation but `summary` dropped (expressions untouched)."""
    out = copy.deepcopy(groups)
    for g in out:
        for r in g.get("rules") or []:
            if "annotations" in r:
                r["annotations"] = {k: v for k, v in r["annotations"].items() if k == "summary"}
    return out


def coverage_problems(groups: list[dict], tests: dict) -> list[str]:
    """Alerts that no unit test makes fire, and a missing not-firing case."""
    alerts = {r["alert"] for g in groups for r in g.get("rules") or [] if "alert" in r}
    fired, quiet = set(), set()
    for t in tests.get("tests") or []:
        for case in t.get("alert_rule_test") or []:
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    problems = [f"alert {a} never fires in the unit tests" for a in sorted(alerts - fired)]
    problems += [f"unit tests name unknown alert {a}" for a in sorted((fired | quiet) - alerts)]
    if not quiet & alerts:
        problems.append("no unit test shows an alert not firing")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    source, test_file, out = Path(argv[0]), Path(argv[1]), Path(argv[2])
    groups = rule_groups(yaml.safe_load(source.read_text()))
    tests = yaml.safe_load(test_file.read_text())
    problems = coverage_problems(groups, tests)
    for p in problems:
        print(f"FAIL {test_file}: {p}", file=sys.stderr)
    if problems:
        return 1
    out.mkdir(parents=True, exist_ok=True)
    (out / test_file.name).write_text(test_file.read_text())
    (out / "rules.full.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    (out / "rules.generated.yaml").write_text(
        yaml.safe_dump({"groups": summary_only(groups)}, sort_keys=False)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
