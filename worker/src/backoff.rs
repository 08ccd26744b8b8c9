//! Exponential backoff with full jitter, and the `Retry-After` header.
//!
//! Owns the delay schedule of the retry loop around one Kubernetes (or API) call: the delay
//! before retry `n` is drawn uniformly from `[0, min(cap, base * 2^(n-1))]` (AWS "Exponential
//! Backoff and Jitter", full jitter). Pure code: it never sleeps and never draws randomness
//! itself; the caller passes a `unit` in `[0, 1)` (or an RNG) and does the waiting.

use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use rand::RngExt as _;

use crate::config::RequestRetry;

/// A validated backoff schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    max_attempts: u32,
}

/// Why a backoff schedule was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidBackoff {
    /// A zero base would retry in a tight loop.
    #[error("the backoff base delay must be greater than 0")]
    ZeroBase,
    /// The cap must leave room for at least the first delay.
    #[error("the backoff cap ({cap:?}) must not be smaller than its base ({base:?})")]
    CapBelowBase {
        /// The configured base.
        base: Duration,
        /// The configured cap.
        cap: Duration,
    },
    /// At least the first attempt has to be made.
    #[error("max attempts must be at least 1")]
    ZeroAttempts,
}

impl Backoff {
    /// A schedule with delays growing from `base`, never above `cap`, for calls made at most
    /// `max_attempts` times (the first attempt included).
    pub fn try_new(
        base: Duration,
        cap: Duration,
        max_attempts: u32,
    ) -> Result<Self, InvalidBackoff> {
        if base.is_zero() {
            return Err(InvalidBackoff::ZeroBase);
        }
        if cap < base {
            return Err(InvalidBackoff::CapBelowBase { base, cap });
        }
        if max_attempts == 0 {
            return Err(InvalidBackoff::ZeroAttempts);
        }
        Ok(Self {
            base,
            cap,
            max_attempts,
        })
    }

    /// The schedule of an executor's `requestretry` block: `retryDelay` as the base and
    /// `maxAttempts` attempts, capped at `cap` (the configuration has no cap of its own; the
    /// caller picks one that fits its deadline).
    pub fn for_requests(retry: &RequestRetry, cap: Duration) -> Result<Self, InvalidBackoff> {
        Self::try_new(retry.retry_delay, cap, retry.max_attempts)
    }

    /// The longest delay before retry `retry` (1-based; 0 is treated as 1):
    /// `min(cap, base * 2^(retry-1))`, computed without overflow for any `retry`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1);
        // 2^doublings as a multiplier; anything past 2^31 is far beyond any sane cap anyway.
        let grown = 1u32
            .checked_shl(doublings)
            .and_then(|factor| self.base.checked_mul(factor));
        match grown {
            Some(d) => d.min(self.cap),
            None => self.cap,
        }
    }

    /// The delay before retry `retry` (1-based) for a random `unit` in `[0, 1)`:
    /// `unit * ceiling(retry)`. A `unit` outside `[0, 1]` (or NaN) is clamped into it.
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        let ceiling = self.ceiling(retry);
        // Float rounding may land a hair above the ceiling (or past `Duration::MAX`): clamp.
        Duration::try_from_secs_f64(ceiling.as_secs_f64() * unit)
            .map_or(ceiling, |d| d.min(ceiling))
    }

    /// [`Backoff::delay`] with the randomness drawn from `rng`.
    pub fn delay_with(&self, retry: u32, rng: &mut impl rand::Rng) -> Duration {
        self.delay(retry, rng.random::<f64>())
    }

    /// Attempts per call, the first included (so `max_attempts - 1` retries).
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The base delay.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The cap of every delay.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// Whether attempt `attempt` (1-based, the first call being attempt 1) may be followed by
    /// another one.
    pub fn may_retry_after(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }
}

/// Parses an HTTP `Retry-After` value (RFC 9110 section 10.2.3) into how long to wait from
/// `now`: either delta-seconds (`120`) or an HTTP-date in any of the three forms a recipient
/// must accept (IMF-fixdate, RFC 850, asctime). A date in the past means "now" (zero). Anything
/// else, including negative or fractional numbers, is `None`.
pub fn parse_retry_after(value: &str, now: Timestamp) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = parse_http_date(value)?;
    let wait = now.duration_until(at);
    if wait.is_negative() {
        return Some(Duration::ZERO);
    }
    Duration::try_from(wait).ok()
}

