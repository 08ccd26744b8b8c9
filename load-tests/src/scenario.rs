//! The standard scenarios and what each one measures.

use serde::Serialize;

/// Who consumes the queue.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Target {
    /// `replicas` worker processes.
    Worker {
        /// Processes consuming the queue.
        replicas: usize,
        /// The build token in a Secret (true) or on the command line (false).
        token_secret: bool,
        /// The lifecycle reporter (watch, `build.running` ... events).
        lifecycle: bool,
    },
    /// The baseline pipeline (pod POST, Secret POST when `token_secret`, confirmed publish).
    Baseline {
        /// Also create the token Secret.
        token_secret: bool,
        /// Also the least lifecycle reporting: a pod watch, confirmed `build.running` and outcome.
        reporting: bool,
    },
}

/// How the builds arrive.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Load {
    /// All queued before the consumers start.
    Burst {
        /// Builds.
        builds: usize,
    },
    /// A fixed publish rate while the consumers run.
    Rate {
        /// Builds per second.
        per_sec: f64,
        /// Seconds of publishing.
        secs: f64,
    },
}

impl Load {
    /// Builds published.
    pub fn builds(&self) -> usize {
        match *self {
            Load::Burst { builds } => builds,
            Load::Rate { per_sec, secs } => (per_sec * secs).round() as usize,
        }
    }
}

/// A fault during the run.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Trouble {
    /// The first cluster refuses connections from `at_s` for `for_s` seconds.
    Outage {
        /// Seconds after the first publish.
        at_s: f64,
        /// Length of the outage.
        for_s: f64,
    },
    /// The first cluster answers every other request 429 with `Retry-After: 1`.
    Throttle {
        /// Seconds after the first publish.
        at_s: f64,
        /// Length of the storm.
        for_s: f64,
    },
}

/// One scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    /// File name of its results.
    pub name: &'static str,
    /// One line for the report.
    pub title: &'static str,
    /// Who consumes.
    pub target: Target,
    /// How builds arrive.
    pub load: Load,
    /// Consumer prefetch.
    pub prefetch: u16,
    /// Added to every API request.
    pub api_latency_ms: u64,
    /// Client-side budget per cluster (requests per second; burst = the same number).
    pub qps: f64,
    /// How long a build's pod runs (`None`: until deleted).
    pub pod_runs_ms: Option<u64>,
    /// Fault during the run.
    pub trouble: Option<Trouble>,
    /// Also measure idle memory before the builds arrive.
    pub idle_memory: bool,
    /// Wait until every build finished (`build.succeeded`) and read the RSS then: the pods
    /// stay for `podTTL` (10 minutes by default) and the reporter keeps following them.
    pub wait_finished: bool,
    /// JSON merged over the worker's configuration.
    pub worker_extra: Option<&'static str>,
}

const WORKER: Target = Target::Worker {
    replicas: 1,
    token_secret: true,
    lifecycle: true,
};

/// A throughput budget far above what the machine can reach: the scenario measures the
/// worker, not the budget.
const UNBOUNDED_QPS: f64 = 100_000.0;

impl Scenario {
    fn new(name: &'static str, title: &'static str, target: Target, load: Load) -> Scenario {
        Scenario {
            name,
            title,
            target,
            load,
            prefetch: 100,
            api_latency_ms: 0,
            qps: UNBOUNDED_QPS,
            pod_runs_ms: Some(1_000),
            trouble: None,
            idle_memory: false,
            wait_finished: false,
            worker_extra: None,
        }
    }
}

