//! Admitting new tenants: a token bucket of tenant tasks created, so that
//! requests for made-up tenant names cannot make the host start tasks (and
//! try instances) without bound. It refills at `new_tenants_per_second` up to
//! `new_tenants_burst`; a tenant that already has a task never needs a token.

use std::sync::Mutex;
use std::time::Instant;

use crate::config::AdmissionConfig;

/// The bucket of new tenants.
pub struct Admission {
    bucket: Mutex<Bucket>,
    per_second: f64,
    burst: f64,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Admission {
    /// A full bucket.
    pub fn new(config: &AdmissionConfig) -> Admission {
        let burst = f64::from(config.new_tenants_burst);
        Admission {
            bucket: Mutex::new(Bucket {
                tokens: burst,
                at: Instant::now(),
            }),
            per_second: f64::from(config.new_tenants_per_second),
            burst,
        }
    }

    /// Takes a token for one new tenant, if there is one.
    pub fn admit(&self) -> bool {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> bool {
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return false;
        }
        bucket.tokens -= 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let admission = Admission::new(&AdmissionConfig {
            new_tenants_per_second: 10,
            new_tenants_burst: 3,
        });
        let t = Instant::now();
        assert_eq!((0..5).filter(|_| admission.admit_at(t)).count(), 3, "the burst");
        assert!(!admission.admit_at(t + Duration::from_millis(50)), "half a token");
        assert!(
            admission.admit_at(t + Duration::from_millis(100)),
            "one token after 100 ms"
        );
        let later = t + Duration::from_secs(60);
        assert_eq!(
            (0..5).filter(|_| admission.admit_at(later)).count(),
            3,
            "refilled to the burst only"
        );
    }
}
