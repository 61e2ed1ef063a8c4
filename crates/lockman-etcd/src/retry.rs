//! Sending a request again when it never reached a member.
//!
//! etcd-client balances requests over every endpoint of the URL, and a
//! member that refuses connections makes the request fail at once instead
//! of trying another (tonic's balancer still picks it). A request that
//! failed while connecting was never sent, so sending it again is safe, and
//! the balancer may pick a live member.

use std::future::Future;

/// Runs `request` until it succeeds, fails for a reason other than an
/// unreachable member, or has tried `attempts` times.
pub(crate) async fn unsent_again<T, F, Fut>(attempts: usize, mut request: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let mut tried = 1;
    loop {
        match request().await {
            Err(e) if tried < attempts && never_sent(&e) => {
                tracing::debug!(error = %e, "an etcd member is unreachable; sending the request again");
                tried += 1;
            }
            outcome => return outcome,
        }
    }
}

/// Whether the error says the connection to a member could not be made.
fn never_sent(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(status) => {
            let text = status.to_string();
            text.contains("tcp connect error") || text.contains("error trying to connect")
        }
        _ => false,
    }
}

/// Whether a failed request may well succeed if sent again soon: the
/// cluster had no leader or changed it, a member went away, the request
/// timed out or its connection broke. Not for refusals (a bad request,
/// permissions), which would only fail again.
pub(crate) fn passing(error: &lockman_core::LockError) -> bool {
    let lockman_core::LockError::Backend { source: Some(source), .. } = error else { return false };
    match source.downcast_ref::<etcd_client::Error>() {
        Some(etcd_client::Error::TransportError(_)) => true,
        // gRPC's codes (tonic's type is not re-exported by etcd-client).
        Some(etcd_client::Error::GRpcStatus(status)) => {
            const CANCELLED: i32 = 1;
            const UNKNOWN: i32 = 2;
            const DEADLINE_EXCEEDED: i32 = 4;
            const UNAVAILABLE: i32 = 14;
            matches!(i32::from(status.code()), CANCELLED | UNKNOWN | DEADLINE_EXCEEDED | UNAVAILABLE)
        }
        _ => false,
    }
}

/// A pause between attempts that grows from 50 ms to 500 ms.
pub(crate) struct Backoff {
    next: std::time::Duration,
}

impl Backoff {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(50);
    const MAX: std::time::Duration = std::time::Duration::from_millis(500);

    pub(crate) fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    /// After a success: the next pause is the shortest again.
    pub(crate) fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// Sleeps the next pause, or until `deadline` if that is sooner;
    /// `false` if the deadline came.
    pub(crate) async fn pause(&mut self, deadline: Option<tokio::time::Instant>) -> bool {
        let wake = tokio::time::Instant::now() + self.next;
        self.next = (self.next * 2).min(Self::MAX);
        match deadline {
            Some(at) if at <= wake => {
                tokio::time::sleep_until(at).await;
                false
            }
            _ => {
                tokio::time::sleep_until(wake).await;
                true
            }
        }
    }
}
