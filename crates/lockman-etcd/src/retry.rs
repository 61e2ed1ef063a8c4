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
