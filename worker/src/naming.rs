//! Kubernetes names, labels and annotations that the worker writes, and the rules they obey.
//!
//! Owns every label and annotation key the worker puts on a pod, the deterministic pod name of a
//! build, Screwdriver's label-value sanitising, and the Kubernetes syntax checks (DNS-1123
//! labels and subdomains, qualified names, label values). Pure code: no I/O.

use crate::intake::BuildId;

/// `app.kubernetes.io/managed-by`: every pod the worker creates carries it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "buildcluster-worker";
/// The executor that launched the pod.
pub const EXECUTOR_LABEL: &str = "buildcluster-worker/executor";
/// Screwdriver's build label: `sdbuild=<prefix><buildId>`.
pub const BUILD_LABEL: &str = "sdbuild";

/// Prefix of the worker's own annotations.
pub const ANN_PREFIX: &str = "buildcluster-worker/";
/// Annotation: the build id (for events and status updates from the watcher).
pub const ANN_BUILD_ID: &str = "buildcluster-worker/build-id";
/// Annotation: the Screwdriver job id.
pub const ANN_JOB_ID: &str = "buildcluster-worker/job-id";
/// Annotation: the attempt of the message that created the pod (event ids derive from it).
pub const ANN_ATTEMPT: &str = "buildcluster-worker/attempt";
/// The attempt recorded in a pod's [`ANN_ATTEMPT`] annotation (a positive number), if any.
pub fn pod_attempt(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<u32> {
    meta.annotations
        .as_ref()?
        .get(ANN_ATTEMPT)?
        .parse()
        .ok()
        .filter(|a| *a >= 1)
}
/// Annotation: the Screwdriver API of the build (status updates from the watcher).
pub const ANN_API_URI: &str = "buildcluster-worker/api-uri";
/// Annotation: the Secret holding the build token, when the token travels in a Secret.
pub const ANN_TOKEN_SECRET: &str = "buildcluster-worker/token-secret";

/// Value of the `sdbuild` label of a build.
pub fn build_label_value(prefix: &str, build: BuildId) -> String {
    format!("{prefix}{build}")
}

/// Label selector of every pod the worker manages for one executor.
pub fn executor_selector(executor: &str) -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY},{EXECUTOR_LABEL}={executor}")
}

/// Label selector of a build's pods (Screwdriver's selector, so pods launched by the original
/// worker are found too).
pub fn build_selector(prefix: &str, build: BuildId) -> String {
    format!("{BUILD_LABEL}={}", build_label_value(prefix, build))
}

/// The deterministic pod name of a build: `<prefix><buildId>-<5 lowercase alphanumerics>`,
/// the shape of Screwdriver's names, with the suffix derived from the build instead of drawn at
/// random, so a redelivered message names the same pod.
pub fn pod_name(prefix: &str, build: BuildId) -> String {
    const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut h = fnv1a64(prefix.as_bytes());
    h = fnv1a64_extend(h, &build.0.to_be_bytes());
    let mut x = splitmix64(h);
    let mut suffix = String::with_capacity(5);
    for _ in 0..5 {
        suffix.push(ALPHABET[(x % 36) as usize] as char);
        x /= 36;
    }
    format!("{prefix}{build}-{suffix}")
}

/// Name of the Secret that carries a build's token to its pod.
pub fn token_secret_name(pod_name: &str) -> String {
    format!("{pod_name}-token")
}

/// Screwdriver's label-value sanitising: characters other than word characters, `-` and `.`
/// become `.`; leading and trailing `-_.` are removed; the value is cut to 63 characters and
/// trimmed of non-alphanumerics at both ends again. The result is always a valid label value.
pub fn sanitize_label_value(raw: &str) -> String {
    let replaced: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
                c
            } else {
                '.'
            }
        })
        .collect();
    let trimmed = replaced.trim_matches(|c| c == '-' || c == '_' || c == '.');
    let cut: String = trimmed.chars().take(63).collect();
    cut.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// DNS-1123 label: 1-63 lowercase alphanumerics or `-`, alphanumeric at both ends.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// DNS-1123 subdomain: dot-separated DNS-1123 labels, at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// A qualified name (`[prefix/]name`), the syntax of label and annotation keys.
pub fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if prefix.is_some_and(|p| !is_dns1123_subdomain(p)) {
        return false;
    }
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

/// A label value: empty, or up to 63 alphanumerics, `-`, `_`, `.`, alphanumeric at both ends.
pub fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric())
}

/// FNV-1a, 64 bits: a hash that is the same on every machine and every Rust release, which
/// deterministic names and routing need (std's `DefaultHasher` promises neither).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_extend(0xcbf2_9ce4_8422_2325, bytes)
}

/// Continues an FNV-1a hash with more bytes.
pub fn fnv1a64_extend(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64 finaliser: spreads the bits of a hash evenly.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pod_names_are_stable_and_screwdriver_shaped() {
        let a = pod_name("", BuildId(987654));
        assert_eq!(a, pod_name("", BuildId(987654)));
        assert_ne!(a, pod_name("", BuildId(987655)));
        assert!(a.starts_with("987654-"));
        assert_eq!(a.len(), "987654-".len() + 5);
        // Golden value: the name must not change between releases (rolling upgrades adopt pods).
        insta::assert_snapshot!(format!("{} {}", pod_name("", BuildId(987654)), pod_name("beta-", BuildId(42))), @"987654-h53zd beta-42-0850y");
    }

    #[test]
    fn screwdriver_sanitising() {
        assert_eq!(
            sanitize_label_value("screwdriver-cd/example"),
            "screwdriver-cd.example"
        );
        assert_eq!(sanitize_label_value("--PR-42:main__"), "PR-42.main");
        assert_eq!(sanitize_label_value("..."), "");
        assert_eq!(sanitize_label_value(&"a".repeat(100)).len(), 63);
    }

    #[test]
    fn syntax_checks() {
        assert!(is_dns1123_label("build-1"));
        assert!(!is_dns1123_label("Build"));
        assert!(!is_dns1123_label("-a"));
        assert!(is_dns1123_subdomain("kata.example.com"));
        assert!(is_qualified_name("buildcluster-worker/executor"));
        assert!(is_qualified_name("sdbuild"));
        assert!(!is_qualified_name("bad key"));
        assert!(!is_qualified_name("Upper.Case/x"));
        assert!(is_label_value(""));
        assert!(!is_label_value("a b"));
    }

    proptest! {
        #[test]
        fn sanitised_values_are_always_valid(raw in ".{0,200}") {
            prop_assert!(is_label_value(&sanitize_label_value(&raw)));
        }

        #[test]
        fn pod_names_are_valid_for_any_build(id in 1u64..(1u64 << 53), prefix in "([a-z0-9]{1,10}-?)?") {
            let name = pod_name(&prefix, BuildId(id));
            prop_assert!(is_dns1123_subdomain(&name), "{}", name);
            prop_assert!(is_label_value(&build_label_value(&prefix, BuildId(id))));
        }
    }
}
