//! Fuzzes the DATA receiver alone: any split finds the same end of data and the same content, and the content never holds the end-of-data line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmx::config::BareLf;
use ringmx::proto::{DataReceiver, Flaw};

fn run(input: &[u8], step: usize) -> (Vec<u8>, usize, bool, Option<Flaw>) {
    let mut receiver = DataReceiver::new(1000, 1 << 20, BareLf::Normalize);
    let mut out = Vec::new();
    let (mut pos, mut end) = (0, 0);
    while pos < input.len() {
        end = end.max(pos + step).min(input.len());
        let fed = receiver.feed(&input[pos..end]);
        assert!(fed.consumed > 0 || fed.body.is_empty(), "content without consumption");
        for piece in fed.body.pieces() {
            out.extend_from_slice(piece);
        }
        pos += fed.consumed;
        if fed.done {
            return finish(out, pos, true, receiver.flaw());
        }
        if fed.consumed == 0 {
            if end == input.len() {
                break;
            }
            end += step;
        }
    }
    finish(out, pos, false, receiver.flaw())
}

/// Content handed out before a flaw showed depends on the split, and a flawed message is
/// discarded whole: only a clean message's content is compared.
fn finish(out: Vec<u8>, pos: usize, done: bool, flaw: Option<Flaw>) -> (Vec<u8>, usize, bool, Option<Flaw>) {
    (if flaw.is_none() { out } else { Vec::new() }, pos, done, flaw)
}

fuzz_target!(|data: &[u8]| {
    let Some((&knob, input)) = data.split_first() else { return };
    let whole = run(input, input.len().max(1));
    let split = run(input, usize::from(knob) + 1);
    assert_eq!(whole, split);
    let (content, consumed, done, _) = whole;
    if done {
        assert!(input[..consumed].ends_with(b"\r\n.\r\n") || consumed == 3);
        // Normalized content has no bare LF, so nothing downstream can see an end of data in it.
        assert!(!content.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
        assert!(content.first() != Some(&b'\n'));
    }
});
