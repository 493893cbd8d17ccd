//! The fast event parser against the serde_json reference: on random valid events, on random
//! mutations of them, and on arbitrary bytes, `parse_event` must return exactly what
//! `parse_event_reference` returns (the same event, borrowed where it borrows, or the same reason
//! and detail), and whatever the scanner alone accepts must be the reference's event.

use std::borrow::Cow;

use churnguard::event::{
    parse_event, parse_event_fast, parse_event_reference, ActivityEvent, Rejection, DEFAULT_MAX_EVENT_BYTES, MAX_TS,
};
use proptest::prelude::*;
use proptest::sample::select;

// The variant is the point here, so a `&str` would not do.
#[allow(clippy::ptr_arg)]
fn borrowed(c: &Cow<'_, str>) -> bool {
    matches!(c, Cow::Borrowed(_))
}

/// Equal as values, and alike where `==` does not look: borrowed or owned strings, the sign of a
/// zero amount.
fn same(a: &Result<ActivityEvent<'_>, Rejection>, b: &Result<ActivityEvent<'_>, Rejection>) -> bool {
    match (a, b) {
        (Ok(x), Ok(y)) => {
            x == y
                && borrowed(&x.user_id) == borrowed(&y.user_id)
                && borrowed(&x.event_type) == borrowed(&y.event_type)
                && x.amount.map(f64::to_bits) == y.amount.map(f64::to_bits)
        }
        (Err(x), Err(y)) => x == y,
        _ => false,
    }
}

/// Checks one input at a size limit; `Ok(true)` when the scanner alone accepted it.
fn check(input: &[u8], max: usize) -> Result<bool, TestCaseError> {
    let fast = parse_event(input, max);
    let reference = parse_event_reference(input, max);
    prop_assert!(
        same(&fast, &reference),
        "input {:?}\n fast:      {fast:?}\n reference: {reference:?}",
        String::from_utf8_lossy(input)
    );
    let scanned = parse_event_fast(input);
    if let Some(ev) = &scanned {
        let reference = parse_event_reference(input, usize::MAX);
        prop_assert!(
            same(&Ok(ev.clone()), &reference),
            "the scanner accepted {:?} as {ev:?}, the reference gives {reference:?}",
            String::from_utf8_lossy(input)
        );
    }
    Ok(scanned.is_some())
}

/// A JSON string literal for `s`, each character written raw or as a `\u` escape (UTF-16 code
/// units, so surrogate pairs beyond the BMP) as the bits of `escapes` say; quotes, backslashes
/// and control characters are always escaped, in either of their spellings.
fn json_str(s: &str, escapes: u64) -> String {
    let mut out = String::from("\"");
    for (i, c) in s.chars().enumerate() {
        let escape = (escapes >> (i % 64)) & 1 == 1;
        match c {
            '"' if !escape => out.push_str("\\\""),
            '\\' if !escape => out.push_str("\\\\"),
            '\n' if !escape => out.push_str("\\n"),
            c if escape || (c as u32) < 0x20 => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Strings as producers send them: mostly plain ids, sometimes any Unicode, quotes and
/// backslashes, and sometimes with escapes.
fn string_value(max_chars: usize) -> impl Strategy<Value = String> {
    let text = prop_oneof![
        8 => "[a-zA-Z0-9_.@:-]{1,24}".boxed(),
        2 => proptest::string::string_regex(&format!("\\PC{{0,{max_chars}}}")).expect("regex").boxed(),
        1 => "[\"\\\\/\\x00-\\x1f é€😀]{0,8}".boxed(),
    ];
    let escapes = prop_oneof![8 => Just(0u64), 1 => any::<u64>()];
    (text, escapes).prop_map(|(t, e)| json_str(&t, e))
}

fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| f.to_string()),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:e}")),
        (-400i32..400, 0u32..1000).prop_map(|(e, m)| format!("{m}.5E{e:+}")),
        select(vec!["0", "-0", "1e400", "-1e400", "1e-400", "123456789012345678901234567890", "0.0", "1E+2"])
            .prop_map(str::to_string),
    ]
}

/// Any JSON value, nested up to a few levels, with escapes in strings and keys.
fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        select(vec!["null", "true", "false", "[]", "{}"]).prop_map(str::to_string),
        number_text(),
        string_value(12),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(|v| format!("[{}]", v.join(","))),
            proptest::collection::vec((string_value(8), inner), 0..5).prop_map(|kv| {
                let body: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{{{}}}", body.join(", "))
            }),
        ]
    })
}

