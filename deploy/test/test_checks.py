"""Unit tests of the deploy checkers: each one must catch the mistake it exists for.

Run: python3 -m unittest discover -s deploy/test -p 'test_*.py'
"""

from __future__ import annotations

import copy
import sys
import unittest
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import check_manifests  # noqa: E402
import metric_names  # noqa: E402
import promtool_files  # noqa: E402
import validate_crds  # noqa: E402

METRICS_RS = '''
pub const MESSAGES_TOTAL: &str = "bcw_messages_total";
pub const LAUNCH_DURATION: &str = "bcw_launch_duration_seconds";
pub const QUEUE_MESSAGES: &str = "bcw_queue_messages";
pub const NOT_LISTED: &str = "bcw_not_listed";
pub const ALL: &[&str] = &[
    MESSAGES_TOTAL,
    LAUNCH_DURATION,
    QUEUE_MESSAGES,
];
pub fn describe() {
    describe_histogram!(
        LAUNCH_DURATION,
        Unit::Seconds,
        "x"
    );
}
'''


class ExportedNames(unittest.TestCase):
    def test_histograms_are_exported_as_bucket_sum_and_count_only(self):
        names = metric_names.exported_names(METRICS_RS)
        self.assertEqual(names, {
            "bcw_messages_total", "bcw_queue_messages",
            "bcw_launch_duration_seconds_bucket", "bcw_launch_duration_seconds_sum",
            "bcw_launch_duration_seconds_count",
        })

    def test_a_constant_missing_from_all_is_not_exported(self):
        self.assertNotIn("bcw_not_listed", metric_names.exported_names(METRICS_RS))

    def test_the_real_metrics_module_exports_the_contract_metrics(self):
        rs = (HERE.parents[1] / "worker/src/telemetry/metrics.rs").read_text()
        names = metric_names.exported_names(rs)
        for required in ("bcw_messages_total", "bcw_inflight_builds", "bcw_breaker_state",
                         "bcw_launch_duration_seconds_bucket", "bcw_queue_consumers"):
            self.assertIn(required, names)


class PromqlNames(unittest.TestCase):
    def names(self, expr):
        return metric_names.promql_metric_names(expr)

    def test_functions_keywords_labels_and_ranges_are_not_metrics(self):
        expr = ('sum by (queue, pod) (rate(bcw_a_total{queue=~"x.+", job!="y"}[5m])) > 0 '
                'and on (queue) group_left(pod) bcw_b offset 10m unless bool bcw_c')
        self.assertEqual(self.names(expr), {"bcw_a_total", "bcw_b", "bcw_c"})

    def test_grafana_variables_and_strings_are_ignored(self):
        expr = ('histogram_quantile(0.95, sum by (le) (rate(bcw_h_bucket{ns=~"$namespace", '
                'q="${queue}"}[$__rate_interval])))')
        self.assertEqual(self.names(expr), {"bcw_h_bucket"})

    def test_label_values_query_names_only_the_metric(self):
        q = 'label_values(bcw_queue_messages{namespace=~"$namespace"}, queue)'
        self.assertEqual(metric_names.grafana_query_names(q), {"bcw_queue_messages"})

    def test_unknown_and_bare_histogram_names_are_reported(self):
        exported = metric_names.exported_names(METRICS_RS)
        found = [("panel 'x'", {"bcw_launch_duration_seconds", "bcw_typo_total",
                                "bcw_messages_total_bucket", "bcw_messages_total"})]
        problems = metric_names.unknown_names(found, exported)
        self.assertEqual(len(problems), 3, problems)
        self.assertTrue(any("a histogram" in p for p in problems))
        self.assertTrue(any("is not a histogram" in p for p in problems))

    def test_hpa_pods_metric_names_are_collected(self):
        hpa = {"kind": "HorizontalPodAutoscaler", "metadata": {"name": "w"},
               "spec": {"metrics": [
                   {"type": "Pods", "pods": {"metric": {"name": "bcw_inflight_builds"}}},
                   {"type": "Resource", "resource": {"name": "cpu"}}]}}
        found = metric_names.manifest_metric_names([hpa])
        self.assertEqual(found, [("HPA 'w'", {"bcw_inflight_builds"})])


ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
    "metadata": {"name": "buildcluster-worker", "namespace": "ns"},
    "rules": [
        {"apiGroups": [""], "resources": ["pods"],
         "verbs": ["create", "get", "list", "watch", "delete", "deletecollection"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "get"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "verbs": ["get", "create", "update"]},
    ],
}
BINDING = {
    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
    "metadata": {"name": "buildcluster-worker", "namespace": "ns"},
    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                "name": "buildcluster-worker"},
    "subjects": [{"kind": "ServiceAccount", "name": "buildcluster-worker", "namespace": "ns"}],
}
ACCOUNT = {"apiVersion": "v1", "kind": "ServiceAccount",
           "metadata": {"name": "buildcluster-worker", "namespace": "ns"}}


