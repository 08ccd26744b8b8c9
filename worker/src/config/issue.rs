//! One configuration problem, and the list of them that loading returns.
//!
//! Owns the shape of what `check-config` prints: `path: message`, one line per problem. It never
//! holds a secret value: messages quote keys and masked values only.

use std::fmt;

/// One problem found while loading or validating the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Where: a dotted key path (`rabbitmq.prefetch_count`), an environment variable
    /// (`BCW_RABBITMQ__URL`, `K8S_NODE_SELECTORS`) or a file name.
    pub path: String,
    /// What is wrong, as one sentence without a trailing period.
    pub message: String,
}

impl ConfigIssue {
    /// An issue at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The same issue with `prefix.` put in front of its path, for callers that know where a
    /// sub-tree sits (`KubernetesOptions::bearer_token` does not know its executor's name).
    pub fn under(mut self, prefix: &str) -> Self {
        if !prefix.is_empty() {
            self.path = if self.path.is_empty() {
                prefix.to_string()
            } else {
                format!("{prefix}.{}", self.path)
            };
        }
        self
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line each, whatever the message carried (a YAML parser error spans lines).
        let message = self.message.replace(['\n', '\r'], " ");
        write!(f, "{}: {}", self.path, message.trim_end())
    }
}

/// Every problem found, in the order found (file order for the file, then the environment, then
/// type errors, then the validation rules). Never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigIssue>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_issue_is_one_line_path_colon_message() {
        let errors = ConfigErrors(vec![
            ConfigIssue::new("rabbitmq.prefetch_count", "must be at least 1"),
            ConfigIssue::new("config.yaml", "invalid YAML\nat line 3"),
        ]);
        assert_eq!(
            errors.to_string(),
            "rabbitmq.prefetch_count: must be at least 1\nconfig.yaml: invalid YAML at line 3"
        );
    }

    #[test]
    fn under_prefixes_the_path() {
        let issue = ConfigIssue::new("options.kubernetes.token_file", "x").under("executor.k8s");
        assert_eq!(issue.path, "executor.k8s.options.kubernetes.token_file");
        assert_eq!(ConfigIssue::new("", "x").under("a").path, "a");
        assert_eq!(ConfigIssue::new("b", "x").under("").path, "b");
    }
}
