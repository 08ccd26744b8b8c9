//! The typed configuration tree (docs/interface.md §2 Configuration).
//!
//! Field names are the canonical snake_case spellings; the loader (`config::load`) maps the
//! Screwdriver camelCase spellings and the `BCW_` environment onto them before these types are
//! deserialised. Every field has a default except an executor's cluster address.
//!
//! These types are also the loader's list of keys: `config::schema` reads it off their JSON
//! Schema, so a field added here is a key the loader accepts. A struct is a level of checked keys
//! because it denies unknown fields; other spellings of a field are its `x-aliases`.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::de;
use crate::secret::Secret;

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Broker connection, queue names and message retry policy.
    pub rabbitmq: RabbitSettings,
    /// Where lifecycle events go.
    pub events: EventsSettings,
    /// The operations HTTP server (`/metrics`, `/healthz`, `/readyz`).
    pub httpd: HttpdSettings,
    /// Executors (a Kubernetes cluster plus runtime each) and the default one.
    pub executor: ExecutorSettings,
    /// Screwdriver ecosystem addresses and the disk cache (for `clear`).
    pub ecosystem: EcosystemSettings,
    /// Message intake limits and the annotation allow-list.
    pub intake: IntakeSettings,
    /// Pod watching, failure classification, the reporter Lease and garbage collection.
    pub lifecycle: LifecycleSettings,
    /// Build status updates sent to the Screwdriver API.
    pub status_updates: StatusUpdateSettings,
    /// Graceful shutdown.
    pub shutdown: ShutdownSettings,
}

/// How the broker is reached and how messages are retried.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RabbitSettings {
    /// Full AMQP URI; when absent it is assembled from the Screwdriver form below.
    pub url: Option<Secret>,
    /// Screwdriver form: `amqp` or `amqps`.
    #[serde(deserialize_with = "de::string")]
    pub protocol: String,
    /// Screwdriver form: user name.
    #[serde(deserialize_with = "de::string")]
    pub username: String,
    /// Screwdriver form: password (prefer `password_file` or the environment).
    pub password: Secret,
    /// A file holding the password (for Kubernetes Secrets mounted as files).
    pub password_file: Option<String>,
    /// Screwdriver form: host name.
    #[serde(deserialize_with = "de::string")]
    pub host: String,
    /// Screwdriver form: port.
    #[serde(deserialize_with = "de::number")]
    pub port: u16,
    /// Screwdriver form: virtual host (`/` or `/screwdriver`).
    #[serde(deserialize_with = "de::string")]
    pub vhost: String,
    /// Screwdriver's amqp-connection-manager options; only the heartbeat is used.
    #[serde(deserialize_with = "de::structured")]
    pub connect_options: BTreeMap<String, serde_json::Value>,
    /// CA bundle for `amqps` (PEM). The system roots are used when empty.
    #[serde(deserialize_with = "de::string")]
    pub ca_file: String,
    /// Topic exchange the producers publish to.
    #[serde(deserialize_with = "de::string")]
    pub exchange: String,
    /// This pool's queue, bound to `exchange` with routing key = queue name.
    #[serde(deserialize_with = "de::string")]
    pub queue: String,
    /// `quorum` or `classic`.
    pub queue_type: QueueType,
    /// Unacknowledged messages per replica: the most builds handled at once.
    #[serde(deserialize_with = "de::number")]
    pub prefetch_count: u16,
    /// Attempts per message before it is dead-lettered.
    #[serde(deserialize_with = "de::number")]
    pub message_reprocess_limit: u32,
    /// Delay before attempt 2, 3, 4, ...; the last one repeats.
    #[serde(
        deserialize_with = "de::seconds_list",
        serialize_with = "de::ser_durations"
    )]
    pub retry_delays: Vec<Duration>,
    /// Longest a build waits while no executor it may use is healthy.
    #[serde(deserialize_with = "de::seconds", serialize_with = "de::ser_duration")]
    pub max_wait: Duration,
    /// `false`: the topology is admin-provisioned and only checked passively.
    #[serde(deserialize_with = "de::boolean")]
    pub declare_topology: bool,
    /// Screwdriver's verify queue (`XRetry`), consumed when `retry_queue_enabled`.
    #[serde(deserialize_with = "de::string")]
    pub retry_queue: String,
    /// Whether the Screwdriver verify queue is consumed (this worker never publishes to it).
    #[serde(deserialize_with = "de::boolean")]
    pub retry_queue_enabled: bool,
    /// Screwdriver's init timeout (minutes); accepted and not acted on (see `config::IGNORED`).
    #[serde(deserialize_with = "de::minutes", serialize_with = "de::ser_duration")]
    pub init_timeout: Duration,
    /// Accepted and ignored (see `config::IGNORED`): stops no longer re-check.
    #[serde(deserialize_with = "de::number")]
    pub stop_rechecks: u32,
    /// Run the launch protocol across replicas (docs/protocol.md): the sequencer on
    /// `<queue>.claims` and its ledger `<queue>.ledger`. `false`: decisions in this process
    /// only, which is safe for a single replica.
    #[serde(deserialize_with = "de::boolean")]
    pub build_locks: bool,
}

