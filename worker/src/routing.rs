//! Which executors a build may go to, best first.
//!
//! Owns Screwdriver's executor-router rule chain (annotation pin, then weights and exclusions,
//! then the default executor), made deterministic per build with weighted rendezvous hashing so
//! a redelivered message ranks the executors the same way and the ranking doubles as the
//! failover order. It never talks to the network and knows nothing about health: the caller
//! walks the plan's candidates and skips those whose breaker is open.

use regex::{Regex, RegexBuilder};

use crate::config::ExecutorSettings;
use crate::intake::BuildId;
use crate::naming::{fnv1a64, fnv1a64_extend, splitmix64};

/// The executors of the configuration, with their weights and compiled exclusions.
#[derive(Debug, Clone)]
pub struct Router {
    executors: Vec<Executor>,
    default: usize,
}

#[derive(Debug, Clone)]
struct Executor {
    name: String,
    weight: u64,
    exclusions: Vec<Regex>,
    /// Stable hash of the name, the executor's half of every rendezvous score.
    key: u64,
}

impl Executor {
    fn excludes(&self, container: &str) -> bool {
        self.exclusions.iter().any(|re| re.is_match(container))
    }
}

/// Where one build may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The build's annotation names this executor: only there, whatever its weight or
    /// exclusions.
    Pinned(String),
    /// Weighted choice: every executor with weight > 0 that does not exclude the image, best
    /// first. The order is the failover order when executors are unhealthy.
    Ranked(Vec<String>),
    /// No weighted executor fits: the default executor, which does not exclude the image.
    Default(String),
    /// Every candidate excludes the image: nowhere to go.
    Nowhere,
}

impl Plan {
    /// The executors to try, best first (empty for [`Plan::Nowhere`]).
    pub fn candidates(&self) -> &[String] {
        match self {
            Plan::Pinned(name) | Plan::Default(name) => std::slice::from_ref(name),
            Plan::Ranked(names) => names,
            Plan::Nowhere => &[],
        }
    }

    /// Whether the build's annotation chose the executor.
    pub fn is_pinned(&self) -> bool {
        matches!(self, Plan::Pinned(_))
    }

    /// Which rule decided, as a bounded label: `pinned`, `weighted`, `default`, `nowhere`.
    pub fn rule(&self) -> &'static str {
        match self {
            Plan::Pinned(_) => "pinned",
            Plan::Ranked(_) => "weighted",
            Plan::Default(_) => "default",
            Plan::Nowhere => "nowhere",
        }
    }
}

impl Router {
    /// Builds the router from `executor:`, reporting every problem found (one line each):
    /// no executors, a default that does not exist, a negative weight, an exclusion that is
    /// not a valid regular expression, a name defined twice.
    pub fn from_settings(settings: &ExecutorSettings) -> Result<Router, Vec<String>> {
        let mut problems = Vec::new();
        if settings.executors.is_empty() {
            problems.push("executor: no executors are configured".to_string());
        }
        let mut executors: Vec<Executor> = Vec::with_capacity(settings.executors.len());
        for (name, config) in &settings.executors {
            if executors.iter().any(|e| &e.name == name) {
                problems.push(format!("executor.{name}: defined more than once"));
                continue;
            }
            let weight = u64::try_from(config.weightage).unwrap_or_else(|_| {
                problems.push(format!(
                    "executor.{name}.weightage: must not be negative, got {}",
                    config.weightage
                ));
                0
            });
            let mut exclusions = Vec::with_capacity(config.exclusions.len());
            for (i, pattern) in config.exclusions.iter().enumerate() {
                match RegexBuilder::new(pattern).case_insensitive(true).build() {
                    Ok(re) => exclusions.push(re),
                    Err(e) => problems.push(format!(
                        "executor.{name}.exclusions[{i}]: `{pattern}` is not a valid regular expression: {}",
                        one_line(&e)
                    )),
                }
            }
            executors.push(Executor {
                key: fnv1a64(name.as_bytes()),
                name: name.clone(),
                weight,
                exclusions,
            });
        }
        let default = if settings.plugin.is_empty() {
            Some(0)
        } else {
            let found = executors.iter().position(|e| e.name == settings.plugin);
            if found.is_none() {
                problems.push(format!(
                    "executor.plugin: the default executor `{}` is not configured",
                    settings.plugin
                ));
            }
            found
        };
        match default {
            Some(default) if problems.is_empty() => Ok(Router { executors, default }),
            _ => Err(problems),
        }
    }