/// The standard set `./scripts/bench` runs; `scale` multiplies build counts and durations.
pub fn standard(scale: f64) -> Vec<Scenario> {
    let n = |x: usize| ((x as f64 * scale).round() as usize).max(50);
    let s = |x: f64| (x * scale).max(5.0);
    let burst = n(20_000);
    let mut out = vec![
        Scenario::new(
            "burst-baseline",
            "Baseline: pod + Secret POST, confirmed publish, ack (the physical limit)",
            Target::Baseline {
                token_secret: true,
                reporting: false,
            },
            Load::Burst { builds: burst },
        ),
        Scenario::new(
            "burst-baseline-reporting",
            "Baseline and the least lifecycle reporting: a pod watch, confirmed build.running and outcome events",
            Target::Baseline {
                token_secret: true,
                reporting: true,
            },
            Load::Burst { builds: burst },
        ),
        Scenario::new(
            "burst",
            "Worker, burst queued before start, token in a Secret",
            WORKER,
            Load::Burst { builds: burst },
        ),
        Scenario {
            worker_extra: Some(r#"{"rabbitmq": {"buildLocks": false}}"#),
            ..Scenario::new(
                "burst-no-locks",
                "Worker, burst, token in a Secret, the launch protocol in process (rabbitmq.buildLocks: false)",
                WORKER,
                Load::Burst { builds: burst },
            )
        },
        Scenario {
            worker_extra: Some(r#"{"rabbitmq": {"buildLocks": false}}"#),
            ..Scenario::new(
                "burst-launch-only",
                "Worker, burst, the baseline's work only: protocol in process, lifecycle reporter off",
                Target::Worker {
                    replicas: 1,
                    token_secret: true,
                    lifecycle: false,
                },
                Load::Burst { builds: burst },
            )
        },
        Scenario::new(
            "burst-baseline-pod-only",
            "Baseline: pod POST only, confirmed publish, ack",
            Target::Baseline {
                token_secret: false,
                reporting: false,
            },
            Load::Burst { builds: burst },
        ),
        Scenario::new(
            "burst-args",
            "Worker, burst, token on the command line (one API call per build, as Screwdriver)",
            Target::Worker {
                replicas: 1,
                token_secret: false,
                lifecycle: true,
            },
            Load::Burst { builds: burst },
        ),
        Scenario::new(
            "steady-100",
            "Worker, steady 100 builds/s",
            WORKER,
            Load::Rate {
                per_sec: 100.0,
                secs: s(60.0),
            },
        ),
        Scenario::new(
            "steady-200",
            "Worker, steady 200 builds/s (the latency target)",
            WORKER,
            Load::Rate {
                per_sec: 200.0,
                secs: s(30.0),
            },
        ),
    ];
    for (name, prefetch) in [
        ("latency5-prefetch20", 20),
        ("latency5-prefetch100", 100),
        ("latency5-prefetch500", 500),
    ] {
        out.push(Scenario {
            prefetch,
            api_latency_ms: 5,
            qps: 500.0,
            ..Scenario::new(
                name,
                "Worker, burst, 5 ms API latency, budget 500 requests/s per cluster",
                WORKER,
                Load::Burst { builds: n(4_000) },
            )
        });
    }
    out.push(Scenario {
        api_latency_ms: 50,
        ..Scenario::new(
            "latency50",
            "Worker, burst, 50 ms API latency",
            WORKER,
            Load::Burst { builds: n(4_000) },
        )
    });
    out.push(Scenario {
        trouble: Some(Trouble::Outage {
            at_s: s(20.0),
            for_s: 20.0,
        }),
        ..Scenario::new(
            "outage",
            "Worker, steady 100 builds/s, cluster `east` down (connections refused) for 20 s",
            WORKER,
            Load::Rate {
                per_sec: 100.0,
                secs: s(60.0),
            },
        )
    });
    out.push(Scenario {
        trouble: Some(Trouble::Throttle {
            at_s: s(10.0),
            for_s: 10.0,
        }),
        ..Scenario::new(
            "throttle",
            "Worker, steady 100 builds/s, cluster `east` answers every other request 429 for 10 s",
            WORKER,
            Load::Rate {
                per_sec: 100.0,
                secs: s(30.0),
            },
        )
    });
    // Half the single-worker burst: the scaling curve needs the rate, not 20,000 more builds,
    // and the set must stay within ten minutes on a slower host.
    for (name, replicas) in [("replicas-2", 2), ("replicas-4", 4)] {
        out.push(Scenario::new(
            name,
            "Workers sharing one queue, burst",
            Target::Worker {
                replicas,
                token_secret: true,
                lifecycle: true,
            },
            Load::Burst { builds: n(10_000) },
        ));
    }
    // The same steady load over more replicas: the protocol's broker work per build must not
    // grow with the pool (docs/protocol.md, "Cost").
    for (name, replicas) in [("steady-100-replicas-2", 2), ("steady-100-replicas-4", 4)] {
        out.push(Scenario::new(
            name,
            "Workers sharing one queue, steady 100 builds/s",
            Target::Worker {
                replicas,
                token_secret: true,
                lifecycle: true,
            },
            Load::Rate {
                per_sec: 100.0,
                secs: s(30.0),
            },
        ));
    }
    // Nearly idle replicas: what a replica costs the broker whatever the load.
    for (name, replicas) in [("idle-replicas-1", 1), ("idle-replicas-4", 4)] {
        out.push(Scenario::new(
            name,
            "Workers nearly idle (1 build/s): a replica's fixed cost",
            Target::Worker {
                replicas,
                token_secret: true,
                lifecycle: true,
            },
            Load::Rate {
                per_sec: 1.0,
                secs: 30.0,
            },
        ));
    }
    out.push(Scenario {
        pod_runs_ms: None,
        idle_memory: true,
        ..Scenario::new(
            "memory",
            "Worker memory: idle, then 1,000 builds running at once (all watched)",
            WORKER,
            Load::Burst { builds: 1_000 },
        )
    });
    out.push(Scenario {
        wait_finished: true,
        ..Scenario::new(
            "memory-finished",
            "Worker memory: 5,000 builds run for 1 s and finish; their pods are kept for podTTL",
            WORKER,
            Load::Burst { builds: n(5_000) },
        )
    });
    out.push(Scenario {
        pod_runs_ms: None,
        ..Scenario::new(
            "memory-lifecycle-off",
            "Worker memory with the lifecycle reporter off, 1,000 builds",
            Target::Worker {
                replicas: 1,
                token_secret: true,
                lifecycle: false,
            },
            Load::Burst { builds: 1_000 },
        )
    });
    out
}