impl Default for RabbitSettings {
    fn default() -> Self {
        Self {
            url: None,
            protocol: "amqp".into(),
            username: "guest".into(),
            password: Secret::new("guest"),
            password_file: None,
            host: "127.0.0.1".into(),
            port: 5672,
            vhost: "/".into(),
            connect_options: BTreeMap::new(),
            ca_file: String::new(),
            exchange: "build".into(),
            queue: "default".into(),
            queue_type: QueueType::Quorum,
            prefetch_count: 20,
            message_reprocess_limit: 5,
            retry_delays: vec![
                Duration::from_secs(5),
                Duration::from_secs(30),
                Duration::from_secs(120),
                Duration::from_secs(600),
            ],
            max_wait: Duration::from_secs(3600),
            declare_topology: true,
            retry_queue: String::new(),
            retry_queue_enabled: false,
            init_timeout: Duration::from_secs(300),
            stop_rechecks: 3,
            build_locks: true,
        }
    }
}

/// RabbitMQ queue type of the declared queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Replicated Raft queue (the default).
    Quorum,
    /// Classic queue.
    Classic,
}

/// Where lifecycle events are published.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EventsSettings {
    /// `false` publishes no events (for an admin-provisioned broker without the exchange).
    #[serde(deserialize_with = "de::boolean")]
    pub enabled: bool,
    /// Topic exchange for lifecycle events.
    #[serde(deserialize_with = "de::string")]
    pub exchange: String,
    /// Which standard the lifecycle is published in: CloudEvents (the default), CDEvents, or
    /// both.
    pub format: EventsFormat,
}

impl Default for EventsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            exchange: "build.events".into(),
            format: EventsFormat::Cloudevents,
        }
    }
}

/// `events.format`: the event standard(s) the lifecycle is published in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventsFormat {
    /// The worker's CloudEvents (`dev.buildcluster.*`, docs/interface.md §4 Lifecycle events).
    #[default]
    Cloudevents,
    /// CDEvents (`dev.cdevents.taskrun.*`) only; no CloudEvents are published (no replica
    /// reads them).
    Cdevents,
    /// Both, every event in each standard it has a form in.
    Both,
}

impl EventsFormat {
    /// Whether every CloudEvent is published (not only those replicas read).
    pub fn all_cloudevents(self) -> bool {
        matches!(self, EventsFormat::Cloudevents | EventsFormat::Both)
    }

    /// Whether CDEvents are published.
    pub fn cdevents(self) -> bool {
        matches!(self, EventsFormat::Cdevents | EventsFormat::Both)
    }
}

/// The operations HTTP server.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HttpdSettings {
    /// Listen address.
    #[serde(deserialize_with = "de::string")]
    pub host: String,
    /// Listen port (0 picks a free one; tests use that).
    #[serde(deserialize_with = "de::number")]
    pub port: u16,
    /// Screwdriver's public URI of the worker; accepted and unused.
    #[serde(deserialize_with = "de::string")]
    pub uri: String,
}

impl Default for HttpdSettings {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 9464,
            uri: String::new(),
        }
    }
}

