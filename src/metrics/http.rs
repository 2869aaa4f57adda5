//! The `/metrics` endpoint's HTTP/1.1 responder: a blocking listener on threads of its own (never a worker's loop), a fixed few handlers, bounded heads, deadlines, one response per connection.
//!
//! The listener is bound by [`Endpoint::bind`] while the server starts, before the workers
//! and before any later privilege drop, so a bad address fails the start. An acceptor thread
//! hands each connection to one of [`HANDLERS`] handler threads; while all are busy it
//! waits, and further connections wait in the listen backlog (the kernel's), so the thread
//! count never grows and a scrape behind a few silent connections is answered once their
//! [`HEAD_DEADLINE`] has passed. A flood of thousands of silent connections delays scrapes
//! by thousands of deadlines: bind the endpoint where only the scraper reaches it. Every
//! response says `Connection: close`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Connections handled at once. A Prometheus server scrapes one at a time; four leave room
/// for a second scraper and a person with curl, and bound the threads and memory.
pub const HANDLERS: usize = 4;
/// The request head must arrive in full within this time, or the connection is closed
/// (`408`): a slow client holds a handler no longer than this.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// Sending the response may take this long; then the connection is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head taken (`431` beyond): a scrape's head is a few hundred octets.
pub const HEAD_MAX: usize = 8 * 1024;
/// After an error response, input still arriving is read and dropped up to this much, so
/// closing with unread data does not reset the connection before the client reads it.
const DRAIN_MAX: usize = 64 * 1024;
/// ... for at most this long.
const DRAIN_TIME: Duration = Duration::from_millis(500);

/// The media type of the text exposition format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const INDEX: &str = "ringmx: Prometheus metrics at /metrics\n";

/// The bound listener, not serving yet.
pub struct Endpoint {
    listener: TcpListener,
    pub addr: SocketAddr,
}

impl Endpoint {
    /// Binds `addr` (blocking sockets: this side never touches a worker's event loop).
    pub fn bind(addr: SocketAddr) -> Result<Endpoint, String> {
        let listener =
            TcpListener::bind(addr).map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(%addr, "metrics listening");
        Ok(Endpoint { listener, addr })
    }

    /// Starts the acceptor and the handlers; `render` builds the page per scrape. The
    /// threads live as long as the process: they hold no state that a shutdown must save.
    pub fn serve(self, render: impl Fn() -> String + Send + Sync + 'static) -> Result<(), String> {
        let render = std::sync::Arc::new(render);
        // Zero capacity: a connection is handed over only to a handler waiting for one.
        let (tx, rx) = crossbeam_channel::bounded::<TcpStream>(0);
        for i in 0..HANDLERS {
            let (rx, render) = (rx.clone(), render.clone());
            std::thread::Builder::new()
                .name(format!("ringmx-metrics-{i}"))
                .spawn(move || {
                    for stream in rx {
                        // A bug in one scrape must not cost a handler for good: with none
                        // left, the acceptor would wait forever.
                        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            handle(stream, &*render)
                        }));
                        if served.is_err() {
                            tracing::error!("a metrics request panicked");
                        }
                    }
                })
                .map_err(|e| format!("cannot start metrics thread: {e}"))?;
        }
        let listener = self.listener;
        std::thread::Builder::new()
            .name("ringmx-metrics".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else {
                        // Out of descriptors, say: a moment's rest, not a spin.
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    if tx.send(stream).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| format!("cannot start metrics thread: {e}"))?;
        Ok(())
    }
}

/// Every response this endpoint gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    BadRequest,
    NotFound,
    NotAllowed,
    Timeout,
    HeadTooLarge,
}

impl Status {
    fn line(self) -> &'static str {
        match self {
            Status::Ok => "200 OK",
            Status::BadRequest => "400 Bad Request",
            Status::NotFound => "404 Not Found",
            Status::NotAllowed => "405 Method Not Allowed",
            Status::Timeout => "408 Request Timeout",
            Status::HeadTooLarge => "431 Request Header Fields Too Large",
        }
    }
}

/// Why reading the head stopped without a complete one.
enum HeadError {
    TooLarge,
    Timeout,
    /// Closed by the client, or another error: nobody to answer.
    Gone,
}

