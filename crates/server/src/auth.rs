//! Authentication decided off the connection's task: when the core's authenticator defers a
//! CONNECT (`AuthDecision::Defer`: a password hash to verify on a pool, an HTTP service, a key
//! set to fetch), the connection task hands the request to the server's [`AsyncAuthenticator`]
//! in a task of its own and goes on waiting; the answer goes back to the core
//! (`AuthCompletion::complete`), which wakes the connection. The connection's own future
//! carries none of this: an idle connection costs no more for it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tern_broker::{AuthRequest, Principal};
use tern_codec::ReasonCode;

/// The answer to a deferred authentication, in the making.
pub type AuthFuture = Pin<Box<dyn Future<Output = Result<Principal, ReasonCode>> + Send>>;

/// Decides a deferred authentication asynchronously. One for the server: the listener a
/// client came through is in `request.transport` (its `listener` name), for an implementation
/// that authenticates per listener. An answer that never comes is refused by the connect
/// timeout (CONNACK 0x88): the door fails closed.
pub trait AsyncAuthenticator: Send + Sync + 'static {
    fn authenticate(&self, request: AuthRequest) -> AuthFuture;
}

/// The default: refuses every deferred request with 0x87 Not authorized, so nothing gets in by
/// a back end nobody configured. (The core's default authenticator never defers: clients are
/// let in as before.)
#[derive(Debug, Clone, Copy, Default)]
pub struct DenyDeferred;

impl AsyncAuthenticator for DenyDeferred {
    fn authenticate(&self, _: AuthRequest) -> AuthFuture {
        Box::pin(std::future::ready(Err(ReasonCode::NotAuthorized)))
    }
}

/// Runs `request` through `authenticator` in a task of its own and hands the answer back to the
/// core. If the task dies (a panic in a back end), no answer comes and the connect timeout
/// refuses the client.
pub(crate) fn spawn_deferred(authenticator: &Arc<dyn AsyncAuthenticator>, request: AuthRequest) {
    let completion = request.completion();
    let decision = authenticator.authenticate(request);
    tokio::spawn(async move {
        completion.complete(decision.await);
    });
}