/// The executors, keyed by name, and the default one.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExecutorSettings {
    /// The default executor's name (`executor.plugin`).
    pub plugin: String,
    /// One block per executor, in configuration order.
    pub executors: Vec<(String, ExecutorConfig)>,
}

/// The key of `executor:` that names the default executor; every other key is a block's name.
pub(crate) const DEFAULT_EXECUTOR_KEY: &str = "plugin";

/// The configuration's layout of `executor:`, not the serialised struct: the default executor's
/// name under `plugin`, and an [`ExecutorConfig`] under any other key (the executor's name).
impl JsonSchema for ExecutorSettings {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ExecutorSettings".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "properties": {
                DEFAULT_EXECUTOR_KEY: {
                    "type": "string",
                    "description": "The default executor's name.",
                },
            },
            "additionalProperties": generator.subschema_for::<ExecutorConfig>(),
        })
    }
}

impl ExecutorSettings {
    /// The executor block of that name.
    pub fn get(&self, name: &str) -> Option<&ExecutorConfig> {
        self.executors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, e)| e)
    }
}

/// One executor: a Kubernetes cluster plus runtime.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutorConfig {
    /// The plugin this block configures (`k8s`; `k8s-vm` is served by the same code).
    #[serde(deserialize_with = "de::string")]
    pub plugin_name: String,
    /// Relative weight; 0 = never chosen by weight.
    #[serde(deserialize_with = "de::number")]
    pub weightage: i64,
    /// Case-insensitive regexes on the build's container image. Screwdriver's shipped
    /// default.yaml says `exclusion`, its router reads `exclusions`: both are accepted and apply.
    #[serde(deserialize_with = "de::structured")]
    #[schemars(extend("x-aliases" = ["exclusion"], "x-join-spellings" = true))]
    pub exclusions: Vec<String>,
    /// Cluster and pod options.
    pub options: ExecutorOptions,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            plugin_name: "k8s".into(),
            weightage: 0,
            exclusions: Vec::new(),
            options: ExecutorOptions::default(),
        }
    }
}

/// `executor.<name>.options`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutorOptions {
    /// The cluster and how pods are built on it.
    pub kubernetes: KubernetesOptions,
    /// Launcher init container image.
    #[serde(deserialize_with = "de::string")]
    pub launch_image: String,
    /// Launcher init container tag.
    #[serde(deserialize_with = "de::string")]
    pub launch_version: String,
    /// Prefix of the `sdbuild` label and of pod names.
    #[serde(deserialize_with = "de::string")]
    pub prefix: String,
    /// Circuit breaker for this executor's cluster.
    pub fusebox: Fusebox,
    /// Retry of each Kubernetes call.
    pub requestretry: RequestRetry,
    /// Passed to the build as `SD_HAB_ENABLED`.
    #[serde(deserialize_with = "de::boolean")]
    pub sd_hab_enabled: bool,
    /// Screwdriver ecosystem overrides for this executor (api/store/ui/pushgateway/cache).
    pub ecosystem: Option<EcosystemSettings>,
}

impl Default for ExecutorOptions {
    fn default() -> Self {
        Self {
            kubernetes: KubernetesOptions::default(),
            launch_image: "screwdrivercd/launcher".into(),
            launch_version: "stable".into(),
            prefix: String::new(),
            fusebox: Fusebox::default(),
            requestretry: RequestRetry::default(),
            sd_hab_enabled: true,
            ecosystem: None,
        }
    }
}

/// `fusebox`: the circuit breaker settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Fusebox {
    /// The breaker itself.
    pub breaker: BreakerSettings,
}

/// `fusebox.breaker`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// One call slower than this counts as a failure (ms).
    #[serde(deserialize_with = "de::millis", serialize_with = "de::ser_duration")]
    pub timeout: Duration,
    /// Consecutive failures that open the breaker.
    #[serde(deserialize_with = "de::number")]
    pub max_failures: u32,
    /// How long the breaker stays open before one probe call (ms); grows with each trip.
    #[serde(deserialize_with = "de::millis", serialize_with = "de::ser_duration")]
    pub reset_timeout: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(10_000),
            max_failures: 5,
            reset_timeout: Duration::from_millis(30_000),
        }
    }
}

