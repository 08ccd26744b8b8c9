//! The containers of a build pod: the build container, the launcher init container and the
//! optional docker-in-docker sidecar, with executor-k8s' environment.
//!
//! Message fields reach environment values (any string is a valid value) and, only through
//! `shell`'s quoting, the build command line. Pure code.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, ObjectFieldSelector, ResourceFieldSelector,
    ResourceRequirements, SecretKeySelector, SecurityContext,
};

use super::resources::{Cpu, Memory};
use super::secret::{TOKEN_ENV, TOKEN_SECRET_KEY};
use super::shell::{self, CacheArgs, RunArgs, TokenArg};
use super::{Plan, options, volumes};
use crate::config::TokenDelivery;
use crate::naming;

/// The build container's command (the launcher's entrypoint).
const ENTRYPOINT: &str = "/opt/sd/launcher_entrypoint.sh";
/// Image of the docker-in-docker sidecar (executor-k8s' image).
const DIND_IMAGE: &str = "docker:20.10-dind";

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// The same quantities as requests and limits: the scheduler reserves what the build may use,
/// so builds never overcommit a node (executor-k8s set limits only).
fn sized(cpu: Cpu, memory: Memory) -> ResourceRequirements {
    let quantities = BTreeMap::from([
        ("cpu".to_string(), cpu.quantity()),
        ("memory".to_string(), memory.quantity()),
    ]);
    ResourceRequirements {
        limits: Some(quantities.clone()),
        requests: Some(quantities),
        claims: None,
    }
}

fn privileged(on: bool) -> Option<SecurityContext> {
    Some(SecurityContext {
        privileged: Some(on),
        ..Default::default()
    })
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn env_from(name: &str, source: EnvVarSource) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(source),
    }
}

fn secret_key(name: String, key: String) -> EnvVarSource {
    EnvVarSource {
        secret_key_ref: Some(SecretKeySelector {
            name,
            key,
            optional: None,
        }),
        ..Default::default()
    }
}

fn limit_of(container: &str, resource: &str) -> EnvVarSource {
    EnvVarSource {
        resource_field_ref: Some(ResourceFieldSelector {
            container_name: Some(container.into()),
            resource: resource.into(),
            divisor: None,
        }),
        ..Default::default()
    }
}

/// The build container's environment, in executor-k8s' order; the token reference comes last
/// so that no operator secret can shadow it.
fn build_env(plan: &Plan<'_>) -> Vec<EnvVar> {
    let k8s = plan.k8s;
    let build = plan.build;
    let mut vars = vec![
        env("SD_HAB_ENABLED", plan.options.sd_hab_enabled.to_string()),
        env("SD_RUNTIME_CLASS", k8s.runtime_class.as_str()),
        env(
            "SD_PUSHGATEWAY_URL",
            plan.ecosystem.pushgateway_url.as_str(),
        ),
        env(
            "SD_TERMINATION_GRACE_PERIOD_SECONDS",
            plan.grace_seconds.to_string(),
        ),
        env("CONTAINER_IMAGE", build.container.as_str()),
        env(
            "SD_PIPELINE_ID",
            build.pipeline_id.map(|p| p.to_string()).unwrap_or_default(),
        ),
        env("SD_BUILD_PREFIX", plan.options.prefix.as_str()),
        env_from(
            "NODE_ID",
            EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: "spec.nodeName".into(),
                }),
                ..Default::default()
            },
        ),
        env("SD_BASE_COMMAND_PATH", "/sd/commands/"),
        env("SD_TEMP", "/opt/sd_tmp"),
        env_from(
            "CONTAINER_CPU_LIMIT",
            limit_of(&plan.build_name, "limits.cpu"),
        ),
        env_from(
            "CONTAINER_MEMORY_LIMIT",
            limit_of(&plan.build_name, "limits.memory"),
        ),
    ];
    if plan.dind.is_some() {
        vars.extend([
            env("SD_DIND_SHARE_PATH", "/opt/sd_dind_share"),
            env("DOCKER_HOST", "tcp://localhost:2376"),
            env("DOCKER_CERT_PATH", "/certs/client"),
            env("DOCKER_TLS_VERIFY", "1"),
        ]);
    }
    vars.extend(
        options::secret_envs(&k8s.build_secrets)
            .into_iter()
            .filter(|s| s.env != TOKEN_ENV)
            .map(|s| env_from(&s.env, secret_key(s.secret_name, s.secret_key))),
    );
    if k8s.token_delivery == TokenDelivery::Secret {
        vars.push(env_from(
            TOKEN_ENV,
            secret_key(
                naming::token_secret_name(&plan.pod_name),
                TOKEN_SECRET_KEY.into(),
            ),
        ));
    }
    vars
}

/// The `run.sh` command line. The API is the ecosystem's, as executor-k8s passes it (the
/// message's `apiUri` only when the ecosystem leaves it empty).
fn run_command(plan: &Plan<'_>) -> String {
    let eco = plan.ecosystem;
    let token = match plan.k8s.token_delivery {
        TokenDelivery::Secret => TokenArg::FromEnv(TOKEN_ENV),
        TokenDelivery::Args => TokenArg::Literal(plan.build.token.expose()),
    };
    let api = if eco.api.is_empty() {
        plan.build.api_uri.as_str()
    } else {
        eco.api.as_str()
    };
    shell::run_command(&RunArgs {
        token,
        api,
        store: &eco.store,
        timeout_minutes: plan.timeout.minutes(),
        build_id: plan.build.build_id,
        ui: &eco.ui,
        cache: plan.disk_cache.as_ref().map(|c| CacheArgs {
            strategy: &c.settings.strategy,
            compress: c.settings.compress,
            md5check: c.settings.md5check,
            max_size_mb: c.settings.max_size_mb,
            max_go_threads: c.settings.max_go_threads,
        }),
    })
}

/// The build container, named `<prefix><buildId>`.
pub(crate) fn build_container(plan: &Plan<'_>) -> Container {
    Container {
        name: plan.build_name.clone(),
        image: Some(plan.build.container.clone()),
        image_pull_policy: non_empty(&plan.k8s.image_pull_policy),
        security_context: privileged(plan.k8s.privileged),
        resources: Some(sized(plan.cpu, plan.memory)),
        env: Some(build_env(plan)),
        command: Some(vec![ENTRYPOINT.into()]),
        args: Some(vec![run_command(plan)]),
        volume_mounts: Some(volumes::build_mounts(plan)),
        lifecycle: options::lifecycle(&plan.k8s.lifecycle_hooks),
        ..Default::default()
    }
}

/// The launcher init container `launcher-<prefix><buildId>`.
pub(crate) fn launcher_container(plan: &Plan<'_>) -> Container {
    Container {
        name: format!("launcher-{}", plan.build_name),
        image: Some(format!(
            "{}:{}",
            plan.options.launch_image, plan.options.launch_version
        )),
        command: Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            shell::launcher_script(plan.disk_cache.is_some()),
        ]),
        volume_mounts: Some(volumes::launcher_mounts(plan)),
        ..Default::default()
    }
}

/// The docker-in-docker sidecar `dind`, when the executor allows it and the build asks for it.
pub(crate) fn dind_container(plan: &Plan<'_>) -> Option<Container> {
    let (cpu, memory) = plan.dind?;
    Some(Container {
        name: "dind".into(),
        image: Some(DIND_IMAGE.into()),
        security_context: privileged(true),
        resources: Some(sized(cpu, memory)),
        volume_mounts: Some(volumes::dind_mounts()),
        ..Default::default()
    })
}
