//! The client-side request budget of one cluster (`qps` / `burst`).
//!
//! Owns the token bucket every task of a replica draws from before it sends a request to that
//! cluster's API server, in reservation style (GCRA): a reservation always succeeds and says how
//! long the caller must wait, so no task spins or polls. It never sends anything itself and
//! keeps no global state; time comes from the caller (`reserve`) or tokio's clock (`acquire`).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Why a budget was refused.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum InvalidBudget {
    /// `qps` must be a finite number above 0.
    #[error("qps must be a finite number greater than 0, got {0}")]
    Qps(f64),
    /// A burst of 0 would never let a request through.
    #[error("burst must be at least 1")]
    ZeroBurst,
}

/// The pure bucket: Generic Cell Rate Algorithm with reservations.
///
/// It keeps one instant, the theoretical arrival time (`tat`) of the next request at the
/// sustained rate. A request may be sent once `tat - (burst - 1) * interval` has passed; every
/// reservation pushes `tat` one interval further. An idle bucket cannot bank more than `burst`
/// requests, because `tat` never falls behind the present.
#[derive(Debug, Clone)]
pub struct Gcra {
    interval: Duration,
    tolerance: Duration,
    burst: u32,
    tat: Option<Instant>,
}

impl Gcra {
    /// A bucket granting `qps` requests per second on average and `burst` at once.
    pub fn try_new(qps: f64, burst: u32) -> Result<Self, InvalidBudget> {
        if !qps.is_finite() || qps <= 0.0 {
            return Err(InvalidBudget::Qps(qps));
        }
        if burst == 0 {
            return Err(InvalidBudget::ZeroBurst);
        }
        // Round the interval up so the sustained rate never exceeds `qps`, and keep it at
        // least 1 ns so an absurd qps still moves the clock.
        let nanos = (1e9 / qps).ceil().clamp(1.0, u64::MAX as f64) as u64;
        let interval = Duration::from_nanos(nanos);
        let tolerance = interval.saturating_mul(burst - 1);
        Ok(Self {
            interval,
            tolerance,
            burst,
            tat: None,
        })
    }

    /// Reserves one request at `now` and returns how long the caller must wait before sending
    /// it (zero while burst is left). Always succeeds; the reservation is spent even if the
    /// caller then gives up.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        let tat = self.tat.map_or(now, |tat| tat.max(now));
        let wait = tat
            .checked_sub(self.tolerance)
            .map_or(Duration::ZERO, |earliest| {
                earliest.saturating_duration_since(now)
            });
        self.tat = Some(tat + self.interval);
        wait
    }

    /// How many requests could be sent at `now` without waiting.
    pub fn available(&self, now: Instant) -> u32 {
        let Some(tat) = self.tat else {
            return self.burst;
        };
        let ahead = tat.saturating_duration_since(now);
        // Each interval `tat` is ahead of now uses one of the burst slots.
        let used = ahead.as_nanos().div_ceil(self.interval.as_nanos());
        self.burst
            .saturating_sub(u32::try_from(used).unwrap_or(u32::MAX))
    }

    /// The time between two requests at the sustained rate.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The burst.
    pub fn burst(&self) -> u32 {
        self.burst
    }
}

/// The budget shared by every task of the replica that talks to one cluster.
#[derive(Debug)]
pub struct Budget {
    bucket: Mutex<Gcra>,
}

impl Budget {
    /// A budget of `qps` requests per second with `burst` at once (an executor's `qps` and
    /// `burst` options).
    pub fn try_new(qps: f64, burst: u32) -> Result<Self, InvalidBudget> {
        Ok(Self {
            bucket: Mutex::new(Gcra::try_new(qps, burst)?),
        })
    }

    /// Reserves one request at `now` and returns the wait, without waiting.
    pub fn reserve(&self, now: Instant) -> Duration {
        // A poisoned lock only means another task panicked between two plain assignments;
        // the bucket is still consistent.
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        bucket.reserve(now)
    }

    /// Waits (on tokio's clock) until one request may be sent and returns the time waited,
    /// for the histogram. Cancelling the future spends the reservation anyway: the budget errs
    /// on the side of sending less, never more.
    pub async fn acquire(&self) -> Duration {
        let start = Instant::now();
        let wait = self.reserve(start);
        if !wait.is_zero() {
            tokio::time::sleep_until(start + wait).await;
        }
        wait
    }

    /// Requests that could be sent at `now` without waiting.
    pub fn available(&self, now: Instant) -> u32 {
        let bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        bucket.available(now)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use proptest::prelude::*;

    /// Asserts that no window `[t_i, t_j]` of grant times holds more than
    /// `burst + qps * (t_j - t_i)` grants. `grants` must be sorted.
    fn assert_window_bound(grants: &[Instant], qps: f64, burst: u32) -> Result<(), String> {
        for i in 0..grants.len() {
            for j in i..grants.len() {
                let count = (j - i + 1) as f64;
                let window = (grants[j] - grants[i]).as_secs_f64();
                let bound = f64::from(burst) + qps * window;
                if count > bound + 1e-9 {
                    return Err(format!(
                        "{count} grants within {window}s, bound {bound} (qps {qps}, burst {burst})"
                    ));
                }
            }
        }
        Ok(())
    }

    #[test]
    fn invalid_budgets_are_refused() {
        assert_eq!(Gcra::try_new(0.0, 1).unwrap_err(), InvalidBudget::Qps(0.0));
        assert!(matches!(
            Gcra::try_new(f64::NAN, 1),
            Err(InvalidBudget::Qps(_))
        ));
        assert!(Gcra::try_new(f64::INFINITY, 1).is_err());
        assert_eq!(Gcra::try_new(5.0, 0).unwrap_err(), InvalidBudget::ZeroBurst);
    }

    #[test]
    fn the_burst_is_available_at_once_then_the_rate_applies() {
        let now = Instant::now();
        let mut b = Gcra::try_new(10.0, 3).unwrap();
        let waits: Vec<Duration> = (0..6).map(|_| b.reserve(now)).collect();
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [0, 0, 0, 100, 200, 300]);
    }