/// `requestretry`: retry of one Kubernetes call.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RequestRetry {
    /// Base of the exponential backoff (ms), full jitter.
    #[serde(deserialize_with = "de::millis", serialize_with = "de::ser_duration")]
    pub retry_delay: Duration,
    /// Attempts per call, the first included.
    #[serde(deserialize_with = "de::number")]
    pub max_attempts: u32,
}

impl Default for RequestRetry {
    fn default() -> Self {
        Self {
            retry_delay: Duration::from_millis(3000),
            max_attempts: 5,
        }
    }
}

/// How the build token reaches the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TokenDelivery {
    /// A Kubernetes Secret per build, owned by the pod, read through an environment variable.
    Secret,
    /// On the build command line, as Screwdriver's executor-k8s does (visible to anyone who can
    /// read pods).
    Args,
}

/// `options.kubernetes`: the cluster and the pods built on it.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesOptions {
    /// API server URL (`https://...`, or `http://` for local simulators).
    #[serde(deserialize_with = "de::string")]
    pub host: String,
    /// Path of a kubeconfig file (alternative to `host`).
    #[serde(deserialize_with = "de::string")]
    pub kubeconfig: String,
    /// Context inside `kubeconfig`.
    #[serde(deserialize_with = "de::string")]
    pub context: String,
    /// Bearer token.
    pub token: Secret,
    /// File holding the bearer token.
    #[serde(deserialize_with = "de::string")]
    pub token_file: String,
    /// CA bundle (PEM) for the API server.
    #[serde(deserialize_with = "de::string")]
    pub ca_file: String,
    /// Skip TLS verification (never the default).
    #[serde(deserialize_with = "de::boolean")]
    pub insecure_skip_tls_verify: bool,
    /// Namespace of the build pods.
    #[serde(deserialize_with = "de::string")]
    pub jobs_namespace: String,
    /// Service account of the build pods.
    #[serde(deserialize_with = "de::string")]
    pub service_account: String,
    /// Whether the build pod gets a service account token.
    #[serde(deserialize_with = "de::boolean")]
    pub automount_service_account_token: bool,
    /// Build container runs privileged.
    #[serde(deserialize_with = "de::boolean")]
    pub privileged: bool,
    /// Allows the docker-in-docker sidecar (also needs the `dockerEnabled` annotation).
    #[serde(deserialize_with = "de::boolean")]
    pub docker_feature_enabled: bool,
    /// `spec.runtimeClassName` (for example `kata`); empty = the cluster's default runtime.
    #[serde(deserialize_with = "de::string")]
    pub runtime_class: String,
    /// Required node labels: each becomes a toleration and a required affinity term.
    #[serde(deserialize_with = "de::string_map")]
    pub node_selectors: BTreeMap<String, String>,
    /// Preferred node labels: one preferred affinity term of weight 100.
    #[serde(deserialize_with = "de::string_map")]
    pub preferred_node_selectors: BTreeMap<String, String>,
    /// Pod annotations.
    #[serde(deserialize_with = "de::string_map")]
    pub annotations: BTreeMap<String, String>,
    /// Extra pod labels (override the built-in ones, as in Screwdriver).
    #[serde(deserialize_with = "de::string_map")]
    pub pod_labels: BTreeMap<String, String>,
    /// `imagePullPolicy` of the build container.
    #[serde(deserialize_with = "de::string")]
    pub image_pull_policy: String,
    /// Name of an image pull secret.
    #[serde(deserialize_with = "de::string")]
    pub image_pull_secret_name: String,
    /// `dnsPolicy`.
    #[serde(deserialize_with = "de::string")]
    pub dns_policy: String,
    /// `terminationGracePeriodSeconds` (an annotation may raise it).
    #[serde(deserialize_with = "de::number")]
    pub termination_grace_period_seconds: i64,
    /// Default build timeout (minutes).
    #[serde(deserialize_with = "de::minutes", serialize_with = "de::ser_duration")]
    pub build_timeout: Duration,
    /// Cap of the `screwdriver.cd/timeout` annotation (minutes).
    #[serde(deserialize_with = "de::minutes", serialize_with = "de::ser_duration")]
    pub max_build_timeout: Duration,
    /// CPU and memory tiers.
    pub resources: Resources,
    /// Client-side request budget for this cluster (requests per second).
    #[serde(deserialize_with = "de::number")]
    pub qps: f64,
    /// Client-side burst.
    #[serde(deserialize_with = "de::number")]
    pub burst: u32,
    /// Container lifecycle hooks of the build container.
    #[serde(deserialize_with = "de::structured")]
    pub lifecycle_hooks: serde_json::Value,
    /// hostPath volume mounts: `[{name, mountPath, path, type, readOnly}]`.
    #[serde(deserialize_with = "de::structured")]
    pub volume_mounts: serde_json::Value,
    /// Secrets exposed as env: `[{secret_env, secret_name, secret_key}]`.
    #[serde(deserialize_with = "de::structured")]
    pub build_secrets: serde_json::Value,
    /// Secrets mounted as files: `[{name, mountPath, secretName, readOnly}]`. Screwdriver's
    /// default.yaml misspells it `buildSecretFile`; both spellings are accepted.
    #[serde(deserialize_with = "de::structured")]
    #[schemars(extend("x-aliases" = ["buildSecretFile"]))]
    pub build_secrets_file: serde_json::Value,
    /// Screwdriver leftover, accepted and unused.
    #[serde(deserialize_with = "de::structured")]
    pub pod_status_query_delay: serde_json::Value,
    /// Screwdriver k8s-vm leftover, accepted and unused.
    #[serde(deserialize_with = "de::string")]
    pub base_image: String,
    /// How the build token reaches the pod.
    pub token_delivery: TokenDelivery,
    /// A pod Pending longer than this fails to launch (`Unschedulable` or other).
    #[serde(deserialize_with = "de::seconds", serialize_with = "de::ser_duration")]
    pub pending_timeout: Duration,
    /// Grace for ErrImagePull/ImagePullBackOff and CreateContainer(Config)Error.
    #[serde(deserialize_with = "de::seconds", serialize_with = "de::ser_duration")]
    pub image_pull_grace_period: Duration,
    /// Finished pods are deleted this long after they finish.
    #[serde(deserialize_with = "de::seconds", serialize_with = "de::ser_duration")]
    pub pod_ttl: Duration,
    /// H of the launch protocol: a create sent to this API server lands within this, or never
    /// (docs/protocol.md). The worker sends its call timeout with every create, which a real
    /// API server honours; this is the margin for one that holds a create longer.
    #[serde(deserialize_with = "de::seconds", serialize_with = "de::ser_duration")]
    pub create_lands_within: Duration,
}