    /// Where build `build` with image `container` may go. `pinned` is the executor named by
    /// the build's annotation (`Annotations::executor()`); a name that does not exist is
    /// ignored (see [`Router::ignored_pin`]). The same inputs always give the same plan.
    pub fn plan(&self, build: BuildId, container: &str, pinned: Option<&str>) -> Plan {
        if let Some(executor) = pinned.and_then(|name| self.find(name)) {
            return Plan::Pinned(executor.name.clone());
        }
        let ranked = self.ranked(build, container);
        if !ranked.is_empty() {
            return Plan::Ranked(ranked);
        }
        let default = &self.executors[self.default];
        if default.excludes(container) {
            Plan::Nowhere
        } else {
            Plan::Default(default.name.clone())
        }
    }

    /// The pin a build's annotation asks for when no executor has that name: the router
    /// ignores it (as Screwdriver does) and the caller should log it.
    pub fn ignored_pin<'a>(&self, pinned: Option<&'a str>) -> Option<&'a str> {
        pinned.filter(|name| self.find(name).is_none())
    }

    /// Every executor name, in configuration order.
    pub fn executors(&self) -> impl Iterator<Item = &str> {
        self.executors.iter().map(|e| e.name.as_str())
    }

    /// The default executor (`executor.plugin`, or the first executor).
    pub fn default_executor(&self) -> &str {
        &self.executors[self.default].name
    }

    /// Whether an executor of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    fn find(&self, name: &str) -> Option<&Executor> {
        self.executors.iter().find(|e| e.name == name)
    }

    /// Weighted rendezvous hashing: each eligible executor scores `-ln(u) / weight` with `u`
    /// a stable hash of (build, executor) mapped into (0, 1]; the lowest score ranks first.
    /// Each executor ranks first with probability weight / total weight, and removing one
    /// executor only moves the builds it ranked first.
    fn ranked(&self, build: BuildId, container: &str) -> Vec<String> {
        let mut scored: Vec<(f64, usize)> = self
            .executors
            .iter()
            .enumerate()
            .filter(|(_, e)| e.weight > 0 && !e.excludes(container))
            .map(|(i, e)| (-rendezvous_unit(build, e.key).ln() / e.weight as f64, i))
            .collect();
        // Ties (practically impossible) fall back to configuration order, keeping it total.
        scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        scored
            .into_iter()
            .map(|(_, i)| self.executors[i].name.clone())
            .collect()
    }
}

/// A number in (0, 1] that depends only on the build and the executor's name, the same on
/// every machine and release (FNV-1a and SplitMix64, never std's `DefaultHasher`).
fn rendezvous_unit(build: BuildId, executor_key: u64) -> f64 {
    let h = splitmix64(fnv1a64_extend(
        executor_key,
        &splitmix64(build.0).to_le_bytes(),
    ));
    // The top 53 bits, shifted up by one so 0 never occurs (ln(0) is -inf).
    ((h >> 11) + 1) as f64 / (1u64 << 53) as f64
}