fn ts_value() -> impl Strategy<Value = String> {
    let rfc = |ms: i64| {
        let mut v = Vec::new();
        churnguard::time::write_rfc3339_ms(&mut v, ms);
        String::from_utf8_lossy(&v).into_owned()
    };
    prop_oneof![
        4 => (0..MAX_TS).prop_map(|ms| ms.to_string()),
        4 => (0..MAX_TS).prop_map(move |ms| format!("\"{}\"", rfc(ms))),
        1 => (0..MAX_TS).prop_map(move |ms| format!("\"{}Z\"", &rfc(ms)[..19])),
        1 => (0..MAX_TS, select(vec!["+02:00", "-05:30", "+00:00"]))
            .prop_map(move |(ms, off)| format!("\"{}{off}\"", &rfc(ms)[..23])),
        1 => (0..MAX_TS).prop_map(move |ms| format!("\"{}\"", rfc(ms).replace('T', "t"))),
        1 => any::<i64>().prop_map(|ms| ms.to_string()),
        1 => (MAX_TS - 5..MAX_TS + 5).prop_map(|ms| ms.to_string()),
        1 => number_text(),
        1 => json_value(),
    ]
}

fn amount_value() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => number_text(),
        1 => Just("null".to_string()),
        1 => select(vec!["\"NaN\"", "\"Infinity\"", "\" -inf \"", "\"12\"", "NaN"]).prop_map(str::to_string),
        1 => json_value(),
    ]
}

/// JSON whitespace between tokens, usually none.
fn ws() -> impl Strategy<Value = String> {
    prop_oneof![6 => Just(String::new()), 1 => "[ \t\r\n]{1,3}"]
}

/// Field text of an event: a string mostly, sometimes another type.
fn required(max_chars: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        12 => string_value(max_chars).boxed(),
        1 => Just("\"\"".to_string()).boxed(),
        1 => json_value().boxed(),
    ]
}

/// Names of extra top-level fields: mostly plain, sometimes escaped (which the scanner leaves to
/// the reference, as an escape could spell a known name).
fn extra_key() -> impl Strategy<Value = String> {
    prop_oneof![8 => "\"[a-z_]{1,12}\"".boxed(), 1 => string_value(10).boxed()]
}

/// A serialized event: the known fields (each occasionally missing), extra fields with nested
/// values, in random order, with random whitespace.
fn event() -> impl Strategy<Value = String> {
    let extras = proptest::collection::vec((extra_key(), json_value()), 0..4);
    (
        proptest::option::weighted(0.97, required(300)),
        proptest::option::weighted(0.97, required(140)),
        proptest::option::weighted(0.97, ts_value()),
        proptest::option::of(amount_value()),
        extras,
        proptest::collection::vec(ws(), 8),
    )
        .prop_flat_map(|(user, ty, ts, amount, extras, spaces)| {
            let mut fields: Vec<(String, String)> = Vec::new();
            for (k, v) in [("user_id", user), ("event_type", ty), ("ts", ts), ("amount", amount)] {
                if let Some(v) = v {
                    fields.push((format!("\"{k}\""), v));
                }
            }
            fields.extend(extras);
            (Just(fields).prop_shuffle(), Just(spaces))
        })
        .prop_map(|(fields, s)| {
            let body: Vec<String> =
                fields.iter().map(|(k, v)| format!("{}{k}{}:{}{v}{}", s[0], s[1], s[2], s[3])).collect();
            format!("{}{{{}{}}}{}", s[4], body.join(&format!(",{}", s[5])), s[6], s[7])
        })
}