class Rbac(unittest.TestCase):
    def problems(self, role=ROLE, binding=BINDING, extra=()):
        return check_manifests.rbac_problems([role, binding, ACCOUNT, *extra])

    def test_the_exact_grants_pass(self):
        self.assertEqual(self.problems(), [])

    def test_the_real_role_passes(self):
        role = yaml.safe_load((HERE.parent / "base/role.yaml").read_text())
        role["metadata"]["namespace"] = "ns"
        self.assertEqual(self.problems(role=role), [])

    def test_an_extra_verb_fails(self):
        role = copy.deepcopy(ROLE)
        role["rules"][1]["verbs"].append("list")
        self.assertEqual(self.problems(role=role),
                         ["Role grants core/secrets ['list'] that the worker never uses"])

    def test_a_missing_verb_fails(self):
        role = copy.deepcopy(ROLE)
        role["rules"][0]["verbs"].remove("watch")
        self.assertEqual(self.problems(role=role),
                         ["Role lacks core/pods ['watch'] that the worker uses"])

    def test_a_wildcard_fails(self):
        role = copy.deepcopy(ROLE)
        role["rules"][2]["verbs"] = ["*"]
        problems = self.problems(role=role)
        self.assertTrue(any("wildcard" in p for p in problems), problems)

    def test_another_resource_fails(self):
        role = copy.deepcopy(ROLE)
        role["rules"].append({"apiGroups": [""], "resources": ["events"], "verbs": ["create"]})
        self.assertEqual(self.problems(role=role),
                         ["Role grants core/events ['create'] that the worker never uses"])

    def test_a_cluster_role_fails(self):
        cr = {"kind": "ClusterRole", "metadata": {"name": "x"}, "rules": []}
        self.assertTrue(self.problems(extra=[cr]))

    def test_a_binding_to_another_account_fails(self):
        b = copy.deepcopy(BINDING)
        b["subjects"][0]["name"] = "default"
        self.assertTrue(self.problems(binding=b))


def base_docs() -> list[dict]:
    """The base's pod objects as written (no kustomize needed), with the ConfigMap built."""
    docs = [yaml.safe_load((HERE.parent / "base" / f).read_text())
            for f in ("deployment.yaml", "service.yaml", "poddisruptionbudget.yaml")]
    docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                 "data": {"config.yaml": (HERE.parent / "base/config.yaml").read_text()}})
    return docs


EFFECTIVE = {"httpd": {"port": 9464}, "shutdown": {"drain_timeout": "25s"},
             "rabbitmq": {"queue": "default"}}