/// A regex error on one line (the parser's message spans several).
fn one_line(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("invalid")
        .trim_start_matches("error: ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::ExecutorConfig;
    use proptest::prelude::*;
    use proptest::test_runner::RngSeed;

    fn executor(weight: i64, exclusions: &[&str]) -> ExecutorConfig {
        ExecutorConfig {
            weightage: weight,
            exclusions: exclusions.iter().map(|s| s.to_string()).collect(),
            ..ExecutorConfig::default()
        }
    }

    fn settings(plugin: &str, executors: &[(&str, i64, &[&str])]) -> ExecutorSettings {
        ExecutorSettings {
            plugin: plugin.into(),
            executors: executors
                .iter()
                .map(|(name, w, ex)| (name.to_string(), executor(*w, ex)))
                .collect(),
        }
    }

    fn router(plugin: &str, executors: &[(&str, i64, &[&str])]) -> Router {
        Router::from_settings(&settings(plugin, executors)).unwrap()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_configuration_problem_is_reported_at_once() {
        let bad = settings(
            "nope",
            &[("a", -1, &["(unclosed"]), ("b", 1, &["ok", "[z-a]"])],
        );
        let problems = Router::from_settings(&bad).unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems[0].starts_with("executor.a.weightage: must not be negative"));
        assert!(problems[1].starts_with("executor.a.exclusions[0]: `(unclosed`"));
        assert!(problems[2].starts_with("executor.b.exclusions[1]: `[z-a]`"));
        assert_eq!(
            problems[3],
            "executor.plugin: the default executor `nope` is not configured"
        );
        assert!(problems.iter().all(|p| !p.contains('\n')));

        let empty = Router::from_settings(&settings("", &[])).unwrap_err();
        assert_eq!(empty, ["executor: no executors are configured"]);

        let twice = ExecutorSettings {
            plugin: String::new(),
            executors: vec![
                ("a".into(), executor(1, &[])),
                ("a".into(), executor(1, &[])),
            ],
        };
        assert_eq!(
            Router::from_settings(&twice).unwrap_err(),
            ["executor.a: defined more than once"]
        );
    }

    #[test]
    fn a_pin_wins_over_weights_and_exclusions() {
        let r = router("a", &[("a", 1, &[]), ("vm", 0, &["rhel6"])]);
        let plan = r.plan(BuildId(1), "rhel6-base", Some("vm"));
        assert_eq!(plan, Plan::Pinned("vm".into()));
        assert!(plan.is_pinned());
        assert_eq!(plan.candidates(), ["vm"]);
        assert_eq!(r.ignored_pin(Some("vm")), None);
    }

    #[test]
    fn an_unknown_pin_is_ignored_and_reported() {
        let r = router("a", &[("a", 1, &[]), ("b", 0, &[])]);
        assert_eq!(r.ignored_pin(Some("gone")), Some("gone"));
        assert_eq!(r.ignored_pin(None), None);
        assert_eq!(
            r.plan(BuildId(1), "node:22", Some("gone")),
            Plan::Ranked(names(&["a"]))
        );
        assert!(!r.contains("gone"));
    }

    #[test]
    fn weighted_ranking_skips_weight_zero_and_excluding_executors() {
        let r = router(
            "",
            &[
                ("a", 3, &["RHEL"]),
                ("b", 1, &[]),
                ("c", 0, &[]),
                ("d", 5, &["^node"]),
            ],
        );
        for id in 1..200 {
            let plan = r.plan(BuildId(id), "my/rhel6:latest", None);
            let mut got = plan.candidates().to_vec();
            got.sort();
            assert_eq!(
                got,
                names(&["b", "d"]),
                "exclusions are case-insensitive, anywhere"
            );
        }
    }

    #[test]
    fn without_weights_the_default_executor_takes_the_build() {
        let r = router("b", &[("a", 0, &[]), ("b", 0, &[])]);
        assert_eq!(
            r.plan(BuildId(7), "node:22", None),
            Plan::Default("b".into())
        );
        let first = router("", &[("a", 0, &[]), ("b", 0, &[])]);
        assert_eq!(first.default_executor(), "a");
        assert_eq!(first.plan(BuildId(7), "node:22", None).rule(), "default");
    }

    #[test]
    fn an_image_the_default_excludes_goes_nowhere() {
        let r = router("a", &[("a", 0, &["rhel6"]), ("b", 2, &["rhel"])]);
        let plan = r.plan(BuildId(7), "rhel6", None);
        assert_eq!(plan, Plan::Nowhere);
        assert!(plan.candidates().is_empty());
        assert_eq!(
            r.plan(BuildId(7), "node", None),
            Plan::Ranked(names(&["b"]))
        );
    }

    #[test]
    fn executors_are_listed_in_configuration_order() {
        let r = router("", &[("z", 1, &[]), ("a", 1, &[]), ("m", 0, &[])]);
        assert_eq!(r.executors().collect::<Vec<_>>(), ["z", "a", "m"]);
    }

    /// Builds must not move between executors across releases: this pins the ranking.
    #[test]
    fn golden_rankings() {
        let r = router(
            "k8s",
            &[("k8s", 70, &[]), ("k8s-vm", 20, &[]), ("k8s-arm", 10, &[])],
        );
        let lines: Vec<String> = [1u64, 2, 3, 42, 987_654, 9_007_199_254_740_991]
            .into_iter()
            .map(|id| {
                format!(
                    "{id}: {}",
                    r.plan(BuildId(id), "node:22", None).candidates().join(" ")
                )
            })
            .collect();
        insta::assert_snapshot!(lines.join("\n"), @r"
        1: k8s-vm k8s k8s-arm
        2: k8s k8s-vm k8s-arm
        3: k8s-vm k8s k8s-arm
        42: k8s k8s-vm k8s-arm
        987654: k8s k8s-vm k8s-arm
        9007199254740991: k8s-vm k8s k8s-arm
        ");
        // The hash itself, so a change that happens to keep the orders above is caught too.
        assert_eq!(
            rendezvous_unit(BuildId(987_654), fnv1a64(b"k8s")).to_bits(),
            4_606_008_458_374_542_741
        );
    }

    /// Share of builds (in %) that rank each executor first, over `n` consecutive ids.
    fn first_choice_shares(r: &Router, start: u64, n: u64) -> BTreeMap<String, f64> {
        let mut counts: BTreeMap<String, u64> = r.executors().map(|e| (e.to_string(), 0)).collect();
        for id in start..start + n {
            if let Some(first) = r.plan(BuildId(id), "node:22", None).candidates().first() {
                *counts.get_mut(first).unwrap() += 1;
            }
        }
        counts
            .into_iter()
            .map(|(k, c)| (k, 100.0 * c as f64 / n as f64))
            .collect()
    }

    fn weights() -> impl Strategy<Value = Vec<i64>> {
        prop_oneof![
            Just(vec![30, 70]),
            Just(vec![1, 1, 1]),
            Just(vec![5, 0, 95]),
            Just(vec![1, 2, 3, 4]),
            prop::collection::vec(0i64..100, 2..6)
                .prop_filter("one weight above 0", |w| w.iter().any(|w| *w > 0)),
        ]
    }

    fn numbered(weights: &[i64]) -> ExecutorSettings {
        ExecutorSettings {
            plugin: String::new(),
            executors: weights
                .iter()
                .enumerate()
                .map(|(i, w)| (format!("e{i}"), executor(*w, &[])))
                .collect(),
        }
    }

    proptest! {
        // A fixed seed: the 2-point tolerance sits about 4 standard deviations out, so a fresh
        // seed every run would fail now and then for no fault of the code.
        #![proptest_config(ProptestConfig {
            cases: 24,
            rng_seed: RngSeed::Fixed(0x5eed_b0b5),
            ..ProptestConfig::default()
        })]

        #[test]
        fn the_split_follows_the_weights_within_two_points(
            weights in weights(),
            start in 1u64..(1u64 << 52),
        ) {
            let r = Router::from_settings(&numbered(&weights)).unwrap();
            let total: i64 = weights.iter().sum();
            let shares = first_choice_shares(&r, start, 10_000);
            for (i, w) in weights.iter().enumerate() {
                let expected = 100.0 * *w as f64 / total as f64;
                let got = shares[&format!("e{i}")];
                prop_assert!((got - expected).abs() <= 2.0, "e{i}: {got:.2}% vs {expected:.2}% ({weights:?})");
                if *w == 0 {
                    prop_assert_eq!(got, 0.0);
                }
            }
        }
    }

    fn image() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("rhel6".to_string()),
            Just("RHEL6-base:7".to_string()),
            Just("node:22".to_string()),
            Just("ubuntu:24.04".to_string()),
            Just("docker.io/library/Alpine:3".to_string()),
            "[a-zA-Z0-9./:-]{0,20}",
        ]
    }

    fn pattern() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "rhel6",
            "^node",
            "ubuntu:2[0-9]",
            "ALPINE",
            "[0-9]$",
            ":",
        ])
    }

    fn fleet() -> impl Strategy<Value = ExecutorSettings> {
        prop::collection::vec((0i64..10, prop::collection::vec(pattern(), 0..3)), 1..6)
            .prop_flat_map(|blocks| {
                let n = blocks.len();
                (Just(blocks), prop::option::of(0..n))
            })
            .prop_map(|(blocks, plugin)| ExecutorSettings {
                plugin: plugin.map(|i| format!("e{i}")).unwrap_or_default(),
                executors: blocks
                    .into_iter()
                    .enumerate()
                    .map(|(i, (w, ex))| (format!("e{i}"), executor(w, &ex)))
                    .collect(),
            })
    }

    fn excludes(settings: &ExecutorSettings, name: &str, image: &str) -> bool {
        settings.get(name).unwrap().exclusions.iter().any(|p| {
            RegexBuilder::new(p)
                .case_insensitive(true)
                .build()
                .unwrap()
                .is_match(image)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn an_excluded_image_never_reaches_the_executor_excluding_it(
            settings in fleet(),
            image in image(),
            id in 1u64..(1u64 << 53),
        ) {
            let r = Router::from_settings(&settings).unwrap();
            let plan = r.plan(BuildId(id), &image, None);
            for name in plan.candidates() {
                prop_assert!(!excludes(&settings, name, &image), "{name} excludes {image}: {plan:?}");
            }
            if plan == Plan::Nowhere {
                prop_assert!(excludes(&settings, r.default_executor(), &image));
            }
        }

        #[test]
        fn the_same_build_always_gets_the_same_plan(
            settings in fleet(),
            image in image(),
            id in 1u64..(1u64 << 53),
        ) {
            let a = Router::from_settings(&settings).unwrap();
            let b = Router::from_settings(&settings).unwrap();
            prop_assert_eq!(a.plan(BuildId(id), &image, None), a.plan(BuildId(id), &image, None));
            prop_assert_eq!(a.plan(BuildId(id), &image, None), b.plan(BuildId(id), &image, None));
        }

        #[test]
        fn weight_zero_is_never_chosen_by_weight(
            settings in fleet(),
            image in image(),
            id in 1u64..(1u64 << 53),
        ) {
            let r = Router::from_settings(&settings).unwrap();
            if let Plan::Ranked(ranked) = r.plan(BuildId(id), &image, None) {
                for name in &ranked {
                    prop_assert!(settings.get(name).unwrap().weightage > 0, "{name} has weight 0");
                }
                // Every eligible executor is in the ranking: it is the full failover order.
                let eligible = settings.executors.iter()
                    .filter(|(n, e)| e.weightage > 0 && !excludes(&settings, n, &image))
                    .count();
                prop_assert_eq!(ranked.len(), eligible);
            }
        }

        #[test]
        fn a_pinned_build_keeps_its_executor(
            settings in fleet(),
            image in image(),
            id in 1u64..(1u64 << 53),
            pick in any::<prop::sample::Index>(),
        ) {
            let r = Router::from_settings(&settings).unwrap();
            let name = &settings.executors[pick.index(settings.executors.len())].0;
            prop_assert_eq!(r.plan(BuildId(id), &image, Some(name)), Plan::Pinned(name.clone()));
        }

        #[test]
        fn removing_an_executor_only_moves_the_builds_it_ranked_first(
            settings in fleet(),
            pick in any::<prop::sample::Index>(),
            start in 1u64..(1u64 << 52),
        ) {
            let before = Router::from_settings(&settings).unwrap();
            let removed = settings.executors[pick.index(settings.executors.len())].0.clone();
            let mut smaller = settings.clone();
            smaller.executors.retain(|(n, _)| *n != removed);
            if smaller.executors.is_empty() || smaller.plugin == removed {
                return Ok(());
            }
            let after = Router::from_settings(&smaller).unwrap();
            for id in start..start + 100 {
                let old = before.plan(BuildId(id), "node:22", None);
                let new = after.plan(BuildId(id), "node:22", None);
                let Plan::Ranked(old) = old else { continue };
                let kept: Vec<String> = old.iter().filter(|n| **n != removed).cloned().collect();
                if kept.is_empty() {
                    continue;
                }
                if old[0] != removed {
                    prop_assert_eq!(&new.candidates()[0], &old[0], "build {} moved", id);
                }
                prop_assert_eq!(new, Plan::Ranked(kept));
            }
        }
    }
}
