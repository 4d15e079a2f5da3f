//! Faults injected into one request on purpose, by `saga chaos`: a Firestore commit that
//! fails, a commit whose answer is lost (it committed, the caller is told it did not), a
//! publish that fails, and a crash between the commit and the publish.
//!
//! A request asks for one with the `X-Saga-Chaos` header. Only a function started with
//! `SAGA_CHAOS=true` honours it, and only on the emulators (the configuration refuses it
//! anywhere else), so no caller in the cloud can break a request on purpose. The fault lives
//! in a task-local for the request's handler: the store and the publisher take it at the
//! point where it applies, once.

use std::cell::Cell;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

/// The header a request names its fault in.
pub const HEADER: &str = "x-saga-chaos";

/// A fault inside a function, at the point where it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The transaction's commit fails before it reaches Firestore.
    CommitFails,
    /// The commit succeeds; its answer is lost (the caller sees an error).
    CommitAnswerLost,
    /// The publish fails.
    PublishFails,
    /// The instance dies after the commit, before the publish.
    CrashAfterCommit,
}

impl Fault {
    pub const ALL: [Fault; 4] = [
        Fault::CommitFails,
        Fault::CommitAnswerLost,
        Fault::PublishFails,
        Fault::CrashAfterCommit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::CommitFails => "commit-fails",
            Fault::CommitAnswerLost => "commit-answer-lost",
            Fault::PublishFails => "publish-fails",
            Fault::CrashAfterCommit => "crash-after-commit",
        }
    }

    pub fn from_name(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }
}

tokio::task_local! {
    static FAULT: Cell<Option<Fault>>;
}

/// Whether the current request asked for `fault` here; if it did, the fault is used up, so
/// a retry inside the request (a transaction that runs again) goes through.
pub fn take(fault: Fault) -> bool {
    FAULT
        .try_with(|cell| {
            if cell.get() == Some(fault) {
                cell.set(None);
                true
            } else {
                false
            }
        })
        .unwrap_or(false)
}

/// Runs `f` with `fault` armed for it.
pub async fn with<F: Future>(fault: Option<Fault>, f: F) -> F::Output {
    FAULT.scope(Cell::new(fault), f).await
}

/// Middleware of a function started with `SAGA_CHAOS=true`: arms the fault the request's
/// header names. An unknown name arms nothing (and is logged).
pub async fn middleware(request: Request, next: Next) -> Response {
    let asked = request
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let fault = asked.as_deref().and_then(Fault::from_name);
    match (&asked, fault) {
        (Some(name), None) => tracing::warn!(name, "unknown chaos fault, none injected"),
        (_, Some(fault)) => tracing::info!(fault = fault.name(), "chaos: fault armed"),
        _ => {}
    }
    with(fault, next.run(request)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fault_is_taken_once_at_its_own_point_and_only_inside_its_request() {
        assert!(!take(Fault::CommitFails), "no request, no fault");
        with(Some(Fault::CommitFails), async {
            assert!(!take(Fault::PublishFails));
            assert!(take(Fault::CommitFails));
            assert!(!take(Fault::CommitFails), "used up");
        })
        .await;
        for fault in Fault::ALL {
            assert_eq!(Fault::from_name(fault.name()), Some(fault));
        }
        assert_eq!(Fault::from_name("meteor"), None);
    }
}
