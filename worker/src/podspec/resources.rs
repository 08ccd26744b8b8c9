//! Sizes and durations of a build pod: CPU and memory from the tier annotations, the build
//! timeout and the termination grace period.
//!
//! Pure arithmetic on already-validated inputs. Every function is total: a tier table with a
//! nonsensical value (zero, negative, NaN) still yields a positive quantity, never a panic.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::config::Tiers;
use crate::intake::Tier;

/// Upper bound of any size in its unit (millicores, MiB): far above any real node, and far
/// below where `u64` arithmetic could overflow.
const MAX_UNITS: f64 = (1u64 << 40) as f64;

/// The value of a tier in a table: MAX and numbers are capped at `max`; no annotation (or one
/// the intake could not read) means LOW, as in Screwdriver.
///
/// Memory decision: Screwdriver's executor-k8s has no MAX tier for `ram` (it falls back to LOW);
/// here MAX means the table's `max` for memory as for CPU, because the configuration has a
/// `memory.max` and a user asking for MAX never wants LOW.
fn tier_value(tier: Option<Tier>, table: &Tiers) -> f64 {
    match tier {
        Some(Tier::Micro) => table.micro,
        None | Some(Tier::Low) => table.low,
        Some(Tier::High) => table.high,
        Some(Tier::Turbo) => table.turbo,
        Some(Tier::Max) => table.max,
        Some(Tier::Amount(n)) => n.min(table.max),
    }
}

/// `value * scale`, rounded, within `1..=MAX_UNITS` (NaN and non-positive values become 1).
fn units(value: f64, scale: f64) -> u64 {
    let scaled = (value * scale).round();
    if scaled.is_nan() || scaled < 1.0 {
        1
    } else {
        // Saturating float-to-int conversion; MAX_UNITS keeps it far from u64::MAX anyway.
        scaled.min(MAX_UNITS) as u64
    }
}

/// `n / denominator` written as a decimal without trailing zeros (`1500 / 1000` -> `1.5`).
fn decimal(n: u64, denominator: u64) -> String {
    let whole = n / denominator;
    let rest = n % denominator;
    if rest == 0 {
        return whole.to_string();
    }
    let width = denominator.ilog10() as usize;
    let fraction = format!("{rest:0width$}");
    format!("{whole}.{}", fraction.trim_end_matches('0'))
}

/// A CPU size in millicores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cpu {
    millicores: u64,
}

impl Cpu {
    /// The CPU of a tier annotation (`cpu`, `dockerCpu`) in a table of cores.
    pub(crate) fn from_tier(tier: Option<Tier>, table: &Tiers) -> Self {
        Self {
            millicores: units(tier_value(tier, table), 1000.0),
        }
    }

    /// The Kubernetes quantity, in millicores as executor-k8s writes it (`6000m`).
    pub(crate) fn quantity(self) -> Quantity {
        Quantity(format!("{}m", self.millicores))
    }

    /// Cores, for the `screwdriver.cd/cpu` label (`6`, `0.5`).
    pub(crate) fn cores_label(self) -> String {
        decimal(self.millicores, 1000)
    }
}

/// A memory size in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Memory {
    mebibytes: u64,
}

impl Memory {
    /// The memory of a tier annotation (`ram`, `dockerRam`) in a table of GiB.
    pub(crate) fn from_tier(tier: Option<Tier>, table: &Tiers) -> Self {
        Self {
            mebibytes: units(tier_value(tier, table), 1024.0),
        }
    }

    /// The Kubernetes quantity: whole GiB as `Gi` (as executor-k8s writes it), a fractional
    /// size as `Mi` (`1.5` GiB -> `1536Mi`).
    pub(crate) fn quantity(self) -> Quantity {
        if self.mebibytes.is_multiple_of(1024) {
            Quantity(format!("{}Gi", self.mebibytes / 1024))
        } else {
            Quantity(format!("{}Mi", self.mebibytes))
        }
    }

    /// GiB, for the `screwdriver.cd/memory` label (`12`, `1.5`), to three decimals at most.
    pub(crate) fn gib_label(self) -> String {
        let thousandths = (u128::from(self.mebibytes) * 1000 + 512) / 1024;
        decimal(u64::try_from(thousandths).unwrap_or(u64::MAX), 1000)
    }
}

/// How long a build may run: the `timeout` annotation (minutes) capped at `maxBuildTimeout`,
/// or `buildTimeout` without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BuildTimeout {
    seconds: u64,
}

impl BuildTimeout {
    /// Screwdriver's rule. The default is not capped (Screwdriver does not cap it either; the
    /// configuration check rejects a `buildTimeout` above `maxBuildTimeout`).
    pub(crate) fn new(annotation_minutes: Option<u64>, default: Duration, max: Duration) -> Self {
        let seconds = match annotation_minutes {
            Some(minutes) => minutes.saturating_mul(60).min(max.as_secs()),
            None => default.as_secs(),
        };
        Self {
            seconds: seconds.max(1),
        }
    }

    /// Whole minutes for the launcher's `run.sh` (rounded up, at least 1).
    pub(crate) fn minutes(self) -> u64 {
        self.seconds.div_ceil(60)
    }

    /// `spec.activeDeadlineSeconds` (always positive, as Kubernetes requires).
    pub(crate) fn deadline_seconds(self) -> i64 {
        i64::try_from(self.seconds).unwrap_or(i64::MAX)
    }
}

