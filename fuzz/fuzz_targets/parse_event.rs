//! `parse_event` on arbitrary bytes: never panics, and what it accepts is within the limits the
//! rest of the service relies on (id and type lengths, the time range, a finite amount).
#![no_main]

use churnguard::event::{
    parse_event, RejectReason, DEFAULT_MAX_EVENT_BYTES, MAX_EVENT_TYPE_BYTES, MAX_TS, MAX_USER_ID_BYTES, MIN_TS,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_event(data, DEFAULT_MAX_EVENT_BYTES) {
        Ok(ev) => {
            assert!((1..=MAX_USER_ID_BYTES).contains(&ev.user_id.len()), "user_id of {} bytes", ev.user_id.len());
            assert!(
                (1..=MAX_EVENT_TYPE_BYTES).contains(&ev.event_type.len()),
                "event_type of {} bytes",
                ev.event_type.len()
            );
            assert!((MIN_TS..MAX_TS).contains(&ev.ts), "ts {}", ev.ts);
            assert!(ev.amount.is_none_or(f64::is_finite), "amount {:?}", ev.amount);
        }
        Err(r) => assert!(RejectReason::ALL.contains(&r.reason)),
    }
    // The size limit comes first, whatever the content.
    if let Some(limit) = data.len().checked_sub(1) {
        let r = parse_event(data, limit).map(|_| ()).map_err(|r| r.reason);
        assert_eq!(r, Err(RejectReason::TooLarge));
    }
});
