//! Fuzzes the PROXY header parser alone: no panic, a header never longer than its input, and every prefix's answer holding for the whole (a `Complete` the same, an error the same error).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmx::proxy::{parse, Parsed};

fuzz_target!(|data: &[u8]| {
    // The first octet picks the cap, so that small caps meet v2 lengths the fuzzer can reach.
    let Some((&knob, input)) = data.split_first() else {
        return;
    };
    let max_v2 = if knob == 0xff {
        16 + 65535
    } else {
        usize::from(knob)
    };
    let whole = parse(input, max_v2);
    if let Ok(Parsed::Complete { len, .. }) = whole {
        assert!(len <= input.len(), "a header longer than its input");
    }
    for k in 0..input.len() {
        match parse(&input[..k], max_v2) {
            Ok(Parsed::Incomplete) => {}
            decided => assert_eq!(decided, whole, "prefix {k} decided otherwise"),
        }
    }
});
