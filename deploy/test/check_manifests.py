#!/usr/bin/env python3
"""Checks the rendered manifests against what the worker needs and may have.

Owns the rules a schema cannot express: the Role grants exactly the Kubernetes verbs the
worker uses (no more, no less, no cluster-wide grant), the binding ties it to the worker's
service account, the pod is locked down (non-root, read-only root, no privilege escalation,
no capabilities) with probes on /healthz and /readyz at the configured port, the drain
deadline fits in the termination grace period, no credential sits in the ConfigMap, and the
KEDA trigger reads the queue the worker consumes. It never contacts a cluster.

Usage: check_manifests.py --effective-config FILE RENDERED.yaml...
(--effective-config: the output of `buildcluster-worker check-config` for the ConfigMap's file)
Exit 0 when every rule holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

NAME = "buildcluster-worker"

# (apiGroup, resource) -> verbs: every Kubernetes call of worker/src/cluster/mod.rs plus the
# reporter's pod watch (worker/src/watch/reporter.rs).
EXPECTED_GRANTS: dict[tuple[str, str], set[str]] = {
    ("", "pods"): {"create", "get", "list", "watch", "delete", "deletecollection"},
    ("", "secrets"): {"create", "get"},
    ("coordination.k8s.io", "leases"): {"get", "create", "update"},
}

# Keys that hold credentials (compared case- and separator-insensitively).
SECRET_KEYS = {"url", "password", "token"}


def rbac_problems(docs: list[dict]) -> list[str]:
    """The Role grants exactly EXPECTED_GRANTS and is bound to the worker's account only."""
    problems = []
    for d in docs:
        if d["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            problems.append(f"{d['kind']}/{d['metadata']['name']}: the worker needs no "
                            "cluster-wide permission")
    roles = [d for d in docs if d["kind"] == "Role"]
    if len(roles) != 1:
        return problems + [f"expected exactly one Role, found {len(roles)}"]
    role = roles[0]
    granted: dict[tuple[str, str], set[str]] = {}
    for i, rule in enumerate(role.get("rules") or []):
        if rule.get("nonResourceURLs"):
            problems.append(f"Role rule {i}: nonResourceURLs are not needed")
        for group in rule.get("apiGroups") or []:
            for resource in rule.get("resources") or []:
                for verb in rule.get("verbs") or []:
                    if "*" in (group, resource, verb):
                        problems.append(f"Role rule {i}: wildcard in {group!r} {resource!r} "
                                        f"{verb!r}")
                    granted.setdefault((group, resource), set()).add(verb)
    for key in sorted(set(granted) | set(EXPECTED_GRANTS)):
        want, have = EXPECTED_GRANTS.get(key, set()), granted.get(key, set())
        label = f"{key[0] or 'core'}/{key[1]}"
        if have - want:
            problems.append(f"Role grants {label} {sorted(have - want)} that the worker "
                            "never uses")
        if want - have:
            problems.append(f"Role lacks {label} {sorted(want - have)} that the worker uses")

    namespace = role["metadata"].get("namespace")
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    accounts = {(d["metadata"]["name"], d["metadata"].get("namespace"))
                for d in docs if d["kind"] == "ServiceAccount"}
    if len(bindings) != 1:
        return problems + [f"expected exactly one RoleBinding, found {len(bindings)}"]
    b = bindings[0]
    ref = b["roleRef"]
    if (ref.get("kind"), ref.get("name")) != ("Role", role["metadata"]["name"]):
        problems.append(f"RoleBinding refers to {ref.get('kind')}/{ref.get('name')}, not the Role")
    if b["metadata"].get("namespace") != namespace:
        problems.append("RoleBinding and Role are in different namespaces")
    subjects = b.get("subjects") or []
    for s in subjects:
        if s.get("kind") != "ServiceAccount" or (s.get("name"), s.get("namespace")) not in accounts:
            problems.append(f"RoleBinding subject {s} is not the worker's ServiceAccount")
    if len(subjects) != 1:
        problems.append(f"RoleBinding must have exactly one subject, has {len(subjects)}")
    deployment = one(docs, "Deployment")
    if deployment:
        sa = deployment["spec"]["template"]["spec"].get("serviceAccountName")
        if (sa, deployment["metadata"].get("namespace")) not in accounts:
            problems.append(f"Deployment runs as service account {sa!r}, which is not rendered "
                            "in its namespace")
        elif subjects and (subjects[0].get("name"), subjects[0].get("namespace")) != (
            sa, deployment["metadata"].get("namespace")
        ):
            problems.append("the Role is bound to another account than the Deployment's")
    return problems


def one(docs: list[dict], kind: str) -> dict | None:
    """The single object of that kind, if there is one."""
    found = [d for d in docs if d["kind"] == kind]
    return found[0] if len(found) == 1 else None


