//! Fuzzes the configuration file as `ringmx serve --config` and `ringmx check` read it (parse, then validate): an error names a key the file may hold, and a configuration that parses prints as TOML that reads back to the same configuration with the same verdict.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmx::config::{all_keys, changed_keys, to_toml, ServerConfig};
use std::sync::OnceLock;

/// Every key a file may hold, computed once (`all_keys` allocates its names).
fn keys() -> &'static [&'static str] {
    static KEYS: OnceLock<Vec<&'static str>> = OnceLock::new();
    KEYS.get_or_init(all_keys)
}

fuzz_target!(|data: &[u8]| {
    // The file is read with `read_to_string`: octets that are not UTF-8 never reach the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match ServerConfig::from_toml(text) {
        Ok(config) => config,
        Err(e) => {
            assert!(!e.trim().is_empty(), "a refusal without a reason");
            return;
        }
    };
    let verdict = config.validate();
    if let Err(e) = &verdict {
        assert!(
            keys().contains(&e.key()),
            "an error about `{}`, which is no key",
            e.key()
        );
        assert!(
            e.to_string().contains(e.key()),
            "the message does not name its key: {e}"
        );
    }
    // `ringmx check` prints the effective configuration: read back, it is the same one.
    let printed = to_toml(&config);
    let again = ServerConfig::from_toml(&printed)
        .unwrap_or_else(|e| panic!("the printed configuration does not read back: {e}\n{printed}"));
    let changed = changed_keys(&config, &again);
    assert!(changed.is_empty(), "printing changed {changed:?}:\n{printed}");
    assert_eq!(
        again.validate(),
        verdict,
        "printing changed the verdict:\n{printed}"
    );
    assert_eq!(to_toml(&again), printed, "printing is not stable");
});