/// Values that a known field may be given a second time.
const ODD_VALUES: &[&str] = &[
    "null",
    "1e400",
    "-1",
    "1.5",
    "12345678901234567890",
    "[]",
    "{}",
    "{\"a\":[1,{}]}",
    "\"\"",
    "\"\\u00e9\"",
    "\"\\ud800\"",
    "true",
    "\"NaN\"",
    "\"x\"",
    "0",
    "1767225601500",
    "\"2026-01-01T00:00:00Z\"",
    "-0",
    "01",
    "1.",
    "\"\\u0075\"",
    "\"\u{7f}\"",
];
const KEYS: &[&str] = &["user_id", "event_type", "ts", "amount", "user\\u005fid", "other"];

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Xor(usize, u8),
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize, usize),
    /// A known (or escaped, or unknown) key with an odd value, first or last.
    Duplicate {
        key: usize,
        value: usize,
        last: bool,
    },
    Wrap(Vec<u8>, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let garbage = proptest::collection::vec(
        select(vec![b' ', b'\n', b'x', b',', b'}', b']', b'{', b'"', 0, 0xef, 0xbb, 0xbf, 0xff, b'0']),
        0..3,
    );
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Mutation::Xor(i, x)),
        (any::<usize>(), select(b"{}[]\":,\\ 0-eE.nutl\x00\x80\xff".to_vec())).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), 1usize..4).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (0..KEYS.len(), 0..ODD_VALUES.len(), any::<bool>()).prop_map(|(key, value, last)| Mutation::Duplicate {
            key,
            value,
            last
        }),
        (garbage.clone(), garbage).prop_map(|(a, b)| Mutation::Wrap(a, b)),
    ]
}

fn mutate(input: &[u8], m: &Mutation) -> Vec<u8> {
    let mut b = input.to_vec();
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
    match m {
        Mutation::Truncate(i) => b.truncate(i % (b.len() + 1)),
        Mutation::Xor(i, x) => {
            let i = at(*i, b.len());
            if let Some(c) = b.get_mut(i) {
                *c ^= x;
            }
        }
        Mutation::Set(i, v) => {
            let i = at(*i, b.len());
            if let Some(c) = b.get_mut(i) {
                *c = *v;
            }
        }
        Mutation::Insert(i, v) => b.insert(i % (b.len() + 1), *v),
        Mutation::Delete(i, n) => {
            let i = at(*i, b.len());
            b.drain(i..(i + n).min(b.len()));
        }
        Mutation::Duplicate { key, value, last } => {
            let field = format!("\"{}\":{}", KEYS[*key], ODD_VALUES[*value]);
            if *last {
                if let Some(end) = b.iter().rposition(|&c| c == b'}') {
                    b.splice(end..end, format!(",{field}").into_bytes());
                }
            } else if let Some(start) = b.iter().position(|&c| c == b'{') {
                b.splice(start + 1..start + 1, format!("{field},").into_bytes());
            }
        }
        Mutation::Wrap(pre, post) => {
            b.splice(0..0, pre.iter().copied());
            b.extend_from_slice(post);
        }
    }
    b
}