/// `terminationGracePeriodSeconds`: the annotation may only raise the configured value.
pub(crate) fn grace_period_seconds(configured: i64, annotation: Option<u64>) -> i64 {
    let requested = annotation.map_or(0, |s| i64::try_from(s).unwrap_or(i64::MAX));
    configured.max(requested).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Resources;
    use proptest::prelude::*;

    fn tables() -> Resources {
        Resources::default()
    }

    #[test]
    fn cpu_tiers_use_the_table_and_default_to_low() {
        let t = tables().cpu;
        let q = |tier| Cpu::from_tier(tier, &t).quantity().0;
        assert_eq!(q(Some(Tier::Micro)), "500m");
        assert_eq!(q(None), "2000m");
        assert_eq!(q(Some(Tier::Low)), "2000m");
        assert_eq!(q(Some(Tier::High)), "6000m");
        assert_eq!(q(Some(Tier::Turbo)), "12000m");
        assert_eq!(q(Some(Tier::Max)), "12000m");
    }

    #[test]
    fn numbers_are_capped_at_max() {
        let r = tables();
        assert_eq!(
            Cpu::from_tier(Some(Tier::Amount(4.0)), &r.cpu).quantity().0,
            "4000m"
        );
        assert_eq!(
            Cpu::from_tier(Some(Tier::Amount(64.0)), &r.cpu)
                .quantity()
                .0,
            "12000m"
        );
        assert_eq!(
            Memory::from_tier(Some(Tier::Amount(100.0)), &r.memory)
                .quantity()
                .0,
            "16Gi"
        );
    }

    #[test]
    fn memory_is_whole_gi_or_mi() {
        let r = tables();
        let m = |tier| Memory::from_tier(tier, &r.memory);
        assert_eq!(m(Some(Tier::High)).quantity().0, "12Gi");
        assert_eq!(m(Some(Tier::Max)).quantity().0, "16Gi");
        assert_eq!(m(Some(Tier::Amount(1.5))).quantity().0, "1536Mi");
        assert_eq!(m(Some(Tier::Amount(1.5))).gib_label(), "1.5");
        assert_eq!(m(Some(Tier::Micro)).gib_label(), "1");
    }

    #[test]
    fn labels_are_plain_decimals() {
        let r = tables();
        assert_eq!(
            Cpu::from_tier(Some(Tier::Micro), &r.cpu).cores_label(),
            "0.5"
        );
        assert_eq!(Cpu::from_tier(Some(Tier::High), &r.cpu).cores_label(), "6");
        assert_eq!(
            Cpu::from_tier(Some(Tier::Amount(0.25)), &r.cpu).cores_label(),
            "0.25"
        );
    }

    #[test]
    fn broken_tables_still_give_positive_sizes() {
        let broken = Tiers {
            micro: f64::NAN,
            low: -1.0,
            high: 0.0,
            turbo: f64::INFINITY,
            max: f64::INFINITY,
        };
        assert_eq!(Cpu::from_tier(None, &broken).quantity().0, "1m");
        assert_eq!(
            Cpu::from_tier(Some(Tier::Micro), &broken).quantity().0,
            "1m"
        );
        assert_eq!(
            Memory::from_tier(Some(Tier::High), &broken).quantity().0,
            "1Mi"
        );
        assert!(Cpu::from_tier(Some(Tier::Turbo), &broken).millicores > 0);
    }

    #[test]
    fn timeout_is_capped_and_defaults() {
        let d = Duration::from_secs(90 * 60);
        let max = Duration::from_secs(120 * 60);
        assert_eq!(BuildTimeout::new(None, d, max).deadline_seconds(), 5400);
        assert_eq!(BuildTimeout::new(None, d, max).minutes(), 90);
        assert_eq!(BuildTimeout::new(Some(60), d, max).deadline_seconds(), 3600);
        assert_eq!(
            BuildTimeout::new(Some(600), d, max).deadline_seconds(),
            7200
        );
        assert_eq!(BuildTimeout::new(Some(600), d, max).minutes(), 120);
        assert_eq!(
            BuildTimeout::new(Some(u64::MAX), d, Duration::MAX).deadline_seconds(),
            i64::MAX
        );
    }

    #[test]
    fn grace_period_is_only_raised() {
        assert_eq!(grace_period_seconds(60, None), 60);
        assert_eq!(grace_period_seconds(60, Some(30)), 60);
        assert_eq!(grace_period_seconds(60, Some(300)), 300);
        assert_eq!(grace_period_seconds(-5, None), 0);
    }

    proptest! {
        #[test]
        fn sizes_are_capped_positive_and_well_formed(n in 0.0001f64..1e9) {
            let r = tables();
            let cpu = Cpu::from_tier(Some(Tier::Amount(n)), &r.cpu);
            prop_assert!(cpu.millicores >= 1 && cpu.millicores <= 12_000);
            let mem = Memory::from_tier(Some(Tier::Amount(n)), &r.memory);
            prop_assert!(mem.mebibytes >= 1 && mem.mebibytes <= 16 * 1024);
            let q = mem.quantity().0;
            prop_assert!(q.ends_with("Gi") || q.ends_with("Mi"));
            prop_assert!(crate::naming::is_label_value(&cpu.cores_label()));
            prop_assert!(crate::naming::is_label_value(&mem.gib_label()));
        }
    }
}
