//! Which backend the server runs on, and building it: the configured kind, overridden by `RINGMX_BACKEND`, with `auto` settled by probing the kernel for io_uring.
//!
//! The caller passes a [`WithBackend`] visitor rather than receiving a backend, so that the
//! worker it starts is monomorphized for the concrete backend (no dynamic dispatch on the
//! per-completion path) while the caller names none.

use super::epoll::Epoll;
use super::uring::{self, Uring};
use super::{Backend, BackendConfig};
use crate::config::BackendKind;
use std::net::TcpListener;

/// What to do with a backend once it is built: typically, start a worker on it.
pub trait WithBackend {
    type Output;
    fn with<B: Backend + Send + 'static>(self, backend: B) -> Self::Output;
}

/// A backend settled by [`choose`]: the kernel has what it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice(Kind);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Epoll,
    Uring,
}

/// Settles the backend once per server: `RINGMX_BACKEND` (auto, epoll or uring; empty: not
/// set) overrides `configured`, and auto takes io_uring when the kernel has everything it
/// uses (else epoll, with a warning that says why). An error is a message for the operator.
pub fn choose(configured: BackendKind) -> Result<Choice, String> {
    let kind = match std::env::var("RINGMX_BACKEND") {
        Ok(v) if v.is_empty() => configured,
        Ok(v) => match v.as_str() {
            "auto" => BackendKind::Auto,
            "epoll" => BackendKind::Epoll,
            "uring" => BackendKind::Uring,
            _ => return Err(format!("RINGMX_BACKEND={v}: expected auto, epoll or uring")),
        },
        Err(_) => configured,
    };
    match kind {
        BackendKind::Auto => match uring::probe() {
            Ok(()) => Ok(Choice(Kind::Uring)),
            Err(missing) => {
                tracing::warn!("io_uring unusable ({missing}); using epoll");
                Ok(Choice(Kind::Epoll))
            }
        },
        BackendKind::Uring => uring::probe()
            .map(|()| Choice(Kind::Uring))
            .map_err(|missing| format!("io_uring unusable: {missing}")),
        BackendKind::Epoll => Ok(Choice(Kind::Epoll)),
    }
}

/// Builds one worker's backend of `choice`, accepting on `listeners` (already listening), and
/// hands it to `visitor`. An error is a message for the operator.
pub fn open<V: WithBackend>(
    choice: Choice,
    listeners: Vec<TcpListener>,
    config: &BackendConfig,
    visitor: V,
) -> Result<V::Output, String> {
    match choice.0 {
        Kind::Uring => Uring::new(listeners, config)
            .map(|b| visitor.with(b))
            .map_err(|e| format!("cannot set up io_uring: {e}")),
        Kind::Epoll => Epoll::new(listeners, config)
            .map(|b| visitor.with(b))
            .map_err(|e| format!("cannot create epoll instance: {e}")),
    }
}