impl Default for KubernetesOptions {
    fn default() -> Self {
        Self {
            host: String::new(),
            kubeconfig: String::new(),
            context: String::new(),
            token: Secret::default(),
            token_file: String::new(),
            ca_file: String::new(),
            insecure_skip_tls_verify: false,
            jobs_namespace: "default".into(),
            service_account: "default".into(),
            automount_service_account_token: false,
            privileged: false,
            docker_feature_enabled: false,
            runtime_class: String::new(),
            node_selectors: BTreeMap::new(),
            preferred_node_selectors: BTreeMap::new(),
            annotations: BTreeMap::new(),
            pod_labels: BTreeMap::new(),
            image_pull_policy: "Always".into(),
            image_pull_secret_name: String::new(),
            dns_policy: "ClusterFirst".into(),
            termination_grace_period_seconds: 60,
            build_timeout: Duration::from_secs(90 * 60),
            max_build_timeout: Duration::from_secs(120 * 60),
            resources: Resources::default(),
            qps: 20.0,
            burst: 30,
            lifecycle_hooks: serde_json::Value::Null,
            volume_mounts: serde_json::Value::Null,
            build_secrets: serde_json::Value::Null,
            build_secrets_file: serde_json::Value::Null,
            pod_status_query_delay: serde_json::Value::Null,
            base_image: String::new(),
            token_delivery: TokenDelivery::Secret,
            pending_timeout: Duration::from_secs(600),
            image_pull_grace_period: Duration::from_secs(30),
            pod_ttl: Duration::from_secs(600),
            create_lands_within: Duration::from_secs(60),
        }
    }
}

