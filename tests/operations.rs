//! Operating the real server: SIGHUP reloads the configuration file for new sessions (a limit, the recipients table, a certificate added) and refuses a broken one whole; `user` drops root after the listeners are bound; `ringmx check` on good and bad files.

#[macro_use]
mod serverkit;

use serverkit::{start_refused, Client, Server, TempDir};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A self-signed certificate for `mx.test`, written as DIR/mx.crt and DIR/mx.key.
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["mx.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (c, k) = (dir.join("mx.crt"), dir.join("mx.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// Replaces `path` with `text` in one rename, as a deploy would.
fn install(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// How many times the log holds `text`.
fn count(server: &Server, text: &str) -> usize {
    server.log().matches(text).count()
}

/// Waits (bounded) until the log holds `text` `n` times.
fn wait_for_nth(server: &Server, text: &str, n: usize) {
    let deadline = std::time::Instant::now() + serverkit::LIMIT;
    while count(server, text) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "no {n}×{text:?}:\n{}",
            server.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The EHLO reply of a new session.
fn ehlo(server: &Server) -> (Client, String) {
    let mut c = server.connect_greeted();
    let reply = c.cmd("EHLO client.example");
    (c, reply)
}

/// SIGHUP with a changed limit, a changed recipients table and a certificate added, while a
/// session is in the middle of a message: new sessions see all three, the open one finishes
/// its message under what it started with; a key that needs a restart is reported and kept;
/// then a broken file is refused with the message a start gives, and nothing changes.
fn sighup_reloads_the_configuration_for_new_sessions() {
    let dir = TempDir::new("reload");
    let users = dir.0.join("users");
    install(&users, "alice@example.org\n");
    let conf = dir.0.join("ringmx.toml");
    let base = format!("domains = [\"example.org\"]\nrecipients = {users:?}\nrelay_networks = []\n");
    install(&conf, &format!("{base}max_message_size = 1000000\n"));
    let server = Server::start(&[
        "--config",
        conf.to_str().unwrap(),
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let (mut open, reply) = ehlo(&server);
    assert!(
        reply.contains("250-SIZE 1000000\r\n") && !reply.contains("STARTTLS"),
        "{reply}"
    );
    assert_eq!(open.cmd("MAIL FROM:<s@client.example>"), "250 2.1.0 Ok\r\n");
    assert_eq!(open.cmd("RCPT TO:<alice@example.org>"), "250 2.1.5 Ok\r\n");

    let (cert, key) = certificate(&dir.0);
    install(&users, "bob@example.org\n");
    install(
        &conf,
        &format!(
            "{base}max_message_size = 2000000\ntls_cert = {cert:?}\ntls_key = {key:?}\nuring_buffers = 256\n"
        ),
    );
    server.signal(libc::SIGHUP);
    server.wait_for_log("configuration reloaded");
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("configuration reloaded"))
        .unwrap();
    assert!(
        line.contains("changed=max_message_size,tls_cert,tls_key")
            && line.contains("restart_needed=uring_buffers"),
        "{line}"
    );
    assert!(log.contains("takes effect after a restart"), "{log}");

    let (mut fresh, reply) = ehlo(&server);
    assert!(
        reply.contains("250-SIZE 2000000\r\n") && reply.contains("STARTTLS"),
        "{reply}"
    );
    assert_eq!(fresh.cmd("MAIL FROM:<s@client.example>"), "250 2.1.0 Ok\r\n");
    assert_eq!(fresh.cmd("RCPT TO:<bob@example.org>"), "250 2.1.5 Ok\r\n");
    assert!(fresh.cmd("RCPT TO:<alice@example.org>").starts_with("550 5.1.1 "));
    // Out of its transaction, so the stop below need not wait out the shutdown grace.
    assert!(fresh.cmd("RSET").starts_with("250 "));
    // The open session keeps its table and its limit.
    assert!(open.cmd("RCPT TO:<bob@example.org>").starts_with("550 5.1.1 "));
    assert_eq!(open.cmd("DATA"), "354 End data with <CR><LF>.<CR><LF>\r\n");
    open.send(b"Subject: across a reload\r\n\r\nbody\r\n.\r\n");
    assert!(open.reply().starts_with("250 2.0.0 Ok: queued as "));

    // A broken file: refused whole, with the message a start gives for it.
    let broken = format!("{base}max_message_size = 5\n");
    install(&conf, &broken);
    server.signal(libc::SIGHUP);
    server.wait_for_log("reload refused");
    let (status, start_log) = start_refused(&[
        "--config",
        conf.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--sink",
    ]);
    assert!(!status.success());
    let message = "config key `max_message_size` = 5 is outside its allowed range 1024..=1073741824";
    assert!(start_log.contains(message), "{start_log}");
    let refused = server.log();
    assert!(
        refused
            .lines()
            .any(|l| l.contains("reload refused") && l.contains(message)),
        "{refused}"
    );
    let (_, reply) = ehlo(&server);
    assert!(
        reply.contains("250-SIZE 2000000\r\n"),
        "the running configuration stays: {reply}"
    );
    assert_eq!(count(&server, "configuration reloaded"), 1);

    // Fixed again, and a reload that changes nothing is still a reload.
    install(&conf, &format!("{base}max_message_size = 3000000\n"));
    server.signal(libc::SIGHUP);
    wait_for_nth(&server, "configuration reloaded", 2);
    let (_, reply) = ehlo(&server);
    assert!(reply.contains("250-SIZE 3000000\r\n"), "{reply}");
    let page = metrics_page(&server);
    for line in [
        "ringmx_config_reloads_total{result=\"applied\"} 2\n",
        "ringmx_config_reloads_total{result=\"refused\"} 1\n",
    ] {
        assert!(page.contains(line), "{line}: {page}");
    }
    let stopped = server.stop();
    stopped.assert_clean();
}

/// The server's `/metrics` page (its address from the log's `metrics listening` line).
fn metrics_page(server: &Server) -> String {
    use std::io::{Read, Write};
    let log = server.log();
    let addr = log
        .split("metrics listening addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a metrics address in the log");
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(serverkit::LIMIT)).unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut page = String::new();
    c.read_to_string(&mut page).unwrap();
    assert!(page.starts_with("HTTP/1.1 200 "), "{page}");
    page
}

/// The uid, gid and supplementary groups of a process, from /proc.
fn ids(pid: i32) -> (String, String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    (field("Uid:"), field("Gid:"), field("Groups:"))
}

/// As root with `user = "nobody"`: the listeners are bound, then the process runs as nobody
/// and its group alone, and everything it writes in the spool (created for it) is nobody's.
/// A spool that belongs to someone else is refused at start, naming the fix. Not root: the
/// switch is refused.
fn user_drops_root_after_binding() {
    let nobody = ringmx::privileges::lookup("nobody").expect("a nobody user");
    if ringmx::privileges::current_uid() != 0 {
        let (status, log) = start_refused(&["--user", "nobody", "--listen", "127.0.0.1:0", "--sink"]);
        assert!(!status.success());
        assert!(log.contains("cannot switch to user nobody"), "{log}");
        return;
    }
    let dir = TempDir::new("user");
    let spool = dir.0.join("spool");
    // The test's scratch directory is root's: the stats file is opened before the switch.
    let server = Server::start(&["--user", "nobody", "--spool", spool.to_str().unwrap()]);
    let (uid, gid) = (nobody.uid.to_string(), nobody.gid.to_string());
    let (u, g, groups) = ids(server.pid());
    assert_eq!(u, [uid.as_str(); 4].join(" "));
    assert_eq!(g, [gid.as_str(); 4].join(" "));
    assert_eq!(groups, gid);
    let mut c = server.connect_greeted();
    assert!(c.cmd("EHLO client.example").starts_with("250-"));
    assert_eq!(c.cmd("MAIL FROM:<s@client.example>"), "250 2.1.0 Ok\r\n");
    assert_eq!(c.cmd("RCPT TO:<r@example.org>"), "250 2.1.5 Ok\r\n");
    assert!(c.cmd("DATA").starts_with("354 "));
    assert!(c
        .cmd("Subject: as nobody\r\n\r\nbody\r\n.")
        .starts_with("250 2.0.0 Ok: queued as "));
    let stopped = server.stop();
    stopped.assert_clean();
    assert_eq!(serverkit::spooled(&spool).len(), 1);
    let mut seen = 0;
    let mut stack = vec![spool.clone()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (nobody.uid, nobody.gid),
            "{}",
            p.display()
        );
        seen += 1;
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    assert!(seen >= 3, "the spool, its lock and a segment at least");

    // A spool that is root's: refused, with the fix.
    let theirs = dir.0.join("roots-spool");
    std::fs::create_dir(&theirs).unwrap();
    let (status, log) = start_refused(&[
        "--user",
        "nobody",
        "--listen",
        "127.0.0.1:0",
        "--spool",
        theirs.to_str().unwrap(),
    ]);
    assert!(!status.success());
    assert!(
        log.contains("belongs to uid 0, not to nobody") && log.contains("chown -R nobody:"),
        "{log}"
    );
}

/// Runs `ringmx check --config FILE`: exit status, stdout, stderr.
fn check(file: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringmx"))
        .args(["check", "--config"])
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `ringmx check`: a good file prints its effective configuration (which reads back as the
/// same), exit 0; a bad value, a certificate that does not load and a bad recipients line
/// each give exit 1 and a message naming the problem.
#[test]
fn check_validates_and_prints_the_effective_configuration() {
    let dir = TempDir::new("check");
    let (cert, key) = certificate(&dir.0);
    let users = dir.0.join("users");
    std::fs::write(&users, "alice@example.org\n").unwrap();
    let good = dir.0.join("good.toml");
    let spool = dir.0.join("spool");
    let text = format!(
        "hostname = \"mx.example.org\"\ndomains = [\"example.org\"]\nrecipients = {users:?}\n\
         tls_cert = {cert:?}\ntls_key = {key:?}\nspool = {spool:?}\nmax_recipients = 250\n"
    );
    std::fs::write(&good, &text).unwrap();
    let (ok, printed, err) = check(&good);
    assert!(ok, "{err}");
    assert!(
        err.contains(": ok") && err.contains("recipients: 1 addresses"),
        "{err}"
    );
    assert!(
        printed.contains("max_recipients = 250\n") && printed.contains("hostname = \"mx.example.org\"\n"),
        "{printed}"
    );
    let again = ringmx::config::ServerConfig::from_toml(&printed).unwrap();
    let first = ringmx::config::ServerConfig::from_toml(&text).unwrap();
    assert!(
        ringmx::config::changed_keys(&first, &again).is_empty(),
        "{printed}"
    );

    let cases = [
        (
            "max_recipients = 5\n".to_string(),
            "`max_recipients` = 5 is outside its allowed range 100..=100000",
        ),
        ("max_recipients = 100\nbogus_key = 1\n".to_string(), "bogus_key"),
        (
            format!("tls_cert = {:?}\ntls_key = {key:?}\n", dir.0.join("missing.crt")),
            "missing.crt",
        ),
        (format!("recipients = {:?}\n", dir.0.join("bad-users")), ":2:"),
        ("user = \"no-such-user-ringmx\"\n".to_string(), "no such user"),
    ];
    std::fs::write(dir.0.join("bad-users"), "alice@example.org\nnot an address\n").unwrap();
    for (i, (text, want)) in cases.iter().enumerate() {
        let bad = dir.0.join(format!("bad{i}.toml"));
        std::fs::write(
            &bad,
            format!("domains = [\"example.org\"]\nspool = {spool:?}\n{text}"),
        )
        .unwrap();
        let (ok, _, err) = check(&bad);
        assert!(!ok, "{text}");
        assert!(err.contains(want), "{text}: {err}");
    }
}

/// Under systemd (`Type=notify`): `READY=1` once listening, `RELOADING=1` with a monotonic
/// timestamp then `READY=1` around a SIGHUP, `STOPPING=1` at SIGTERM, on `$NOTIFY_SOCKET`.
#[test]
fn the_service_manager_hears_ready_reloading_and_stopping() {
    let dir = TempDir::new("notify");
    let path = dir.0.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(serverkit::LIMIT)).unwrap();
    let mut buf = [0u8; 512];
    let mut next = || {
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    };
    let server = Server::start_with(serverkit::Options {
        args: &["--sink"],
        env: &[("NOTIFY_SOCKET", path.to_str().unwrap())],
        ..Default::default()
    });
    let ready = next();
    assert!(
        ready.starts_with("READY=1\nSTATUS=listening on 127.0.0.1:"),
        "{ready}"
    );
    server.signal(libc::SIGHUP);
    let reloading = next();
    let usec: u64 = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{reloading}"));
    assert!(usec > 0);
    assert_eq!(next(), "READY=1");
    server.wait_for_log("configuration reloaded");
    server.terminate();
    assert_eq!(next(), "STOPPING=1");
    server.stop().assert_clean();
}

on_backends_and_formats!(
    formats: [],
    backends: [sighup_reloads_the_configuration_for_new_sessions, user_drops_root_after_binding],
);