fn handle(mut stream: TcpStream, render: &dyn Fn() -> String) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let status = match read_head(&mut stream) {
        Ok(head) => match route(&head) {
            Ok(Page::Metrics) => {
                respond(&mut stream, Status::Ok, &render());
                return;
            }
            Ok(Page::Index) => {
                respond(&mut stream, Status::Ok, INDEX);
                return;
            }
            Err(status) => status,
        },
        Err(HeadError::TooLarge) => Status::HeadTooLarge,
        Err(HeadError::Timeout) => Status::Timeout,
        Err(HeadError::Gone) => return,
    };
    respond(&mut stream, status, "");
    drain(&mut stream);
}

/// Reads up to the blank line that ends the head, within [`HEAD_DEADLINE`] and [`HEAD_MAX`].
fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let deadline = Instant::now() + HEAD_DEADLINE;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(HeadError::Timeout);
        }
        match stream.read(&mut buf) {
            Ok(0) => return Err(HeadError::Gone),
            Ok(n) => {
                // Look again only where the end could be: the new octets and three before.
                let from = head.len().saturating_sub(3);
                head.extend_from_slice(&buf[..n]);
                if let Some(end) = memchr::memmem::find(&head[from..], b"\r\n\r\n") {
                    head.truncate(from + end);
                    return if head.len() > HEAD_MAX {
                        Err(HeadError::TooLarge)
                    } else {
                        Ok(head)
                    };
                }
                if head.len() > HEAD_MAX {
                    return Err(HeadError::TooLarge);
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(HeadError::Timeout)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(HeadError::Gone),
        }
    }
}

/// What a well-formed request asks for.
enum Page {
    Metrics,
    Index,
}

/// The request line `METHOD SP TARGET SP HTTP/1.x` of `head`; the header fields are not
/// needed for anything and are not looked at.
fn route(head: &[u8]) -> Result<Page, Status> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = std::str::from_utf8(line).map_err(|_| Status::BadRequest)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Status::BadRequest);
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic());
    if !token(method) || !target.starts_with('/') || !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return Err(Status::BadRequest);
    }
    if method != "GET" {
        return Err(Status::NotAllowed);
    }
    let path = target.split('?').next().unwrap_or_default();
    match path {
        "/metrics" => Ok(Page::Metrics),
        "/" => Ok(Page::Index),
        _ => Err(Status::NotFound),
    }
}

fn respond(stream: &mut TcpStream, status: Status, body: &str) {
    let mut head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        status.line(),
        if status == Status::Ok {
            CONTENT_TYPE
        } else {
            "text/plain; charset=utf-8"
        },
        body.len()
    );
    if status == Status::NotAllowed {
        head.push_str("Allow: GET\r\n");
    }
    head.push_str("\r\n");
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()));
    let _ = stream.shutdown(Shutdown::Write);
}

/// Reads and drops what the client still sends, bounded, so the response is not lost to a
/// reset when the socket closes with unread input.
fn drain(stream: &mut TcpStream) {
    let deadline = Instant::now() + DRAIN_TIME;
    let mut buf = [0u8; 4096];
    let mut taken = 0;
    while taken < DRAIN_MAX {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => taken += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_route_to_their_status() {
        let page = |head: &str| route(head.as_bytes()).map(|p| matches!(p, Page::Metrics));
        assert_eq!(page("GET /metrics HTTP/1.1\r\nHost: x"), Ok(true));
        assert_eq!(page("GET /metrics?x=1 HTTP/1.0"), Ok(true));
        assert_eq!(page("GET / HTTP/1.1"), Ok(false));
        assert_eq!(page("GET /other HTTP/1.1"), Err(Status::NotFound));
        assert_eq!(page("POST /metrics HTTP/1.1"), Err(Status::NotAllowed));
        assert_eq!(page("GET /metrics HTTP/2"), Err(Status::BadRequest));
        assert_eq!(page("\u{1}\u{2} garbage"), Err(Status::BadRequest));
        assert_eq!(page("GET  /metrics HTTP/1.1"), Err(Status::BadRequest));
    }
}