/// `resources`: the tier tables.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Resources {
    /// CPU tiers, in cores.
    #[serde(deserialize_with = "cpu_tiers")]
    pub cpu: Tiers,
    /// Memory tiers, in GiB.
    #[serde(deserialize_with = "memory_tiers")]
    pub memory: Tiers,
    /// Disk labels (k8s-vm and the diskSpeed node selector).
    pub disk: DiskLabels,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpu: Tiers {
                micro: 0.5,
                low: 2.0,
                high: 6.0,
                turbo: 12.0,
                max: 12.0,
            },
            memory: Tiers {
                micro: 1.0,
                low: 2.0,
                high: 12.0,
                turbo: 16.0,
                max: 16.0,
            },
            disk: DiskLabels::default(),
        }
    }
}

/// One tier table (`micro`, `low`, `high`, `turbo`, `max`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tiers {
    /// MICRO.
    #[serde(deserialize_with = "de::number")]
    pub micro: f64,
    /// LOW (the default).
    #[serde(deserialize_with = "de::number")]
    pub low: f64,
    /// HIGH.
    #[serde(deserialize_with = "de::number")]
    pub high: f64,
    /// TURBO.
    #[serde(deserialize_with = "de::number")]
    pub turbo: f64,
    /// Cap of numeric values (and the MAX tier).
    #[serde(deserialize_with = "de::number")]
    pub max: f64,
}

/// A tier table in which any tier may be left out: it keeps its default (as Screwdriver's
/// executors merge their configuration over their defaults), so `cpu: {max: 16}` works.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialTiers {
    #[serde(default, deserialize_with = "de::opt_number")]
    micro: Option<f64>,
    #[serde(default, deserialize_with = "de::opt_number")]
    low: Option<f64>,
    #[serde(default, deserialize_with = "de::opt_number")]
    high: Option<f64>,
    #[serde(default, deserialize_with = "de::opt_number")]
    turbo: Option<f64>,
    #[serde(default, deserialize_with = "de::opt_number")]
    max: Option<f64>,
}

fn tiers_over<'de, D: serde::Deserializer<'de>>(d: D, base: Tiers) -> Result<Tiers, D::Error> {
    let p: Option<PartialTiers> = de::structured(d)?;
    let Some(p) = p else { return Ok(base) };
    Ok(Tiers {
        micro: p.micro.unwrap_or(base.micro),
        low: p.low.unwrap_or(base.low),
        high: p.high.unwrap_or(base.high),
        turbo: p.turbo.unwrap_or(base.turbo),
        max: p.max.unwrap_or(base.max),
    })
}

fn cpu_tiers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Tiers, D::Error> {
    tiers_over(d, Resources::default().cpu)
}

fn memory_tiers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Tiers, D::Error> {
    tiers_over(d, Resources::default().memory)
}

/// Node label keys for disk annotations.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DiskLabels {
    /// Node label key for the `disk` annotation (k8s-vm).
    #[serde(deserialize_with = "de::string")]
    pub space: String,
    /// Node label key for the `diskSpeed` annotation.
    #[serde(deserialize_with = "de::string")]
    pub speed: String,
}

/// Screwdriver ecosystem addresses and the disk cache.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EcosystemSettings {
    /// UI URL (passed to the build).
    #[serde(deserialize_with = "de::string")]
    pub ui: String,
    /// API URL (passed to the build).
    #[serde(deserialize_with = "de::string")]
    pub api: String,
    /// Store URL (passed to the build).
    #[serde(deserialize_with = "de::string")]
    pub store: String,
    /// Pushgateway URL (passed to the build).
    #[serde(deserialize_with = "de::string")]
    pub pushgateway_url: String,
    /// Build cache.
    pub cache: CacheSettings,
}

impl Default for EcosystemSettings {
    fn default() -> Self {
        Self {
            ui: "https://cd.screwdriver.cd".into(),
            api: "https://api.screwdriver.cd".into(),
            store: "https://store.screwdriver.cd".into(),
            pushgateway_url: String::new(),
            cache: CacheSettings::default(),
        }
    }
}