class Pod(unittest.TestCase):
    def problems(self, docs, effective=EFFECTIVE):
        return check_manifests.pod_problems(docs, effective)

    def container(self, docs):
        return docs[0]["spec"]["template"]["spec"]["containers"][0]

    def test_the_base_passes(self):
        self.assertEqual(self.problems(base_docs()), [])

    def test_a_drain_longer_than_the_grace_period_fails(self):
        effective = {**EFFECTIVE, "shutdown": {"drain_timeout": "40s"}}
        self.assertEqual(self.problems(base_docs(), effective),
                         ["shutdown.drainTimeout (40s) must stay below "
                          "terminationGracePeriodSeconds (40s)"])

    def test_a_writable_root_filesystem_fails(self):
        docs = base_docs()
        self.container(docs)["securityContext"]["readOnlyRootFilesystem"] = False
        self.assertEqual(self.problems(docs), ["container worker: needs readOnlyRootFilesystem"])

    def test_an_added_capability_fails(self):
        docs = base_docs()
        self.container(docs)["securityContext"]["capabilities"]["add"] = ["NET_ADMIN"]
        self.assertEqual(self.problems(docs), ["container worker: needs no capabilities.add"])

    def test_a_readiness_probe_on_healthz_fails(self):
        docs = base_docs()
        self.container(docs)["readinessProbe"]["httpGet"]["path"] = "/healthz"
        self.assertEqual(self.problems(docs),
                         ["container worker: readinessProbe must GET /readyz on port 9464"])

    def test_another_http_port_fails(self):
        problems = self.problems(base_docs(), {**EFFECTIVE, "httpd": {"port": 8080}})
        self.assertIn("container worker: no containerPort 8080 (httpd.port)", problems)

    def test_a_literal_broker_url_fails(self):
        docs = base_docs()
        env = self.container(docs)["env"]
        env[0] = {"name": "BCW_RABBITMQ__URL", "value": "amqp://u:p@h"}
        self.assertEqual(self.problems(docs), [
            "BCW_RABBITMQ__URL must come from a Secret, not a literal value"])

    def test_a_password_in_the_config_map_fails(self):
        docs = base_docs()
        docs[3]["data"]["config.yaml"] += "\nexecutor:\n  k8s:\n    options:\n" \
            "      kubernetes:\n        token: abc\n"
        problems = self.problems(docs)
        self.assertEqual(len(problems), 1)
        self.assertIn("credentials ['executor.k8s.options.kubernetes.token']", problems[0])


class Autoscalers(unittest.TestCase):
    def docs(self, scaled_object):
        deployment = yaml.safe_load((HERE.parent / "base/deployment.yaml").read_text())
        del deployment["spec"]["replicas"]
        return [deployment, scaled_object]

    def scaled_object(self):
        return yaml.safe_load((HERE.parent / "components/keda/scaledobject.yaml").read_text())

    def test_the_keda_component_passes(self):
        self.assertEqual(check_manifests.autoscaler_problems(
            self.docs(self.scaled_object()), EFFECTIVE), [])

    def test_a_trigger_on_another_queue_fails(self):
        problems = check_manifests.autoscaler_problems(
            self.docs(self.scaled_object()), {**EFFECTIVE, "rabbitmq": {"queue": "pool-b"}})
        self.assertEqual(problems, ["ScaledObject trigger reads queue 'default', the worker "
                                    "consumes 'pool-b'"])

    def test_scaling_to_zero_fails(self):
        so = self.scaled_object()
        so["spec"]["minReplicaCount"] = 0
        self.assertEqual(len(check_manifests.autoscaler_problems(self.docs(so), EFFECTIVE)), 1)

    def test_an_hpa_aimed_at_another_deployment_fails(self):
        hpa = yaml.safe_load((HERE.parent / "components/hpa/hpa.yaml").read_text())
        self.assertEqual(check_manifests.autoscaler_problems(self.docs(hpa), EFFECTIVE), [])
        hpa["spec"]["scaleTargetRef"]["name"] = "worker"
        self.assertEqual(check_manifests.autoscaler_problems(self.docs(hpa), EFFECTIVE),
                         ["HorizontalPodAutoscaler scales Deployment/worker, not the worker's "
                          "Deployment buildcluster-worker"])

    def test_replicas_beside_an_autoscaler_fail(self):
        docs = self.docs(self.scaled_object())
        docs[0]["spec"]["replicas"] = 2
        self.assertEqual(check_manifests.autoscaler_problems(docs, EFFECTIVE),
                         ["with an autoscaler the Deployment must not set replicas"])


class Durations(unittest.TestCase):
    def test_humantime_as_check_config_prints_it(self):
        self.assertEqual(check_manifests.seconds("25s"), 25)
        self.assertEqual(check_manifests.seconds("1m 30s"), 90)
        self.assertEqual(check_manifests.seconds("500ms"), 0.5)
        with self.assertRaises(ValueError):
            check_manifests.seconds("soon")


