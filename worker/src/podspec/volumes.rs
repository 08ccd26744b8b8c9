//! The volumes of a build pod and where each container mounts them.
//!
//! As executor-k8s: the pod's labels and annotations as files (`podinfo`), the launcher cached
//! per node and version (`screwdriver`), a per-build temporary directory (`sdtemp`), the
//! workspace, the docker-in-docker scratch volumes, the disk cache, and the operator's hostPath
//! mounts and Secret files. Two corrections: `type: DirectoryOrCreate` sits under `hostPath`
//! where Kubernetes reads it, and a cache level whose id the message lacks gets an empty
//! directory instead of the parent of every pipeline's cache. Pure code.

use k8s_openapi::api::core::v1::{
    DownwardAPIVolumeFile, DownwardAPIVolumeSource, EmptyDirVolumeSource, HostPathVolumeSource,
    ObjectFieldSelector, SecretVolumeSource, Volume, VolumeMount,
};

use super::Plan;
use super::options::{self, HostPathMount, SecretFile};
use super::shell::{EVENT_CACHE_DIR, JOB_CACHE_DIR, PIPELINE_CACHE_DIR};
use crate::config::{CacheSettings, ExecutorOptions};
use crate::intake::StartBuild;

/// Names of the volumes the pod always or optionally has; an operator's volume must not reuse
/// one.
pub(crate) const BUILT_IN_VOLUMES: [&str; 10] = [
    "podinfo",
    "screwdriver",
    "sdtemp",
    "workspace",
    "dind-storage",
    "dind-share",
    "dind-client-certs",
    "sd-pipeline-cache",
    "sd-job-cache",
    "sd-event-cache",
];

const DIRECTORY_OR_CREATE: &str = "DirectoryOrCreate";

/// The disk cache of one build (ecosystem cache strategy `disk` with a path).
#[derive(Debug, Clone)]
pub(crate) struct DiskCache<'a> {
    /// The ecosystem's cache settings (for the `run.sh` arguments).
    pub settings: &'a CacheSettings,
    /// Node directory of the pipeline cache, or `None` for an empty directory.
    pub pipeline: Option<String>,
    /// Node directory of the job cache (the parent job's for PR jobs), or `None`.
    pub job: Option<String>,
    /// Node directory of the event cache, or `None`.
    pub event: Option<String>,
    /// PR jobs read the pipeline and job caches but never write them.
    pub read_only: bool,
}