/// `ecosystem.cache`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// `s3` or `disk`; `clear` messages act only with `disk`.
    #[serde(deserialize_with = "de::string")]
    pub strategy: String,
    /// Root of the disk cache.
    #[serde(deserialize_with = "de::string")]
    pub path: String,
    /// Passed to the build.
    #[serde(deserialize_with = "de::boolean")]
    pub compress: bool,
    /// Passed to the build.
    #[serde(deserialize_with = "de::boolean")]
    pub md5check: bool,
    /// Passed to the build.
    #[serde(deserialize_with = "de::number")]
    pub max_size_mb: u64,
    /// Passed to the build.
    #[serde(deserialize_with = "de::number")]
    pub max_go_threads: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            strategy: "s3".into(),
            path: "/".into(),
            compress: false,
            md5check: false,
            max_size_mb: 0,
            max_go_threads: 10_000,
        }
    }
}

/// Message intake.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct IntakeSettings {
    /// A message larger than this is dead-lettered without being parsed.
    #[serde(deserialize_with = "de::number")]
    pub max_message_bytes: usize,
    /// Message annotation keys (besides the Screwdriver resource keys) copied onto the pod.
    #[serde(deserialize_with = "de::structured")]
    pub pod_annotation_allow_list: Vec<String>,
}

impl Default for IntakeSettings {
    fn default() -> Self {
        Self {
            max_message_bytes: 1024 * 1024,
            pod_annotation_allow_list: Vec::new(),
        }
    }
}

/// Pod watching and reporting.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleSettings {
    /// Watch pods and report running/completion/failure events (one replica per cluster).
    #[serde(deserialize_with = "de::boolean")]
    pub enabled: bool,
    /// Lease duration of the reporter role per cluster.
    #[serde(deserialize_with = "de::seconds", serialize_with = "de::ser_duration")]
    pub lease_duration: Duration,
    /// How often the holder renews and others try to acquire.
    #[serde(deserialize_with = "de::seconds", serialize_with = "de::ser_duration")]
    pub lease_renew_interval: Duration,
    /// How often pods are re-assessed for time-based failures and garbage collection.
    #[serde(deserialize_with = "de::seconds", serialize_with = "de::ser_duration")]
    pub resync_interval: Duration,
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            lease_duration: Duration::from_secs(15),
            lease_renew_interval: Duration::from_secs(5),
            resync_interval: Duration::from_secs(2),
        }
    }
}

/// Build status updates to the Screwdriver API (`PUT <apiUri>/v4/builds/<id>`).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct StatusUpdateSettings {
    /// Send status updates.
    #[serde(deserialize_with = "de::boolean")]
    pub enabled: bool,
    /// Breaker of the API client.
    pub breaker: BreakerSettings,
    /// Retry of one API call.
    pub retry: RequestRetry,
    /// CA bundle for the API (PEM); system roots when empty.
    #[serde(deserialize_with = "de::string")]
    pub ca_file: String,
}

impl Default for StatusUpdateSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            breaker: BreakerSettings::default(),
            retry: RequestRetry {
                retry_delay: Duration::from_millis(1000),
                max_attempts: 5,
            },
            ca_file: String::new(),
        }
    }
}

/// Graceful shutdown.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// Longest the worker waits for builds in flight after SIGTERM; keep it below the pod's
    /// `terminationGracePeriodSeconds`.
    #[serde(deserialize_with = "de::seconds", serialize_with = "de::ser_duration")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(25),
        }
    }
}

impl<'de> Deserialize<'de> for ExecutorSettings {
    /// `executor:` is a map whose `plugin` key names the default executor and whose other keys
    /// are executor blocks, kept in configuration order. Keys are taken as written: the loader
    /// (`config::load`) has already mapped spellings and aliases (`exclusion`) onto them.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let raw = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let mut out = ExecutorSettings::default();
        for (key, value) in raw {
            if key == DEFAULT_EXECUTOR_KEY {
                out.plugin = de::string(value).map_err(D::Error::custom)?;
                continue;
            }
            let block: ExecutorConfig = serde_json::from_value(value)
                .map_err(|e| D::Error::custom(format!("executor.{key}: {e}")))?;
            out.executors.push((key, block));
        }
        Ok(out)
    }
}
