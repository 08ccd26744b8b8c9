//! Validation: the rules a typed configuration must meet before the worker starts.
//!
//! Owns every rule of docs/interface.md §2.6, including those a production service needs on top
//! (addresses parse, files exist, Kubernetes names are valid), each reported once with the path of
//! the value at fault, all of them together. It reads files only to check they can be read, never
//! prints a secret, and never changes the settings.

use std::path::Path;
use std::time::Duration;

use super::credentials::check_amqp_uri;
use super::issue::ConfigIssue;
use super::model::{
    BreakerSettings, ExecutorConfig, ExecutorSettings, KubernetesOptions, LifecycleSettings,
    RabbitSettings, RequestRetry, Settings, Tiers,
};
use crate::naming::{is_dns1123_label, is_dns1123_subdomain, is_label_value, is_qualified_name};

/// Plugins whose blocks this worker serves (`k8s-vm` by the same pod launcher).
pub const SUPPORTED_PLUGINS: &[&str] = &["k8s", "k8s-vm"];
/// Kubernetes' image pull policies.
const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];
/// Kubernetes' pod DNS policies.
/// `None` is left out: it needs `spec.dnsConfig`, which the worker does not set, so the API
/// server would refuse every build pod.
const DNS_POLICIES: &[&str] = &["ClusterFirst", "ClusterFirstWithHostNet", "Default"];
/// Longest `prefix`: pod names are `<prefix><buildId>-xxxxx` and must stay DNS labels.
const MAX_PREFIX_LEN: usize = 20;

impl ExecutorSettings {
    /// The default executor's name: `plugin`, or the first executor when `plugin` is empty (as in
    /// Screwdriver's router); `""` only when there are no executors.
    pub fn default_executor(&self) -> &str {
        if self.plugin.is_empty() {
            self.executors.first().map_or("", |(name, _)| name.as_str())
        } else {
            &self.plugin
        }
    }
}

impl Settings {
    /// Every rule the configuration breaks, one issue each; empty when it is valid.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut v = Issues::default();
        rabbitmq(&self.rabbitmq, &mut v);
        if self.events.enabled && self.events.exchange.trim().is_empty() {
            v.at("events.exchange", "is empty while events are enabled");
        }
        executors(&self.executor, &mut v);
        breaker(
            &self.status_updates.breaker,
            "status_updates.breaker",
            &mut v,
        );
        retry(&self.status_updates.retry, "status_updates.retry", &mut v);
        v.readable(&self.status_updates.ca_file, "status_updates.ca_file");
        if self.intake.max_message_bytes == 0 {
            v.at("intake.max_message_bytes", "must be at least 1");
        }
        for (i, key) in self.intake.pod_annotation_allow_list.iter().enumerate() {
            if !is_qualified_name(key) {
                v.at(
                    format!("intake.pod_annotation_allow_list[{i}]"),
                    format!("{key:?} is not a valid annotation key"),
                );
            }
        }
        lifecycle(&self.lifecycle, &mut v);
        v.0
    }
}

#[derive(Default)]
struct Issues(Vec<ConfigIssue>);

impl Issues {
    fn at(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigIssue::new(path, message));
    }

    fn issue(&mut self, issue: ConfigIssue) {
        self.0.push(issue);
    }

    /// A file named by the configuration must be readable when the name is set.
    fn readable(&mut self, file: &str, path: impl Into<String>) {
        if let Some(problem) = unreadable(file) {
            self.at(path, problem);
        }
    }

    fn nonzero_duration(&mut self, d: Duration, path: impl Into<String>) {
        if d.is_zero() {
            self.at(path, "must be greater than 0");
        }
    }
}

fn unreadable(file: &str) -> Option<String> {
    if file.is_empty() {
        return None;
    }
    match std::fs::metadata(Path::new(file)) {
        Err(e) => Some(format!("cannot read {file:?}: {e}")),
        Ok(m) if !m.is_file() => Some(format!("{file:?} is not a file")),
        Ok(_) => std::fs::File::open(file)
            .err()
            .map(|e| format!("cannot read {file:?}: {e}")),
    }
}

