//! The id of the request an input came from, carried into the journal entry the input causes, through forwarding
//! to another node and through the messages it sends: an operator can follow one request from the HTTP log to every
//! entity it changed.
//!
//! The HTTP layer runs each request inside [`scope`] (with the caller's `X-Request-Id` or a new one); the engine
//! stamps it on the inputs sent while it runs ([`current`]).

use std::future::Future;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The request id of the task running now, if it runs inside [`scope`].
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(|id| id.clone()).ok()
}

/// Runs `f` with `id` as the current request id.
pub async fn scope<F: Future>(id: String, f: F) -> F::Output {
    REQUEST_ID.scope(id, f).await
}

/// A new request id: 16 random bytes, hex.
pub fn generate() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Whether a caller's id is one we carry as is (printable, short), instead of making a new one.
pub fn acceptable(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}
