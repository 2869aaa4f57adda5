//! The contract's promises for closing and unknown tokens and for the slot limit, checked on both backends with the same bodies.

use super::epoll::Epoll;
use super::uring::Uring;
use super::*;
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

fn config() -> BackendConfig {
    BackendConfig {
        slot_reserve: 16,
        uring_entries: 64,
        uring_buffers: 16,
        uring_buffer_size: 4096,
        ..BackendConfig::from(&crate::config::ServerLimits::default())
    }
}

fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Gathers completions until `enough` says so (bounded), then those of one more short wait,
/// so a completion that should not come has had its chance.
fn gather<B: Backend>(b: &mut B, enough: impl Fn(&[Completion]) -> bool) -> Vec<Completion> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut all = Vec::new();
    while !enough(&all) {
        assert!(Instant::now() < deadline, "timed out with {all:?}");
        b.wait(Some(Duration::from_millis(20)), &mut all).unwrap();
    }
    b.wait(Some(Duration::from_millis(100)), &mut all).unwrap();
    all
}

/// Connects a client and returns it with the socket the backend accepted for it.
fn accept<B: Backend>(b: &mut B, addr: SocketAddr) -> (TcpStream, OwnedFd) {
    let client = TcpStream::connect(addr).unwrap();
    let accepted = |c: &Completion| matches!(c, Completion::Accepted { .. });
    let socket = gather(b, |all| all.iter().any(accepted))
        .into_iter()
        .find_map(|c| match c {
            Completion::Accepted { socket, .. } => Some(socket),
            _ => None,
        })
        .unwrap();
    (client, socket)
}

fn closed(all: &[Completion], token: Token) -> usize {
    all.iter()
        .filter(|c| matches!(c, Completion::Closed { token: t } if *t == token))
        .count()
}

/// The `NotConnected` sends answered for `token`, each with its buffer emptied.
fn refused_sends(all: &[Completion], token: Token) -> usize {
    all.iter()
        .filter(|c| {
            matches!(c, Completion::Sent { token: t, buf, result: Err(e) }
                if *t == token && buf.is_empty() && e.kind() == io::ErrorKind::NotConnected)
        })
        .count()
}

fn sends_and_closes_on_closing_and_unknown_tokens<B: Backend>(mut b: B, addr: SocketAddr) {
    let (_client, socket) = accept(&mut b, addr);
    let token = Token {
        slot: 3,
        generation: 7,
    };
    b.attach(token, socket).unwrap();
    b.close(token);
    // Closing: the send is answered, a second close adds nothing.
    b.send(token, b"late".to_vec());
    b.close(token);
    let all = gather(&mut b, |all| {
        closed(all, token) > 0 && refused_sends(all, token) > 0
    });
    assert_eq!(
        (closed(&all, token), refused_sends(&all, token)),
        (1, 1),
        "{all:?}"
    );
    // Closed, and never attached: the same.
    let stranger = Token {
        slot: 9,
        generation: 1,
    };
    b.send(token, b"later".to_vec());
    b.send(stranger, b"who".to_vec());
    b.close(token);
    b.close(stranger);
    b.set_receiving(stranger, true);
    let all = gather(&mut b, |all| {
        refused_sends(all, token) > 0 && refused_sends(all, stranger) > 0
    });
    assert_eq!(
        refused_sends(&all, token) + refused_sends(&all, stranger),
        2,
        "{all:?}"
    );
    assert_eq!(closed(&all, token) + closed(&all, stranger), 0, "{all:?}");
}

fn slots_beyond_the_limit_are_refused<B: Backend>(mut b: B, addr: SocketAddr) {
    let (_client, socket) = accept(&mut b, addr);
    let token = Token {
        slot: MAX_SLOTS,
        generation: 0,
    };
    let err = b.attach(token, socket).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    let (_client, socket) = accept(&mut b, addr);
    let token = Token {
        slot: 0,
        generation: 0,
    };
    b.attach(token, socket).unwrap();
}

/// Every test above runs once per backend from the same body: `epoll::NAME`, `uring::NAME`
/// (skipped, with a message, where the kernel lacks what io_uring needs).
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod epoll {
            $( #[test] fn $name() {
                let (l, addr) = super::listener();
                super::$name(super::Epoll::new(vec![l], &super::config()).unwrap(), addr);
            } )*
        }
        mod uring {
            $( #[test] fn $name() {
                if let Err(missing) = crate::backend::uring::probe() {
                    eprintln!("skipped: io_uring unusable here ({missing})");
                    return;
                }
                let (l, addr) = super::listener();
                super::$name(super::Uring::new(vec![l], &super::config()).unwrap(), addr);
            } )*
        }
    };
}

on_both_backends!(
    sends_and_closes_on_closing_and_unknown_tokens,
    slots_beyond_the_limit_are_refused,
);
