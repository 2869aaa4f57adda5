//! Fuzzes the parser of the next hop's replies: no panic, a reply never longer than its input, the bounds held, and every prefix's answer holding for the whole (a complete reply the same, an error the same error).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmx::delivery::reply::{parse, Bounds};

fuzz_target!(|data: &[u8]| {
    // The first octet picks the bounds, so small ones meet inputs the fuzzer can reach.
    let Some((&knob, input)) = data.split_first() else {
        return;
    };
    let bounds = Bounds {
        line_max: 8 + usize::from(knob & 0x3f) * 8,
        lines_max: 1 + usize::from(knob >> 6) * 4,
    };
    let whole = parse(input, bounds);
    if let Ok(Some((reply, used))) = &whole {
        assert!(*used <= input.len(), "a reply longer than its input");
        assert!((200..600).contains(&reply.code));
        assert!(reply.text.lines().count() <= bounds.lines_max);
    }
    for k in 0..input.len() {
        match parse(&input[..k], bounds) {
            Ok(None) => {}
            decided => assert_eq!(decided, whole, "prefix {k} decided otherwise"),
        }
    }
});