fn rabbitmq(r: &RabbitSettings, v: &mut Issues) {
    match r.explicit_url() {
        Some(url) => {
            if let Err(e) = check_amqp_uri(url) {
                v.at("rabbitmq.url", e);
            }
        }
        None => {
            // The real password may live in a file; the URI's shape does not depend on it.
            match r.assemble("placeholder") {
                Ok(uri) => {
                    if let Err(e) = check_amqp_uri(&uri) {
                        v.at("rabbitmq", e);
                    }
                }
                Err(issue) => v.issue(issue),
            }
            if let Some(file) = r.password_file.as_deref() {
                v.readable(file, "rabbitmq.password_file");
            }
        }
    }
    if let Err(issue) = r.heartbeat() {
        v.issue(issue);
    }
    if r.scheme() == "amqps" {
        v.readable(&r.ca_file, "rabbitmq.ca_file");
    }
    for (value, path) in [
        (&r.exchange, "rabbitmq.exchange"),
        (&r.queue, "rabbitmq.queue"),
    ] {
        if value.trim().is_empty() {
            v.at(path, "is empty");
        }
    }
    if r.retry_queue_enabled && r.retry_queue.trim().is_empty() {
        v.at(
            "rabbitmq.retry_queue",
            "is empty while retry_queue_enabled is true",
        );
    }
    if r.prefetch_count == 0 {
        v.at("rabbitmq.prefetch_count", "must be at least 1");
    }
    if r.message_reprocess_limit == 0 {
        v.at("rabbitmq.message_reprocess_limit", "must be at least 1");
    }
    if r.retry_delays.is_empty() {
        v.at("rabbitmq.retry_delays", "needs at least one delay");
    }
}

fn executors(e: &ExecutorSettings, v: &mut Issues) {
    if e.executors.is_empty() {
        v.at("executor", "no executors configured");
        return;
    }
    if !e.plugin.is_empty() && e.get(&e.plugin).is_none() {
        let names: Vec<&str> = e.executors.iter().map(|(n, _)| n.as_str()).collect();
        v.at(
            "executor.plugin",
            format!(
                "the default executor {:?} is not configured (executors: {})",
                e.plugin,
                names.join(", ")
            ),
        );
    }
    for (name, block) in &e.executors {
        executor(name, block, v);
    }
}

fn executor(name: &str, e: &ExecutorConfig, v: &mut Issues) {
    let at = |rest: &str| format!("executor.{name}.{rest}");
    if name.is_empty() || !is_label_value(name) {
        v.at(
            format!("executor.{name}"),
            "an executor name is written as a pod label value: at most 63 letters, digits, \
             '-', '_' or '.', starting and ending with a letter or digit",
        );
    }
    if !SUPPORTED_PLUGINS.contains(&e.plugin_name.as_str()) {
        v.at(
            at("plugin_name"),
            format!(
                "{:?} is not one of {}",
                e.plugin_name,
                SUPPORTED_PLUGINS.join(", ")
            ),
        );
    }
    if e.weightage < 0 {
        v.at(at("weightage"), format!("{} is negative", e.weightage));
    }
    for (i, pattern) in e.exclusions.iter().enumerate() {
        if let Err(err) = regex::RegexBuilder::new(pattern)
            .case_insensitive(true)
            .build()
        {
            // The regex crate draws a caret diagram over several lines; keep its last line.
            let text = err.to_string();
            let last = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            let reason = last.trim().trim_start_matches("error: ");
            v.at(
                at(&format!("exclusions[{i}]")),
                format!("{pattern:?} is not a valid regular expression: {reason}"),
            );
        }
    }
    let o = &e.options;
    for (value, key) in [
        (&o.launch_image, "launch_image"),
        (&o.launch_version, "launch_version"),
    ] {
        if value.trim().is_empty() {
            v.at(at(&format!("options.{key}")), "is empty");
        }
    }
    if !valid_prefix(&o.prefix) {
        v.at(
            at("options.prefix"),
            format!(
                "{:?} would make invalid pod names: use at most {MAX_PREFIX_LEN} lowercase letters, \
                 digits and '-', starting with a letter or digit",
                o.prefix
            ),
        );
    }
    breaker(&o.fusebox.breaker, &at("options.fusebox.breaker"), v);
    retry(&o.requestretry, &at("options.requestretry"), v);
    kubernetes(&o.kubernetes, &at("options.kubernetes"), v);
}

