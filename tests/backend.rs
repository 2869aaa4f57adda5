//! The backends' accept policy through the real server, on both backends: out of descriptors, waiting clients are refused with `421 4.3.2` at once instead of hanging, and served again once descriptors are free.

mod serverkit;

use serverkit::{Client, Options, Server};
use std::time::{Duration, Instant};

const TOO_MANY: &str = "421 4.3.2 Too many connections, try again later\r\n";

fn out_of_descriptors_clients_get_421_at_once_then_are_served_again() {
    // 40 descriptors, some taken by the server itself: fewer than the clients below.
    let server = Server::start_with(Options {
        args: &["--sink"],
        open_files_limit: Some(40),
        ..Options::default()
    });
    let start = Instant::now();
    let clients: Vec<Client> = (0..50).map(|_| server.connect()).collect();
    let mut served = Vec::new();
    let mut refused = 0;
    for mut c in clients {
        let reply = c.reply();
        if reply.starts_with("220 ") {
            served.push(c);
        } else {
            assert_eq!(reply, TOO_MANY);
            assert!(c.read_to_end().is_empty());
            refused += 1;
        }
    }
    let waited = start.elapsed();
    assert!(waited < Duration::from_secs(10), "answers took {waited:?}");
    assert!(refused > 0, "the descriptor limit was never reached");
    assert!(!served.is_empty());
    for c in &mut served {
        assert!(c.cmd("QUIT").starts_with("221"));
        assert!(c.read_to_end().is_empty());
    }
    // Their descriptors are free again, and the spare is back: the next client is served.
    let mut c = server.connect();
    assert!(c.reply().starts_with("220 "));
    assert!(c.cmd("QUIT").starts_with("221"));
    assert!(c.read_to_end().is_empty());
    let stopped = server.stop();
    stopped.assert_clean();
    let count = |key: &str| stopped.stats[key];
    assert_eq!(count("rejected"), refused, "{:?}", stopped.stats);
    assert_eq!(count("io.refused_no_fds"), refused, "{:?}", stopped.stats);
    assert!(count("io.accept_no_fds") >= refused, "{:?}", stopped.stats);
    assert_eq!(count("accepted"), served.len() as u64 + 1, "{:?}", stopped.stats);
}

/// Every test above runs once per backend from the same body: `epoll::NAME` and
/// `uring::NAME` (the latter skipped, saying why, where the kernel lacks io_uring).
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod epoll {
            $( #[test] fn $name() { crate::serverkit::on_backend("epoll", super::$name) } )*
        }
        mod uring {
            $( #[test] fn $name() { crate::serverkit::on_backend("uring", super::$name) } )*
        }
    };
}

on_both_backends!(out_of_descriptors_clients_get_421_at_once_then_are_served_again);
