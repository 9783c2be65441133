//! The one backoff every retry loop of the worker uses.

use std::time::Duration;

/// Exponential backoff between `start` and `max`, with no jitter (one caller per process).
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(start: Duration, max: Duration) -> Self {
        Self { max, next: start }
    }

    /// The pause before the next try; each is twice the last, up to `max`.
    pub(crate) fn next(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        pause
    }

    /// Pauses between writes of a run while Postgres is away.
    pub(crate) fn for_storage() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// Pauses between calls to an agent-server that answered with a transient failure.
    pub(crate) fn for_agent() -> Self {
        Self::new(Duration::from_millis(200), Duration::from_secs(2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_ceiling() {
        let mut pause = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let seen: Vec<u128> = (0..5).map(|_| pause.next().as_millis()).collect();
        assert_eq!(seen, [100, 200, 350, 350, 350]);
    }
}