/// Empty, or a DNS-label-like start of a pod name (`-` allowed inside and at the end).
fn valid_prefix(p: &str) -> bool {
    p.is_empty()
        || (p.len() <= MAX_PREFIX_LEN
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !p.starts_with('-'))
}

fn breaker(b: &BreakerSettings, at: &str, v: &mut Issues) {
    v.nonzero_duration(b.timeout, format!("{at}.timeout"));
    if b.max_failures == 0 {
        v.at(format!("{at}.max_failures"), "must be at least 1");
    }
    v.nonzero_duration(b.reset_timeout, format!("{at}.reset_timeout"));
}

fn retry(r: &RequestRetry, at: &str, v: &mut Issues) {
    v.nonzero_duration(r.retry_delay, format!("{at}.retry_delay"));
    if r.max_attempts == 0 {
        v.at(format!("{at}.max_attempts"), "must be at least 1");
    }
}

fn kubernetes(k: &KubernetesOptions, at: &str, v: &mut Issues) {
    kube_connection(k, at, v);
    kube_names(k, at, v);
    kube_policies(k, at, v);
    kube_limits(k, at, v);
}

/// How the worker reaches the API server.
fn kube_connection(k: &KubernetesOptions, at: &str, v: &mut Issues) {
    let p = |key: &str| format!("{at}.{key}");
    if k.host.trim().is_empty() && k.kubeconfig.trim().is_empty() {
        v.at(p("host"), "set host (the API server URL) or kubeconfig");
    }
    if !k.host.trim().is_empty()
        && let Some(problem) = bad_http_url(k.host.trim())
    {
        v.at(p("host"), problem);
    }
    v.readable(&k.kubeconfig, p("kubeconfig"));
    v.readable(&k.ca_file, p("ca_file"));
    v.readable(&k.token_file, p("token_file"));
    if !k.token.is_empty() && !k.token_file.is_empty() {
        v.at(p("token_file"), "set token or token_file, not both");
    }
}

/// Names, labels and annotations the pods and their objects carry.
fn kube_names(k: &KubernetesOptions, at: &str, v: &mut Issues) {
    let p = |key: &str| format!("{at}.{key}");
    if !is_dns1123_label(&k.jobs_namespace) {
        v.at(
            p("jobs_namespace"),
            format!(
                "{:?} is not a valid namespace name (DNS-1123 label)",
                k.jobs_namespace
            ),
        );
    }
    for (value, key) in [
        (&k.service_account, "service_account"),
        (&k.runtime_class, "runtime_class"),
        (&k.image_pull_secret_name, "image_pull_secret_name"),
    ] {
        // Only the service account is always set; the others are optional.
        let absent = value.is_empty() && key != "service_account";
        if !absent && !is_dns1123_subdomain(value) {
            v.at(
                p(key),
                format!("{value:?} is not a valid name (DNS-1123 subdomain)"),
            );
        }
    }
    for (map, key) in [
        (&k.pod_labels, "pod_labels"),
        (&k.node_selectors, "node_selectors"),
        (&k.preferred_node_selectors, "preferred_node_selectors"),
    ] {
        for (name, value) in map {
            if !is_qualified_name(name) {
                v.at(format!("{at}.{key}.{name}"), "is not a valid label key");
            } else if !is_label_value(value) {
                v.at(
                    format!("{at}.{key}.{name}"),
                    format!("{value:?} is not a valid label value"),
                );
            }
        }
    }
    for name in k.annotations.keys() {
        if !is_qualified_name(name) {
            v.at(
                format!("{at}.annotations.{name}"),
                "is not a valid annotation key",
            );
        }
    }
}