    #[test]
    fn an_idle_bucket_refills_to_burst_and_no_further() {
        let start = Instant::now();
        let mut b = Gcra::try_new(10.0, 3).unwrap();
        for _ in 0..3 {
            b.reserve(start);
        }
        assert_eq!(b.available(start), 0);
        assert_eq!(b.available(start + Duration::from_millis(100)), 1);
        let later = start + Duration::from_secs(3600);
        assert_eq!(b.available(later), 3);
        let waits: Vec<Duration> = (0..4).map(|_| b.reserve(later)).collect();
        assert_eq!(waits[..3], [Duration::ZERO; 3]);
        assert_eq!(waits[3], Duration::from_millis(100));
    }

    #[test]
    fn fractional_rates_are_never_exceeded() {
        let now = Instant::now();
        let mut b = Gcra::try_new(3.0, 1).unwrap();
        assert_eq!(b.interval(), Duration::from_nanos(333_333_334));
        b.reserve(now);
        assert_eq!(b.reserve(now), Duration::from_nanos(333_333_334));
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_waits_on_tokio_time_and_reports_the_wait() {
        let budget = Budget::try_new(2.0, 2).unwrap();
        let start = Instant::now();
        assert_eq!(budget.available(start), 2);
        assert_eq!(budget.acquire().await, Duration::ZERO);
        assert_eq!(budget.acquire().await, Duration::ZERO);
        assert_eq!(Instant::now(), start);
        assert_eq!(budget.acquire().await, Duration::from_millis(500));
        assert_eq!(Instant::now(), start + Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_tasks_share_the_budget_without_breaking_the_bound() {
        let (qps, burst) = (7.0, 4);
        let budget = Arc::new(Budget::try_new(qps, burst).unwrap());
        let grants = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for task in 0..8u64 {
            let (budget, grants) = (budget.clone(), grants.clone());
            tasks.push(tokio::spawn(async move {
                for call in 0..10u64 {
                    budget.acquire().await;
                    grants.lock().unwrap().push(Instant::now());
                    // Uneven think time so the tasks interleave differently.
                    tokio::time::sleep(Duration::from_millis((task * 37 + call * 11) % 90)).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let mut grants = grants.lock().unwrap().clone();
        grants.sort();
        assert_eq!(grants.len(), 80);
        assert_window_bound(&grants, qps, burst).unwrap();
        // And the budget is actually used: 80 requests at 7/s after a burst of 4 take ~10.9 s.
        let span = grants[79] - grants[0];
        assert!(span < Duration::from_secs(12), "{span:?}");
    }

    proptest! {
        #[test]
        fn no_window_ever_holds_more_than_burst_plus_rate(
            qps in 0.5f64..200.0,
            burst in 1u32..20,
            // (gap before the request in ms, requests arriving at the same instant)
            arrivals in prop::collection::vec((0u64..2000, 1usize..5), 1..60),
        ) {
            let mut b = Gcra::try_new(qps, burst).unwrap();
            let mut now = Instant::now();
            let mut grants = Vec::new();
            for (gap, n) in arrivals {
                now += Duration::from_millis(gap);
                for _ in 0..n {
                    grants.push(now + b.reserve(now));
                }
            }
            grants.sort();
            prop_assert!(assert_window_bound(&grants, qps, burst).is_ok(), "{:?}", assert_window_bound(&grants, qps, burst));
        }

        #[test]
        fn idle_refill_stops_at_burst(
            qps in 0.5f64..200.0,
            burst in 1u32..50,
            used in 0u32..60,
            idle_ms in 0u64..1_000_000,
        ) {
            let start = Instant::now();
            let mut b = Gcra::try_new(qps, burst).unwrap();
            for _ in 0..used {
                b.reserve(start);
            }
            let later = start + Duration::from_millis(idle_ms);
            let available = b.available(later);
            prop_assert!(available <= burst);
            // Exactly `available` requests go out without waiting, the next one waits.
            for _ in 0..available {
                prop_assert_eq!(b.reserve(later), Duration::ZERO);
            }
            prop_assert!(b.reserve(later) > Duration::ZERO);
        }

        #[test]
        fn waits_grow_by_one_interval_per_queued_request(qps in 0.5f64..1000.0, burst in 1u32..10, extra in 1u32..50) {
            let now = Instant::now();
            let mut b = Gcra::try_new(qps, burst).unwrap();
            for _ in 0..burst {
                prop_assert_eq!(b.reserve(now), Duration::ZERO);
            }
            for k in 1..=extra {
                prop_assert_eq!(b.reserve(now), b.interval() * k);
            }
        }
    }
}
