//! `ringmx check`: everything a start would load, loaded without starting, every problem reported, and the effective configuration printed (Postfix's `postfix check` and `postconf`).

use crate::config::ServerConfig;
use crate::policy::recipients::Recipients;
use crate::privileges;
use crate::tls::TlsContext;
use std::path::Path;

/// What a check found: the effective configuration (once the file parsed and validated), the
/// problems that would stop a start, and notes that would not.
#[derive(Debug, Default)]
pub struct Checked {
    pub effective: Option<String>,
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

/// Checks the configuration file at `path`: the file (the same messages as a start), then
/// every file it names, the user, and the spool directory. Only the listeners are not tried,
/// since a running server holds them.
pub fn check(path: &Path) -> Checked {
    let mut out = Checked::default();
    let config = match std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|text| ServerConfig::from_toml(&text))
        .and_then(|c| c.validate().map(|()| c).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            out.problems.push(format!("{}: {e}", path.display()));
            return out;
        }
    };
    check_config(&config, &mut out);
    out.effective = Some(crate::config::to_toml(&config));
    out
}

fn check_config(c: &ServerConfig, out: &mut Checked) {
    let entries = c.cert_entries();
    if !entries.is_empty() {
        if let Err(e) = TlsContext::new(&entries, c.limits.tls_session_cache) {
            out.problems.push(e);
        }
    }
    match Recipients::new(&c.domains, c.recipients.as_deref()) {
        Ok(r) if c.recipients.is_some() => out.notes.push(format!("recipients: {} addresses", r.len())),
        Ok(_) => {}
        Err(e) => out.problems.push(e.to_string()),
    }
    if c.delivery.relay_to.is_some() || !c.delivery.routes.is_empty() {
        if let Err(e) = crate::delivery::Delivery::prepare(c) {
            out.problems.push(e);
        }
    } else if !c.sink {
        out.notes
            .push("no relay_to or routes: messages stay in the spool (store-only)".into());
    }
    let account = match &c.user {
        Some(name) => match privileges::lookup(name) {
            Ok(a) => Some(a),
            Err(e) => {
                out.problems.push(e);
                None
            }
        },
        None => None,
    };
    if c.sink {
        return;
    }
    match (std::fs::symlink_metadata(&c.spool), &account) {
        (Ok(meta), Some(account)) => {
            if let Err(e) = privileges::check_spool(&c.spool, &meta, account) {
                out.problems.push(e);
            }
        }
        (Ok(meta), None) if !meta.is_dir() => {
            out.problems
                .push(format!("spool {}: not a directory", c.spool.display()));
        }
        (Ok(_), None) => {}
        (Err(e), _) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = c
                .spool
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if parent.is_dir() {
                out.notes
                    .push(format!("spool {}: missing, created at start", c.spool.display()));
            } else {
                out.problems.push(format!(
                    "spool {}: missing, and so is {}",
                    c.spool.display(),
                    parent.display()
                ));
            }
        }
        (Err(e), _) => out.problems.push(format!("spool {}: {e}", c.spool.display())),
    }
}
