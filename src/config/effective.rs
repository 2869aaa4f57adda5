//! The configuration as values: every key of a [`ServerConfig`] as TOML, for `ringmx check` (like `postconf`) and for telling which keys a reload changed.

use super::{DeliveryLimits, ProtoLimits, ServerConfig, ServerLimits};
use toml::{Table, Value};

/// Every key with a value, as one TOML table; the keys without one (an optional file or
/// address not configured) are left out and named by [`unset`].
fn table(c: &ServerConfig) -> Table {
    let mut t = Table::new();
    let mut put = |key: &str, value: Value| {
        t.insert(key.to_string(), value);
    };
    let v = |x: &dyn erased::ToValue| x.to_value();
    put("listen", v(&c.listen));
    put("listen_tls", v(&c.listen_tls));
    put("proxy_trusted", v(&c.proxy_trusted));
    put("tls_certificates", v(&c.tls_certificates));
    put("relay_networks", v(&c.relay_networks));
    put("domains", v(&c.domains));
    put("workers", v(&c.workers));
    put("backend", v(&c.backend));
    put("spool", v(&c.spool));
    put("sink", v(&c.sink));
    put("spool_sync", v(&c.spool_sync));
    put("spool_format", v(&c.spool_format));
    put("relay_tls", v(&c.delivery.relay_tls));
    put("log_level", v(&c.log_level));
    put("log_format", v(&c.log_format));
    put("hostname", v(&c.proto.hostname));
    put("bare_lf", v(&c.proto.bare_lf));
    put("tls_required", v(&c.proto.tls_required));
    let routes: Table = (c.delivery.routes.iter())
        .map(|(domain, dest)| (domain.clone(), Value::String(dest.clone())))
        .collect();
    put("routes", Value::Table(routes));
    for (key, value) in optional(c).into_iter().filter_map(|(k, v)| Some((k, v?))) {
        put(key, value);
    }
    let limits = (c.proto.limits.toml_values().into_iter())
        .chain(c.limits.toml_values())
        .chain(c.delivery.limits.toml_values());
    for (key, value) in limits {
        put(key, value);
    }
    t
}

/// The keys that may be absent, with their values when present.
fn optional(c: &ServerConfig) -> [(&'static str, Option<Value>); 7] {
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| Value::String(p.display().to_string()));
    [
        ("tls_cert", path(&c.tls_cert)),
        ("tls_key", path(&c.tls_key)),
        ("recipients", path(&c.recipients)),
        ("relay_to", c.delivery.relay_to.clone().map(Value::String)),
        ("relay_tls_ca_file", path(&c.delivery.relay_tls_ca_file)),
        ("user", c.user.clone().map(Value::String)),
        (
            "metrics_listen",
            c.metrics_listen.map(|a| Value::String(a.to_string())),
        ),
    ]
}

/// The optional keys `c` leaves unset.
pub fn unset(c: &ServerConfig) -> Vec<&'static str> {
    (optional(c).into_iter())
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| k)
        .collect()
}

/// The effective configuration as a TOML file, keys in alphabetical order (as `postconf`
/// prints them), the unset optional keys named in a comment at the end. Read back with
/// [`ServerConfig::from_toml`], it gives the same configuration.
pub fn to_toml(c: &ServerConfig) -> String {
    let mut out = toml::to_string(&table(c)).expect("a table of plain values serializes");
    let unset = unset(c);
    if !unset.is_empty() {
        out.push_str(&format!("\n# unset: {}\n", unset.join(", ")));
    }
    out
}

/// The keys whose values differ between two configurations (one absent in one of them counts).
pub fn changed_keys(old: &ServerConfig, new: &ServerConfig) -> Vec<String> {
    let (a, b) = (table(old), table(new));
    let mut keys: Vec<String> = (a.keys().chain(b.keys()))
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Every key a configuration file may hold (the aliases aside), in alphabetical order.
pub fn all_keys() -> Vec<&'static str> {
    let c = ServerConfig::default();
    let t = table(&c);
    let mut keys: Vec<&'static str> = (optional(&c).into_iter().map(|(k, _)| k))
        .chain(ProtoLimits::TABLE.iter().map(|s| s.name))
        .chain(ServerLimits::TABLE.iter().map(|s| s.name))
        .chain(DeliveryLimits::TABLE.iter().map(|s| s.name))
        .collect();
    for key in t.keys() {
        if !keys.contains(&key.as_str()) {
            keys.push(Box::leak(key.clone().into_boxed_str()));
        }
    }
    keys.sort_unstable();
    keys
}

/// Serialization of the configuration's value types, without a `Serialize` bound at each
/// call: every one of them converts with `toml::Value::try_from`.
mod erased {
    pub trait ToValue {
        fn to_value(&self) -> toml::Value;
    }

    impl<T: serde::Serialize> ToValue for T {
        fn to_value(&self) -> toml::Value {
            toml::Value::try_from(self).expect("a configuration value serializes")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_configuration_reads_back_the_same() {
        let text = "listen = [\"127.0.0.1:25\", { address = \"127.0.0.1:26\", proxy = true }]\n\
                    domains = [\"example.com\"]\nrelay_to = \"smtp:127.0.0.1:2526\"\n\
                    user = \"nobody\"\nmax_recipients = 200\nuring_sqpoll = true\n\
                    [routes]\n\".example.org\" = \"lmtp:unix:/run/lmtp\"\n";
        let c = ServerConfig::from_toml(text).unwrap();
        let printed = to_toml(&c);
        let again = ServerConfig::from_toml(&printed).unwrap();
        assert!(changed_keys(&c, &again).is_empty(), "{printed}");
        assert_eq!(to_toml(&again), printed);
        assert!(printed.contains("max_recipients = 200\n"), "{printed}");
        assert!(printed.contains("uring_sqpoll = true\n"), "{printed}");
        assert!(
            printed.contains("# unset: tls_cert, tls_key, recipients, relay_tls_ca_file, metrics_listen"),
            "{printed}"
        );
    }

    #[test]
    fn changed_keys_names_exactly_what_differs() {
        let old = ServerConfig::default();
        let mut new = old.clone();
        new.proto.limits.max_recipients = 500;
        new.limits.max_connections = 7;
        new.recipients = Some("/etc/ringmx/users".into());
        new.log_level = "warn".into();
        assert_eq!(
            changed_keys(&old, &new),
            ["log_level", "max_connections", "max_recipients", "recipients"]
        );
    }

    #[test]
    fn every_key_read_is_a_key_printed() {
        let keys = all_keys();
        for key in [
            "listen",
            "user",
            "metrics_listen",
            "routes",
            "max_recipients",
            "log_buffer_lines",
        ] {
            assert!(keys.contains(&key), "{key}");
        }
        // Each key alone in a file is accepted: the list holds no key the reader refuses.
        let printed: Table = toml::from_str(&to_toml(&ServerConfig::default())).unwrap();
        for key in printed.keys() {
            assert!(keys.contains(&key.as_str()), "{key}");
        }
    }
}
