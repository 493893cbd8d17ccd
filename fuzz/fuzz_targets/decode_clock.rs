//! `decode_clock` (and `kind_of`) on arbitrary bytes, against four shapes: never panics, and a
//! clock record it accepts survives a round trip through `encode_clock`.
//!
//! Input: a shape selector byte, then the value.
#![no_main]

use churnguard::state::codec::{decode_clock, encode_clock, kind_of, Kind};
use churnguard_fuzz::{shape, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let shape = shape(input.byte());
    let value = input.rest();
    let kind = kind_of(value);
    let Ok((clock, offset)) = decode_clock(value, &shape) else {
        return;
    };
    assert_eq!(kind, Ok(Kind::Clock));
    let mut again = Vec::new();
    encode_clock(&mut again, &shape, &clock, offset);
    match decode_clock(&again, &shape) {
        Ok(back) => assert_eq!(back, (clock, offset), "round trip changed the clock record"),
        Err(e) => panic!("a re-encoded clock record does not decode: {e}\n{clock:?}"),
    }
});
