//! The simulated network: per-message latency drawn from a seeded distribution, and loss.

use std::time::Duration;

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

/// How messages travel between simulated nodes.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkModel {
    /// Every message takes at least this long.
    pub min_latency: Duration,
    /// Mean of the exponential delay added to `min_latency`.
    pub mean_extra_latency: Duration,
    /// Delays are capped here (a long tail, but no message takes forever).
    pub max_latency: Duration,
    /// Probability that a message is lost, in [0, 1).
    pub loss: f64,
}

impl Default for NetworkModel {
    /// 10 ms minimum plus an exponential tail of mean 40 ms, capped at 1 s; no loss. A round trip
    /// thus has a median near 70 ms, like peers spread over a continent.
    fn default() -> Self {
        NetworkModel {
            min_latency: Duration::from_millis(10),
            mean_extra_latency: Duration::from_millis(40),
            max_latency: Duration::from_secs(1),
            loss: 0.0,
        }
    }
}

impl NetworkModel {
    /// The fate of one message: its delay, or `None` when it is lost.
    pub fn sample(&self, rng: &mut ChaCha8Rng) -> Option<Duration> {
        if self.loss > 0.0 && rng.random::<f64>() < self.loss {
            return None;
        }
        // Inverse-CDF sampling of an exponential; 1 − u lies in (0, 1] so ln never sees zero.
        let u: f64 = rng.random();
        let extra = -(1.0 - u).ln() * self.mean_extra_latency.as_secs_f64();
        let delay = self.min_latency.as_secs_f64() + extra;
        Some(Duration::from_secs_f64(delay.min(self.max_latency.as_secs_f64())))
    }
}