class Credentials(unittest.TestCase):
    def test_values_of_credential_keys_are_found_in_any_spelling(self):
        tree = {"rabbitmq": {"URL": "amqp://u:p@h", "password": "", "passwordFile": "/f"},
                "executor": {"k8s": {"options": {"kubernetes": {"token": "abc",
                                                                "tokenFile": "/t"}}}}}
        self.assertEqual(check_manifests.secrets_in(tree),
                         ["rabbitmq.URL", "executor.k8s.options.kubernetes.token"])

    def test_the_example_configuration_holds_none(self):
        config = yaml.safe_load((HERE.parent / "base/config.yaml").read_text())
        self.assertEqual(check_manifests.secrets_in(config), [])


class CustomResources(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.schemas = validate_crds.load_crds(HERE / "crds")

    def scaled_object(self):
        return yaml.safe_load((HERE.parent / "components/keda/scaledobject.yaml").read_text())

    def errors(self, doc):
        return validate_crds.errors_of(doc, self.schemas[(doc["apiVersion"], doc["kind"])])

    def test_the_shipped_scaled_object_is_valid(self):
        self.assertEqual(self.errors(self.scaled_object()), [])

    def test_an_unknown_field_is_an_error(self):
        so = self.scaled_object()
        so["spec"]["triggers"][0]["metdata"] = so["spec"]["triggers"][0].pop("metadata")
        errors = self.errors(so)
        self.assertTrue(any("'metdata' was unexpected" in e for e in errors), errors)
        self.assertTrue(any("'metadata' is a required property" in e for e in errors), errors)

    def test_a_wrong_type_is_an_error(self):
        so = self.scaled_object()
        so["spec"]["triggers"][0]["metadata"]["value"] = 20
        self.assertEqual(self.errors(so),
                         ["spec.triggers.0.metadata.value: 20 is not of type 'string'"])

    def test_a_bad_rule_duration_is_an_error(self):
        rule = yaml.safe_load((HERE.parent / "prometheus/rules.yaml").read_text())
        rule["spec"]["groups"][0]["rules"][0]["for"] = "10 minutes"
        self.assertEqual(len(self.errors(rule)), 1)

    def test_int_or_string_and_preserved_fields_are_accepted(self):
        rule = yaml.safe_load((HERE.parent / "prometheus/rules.yaml").read_text())
        rule["spec"]["groups"][0]["rules"][0]["expr"] = 1
        self.assertEqual(self.errors(rule), [])
        ta = {"apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication",
              "metadata": {"name": "t"},
              "spec": {"podIdentity": {"provider": "azure-workload", "anything": 1}}}
        self.assertEqual(self.errors(ta), [])

    def test_metadata_needs_a_valid_name(self):
        so = self.scaled_object()
        so["metadata"]["name"] = "Not_A_Name"
        self.assertEqual(len(self.errors(so)), 1)

    def test_core_objects_are_left_to_kubernetes_validate(self):
        self.assertFalse(validate_crds.is_custom_group("apps/v1", self.schemas))
        self.assertFalse(validate_crds.is_custom_group("v1", self.schemas))
        self.assertTrue(validate_crds.is_custom_group("keda.sh/v1alpha2", self.schemas))


class PromtoolFiles(unittest.TestCase):
    def groups(self):
        return promtool_files.rule_groups(
            yaml.safe_load((HERE.parent / "prometheus/rules.yaml").read_text()))

    def test_summary_only_keeps_expressions_and_summaries(self):
        groups = self.groups()
        slim = promtool_files.summary_only(groups)
        for full, short in zip(groups[0]["rules"], slim[0]["rules"]):
            self.assertEqual(full["expr"], short["expr"])
            self.assertEqual(short["annotations"], {"summary": full["annotations"]["summary"]})

    def test_an_alert_without_a_firing_test_is_reported(self):
        tests = yaml.safe_load((HERE.parent / "prometheus/rules.test.yaml").read_text())
        self.assertEqual(promtool_files.coverage_problems(self.groups(), tests), [])
        for t in tests["tests"]:
            t["alert_rule_test"] = [c for c in t["alert_rule_test"]
                                    if c["alertname"] != "BcwDeadLetters"]
        self.assertEqual(promtool_files.coverage_problems(self.groups(), tests),
                         ["alert BcwDeadLetters never fires in the unit tests"])


if __name__ == "__main__":
    unittest.main()
