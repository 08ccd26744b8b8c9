//! `clear` messages: removal of a disk-cache directory (Screwdriver's `clear` job).
//!
//! Acts only when the cache strategy is `disk` and a cache root is set. Every path segment that
//! comes from the message is validated, and the final directory must lie inside the cache root
//! even after symlinks are resolved, so no message can delete anything outside it.

use std::path::{Component, Path, PathBuf};

use crate::config::CacheSettings;
use crate::intake::ClearCache;

/// What a `clear` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClearOutcome {
    /// The directory was removed.
    Removed(PathBuf),
    /// There was nothing to remove.
    Absent(PathBuf),
    /// Disk cache is not enabled on this pool; nothing to do.
    Disabled,
}

/// Why a `clear` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClearError {
    /// The message asks for something other than deleting caches.
    #[error("not a cache deletion: resource {resource:?}, action {action:?}")]
    NotADeletion {
        /// `resource` of the message.
        resource: String,
        /// `action` of the message.
        action: String,
    },
    /// A path segment is not acceptable.
    #[error("{field} {value:?} is not a valid cache path segment")]
    BadSegment {
        /// Which field.
        field: &'static str,
        /// Its value (cut).
        value: String,
    },
    /// The resolved directory lies outside the cache root.
    #[error("the cache directory resolves outside the cache root")]
    OutsideRoot,
    /// Removal failed.
    #[error("cannot remove {path}: {error}")]
    Io {
        /// The directory.
        path: String,
        /// The error.
        error: String,
    },
}

/// The directory a `clear` message designates: `<root>[/<prefix>]/<scope>/<pipelineId>[/<id>]`
/// (no `<id>` for the `pipelines` scope), every segment validated.
pub fn cache_dir(root: &Path, msg: &ClearCache) -> Result<PathBuf, ClearError> {
    if msg.resource != "caches" || msg.action != "delete" {
        return Err(ClearError::NotADeletion {
            resource: cut(&msg.resource),
            action: cut(&msg.action),
        });
    }
    let mut dir = root.to_path_buf();
    if !msg.prefix.is_empty() {
        dir.push(segment("prefix", &msg.prefix, is_prefix)?);
    }
    let scope = segment("scope", &msg.scope, |s| {
        matches!(s, "pipelines" | "jobs" | "events")
    })?;
    dir.push(scope);
    dir.push(segment("pipelineId", &msg.pipeline_id, is_id)?);
    if scope != "pipelines" {
        dir.push(segment("id", &msg.id, is_id)?);
    }
    Ok(dir)
}

/// Carries out a `clear`.
pub async fn clear(settings: &CacheSettings, msg: &ClearCache) -> Result<ClearOutcome, ClearError> {
    if settings.strategy != "disk" || settings.path.trim().is_empty() {
        return Ok(ClearOutcome::Disabled);
    }
    let root = PathBuf::from(&settings.path);
    let dir = cache_dir(&root, msg)?;
    // Resolve symlinks of everything above the target and insist it stays under the root.
    let parent = dir.parent().unwrap_or(&root);
    let canonical_root = match tokio::fs::canonicalize(&root).await {
        Ok(r) => r,
        Err(_) => return Ok(ClearOutcome::Absent(dir)),
    };
    match tokio::fs::canonicalize(parent).await {
        Ok(p) if p.starts_with(&canonical_root) => {}
        Ok(_) => return Err(ClearError::OutsideRoot),
        Err(_) => return Ok(ClearOutcome::Absent(dir)),
    }
    // remove_dir_all does not follow a symlink at `dir` itself: it removes the link.
    match tokio::fs::remove_dir_all(&dir).await {
        Ok(()) => Ok(ClearOutcome::Removed(dir)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ClearOutcome::Absent(dir)),
        Err(e) => Err(ClearError::Io {
            path: dir.display().to_string(),
            error: e.to_string(),
        }),
    }
}

fn segment<'a>(
    field: &'static str,
    value: &'a str,
    ok: impl Fn(&str) -> bool,
) -> Result<&'a str, ClearError> {
    let single = matches!(
        Path::new(value).components().collect::<Vec<_>>().as_slice(),
        [Component::Normal(_)]
    );
    if single && ok(value) {
        Ok(value)
    } else {
        Err(ClearError::BadSegment {
            field,
            value: cut(value),
        })
    }
}

fn is_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_prefix(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn cut(s: &str) -> String {
    s.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(prefix: &str, scope: &str, pipeline: &str, id: &str) -> ClearCache {
        ClearCache {
            resource: "caches".into(),
            action: "delete".into(),
            prefix: prefix.into(),
            scope: scope.into(),
            id: id.into(),
            pipeline_id: pipeline.into(),
        }
    }

    #[test]
    fn screwdriver_layout() {
        let root = Path::new("/cache");
        assert_eq!(
            cache_dir(root, &msg("", "pipelines", "1234", "")).unwrap(),
            Path::new("/cache/pipelines/1234")
        );
        assert_eq!(
            cache_dir(root, &msg("beta-", "jobs", "1234", "4321")).unwrap(),
            Path::new("/cache/beta-/jobs/1234/4321")
        );
        assert_eq!(
            cache_dir(root, &msg("", "events", "1", "2")).unwrap(),
            Path::new("/cache/events/1/2")
        );
    }

    #[test]
    fn traversal_is_refused() {
        let root = Path::new("/cache");
        for m in [
            msg("..", "jobs", "1", "2"),
            msg("", "../../etc", "1", "2"),
            msg("", "jobs", "../1", "2"),
            msg("", "jobs", "1", "/etc"),
            msg("a/b", "jobs", "1", "2"),
            msg("", "jobs", "", "2"),
            msg("", "jobs", "1", ""),
        ] {
            assert!(cache_dir(root, &m).is_err(), "{m:?}");
        }
        let mut m = msg("", "jobs", "1", "2");
        m.action = "list".into();
        assert!(matches!(
            cache_dir(root, &m),
            Err(ClearError::NotADeletion { .. })
        ));
    }

    #[tokio::test]
    async fn removes_only_inside_the_root_even_through_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("jobs/1/2")).unwrap();
        std::fs::write(root.path().join("jobs/1/2/f"), "x").unwrap();
        std::fs::create_dir_all(outside.path().join("9")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("events")).unwrap();
        let settings = CacheSettings {
            strategy: "disk".into(),
            path: root.path().display().to_string(),
            ..Default::default()
        };
        let out = clear(&settings, &msg("", "jobs", "1", "2")).await.unwrap();
        assert!(matches!(out, ClearOutcome::Removed(_)));
        assert!(!root.path().join("jobs/1/2").exists());
        assert_eq!(
            clear(&settings, &msg("", "events", "9", "1")).await,
            Err(ClearError::OutsideRoot)
        );
        assert!(outside.path().join("9").exists());
        let s3 = CacheSettings::default();
        assert_eq!(
            clear(&s3, &msg("", "jobs", "1", "2")).await,
            Ok(ClearOutcome::Disabled)
        );
    }

    proptest! {
        #[test]
        fn any_accepted_path_stays_under_the_root(prefix in ".{0,12}", scope in ".{0,12}", p in ".{0,12}", id in ".{0,12}") {
            let root = Path::new("/cache/root");
            if let Ok(dir) = cache_dir(root, &msg(&prefix, &scope, &p, &id)) {
                prop_assert!(dir.starts_with(root));
                prop_assert!(dir.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_))));
            }
        }
    }
}
