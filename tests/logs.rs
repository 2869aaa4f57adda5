//! The log as an operator's tools read it, from the real server: `--log-format json` gives one JSON object per line with the session's fields as keys, and a log reader that stalls never stalls a worker (lines are dropped and counted instead).

#[macro_use]
mod serverkit;

use serverkit::{Client, Options, Server, TempDir};

on_backends_and_formats!(
    formats: [],
    backends: [
        json_lines_parse_and_the_session_line_has_its_fields_as_keys,
        a_stalled_log_reader_drops_lines_and_serves_every_session,
    ],
);

fn json_lines_parse_and_the_session_line_has_its_fields_as_keys() {
    let server = Server::start(&["--log-format", "json", "--hostname", "mx.test"]);
    let mut c = server.connect_greeted();
    assert!(c.cmd("EHLO client.example").starts_with("250-"));
    assert_eq!(c.cmd("MAIL FROM:<a@client.example>"), "250 2.1.0 Ok\r\n");
    assert_eq!(c.cmd("RCPT TO:<b@mx.test>"), "250 2.1.5 Ok\r\n");
    assert!(c.cmd("DATA").starts_with("354 "));
    let queued = c.cmd("Subject: x\r\n\r\nhi\r\n.");
    let id = queued
        .strip_prefix("250 2.0.0 Ok: queued as ")
        .expect(&queued)
        .trim_end()
        .to_string();
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    let stopped = server.stop();
    stopped.assert_clean();
    let lines: Vec<serde_json::Value> = stopped
        .log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.iter().all(serde_json::Value::is_object));
    let session = lines
        .iter()
        .find(|l| l["message"] == "session ended")
        .unwrap_or_else(|| panic!("no session line:\n{}", stopped.log));
    assert_eq!(session["level"], "INFO");
    assert_eq!(session["helo"], "client.example");
    assert_eq!(session["ids"], id.as_str());
    assert_eq!(session["from"], "<a@client.example>");
    assert_eq!(session["nrcpt"], "1");
    assert_eq!(session["size"], "18");
    assert_eq!(session["messages"], 1);
    assert_eq!(session["reason"], "quit");
    assert!(session["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(session["duration_ms"].is_u64());
    assert!(session.get("tls").is_none() && session.get("rejected").is_none());
    let counters = lines.iter().find(|l| l["message"] == "counters").unwrap();
    assert_eq!(counters["log_lines_dropped"], 0);
}

/// Sessions through a server whose stderr pipe (64 KiB) nobody reads, with the smallest
/// queue (`log_buffer_lines = 1024`): each session's line fills them, and from then on lines
/// are dropped, while every session is still served in time.
fn a_stalled_log_reader_drops_lines_and_serves_every_session() {
    const SESSIONS: usize = 4000;
    const THREADS: usize = 4;
    let dir = TempDir::new("stalled-log");
    let config = dir.0.join("ringmx.toml");
    std::fs::write(&config, "log_buffer_lines = 1024\n").unwrap();
    let server = Server::start_with(Options {
        args: &["--config", config.to_str().unwrap(), "--sink"],
        log_unread: true,
        ..Options::default()
    });
    let addr = server.addr;
    let clients: Vec<_> = (0..THREADS)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..SESSIONS / THREADS {
                    let mut c = Client::connect(addr);
                    assert!(c.reply().starts_with("220 "));
                    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("every session is served");
    }
    let stopped = server.stop();
    stopped.assert_clean();
    assert_eq!(stopped.stats["accepted"], SESSIONS as u64);
    assert_eq!(stopped.stats["sessions_ended.quit"], SESSIONS as u64);
    assert!(
        stopped.stats["log_lines_dropped"] > 0,
        "{:?}",
        stopped.stats.get("log_lines_dropped")
    );
}
