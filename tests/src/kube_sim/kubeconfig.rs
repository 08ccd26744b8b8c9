//! Writes an ordinary kubeconfig for a simulated cluster.
//!
//! Owns the file format only (one cluster, one user with a dummy token, one context,
//! current-context set); it never reads kubeconfigs.

use std::io;
use std::path::{Path, PathBuf};

/// Writes `<dir>/<name>.yaml` pointing at `url` and answers its path.
pub fn write(dir: &Path, name: &str, url: &str) -> io::Result<PathBuf> {
    let path = dir.join(format!("{name}.yaml"));
    let text = render(name, url);
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The kubeconfig text.
pub fn render(name: &str, url: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {name}
  cluster:
    server: {url}
users:
- name: {name}-user
  user:
    token: kube-sim-dummy-token
contexts:
- name: {name}
  context:
    cluster: {name}
    user: {name}-user
    namespace: default
current-context: {name}
preferences: {{}}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_reads_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "a", "http://127.0.0.1:1234").unwrap();
        let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("a"));
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("http://127.0.0.1:1234"));
    }
}