/// A size limit: usually the default, sometimes one the input may exceed.
fn max_bytes() -> impl Strategy<Value = usize> {
    prop_oneof![8 => Just(DEFAULT_MAX_EVENT_BYTES), 1 => 0usize..400]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn valid_events_parse_the_same(text in event(), max in max_bytes()) {
        check(text.as_bytes(), max)?;
    }

    #[test]
    fn mutated_events_parse_the_same(text in event(), ms in proptest::collection::vec(mutation(), 1..4)) {
        let mut b = text.into_bytes();
        for m in &ms {
            b = mutate(&b, m);
            check(&b, DEFAULT_MAX_EVENT_BYTES)?;
        }
    }

    #[test]
    fn arbitrary_bytes_parse_the_same(b in proptest::collection::vec(any::<u8>(), 0..160)) {
        check(&b, DEFAULT_MAX_EVENT_BYTES)?;
    }

    /// Bytes from JSON's alphabet after a valid start, so that most inputs get deep into an
    /// object before they break.
    #[test]
    fn json_like_bytes_parse_the_same(
        start in select(vec![
            "", "{", "{\"user_id\":\"u1\",", "{\"user_id\":\"u1\",\"event_type\":\"login\",",
            "{\"user_id\":\"u1\",\"event_type\":\"login\",\"ts\":1767225601500,",
            "{\"user_id\":\"u1\",\"event_type\":\"login\",\"ts\":",
        ]),
        // Short tails often, so that some inputs end an object where it could end.
        tail_len in prop_oneof![0usize..6, 0usize..48],
        tail_bytes in proptest::collection::vec(select(b"{}[]\":, \t0123456789-+.eEtrufalsnu\\_idvypm".to_vec()), 48),
    ) {
        let mut b = start.as_bytes().to_vec();
        b.extend_from_slice(&tail_bytes[..tail_len]);
        check(&b, DEFAULT_MAX_EVENT_BYTES)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_truncation_parses_the_same(text in event()) {
        let b = text.as_bytes();
        for end in 0..=b.len() {
            check(&b[..end], DEFAULT_MAX_EVENT_BYTES)?;
        }
    }
}

/// The scanner must take the common shape itself, or the properties above would hold trivially
/// (and the fast path would not be fast): plain events in every spelling the generators use.
#[test]
fn the_scanner_accepts_plain_events_in_every_layout() {
    let plain = [
        r#"{"user_id":"u0000042","event_type":"purchase","ts":"2026-03-01T10:05:00.000Z","amount":23.99}"#,
        r#"{"user_id":"u1","event_type":"login","ts":1767225601500}"#,
        r#"{"ts":"2026-03-01T10:05:00Z","event_type":"login","user_id":"ü"}"#,
        r#" { "user_id" : "u1" , "event_type" : "login" , "ts" : 0 , "amount" : null } "#,
        r#"{"user_id":"u1","event_type":"login","ts":1767225601500,"properties":{"a":[1,{"b":"c\"\u00e9"}],"d":{}},"x":[]}"#,
        r#"{"user_id":"u1","event_type":"refund","ts":"2026-03-01T10:05:00+02:00","amount":-1.5e2}"#,
        r#"{"user_id":"x","user_id":"u2","event_type":"login","ts":"2026-03-01T10:05:00Z","ts":5,"amount":1,"amount":null}"#,
    ];
    for text in plain {
        let fast = parse_event_fast(text.as_bytes()).expect(text);
        let reference = parse_event_reference(text.as_bytes(), DEFAULT_MAX_EVENT_BYTES);
        assert!(same(&Ok(fast), &reference), "{text}");
    }
    let dup = parse_event_fast(plain[6].as_bytes());
    assert_eq!(dup.map(|e| (e.user_id.into_owned(), e.ts, e.amount)), Some(("u2".to_string(), 5, None)));
}

/// Every generated valid event without a backslash must go through the scanner alone, or the
/// properties above could hold trivially. (With escapes it may defer: an escaped key or returned
/// string is left to the reference.)
#[test]
fn the_scanner_takes_every_generated_valid_event_without_escapes() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = event();
    let (mut plain, mut escaped, mut escaped_scanned) = (0usize, 0usize, 0usize);
    for _ in 0..2_000 {
        let text = strategy.new_tree(&mut runner).expect("generate").current();
        if parse_event_reference(text.as_bytes(), DEFAULT_MAX_EVENT_BYTES).is_err() {
            continue;
        }
        let scanned = parse_event_fast(text.as_bytes()).is_some();
        if text.contains('\\') {
            escaped += 1;
            escaped_scanned += usize::from(scanned);
        } else {
            plain += 1;
            assert!(scanned, "the scanner deferred a plain valid event: {text}");
        }
    }
    eprintln!("{plain} plain valid events, all scanned; {escaped_scanned} of {escaped} with escapes scanned");
    assert!(plain >= 100, "only {plain} plain valid events generated");
}

/// Every odd value under every key, before and after the same field in a valid event: the
/// cases where the last occurrence decides but every occurrence must be readable, and
/// escapes in ignored strings that serde_json accepts or rejects.
#[test]
fn odd_values_under_every_key_parse_the_same() {
    let bases = [
        r#"{"user_id":"u1","event_type":"login","ts":1767225601500}"#,
        r#"{"user_id":"u1","event_type":"purchase","ts":"2026-01-01T00:00:00Z","amount":2.5}"#,
    ];
    let ignored_strings = ["\"\\q\"", "\"\\u12g4\"", "\"\\ud800\"", "\"\\\"\"", "\"a\u{1}b\"", "\"\\u00"];
    for base in bases {
        for key in KEYS {
            for value in ODD_VALUES.iter().chain(&ignored_strings) {
                for (before, after) in [(format!("{{\"{key}\":{value},"), "}"), ("{".to_string(), "")] {
                    let text = if after.is_empty() {
                        format!("{}{},\"{key}\":{value}}}", before, &base[1..base.len() - 1])
                    } else {
                        format!("{before}{}", &base[1..])
                    };
                    let r = check(text.as_bytes(), DEFAULT_MAX_EVENT_BYTES);
                    assert!(r.is_ok(), "{r:?}");
                }
            }
        }
    }
}