def seconds(text: str) -> float:
    """A humantime duration as check-config prints it (`25s`, `1m 30s`, `500ms`)."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)", str(text))
    if not parts:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def folded(key: str) -> str:
    return re.sub(r"[-_]", "", key).lower()


def secrets_in(tree, path: str = "") -> list[str]:
    """Paths of credential keys that have a value."""
    found = []
    if isinstance(tree, dict):
        for k, v in tree.items():
            p = f"{path}.{k}" if path else str(k)
            if folded(str(k)) in SECRET_KEYS and v not in (None, ""):
                found.append(p)
            found += secrets_in(v, p)
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            found += secrets_in(v, f"{path}[{i}]")
    return found


def pod_problems(docs: list[dict], effective: dict) -> list[str]:
    """Lock-down, probes, port, drain deadline, credentials and the ConfigMap."""
    d = one(docs, "Deployment")
    if not d:
        return ["expected exactly one Deployment"]
    problems = []
    pod = d["spec"]["template"]["spec"]
    port = effective["httpd"]["port"]
    drain = seconds(effective["shutdown"]["drain_timeout"])
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if not drain < grace:
        problems.append(f"shutdown.drainTimeout ({drain:g}s) must stay below "
                        f"terminationGracePeriodSeconds ({grace}s)")
    psc = pod.get("securityContext") or {}
    if not psc.get("runAsNonRoot"):
        problems.append("pod securityContext.runAsNonRoot must be true")
    if psc.get("runAsUser") == 0:
        problems.append("pod securityContext.runAsUser must not be 0")
    containers = pod.get("containers") or []
    if len(containers) != 1:
        problems.append(f"expected one container, found {len(containers)}")
    for c in containers:
        sc = c.get("securityContext") or {}
        checks = {
            "readOnlyRootFilesystem": sc.get("readOnlyRootFilesystem") is True,
            "allowPrivilegeEscalation: false": sc.get("allowPrivilegeEscalation") is False,
            "capabilities.drop [ALL]": (sc.get("capabilities") or {}).get("drop") == ["ALL"],
            "no capabilities.add": not (sc.get("capabilities") or {}).get("add"),
            "not privileged": not sc.get("privileged"),
            "runAsUser not 0": sc.get("runAsUser", psc.get("runAsUser")) not in (0, None),
        }
        problems += [f"container {c['name']}: needs {k}" for k, ok in checks.items() if not ok]
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
        if port not in ports.values():
            problems.append(f"container {c['name']}: no containerPort {port} (httpd.port)")
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = (c.get(probe) or {}).get("httpGet") or {}
            target = ports.get(get.get("port"), get.get("port"))
            if get.get("path") != path or target != port:
                problems.append(f"container {c['name']}: {probe} must GET {path} on port {port}")
        res = c.get("resources") or {}
        requests, limits = res.get("requests") or {}, res.get("limits") or {}
        if not requests.get("memory") or not limits.get("memory"):
            problems.append(f"container {c['name']}: needs memory requests and limits")
        for e in c.get("env") or []:
            if e["name"] == "BCW_RABBITMQ__URL" and "value" in e:
                problems.append("BCW_RABBITMQ__URL must come from a Secret, not a literal value")
    for cm in (x for x in docs if x["kind"] == "ConfigMap"):
        for key, text in (cm.get("data") or {}).items():
            if key.endswith((".yaml", ".yml")):
                leaked = secrets_in(yaml.safe_load(text))
                if leaked:
                    problems.append(f"ConfigMap {cm['metadata']['name']} {key}: credentials "
                                    f"{leaked} belong in the Secret")
    svc = one(docs, "Service")
    if not svc or port not in [p.get("port") for p in svc["spec"].get("ports") or []]:
        problems.append(f"the metrics Service must expose port {port}")
    pdb = one(docs, "PodDisruptionBudget")
    labels = d["spec"]["template"]["metadata"].get("labels") or {}
    wanted = (pdb["spec"]["selector"].get("matchLabels") or {}) if pdb else {}
    if not wanted or any(labels.get(k) != v for k, v in wanted.items()):
        problems.append("the PodDisruptionBudget must select the worker's pods")
    return problems


def autoscaler_problems(docs: list[dict], effective: dict) -> list[str]:
    """KEDA reads the worker's queue; autoscalers keep at least one replica (the reporter)."""
    problems = []
    queue = effective["rabbitmq"]["queue"]
    for so in (x for x in docs if x["kind"] == "ScaledObject"):
        spec = so["spec"]
        if spec.get("minReplicaCount", 0) < 1:
            problems.append("ScaledObject.minReplicaCount must be at least 1: a replica holds "
                            "the reporter Lease")
        for t in spec["triggers"]:
            read = t["metadata"].get("queueName")
            if t["type"] == "rabbitmq" and read != queue:
                problems.append(f"ScaledObject trigger reads queue {read!r}, "
                                f"the worker consumes {queue!r}")
    for hpa in (x for x in docs if x["kind"] == "HorizontalPodAutoscaler"):
        if hpa["spec"].get("minReplicas", 1) < 1:
            problems.append("HorizontalPodAutoscaler.minReplicas must be at least 1: a replica "
                            "holds the reporter Lease")
    scalers = [x for x in docs if x["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")]
    if len(scalers) > 1:
        problems.append("more than one autoscaler targets the worker")
    d = one(docs, "Deployment")
    for x in scalers:
        ref = x["spec"]["scaleTargetRef"]
        target = (ref.get("kind", "Deployment"), ref["name"])
        if d and target != ("Deployment", d["metadata"]["name"]):
            problems.append(f"{x['kind']} scales {ref.get('kind')}/{ref['name']}, not the "
                            f"worker's Deployment {d['metadata']['name']}")
    if scalers and d and "replicas" in d["spec"]:
        problems.append("with an autoscaler the Deployment must not set replicas")
    return problems


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--effective-config", required=True, type=Path)
    ap.add_argument("files", nargs="+", type=Path)
    args = ap.parse_args(argv)

    effective = yaml.safe_load(args.effective_config.read_text())
    failed = False
    for path in args.files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        problems = rbac_problems(docs) + pod_problems(docs, effective) + \
            autoscaler_problems(docs, effective)
        for p in problems:
            print(f"FAIL {path}: {p}", file=sys.stderr)
        failed |= bool(problems)
    if failed:
        return 1
    print(f"manifests: RBAC exact, pod locked down, probes, drain < grace, no credentials "
          f"({len(args.files)} renders)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