/// The pod's pull and DNS policies.
fn kube_policies(k: &KubernetesOptions, at: &str, v: &mut Issues) {
    let p = |key: &str| format!("{at}.{key}");
    if !PULL_POLICIES.contains(&k.image_pull_policy.as_str()) {
        v.at(
            p("image_pull_policy"),
            format!(
                "{:?} is not one of {}",
                k.image_pull_policy,
                PULL_POLICIES.join(", ")
            ),
        );
    }
    if k.dns_policy == "None" {
        v.at(
            p("dns_policy"),
            "\"None\" needs a dnsConfig, which the worker does not set (the API server would \
             refuse every build pod); use ClusterFirst, ClusterFirstWithHostNet or Default",
        );
    } else if !DNS_POLICIES.contains(&k.dns_policy.as_str()) {
        v.at(
            p("dns_policy"),
            format!(
                "{:?} is not one of {}",
                k.dns_policy,
                DNS_POLICIES.join(", ")
            ),
        );
    }
}

/// Durations, resources and the request budget.
fn kube_limits(k: &KubernetesOptions, at: &str, v: &mut Issues) {
    let p = |key: &str| format!("{at}.{key}");
    v.nonzero_duration(k.create_lands_within, p("create_lands_within"));
    if k.termination_grace_period_seconds < 0 {
        v.at(p("termination_grace_period_seconds"), "is negative");
    }
    v.nonzero_duration(k.build_timeout, p("build_timeout"));
    if k.max_build_timeout < k.build_timeout {
        v.at(
            p("max_build_timeout"),
            format!(
                "{} is shorter than build_timeout ({})",
                humantime::format_duration(k.max_build_timeout),
                humantime::format_duration(k.build_timeout)
            ),
        );
    }
    tiers(&k.resources.cpu, &p("resources.cpu"), v);
    tiers(&k.resources.memory, &p("resources.memory"), v);
    if !(k.qps.is_finite() && k.qps > 0.0) {
        v.at(p("qps"), format!("{} must be greater than 0", k.qps));
    }
    if k.burst == 0 {
        v.at(p("burst"), "must be at least 1");
    }
}

/// Why `s` is not an `http://` or `https://` URL with a host, if it is not.
fn bad_http_url(s: &str) -> Option<String> {
    let uri = match s.parse::<http::Uri>() {
        Ok(uri) => uri,
        Err(e) => return Some(format!("{s:?} is not a URL: {e}")),
    };
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Some(format!("{s:?} must start with https:// (or http://)")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Some(format!("{s:?} has no host"));
    }
    None
}

fn tiers(t: &Tiers, at: &str, v: &mut Issues) {
    let named = [
        ("micro", t.micro),
        ("low", t.low),
        ("high", t.high),
        ("turbo", t.turbo),
        ("max", t.max),
    ];
    for (name, value) in named {
        if !(value.is_finite() && value > 0.0) {
            v.at(
                format!("{at}.{name}"),
                format!("{value} must be greater than 0"),
            );
        } else if name != "max" && value > t.max {
            v.at(
                format!("{at}.{name}"),
                format!("{value} is above max ({})", t.max),
            );
        }
    }
}

fn lifecycle(l: &LifecycleSettings, v: &mut Issues) {
    if l.lease_renew_interval >= l.lease_duration {
        v.at(
            "lifecycle.lease_renew_interval",
            format!(
                "{} must be shorter than lease_duration ({})",
                humantime::format_duration(l.lease_renew_interval),
                humantime::format_duration(l.lease_duration)
            ),
        );
    }
    v.nonzero_duration(l.resync_interval, "lifecycle.resync_interval");
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