/// The three HTTP-date forms, all in GMT.
fn parse_http_date(value: &str) -> Option<Timestamp> {
    const FORMS: [&str; 3] = [
        // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
        "%a, %d %b %Y %H:%M:%S GMT",
        // obsolete RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
        "%A, %d-%b-%y %H:%M:%S GMT",
        // obsolete asctime: Sun Nov  6 08:49:37 1994
        "%a %b %e %H:%M:%S %Y",
    ];
    FORMS.iter().find_map(|form| {
        let civil: DateTime = jiff::fmt::strtime::parse(form, value)
            .ok()?
            .to_datetime()
            .ok()?;
        civil.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn backoff(base_ms: u64, cap_ms: u64) -> Backoff {
        Backoff::try_new(
            Duration::from_millis(base_ms),
            Duration::from_millis(cap_ms),
            5,
        )
        .unwrap()
    }

    #[test]
    fn invalid_schedules_are_refused_with_their_reason() {
        let s = Duration::from_secs(1);
        assert_eq!(
            Backoff::try_new(Duration::ZERO, s, 3),
            Err(InvalidBackoff::ZeroBase)
        );
        assert_eq!(
            Backoff::try_new(s * 2, s, 3),
            Err(InvalidBackoff::CapBelowBase {
                base: s * 2,
                cap: s
            })
        );
        assert_eq!(Backoff::try_new(s, s, 0), Err(InvalidBackoff::ZeroAttempts));
        assert!(Backoff::try_new(s, s, 1).is_ok());
    }

    #[test]
    fn ceilings_double_from_the_base_up_to_the_cap() {
        let b = backoff(3000, 20_000);
        let ceilings: Vec<u64> = (1..=6).map(|n| b.ceiling(n).as_millis() as u64).collect();
        assert_eq!(ceilings, [3000, 6000, 12_000, 20_000, 20_000, 20_000]);
        assert_eq!(b.ceiling(0), b.ceiling(1));
    }

    #[test]
    fn full_jitter_spans_zero_to_the_ceiling() {
        let b = backoff(1000, 60_000);
        assert_eq!(b.delay(3, 0.0), Duration::ZERO);
        assert_eq!(b.delay(3, 0.5), Duration::from_millis(2000));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(4000));
        assert_eq!(b.delay(3, f64::NAN), Duration::ZERO);
        assert_eq!(b.delay(3, 7.0), Duration::from_millis(4000));
    }

    #[test]
    fn attempts_are_counted_with_the_first_call_included() {
        let b = Backoff::try_new(Duration::from_secs(1), Duration::from_secs(1), 3).unwrap();
        assert!(b.may_retry_after(1));
        assert!(b.may_retry_after(2));
        assert!(!b.may_retry_after(3));
    }

    #[test]
    fn the_request_retry_block_becomes_a_schedule() {
        let b = Backoff::for_requests(&RequestRetry::default(), Duration::from_secs(30)).unwrap();
        assert_eq!(b.base(), Duration::from_millis(3000));
        assert_eq!(b.max_attempts(), 5);
        let zero = RequestRetry {
            retry_delay: Duration::ZERO,
            max_attempts: 5,
        };
        assert_eq!(
            Backoff::for_requests(&zero, Duration::from_secs(30)),
            Err(InvalidBackoff::ZeroBase)
        );
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn retry_after_seconds() {
        let now = ts("2026-11-26T13:00:00Z");
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("1.5", now), None);
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("99999999999999999999999", now), None);
    }

    #[test]
    fn retry_after_http_dates_in_all_three_forms() {
        let now = ts("1994-11-06T08:49:00Z");
        let in_37s = Some(Duration::from_secs(37));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            in_37s
        );
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now),
            in_37s
        );
        assert_eq!(parse_retry_after("Sun Nov  6 08:49:37 1994", now), in_37s);
    }

    #[test]
    fn retry_after_a_past_date_means_now_and_a_wrong_weekday_is_refused() {
        let now = ts("2026-11-26T13:00:00Z");
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Mon, 06 Nov 1994 08:49:37 GMT", now),
            None
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 PST", now),
            None
        );
    }

    proptest! {
        #[test]
        fn every_delay_lies_within_zero_and_its_ceiling(
            base_ms in 1u64..100_000,
            extra_ms in 0u64..10_000_000,
            retry in any::<u32>(),
            unit in 0.0f64..1.0,
        ) {
            let b = backoff(base_ms, base_ms + extra_ms);
            let ceiling = b.ceiling(retry);
            let d = b.delay(retry, unit);
            prop_assert!(d <= ceiling);
            prop_assert!(ceiling <= b.cap());
            prop_assert!(ceiling >= b.base().min(b.cap()));
        }

        #[test]
        fn ceilings_never_shrink_and_never_pass_the_cap(
            base_ms in 1u64..100_000,
            extra_ms in 0u64..10_000_000,
        ) {
            let b = backoff(base_ms, base_ms + extra_ms);
            let mut previous = Duration::ZERO;
            for retry in (1..=70).chain([u32::MAX / 2, u32::MAX - 1, u32::MAX]) {
                let c = b.ceiling(retry);
                prop_assert!(c >= previous, "retry {retry}: {c:?} < {previous:?}");
                prop_assert!(c <= b.cap());
                previous = c;
            }
            prop_assert_eq!(b.ceiling(u32::MAX), b.cap());
        }

        #[test]
        fn huge_durations_do_not_overflow(retry in any::<u32>(), unit in 0.0f64..=1.0) {
            let b = Backoff::try_new(Duration::from_secs(u64::MAX / 4), Duration::MAX, 3).unwrap();
            let ceiling = b.ceiling(retry);
            prop_assert!(b.delay(retry, unit) <= ceiling);
            prop_assert_eq!(b.delay(retry, 1.0), ceiling);
        }

        #[test]
        fn delta_seconds_round_trip(secs in any::<u64>()) {
            let now = ts("2026-11-26T13:00:00Z");
            prop_assert_eq!(parse_retry_after(&secs.to_string(), now), Some(Duration::from_secs(secs)));
        }

        #[test]
        fn any_imf_fixdate_gives_the_time_until_it(offset in 0i64..(10 * 365 * 86_400), now_s in 0i64..2_000_000_000) {
            let now = Timestamp::from_second(now_s).unwrap();
            let at = Timestamp::from_second(now_s + offset).unwrap();
            let header = at.to_zoned(TimeZone::UTC).strftime("%a, %d %b %Y %H:%M:%S GMT").to_string();
            prop_assert_eq!(parse_retry_after(&header, now), Some(Duration::from_secs(offset as u64)));
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,64}") {
            let _ = parse_retry_after(&s, Timestamp::UNIX_EPOCH);
        }
    }
}