impl<'a> DiskCache<'a> {
    /// The disk cache of `build`, when the ecosystem enables it: `<path>[/<prefix>]/pipelines/
    /// <pipelineId>`, `.../jobs/<pipelineId>/<jobId>`, `.../events/<pipelineId>/<eventId>`.
    /// Every segment after the configured root is a number, so no message field can steer the
    /// path.
    pub(crate) fn of(
        settings: &'a CacheSettings,
        options: &ExecutorOptions,
        build: &StartBuild,
    ) -> Option<Self> {
        if settings.strategy != "disk" || settings.path.is_empty() {
            return None;
        }
        let mut root = settings.path.trim_end_matches('/').to_string();
        if !options.prefix.is_empty() {
            root = format!("{root}/{}", options.prefix);
        }
        let is_pr = build.is_pr_job();
        let job = if is_pr {
            build.pr_parent_job_id.or(build.job_id)
        } else {
            build.job_id
        };
        let pipeline = build.pipeline_id;
        Some(Self {
            settings,
            pipeline: pipeline.map(|p| format!("{root}/pipelines/{p}")),
            job: pipeline
                .zip(job)
                .map(|(p, j)| format!("{root}/jobs/{p}/{j}")),
            event: pipeline
                .zip(build.event_id)
                .map(|(p, e)| format!("{root}/events/{p}/{e}")),
            read_only: is_pr,
        })
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn host_path(name: &str, path: String, type_: Option<String>) -> Volume {
    Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource { path, type_ }),
        ..Default::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}

fn field_file(path: &str, field: &str) -> DownwardAPIVolumeFile {
    DownwardAPIVolumeFile {
        path: path.into(),
        field_ref: Some(ObjectFieldSelector {
            api_version: None,
            field_path: field.into(),
        }),
        ..Default::default()
    }
}

fn cache_volume(name: &str, path: &Option<String>) -> Volume {
    match path {
        Some(p) => host_path(name, p.clone(), Some(DIRECTORY_OR_CREATE.into())),
        None => empty_dir(name),
    }
}

fn operator_mounts(plan: &Plan<'_>) -> (Vec<HostPathMount>, Vec<SecretFile>) {
    (
        options::host_path_mounts(&plan.k8s.volume_mounts),
        options::secret_files(&plan.k8s.build_secrets_file),
    )
}

/// `spec.volumes`.
pub(crate) fn volumes(plan: &Plan<'_>) -> Vec<Volume> {
    let mut volumes = vec![
        Volume {
            name: "podinfo".into(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![
                    field_file("labels", "metadata.labels"),
                    field_file("annotations", "metadata.annotations"),
                ]),
                ..Default::default()
            }),
            ..Default::default()
        },
        host_path(
            "screwdriver",
            format!(
                "/opt/screwdriver/sdlauncher/{}",
                plan.options.launch_version
            ),
            Some(DIRECTORY_OR_CREATE.into()),
        ),
        host_path(
            "sdtemp",
            format!("/opt/screwdriver/tmp_{}", plan.build.build_id),
            Some(DIRECTORY_OR_CREATE.into()),
        ),
        empty_dir("workspace"),
    ];
    if plan.dind.is_some() {
        volumes.extend(["dind-storage", "dind-share", "dind-client-certs"].map(empty_dir));
    }
    if let Some(cache) = &plan.disk_cache {
        volumes.push(cache_volume("sd-pipeline-cache", &cache.pipeline));
        volumes.push(cache_volume("sd-job-cache", &cache.job));
        volumes.push(cache_volume("sd-event-cache", &cache.event));
    }
    let (hosts, secrets) = operator_mounts(plan);
    volumes.extend(
        hosts
            .into_iter()
            .map(|m| host_path(&m.name, m.path, m.type_)),
    );
    volumes.extend(secrets.into_iter().map(|s| Volume {
        name: s.name,
        secret: Some(SecretVolumeSource {
            secret_name: Some(s.secret_name),
            ..Default::default()
        }),
        ..Default::default()
    }));
    volumes
}

/// Mounts of the build container.
pub(crate) fn build_mounts(plan: &Plan<'_>) -> Vec<VolumeMount> {
    let mut mounts = vec![
        mount("podinfo", "/etc/podinfo", true),
        mount("screwdriver", "/opt/sd", true),
        mount("sdtemp", "/opt/sd_tmp", false),
        mount("workspace", "/workspace", false),
    ];
    if plan.dind.is_some() {
        mounts.push(mount("dind-share", "/opt/sd_dind_share", false));
        mounts.push(mount("dind-client-certs", "/certs/client", false));
    }
    if let Some(cache) = &plan.disk_cache {
        mounts.push(mount(
            "sd-pipeline-cache",
            PIPELINE_CACHE_DIR,
            cache.read_only,
        ));
        mounts.push(mount("sd-job-cache", JOB_CACHE_DIR, cache.read_only));
        mounts.push(mount("sd-event-cache", EVENT_CACHE_DIR, false));
    }
    let (hosts, secrets) = operator_mounts(plan);
    mounts.extend(
        hosts
            .iter()
            .map(|m| mount(&m.name, &m.mount_path, m.read_only)),
    );
    mounts.extend(
        secrets
            .iter()
            .map(|s| mount(&s.name, &s.mount_path, s.read_only)),
    );
    mounts
}

/// Mounts of the launcher init container: the launcher hostPath to fill, the workspace for its
/// timestamps, and the cache directories to open up.
pub(crate) fn launcher_mounts(plan: &Plan<'_>) -> Vec<VolumeMount> {
    let mut mounts = vec![
        mount("screwdriver", "/opt/launcher", false),
        mount("workspace", "/workspace", false),
    ];
    if plan.disk_cache.is_some() {
        mounts.push(mount("sd-pipeline-cache", "/opt/sdpipelinecache", false));
        mounts.push(mount("sd-job-cache", "/opt/sdjobcache", false));
        mounts.push(mount("sd-event-cache", "/opt/sdeventcache", false));
    }
    mounts
}

/// Mounts of the docker-in-docker sidecar.
pub(crate) fn dind_mounts() -> Vec<VolumeMount> {
    vec![
        mount("dind-storage", "/var/lib/docker", false),
        mount("dind-share", "/opt/sd_dind_share", false),
        mount("dind-client-certs", "/certs/client", false),
    ]
}
