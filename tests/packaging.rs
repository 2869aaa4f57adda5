//! Keeps packaging/ringmx.toml (the package's /etc/ringmx/ringmx.toml) true: its commented
//! defaults are the code's defaults, its examples parse, it names every key and every limit,
//! and the keys it sets are the installed layout's and nothing else.

use ringmx::config::{limits_table, ServerConfig};
use std::collections::BTreeSet;

/// The keys the packaged file sets (uncommented) for the installed layout, in file order: the
/// only differences from the defaults.
const INSTALLED: &[&str] = &["listen", "spool", "user"];

/// Field names in `ServerConfig`'s Debug output that are not keys of the file: the groups
/// (`limits`, `delivery`, `proto`), what the server sets itself (`starttls`), and the fields of
/// the values inside (a listener's `addr` and `proxy`).
const NOT_KEYS: &[&str] = &["limits", "delivery", "proto", "starttls", "addr", "proxy"];

fn packaged() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/ringmx.toml")).unwrap()
}

/// A commented key line, `# key = value`, split into the key and the line without `# `.
fn commented(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("# ")?;
    let (key, value) = rest.split_once(" = ")?;
    let is_key = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    (is_key && !value.is_empty()).then_some((key, rest))
}

fn is_example(line: &str) -> bool {
    line.ends_with("  # example")
}

/// The key of an uncommented `key = value` line.
fn set_key(line: &str) -> Option<&str> {
    let first = line.chars().next()?;
    if !first.is_ascii_lowercase() {
        return None;
    }
    Some(line.split_once(" = ").expect("a `key = value` line").0)
}

/// Every field name of `ServerConfig`'s pretty Debug output: `name: value` lines.
fn debug_fields(config: &ServerConfig) -> BTreeSet<String> {
    format!("{config:#?}")
        .lines()
        .filter_map(|l| l.trim_start().split_once(": "))
        .map(|(name, _)| name)
        .filter(|name| name.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .filter(|name| !NOT_KEYS.contains(name))
        .map(str::to_string)
        .collect()
}

#[test]
fn commented_defaults_are_the_defaults() {
    let text = packaged();
    let defaults: Vec<&str> = text
        .lines()
        .filter(|l| !is_example(l))
        .filter_map(commented)
        .map(|(_, line)| line)
        .collect();
    assert!(defaults.len() > 60, "only {} commented defaults", defaults.len());
    let all = defaults.join("\n");
    let parsed = ServerConfig::from_toml(&all)
        .unwrap_or_else(|e| panic!("the commented defaults, uncommented, do not parse: {e}"));
    assert_eq!(
        format!("{parsed:#?}"),
        format!("{:#?}", ServerConfig::default()),
        "the commented defaults are not the defaults"
    );
    // One line at a time too, so a wrong default names its own line.
    for line in defaults {
        let one = ServerConfig::from_toml(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(
            format!("{one:?}"),
            format!("{:?}", ServerConfig::default()),
            "`{line}` is not the default"
        );
    }
}

#[test]
fn examples_parse() {
    let text = packaged();
    let examples: Vec<&str> = text
        .lines()
        .filter(|l| is_example(l))
        .map(|l| {
            commented(l)
                .unwrap_or_else(|| panic!("example not `# key = value`: {l}"))
                .1
        })
        .collect();
    assert!(!examples.is_empty());
    for line in examples {
        let config = ServerConfig::from_toml(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_ne!(
            format!("{config:?}"),
            format!("{:?}", ServerConfig::default()),
            "`{line}` is marked an example but is the default"
        );
    }
}

#[test]
fn the_installed_layout_is_set_and_nothing_else() {
    let text = packaged();
    let set: Vec<&str> = text.lines().filter_map(set_key).collect();
    assert_eq!(set, INSTALLED, "the keys set uncommented");
    let config = ServerConfig::from_toml(&text).unwrap_or_else(|e| panic!("the file: {e}"));
    config
        .validate()
        .unwrap_or_else(|e| panic!("the file does not validate: {e}"));
    assert_eq!(config.spool, std::path::Path::new("/var/spool/ringmx"));
    assert_eq!(config.user.as_deref(), Some("ringmx"));
    let listen: Vec<String> = config.listen.iter().map(|l| l.addr.to_string()).collect();
    assert_eq!(listen, ["0.0.0.0:25", "[::]:25"]);
    assert!(config.listen.iter().all(|l| !l.proxy));
    // Nothing else differs from the defaults.
    let expect = ServerConfig {
        spool: config.spool.clone(),
        user: config.user.clone(),
        listen: config.listen.clone(),
        ..ServerConfig::default()
    };
    assert_eq!(format!("{config:#?}"), format!("{expect:#?}"));
}

#[test]
fn every_key_and_every_limit_is_in_the_file() {
    let text = packaged();
    let named: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| commented(l).map(|(key, _)| key).or_else(|| set_key(l)))
        .collect();
    for spec in limits_table() {
        assert!(
            text.lines()
                .any(|l| commented(l).is_some_and(|(key, _)| key == spec.name)),
            "packaging/ringmx.toml has no `# {} = ...` line",
            spec.name
        );
    }
    // Every field of the configuration is a key of the file, under its own name: a new key in
    // src/config.rs shows up here until the file has it.
    for field in debug_fields(&ServerConfig::default()) {
        assert!(
            named.contains(field.as_str()),
            "packaging/ringmx.toml does not mention `{field}`"
        );
    }
}
