//! The fast path of [`super::parse_event`]: a scanner for the fixed event schema.
//!
//! It answers only when it is certain of the answer, and only with an accepted event: `None`
//! means "ask the reference parser", which then decides everything, including every rejection
//! and its detail. So the scanner never has to reproduce serde_json's error messages, only to
//! be sure that what it accepts the reference accepts with the same fields. For that it is at
//! least as strict as serde_json 1.0's grammar everywhere, and gives up on:
//! - any syntax it does not recognise, including what serde_json would accept (it is then only
//!   slower, never different);
//! - escapes in keys or in the strings it returns (the reference then decodes them into an owned
//!   string; without escapes both borrow the same bytes);
//! - a known field holding a value of another type, or a value the reference would treat
//!   specially (`null`, a negative, fractional or 19+ digit `ts`, a non-finite `amount`): the
//!   reference reads every occurrence of a duplicated known field, so each one must be of an
//!   accepted form, not only the last;
//! - input with a non-ASCII byte that is not valid UTF-8 as a whole (serde_json checks UTF-8 in
//!   keys and returned strings; checking everything is stricter, and ASCII input needs no check);
//! - containers nested deeper than 64 (a fixed-size stack; serde_json skips unknown values at
//!   any depth).
//!
//! Values then go through the same checks as [`super::validate`]: the same length bounds, the
//! same [`time::parse_rfc3339`], the same `str::parse::<f64>` on the same number text.

use std::borrow::Cow;

use super::{ActivityEvent, MAX_EVENT_TYPE_BYTES, MAX_TS, MAX_USER_ID_BYTES, MIN_TS};
use crate::time::{self, Millis};

/// Deepest nesting of an unknown field's value the scanner follows (one bit per level).
const MAX_DEPTH: u32 = 64;
/// `ts` integers with more digits may not fit an `i64`; the reference reads those as floats.
const MAX_TS_DIGITS: usize = 18;

enum RawTs<'a> {
    Int(Millis),
    Str(&'a [u8]),
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    /// A byte >= 0x80 was seen inside a string: the whole input must then be valid UTF-8.
    non_ascii: bool,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// JSON whitespace, as serde_json skips it (no other Unicode spaces, no BOM).
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        if self.peek()? == c {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.b.get(self.i..self.i + word.len())? == word {
            self.i += word.len();
            Some(())
        } else {
            None
        }
    }

    /// The content of a string whose opening quote is consumed, if it has no escapes.
    fn plain_str(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        loop {
            let c = *self.b.get(self.i)?;
            self.i += 1;
            match c {
                b'"' => return self.b.get(start..self.i - 1),
                b'\\' | 0..=0x1f => return None,
                0x80.. => self.non_ascii = true,
                _ => {}
            }
        }
    }

    /// Skips a string whose opening quote is consumed, escapes allowed as serde_json allows them
    /// in a value it ignores: the usual one-letter escapes and `\u` with four hex digits (any
    /// code unit, as serde_json does not check surrogates in ignored strings).
    fn skip_str(&mut self) -> Option<()> {
        loop {
            let c = *self.b.get(self.i)?;
            self.i += 1;
            match c {
                b'"' => return Some(()),
                b'\\' => match *self.b.get(self.i)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
                    b'u' => {
                        let hex = self.b.get(self.i + 1..self.i + 5)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        self.i += 5;
                    }
                    _ => return None,
                },
                0..=0x1f => return None,
                0x80.. => self.non_ascii = true,
                _ => {}
            }
        }
    }

    /// One or more ASCII digits.
    fn digits(&mut self) -> Option<()> {
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return None;
        }
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        Some(())
    }

    /// A number in JSON's grammar (`-? (0 | [1-9][0-9]*) (.[0-9]+)? ([eE][+-]?[0-9]+)?`): its text,
    /// and whether it is a plain non-negative integer (no sign, fraction or exponent).
    fn number(&mut self) -> Option<(&'a [u8], bool)> {
        let start = self.i;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits()?,
            _ => return None,
        }
        let mut plain = !negative;
        if self.peek() == Some(b'.') {
            plain = false;
            self.i += 1;
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            plain = false;
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.digits()?;
        }
        Some((self.b.get(start..self.i)?, plain))
    }

    /// `"key"` then `:`, in an object being skipped.
    fn skip_key(&mut self) -> Option<()> {
        self.eat(b'"')?;
        self.skip_str()?;
        self.ws();
        self.eat(b':')
    }

    /// Skips any JSON value, iteratively: `stack` holds one bit per open container (1 for an
    /// object), so nesting costs no recursion.
    fn skip_value(&mut self) -> Option<()> {
        let mut stack: u64 = 0;
        let mut depth: u32 = 0;
        loop {
            self.ws();
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    self.skip_str()?;
                }
                b'-' | b'0'..=b'9' => {
                    self.number()?;
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                open @ (b'[' | b'{') => {
                    self.i += 1;
                    if depth == MAX_DEPTH {
                        return None;
                    }
                    let is_object = open == b'{';
                    self.ws();
                    let close = if is_object { b'}' } else { b']' };
                    if self.peek()? == close {
                        // An empty container is a complete value, like a scalar.
                        self.i += 1;
                    } else {
                        stack = (stack << 1) | u64::from(is_object);
                        depth += 1;
                        if is_object {
                            self.skip_key()?;
                        }
                        continue;
                    }
                }
                _ => return None,
            }
            // After a complete value: close finished containers, or go on after a comma.
            loop {
                if depth == 0 {
                    return Some(());
                }
                self.ws();
                let in_object = stack & 1 == 1;
                match self.peek()? {
                    b',' => {
                        self.i += 1;
                        if in_object {
                            self.ws();
                            self.skip_key()?;
                        }
                        break;
                    }
                    b'}' if in_object => {}
                    b']' if !in_object => {}
                    _ => return None,
                }
                self.i += 1;
                stack >>= 1;
                depth -= 1;
            }
        }
    }
}

