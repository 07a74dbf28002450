//! The service clock.
//!
//! Every deadline in marketflow (activation wait, switch window, metering hour) is read from a clock the engine
//! is given, never from `Utc::now()` directly, so that tests can jump an hour in a microsecond (manual clock) and
//! demos can live an hour in a minute (scaled clock) with the same code paths as production.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::Notify;

/// A source of service time.
pub trait Clock: Send + Sync + 'static {
    /// The current service time.
    fn now(&self) -> DateTime<Utc>;
    /// How many service seconds pass per real second (1 for the system clock, 0 for a manual clock).
    fn scale(&self) -> f64;
    /// The real time to wait until service time `at`; `None` when only an explicit advance can get there
    /// (manual clock), in which case the caller waits on the notify given to [`Clock::subscribe`].
    fn real_until(&self, at: DateTime<Utc>) -> Option<Duration>;
    /// Registers a notify that is woken whenever the clock jumps (manual clocks only).
    fn subscribe(&self, _notify: Arc<Notify>) {}
}

/// Real time.
#[derive(Debug, Default, Clone)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
    fn scale(&self) -> f64 {
        1.0
    }
    fn real_until(&self, at: DateTime<Utc>) -> Option<Duration> {
        Some((at - Utc::now()).to_std().unwrap_or(Duration::ZERO))
    }
}

/// Real time sped up by a factor, anchored at a service instant.
///
/// The anchor is persisted with the data (see `engine::clock_anchor`), so service time never runs backwards
/// across restarts and the downtime passes at the same scale, exactly as it would on the real clock.
#[derive(Debug, Clone)]
pub struct ScaledClock {
    /// Real instant at which service time was `anchor_service`; monotonic, so wall-clock steps do not matter.
    anchor_real: Instant,
    /// Service time at `anchor_real`.
    anchor_service: DateTime<Utc>,
    /// Service seconds per real second; always > 0.
    scale: f64,
}

impl ScaledClock {
    /// A clock that reads `anchor_service` now and runs `scale` times faster than real time.
    pub fn new(anchor_service: DateTime<Utc>, scale: f64) -> Self {
        let scale = if scale.is_finite() && scale > 0.0 { scale } else { 1.0 };
        Self { anchor_real: Instant::now(), anchor_service, scale }
    }
}

fn scaled(d: Duration, factor: f64) -> TimeDelta {
    let nanos = d.as_nanos() as f64 * factor;
    TimeDelta::nanoseconds(nanos.min(i64::MAX as f64) as i64)
}

impl Clock for ScaledClock {
    fn now(&self) -> DateTime<Utc> {
        self.anchor_service + scaled(self.anchor_real.elapsed(), self.scale)
    }
    fn scale(&self) -> f64 {
        self.scale
    }
    fn real_until(&self, at: DateTime<Utc>) -> Option<Duration> {
        let service = (at - self.now()).to_std().unwrap_or(Duration::ZERO);
        Some(Duration::from_secs_f64(service.as_secs_f64() / self.scale))
    }
}

/// A clock that moves only when told to: for tests that cross hours in microseconds.
#[derive(Clone)]
pub struct ManualClock {
    inner: Arc<Mutex<ManualInner>>,
}

struct ManualInner {
    /// The current service time; only ever moves forward.
    now: DateTime<Utc>,
    /// Waiters woken on every advance (the timer service).
    subscribers: Vec<Arc<Notify>>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self { inner: Arc::new(Mutex::new(ManualInner { now: start, subscribers: Vec::new() })) }
    }

    /// Moves the clock forward by `by` and wakes the timer service.
    pub fn advance(&self, by: Duration) {
        let subs = {
            let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            g.now += TimeDelta::from_std(by).unwrap_or(TimeDelta::MAX);
            g.subscribers.clone()
        };
        for s in subs {
            s.notify_one();
        }
    }

    /// Moves the clock to `at` if that is later than now.
    pub fn set(&self, at: DateTime<Utc>) {
        let now = self.now();
        if at > now {
            self.advance((at - now).to_std().unwrap_or(Duration::ZERO));
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).now
    }
    fn scale(&self) -> f64 {
        0.0
    }
    fn real_until(&self, at: DateTime<Utc>) -> Option<Duration> {
        if at <= self.now() {
            Some(Duration::ZERO)
        } else {
            None
        }
    }
    fn subscribe(&self, notify: Arc<Notify>) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).subscribers.push(notify);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let start = Utc::now();
        let c = ManualClock::new(start);
        assert_eq!(c.now(), start);
        assert_eq!(c.real_until(start + TimeDelta::hours(1)), None);
        c.advance(Duration::from_secs(3600));
        assert_eq!(c.now(), start + TimeDelta::hours(1));
        assert_eq!(c.real_until(start + TimeDelta::hours(1)), Some(Duration::ZERO));
    }

    #[test]
    fn scaled_clock_runs_faster() {
        let start = Utc::now();
        let c = ScaledClock::new(start, 3600.0);
        let wait = c.real_until(start + TimeDelta::hours(1)).unwrap_or_default();
        assert!(wait <= Duration::from_secs(1), "an hour at 3600x is at most a second, got {wait:?}");
        assert!(c.now() >= start);
    }
}
