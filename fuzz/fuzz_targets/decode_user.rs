//! `decode_user` (and `kind_of`) on arbitrary bytes, against four shapes: never panics, and a
//! record it accepts survives a round trip. Re-encoding what was decoded and decoding that again
//! must give the same record, so no accepted encoding loses or invents data.
//!
//! Input: a shape selector byte, a key length byte, the key, then the value.
#![no_main]

use churnguard::engine::UserRecord;
use churnguard::state::codec::{decode_user, encode_user, kind_of, Kind};
use churnguard_fuzz::{same_record, shape, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let shape = shape(input.byte());
    let key_len = input.byte();
    let key = input.take(key_len.into());
    let value = input.rest();
    let _ = kind_of(value);

    // A record that held another user with other lengths: decoding reuses its buffers.
    let mut reused =
        UserRecord { user_id: "stale".into(), narrow: vec![7; 3], wide: vec![9; 50], ..Default::default() };
    let mut fresh = UserRecord::default();
    let ok = decode_user(key, value, &shape, &mut fresh).is_ok();
    assert_eq!(ok, decode_user(key, value, &shape, &mut reused).is_ok());
    if !ok {
        return;
    }
    assert!(same_record(&fresh, &reused), "decoding into a used record differs: {fresh:?} != {reused:?}");
    assert_eq!(kind_of(value), Ok(Kind::User));
    assert_eq!(fresh.user_id.as_bytes(), key);
    assert_eq!((fresh.narrow.len(), fresh.wide.len()), (shape.narrow, shape.wide));

    let mut again = Vec::new();
    encode_user(&mut again, &shape, &fresh.view());
    let mut back = UserRecord::default();
    if let Err(e) = decode_user(key, &again, &shape, &mut back) {
        panic!("a re-encoded record does not decode: {e}\n{fresh:?}");
    }
    assert!(same_record(&fresh, &back), "round trip changed the record: {fresh:?} != {back:?}");
});