/// Decimal digits (at most [`MAX_TS_DIGITS`], so no overflow) to their value.
fn small_int(digits: &[u8]) -> Option<i64> {
    if digits.len() > MAX_TS_DIGITS {
        return None;
    }
    Some(digits.iter().fold(0i64, |v, d| v * 10 + i64::from(d - b'0')))
}

fn valid_str(s: &[u8], max_len: usize) -> Option<&str> {
    if s.is_empty() || s.len() > max_len {
        return None;
    }
    std::str::from_utf8(s).ok()
}

/// The event in `bytes` if it is certainly valid and the reference parser would return exactly
/// it; `None` otherwise (see the module comment).
pub(super) fn scan(bytes: &[u8]) -> Option<ActivityEvent<'_>> {
    let mut s = Scanner { b: bytes, i: 0, non_ascii: false };
    let mut user_id = None;
    let mut event_type = None;
    let mut ts = None;
    let mut amount = None;
    s.ws();
    s.eat(b'{')?;
    s.ws();
    if s.peek()? != b'}' {
        loop {
            s.eat(b'"')?;
            let key = s.plain_str()?;
            s.ws();
            s.eat(b':')?;
            s.ws();
            match key {
                b"user_id" => {
                    s.eat(b'"')?;
                    user_id = Some(s.plain_str()?);
                }
                b"event_type" => {
                    s.eat(b'"')?;
                    event_type = Some(s.plain_str()?);
                }
                b"ts" => {
                    ts = Some(if s.peek()? == b'"' {
                        s.i += 1;
                        RawTs::Str(s.plain_str()?)
                    } else {
                        match s.number()? {
                            (digits, true) => RawTs::Int(small_int(digits)?),
                            (_, false) => return None,
                        }
                    });
                }
                b"amount" => {
                    // `null` is the same as no amount, also when it overrides an earlier one.
                    amount = if s.peek()? == b'n' {
                        s.literal(b"null")?;
                        None
                    } else {
                        Some(s.number()?.0)
                    };
                }
                _ => s.skip_value()?,
            }
            s.ws();
            match s.peek()? {
                b',' => {
                    s.i += 1;
                    s.ws();
                }
                b'}' => break,
                _ => return None,
            }
        }
    }
    s.i += 1;
    s.ws();
    if s.i != bytes.len() {
        return None;
    }
    if s.non_ascii {
        std::str::from_utf8(bytes).ok()?;
    }

    let user_id = valid_str(user_id?, MAX_USER_ID_BYTES)?;
    let event_type = valid_str(event_type?, MAX_EVENT_TYPE_BYTES)?;
    let ts = match ts? {
        RawTs::Int(ms) => ms,
        RawTs::Str(text) => time::parse_rfc3339(std::str::from_utf8(text).ok()?)?,
    };
    if !(MIN_TS..MAX_TS).contains(&ts) {
        return None;
    }
    let amount = match amount {
        None => None,
        Some(text) => {
            let f = std::str::from_utf8(text).ok()?.parse::<f64>().ok()?;
            if !f.is_finite() {
                return None;
            }
            Some(f)
        }
    };
    Some(ActivityEvent { user_id: Cow::Borrowed(user_id), event_type: Cow::Borrowed(event_type), ts, amount })
}
