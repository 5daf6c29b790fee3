//! A fast path for projected parsing ([`super::parse_document_fields`]): a strict JSON
//! scanner walks a flat object, validates and skips the values of unwanted fields
//! without building anything, and hands only the wanted values to the full parser.
//!
//! It gives up (returns `None`) on anything unusual — an escaped key, nesting deeper than
//! serde_json allows, any syntax error — and the caller then parses the text with
//! serde_json, which produces the same result or the proper error message. So the fast
//! path never accepts what the full parser would reject: every value it skips is checked
//! against the JSON grammar.

use super::extjson::parse_value;
use super::{Document, Str, Value};

/// serde_json's nesting limit; deeper input goes to the full parser (and its error).
const MAX_DEPTH: usize = 128;

/// Reads the wanted top-level fields of the object in `text` into `doc` (cleared by the
/// caller). `None`: use the full parser instead.
pub(super) fn scan_fields_into(text: &str, fields: &[Str], doc: &mut Document) -> Option<()> {
    // Names are compared as byte slices taken out of their `Str`s once per document
    // (reading a `Str`'s bytes branches on its representation). A mask of the wanted
    // names' lengths rejects most keys with one test.
    const CACHED: usize = 8;
    let same = |f: &[u8], k: &[u8]| f.len() == k.len() && f.first() == k.first() && f == k;
    if fields.len() > CACHED {
        return scan_with(text, fields, doc, u64::MAX, |k| {
            fields.iter().position(|f| same(f.as_bytes(), k))
        });
    }
    let mut names: [&[u8]; CACHED] = [&[]; CACHED];
    let mut lengths = 0u64;
    for (slot, f) in names.iter_mut().zip(fields) {
        *slot = f.as_bytes();
        lengths |= length_bit(slot.len());
    }
    let names = &names[..fields.len()];
    scan_with(text, fields, doc, lengths, |k| {
        names.iter().position(|f| same(f, k))
    })
}

/// The bit standing for a name length in a length mask (lengths of 63 and more share one).
fn length_bit(len: usize) -> u64 {
    1 << len.min(63)
}

/// [`scan_fields_into`] with `wanted` giving the index in `fields` of a key whose length
/// is in the `lengths` mask.
fn scan_with(
    text: &str,
    fields: &[Str],
    doc: &mut Document,
    lengths: u64,
    wanted: impl Fn(&[u8]) -> Option<usize>,
) -> Option<()> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return (skip_ws(b, i + 1) == b.len()).then_some(());
    }
    // Fields already read (bit i for `fields[i]`): a repeated key replaces the earlier
    // value (the last one wins, as in MongoDB's parsers); beyond 64 fields, look it up.
    let mut seen = 0u64;
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = plain_string_end(b, i + 1)?;
        let key = &b[i + 1..key_end];
        i = skip_ws(b, key_end + 1);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(b, i + 1);
        let wanted = match lengths & length_bit(key.len()) {
            0 => None,
            _ => wanted(key),
        };
        let end = match wanted {
            None => skip_value(b, start, 0)?,
            Some(f) => {
                let (value, end) = match scalar_at(text, start) {
                    Some(found) => found,
                    None => {
                        let end = skip_value(b, start, 0)?;
                        (parse_value(&text[start..end]).ok()?, end)
                    }
                };
                let bit = 1u64.checked_shl(f as u32).unwrap_or(0);
                if bit != 0 && seen & bit == 0 {
                    seen |= bit;
                    doc.push_unchecked(fields[f].clone(), value);
                } else {
                    doc.push_json_field(fields[f].clone(), value);
                }
                end
            }
        };
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return (skip_ws(b, i + 1) == b.len()).then_some(()),
            _ => return None,
        }
    }
}

/// The common scalars starting at `i`, read and validated in one pass (without setting
/// up a JSON deserializer), with the index just past them: strings without escapes,
/// `true`/`false`/`null`, integers of up to 18 digits, and plain decimals. Everything
/// else (`None`) goes through the full parser.
fn scalar_at(text: &str, i: usize) -> Option<(Value, usize)> {
    let b = text.as_bytes();
    match *b.get(i)? {
        b'"' => {
            let end = plain_string_end(b, i + 1)?;
            Some((Value::String(Str::from(&text[i + 1..end])), end + 1))
        }
        b't' => Some((Value::Bool(true), literal(b, i, b"true")?)),
        b'f' => Some((Value::Bool(false), literal(b, i, b"false")?)),
        b'n' => Some((Value::Null, literal(b, i, b"null")?)),
        b'{' => date_at(text, i),
        _ => number_at(b, i),
    }
}

/// Exact powers of ten as doubles (10^22 is the largest one a double holds exactly).
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// An integer of up to 18 digits or a plain decimal (no exponent) starting at `i`.
fn number_at(b: &[u8], i: usize) -> Option<(Value, usize)> {
    let end = skip_number(b, i)?;
    let (negative, digits) = match &b[i..end] {
        [b'-', rest @ ..] => (true, rest),
        raw => (false, raw),
    };
    let (mut mantissa, mut count, mut fraction, mut dot) = (0u64, 0usize, 0usize, false);
    for &c in digits {
        match c {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(c - b'0');
                count += 1;
                fraction += usize::from(dot);
                if count > 18 {
                    return None; // might overflow: the full parser decides
                }
            }
            b'.' => dot = true,
            _ => return None, // an exponent
        }
    }
    let value = if dot {
        // Both operands are exact (mantissa < 2^53, power <= 10^22), so the one
        // correctly rounded division gives the correctly rounded decimal, as
        // serde_json's `float_roundtrip` does.
        if mantissa >= 1 << 53 {
            return None;
        }
        let magnitude = mantissa as f64 / POW10[fraction];
        Value::Double(if negative { -magnitude } else { magnitude })
    } else if negative && mantissa == 0 {
        return None; // `-0`: the full parser decides
    } else {
        let n = mantissa as i64; // at most 18 digits: fits
        let n = if negative { -n } else { n };
        match i32::try_from(n) {
            Ok(i) => Value::Int32(i),
            Err(_) => Value::Int64(n),
        }
    };
    Some((value, end))
}

/// `{"$date": "<ISO-8601 string>"}` starting at `i` (an event time in relaxed Extended
/// JSON, read by windows' `timeField`), as a date; anything else is left to the full
/// parser, which reads it the same way.
fn date_at(text: &str, i: usize) -> Option<(Value, usize)> {
    let b = text.as_bytes();
    let mut j = literal(b, skip_ws(b, i + 1), b"\"$date\"")?;
    j = skip_ws(b, j);
    j = literal(b, j, b":")?;
    j = skip_ws(b, j);
    j = literal(b, j, b"\"")?;
    let end = plain_string_end(b, j)?;
    let ms = super::extjson::parse_iso_date(&text[j..end])?;
    j = skip_ws(b, end + 1);
    literal(b, j, b"}").map(|after| (Value::Date(ms), after))
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// End (the closing quote) of a string starting after its opening quote at `i`, when
/// it has no escapes; `None` for an escape, a control character or no end.
fn plain_string_end(b: &[u8], i: usize) -> Option<usize> {
    let end = i + next_special(b.get(i..)?)?;
    (b[end] == b'"').then_some(end)
}

/// Offset of the first quote, backslash or control character, eight bytes at a time
/// (SWAR): each test below flags, in the lowest flagged byte, exactly the first byte that
/// matches (borrows can only set flags above a true match), so the lowest flag is exact.
fn next_special(s: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut chunks = s.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let quote = zero_byte(w ^ (ONES * u64::from(b'"')));
        let backslash = zero_byte(w ^ (ONES * u64::from(b'\\')));
        let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH; // bytes below 0x20
        let flags = quote | backslash | control;
        if flags != 0 {
            return Some(offset + (flags.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    let rest = chunks.remainder();
    rest.iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|p| offset + p)
}

/// Index just past the JSON value starting at `i`, validating it strictly.
fn skip_value(b: &[u8], i: usize, depth: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => skip_string(b, i + 1),
        b'{' => {
            if depth >= MAX_DEPTH {
                return None;
            }
            let mut j = skip_ws(b, i + 1);
            if b.get(j) == Some(&b'}') {
                return Some(j + 1);
            }
            loop {
                if b.get(j) != Some(&b'"') {
                    return None;
                }
                j = skip_ws(b, skip_string(b, j + 1)?);
                if b.get(j) != Some(&b':') {
                    return None;
                }
                j = skip_ws(b, skip_value(b, skip_ws(b, j + 1), depth + 1)?);
                match b.get(j)? {
                    b',' => j = skip_ws(b, j + 1),
                    b'}' => return Some(j + 1),
                    _ => return None,
                }
            }
        }
        b'[' => {
            if depth >= MAX_DEPTH {
                return None;
            }
            let mut j = skip_ws(b, i + 1);
            if b.get(j) == Some(&b']') {
                return Some(j + 1);
            }
            loop {
                j = skip_ws(b, skip_value(b, j, depth + 1)?);
                match b.get(j)? {
                    b',' => j = skip_ws(b, j + 1),
                    b']' => return Some(j + 1),
                    _ => return None,
                }
            }
        }
        b't' => literal(b, i, b"true"),
        b'f' => literal(b, i, b"false"),
        b'n' => literal(b, i, b"null"),
        b'-' | b'0'..=b'9' => skip_number(b, i),
        _ => None,
    }
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    (b.get(i..i + word.len())? == word).then_some(i + word.len())
}

/// A string body after its opening quote, with escapes checked.
fn skip_string(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        i += next_special(b.get(i..)?)?;
        match b[i] {
            b'"' => return Some(i + 1),
            b'\\' => match *b.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                b'u' => {
                    let hex = b.get(i + 2..i + 6)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    // Surrogate pairs and lone surrogates: let the full parser judge.
                    if matches!(hex[0], b'd' | b'D')
                        && matches!(hex[1], b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F')
                    {
                        return None;
                    }
                    i += 6;
                }
                _ => return None,
            },
            _ => return None, // a control character
        }
    }
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
fn skip_number(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |b: &[u8], i: usize| {
        b.get(i..)
            .map_or(0, |s| s.iter().take_while(|c| c.is_ascii_digit()).count())
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i += digits(b, i),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let n = digits(b, i + 1);
        if n == 0 {
            return None;
        }
        i += 1 + n;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let n = digits(b, i);
        if n == 0 {
            return None;
        }
        i += n;
    }
    // A number must end at a delimiter, not run into a letter (`12x`).
    match b.get(i) {
        None | Some(b' ' | b'\t' | b'\n' | b'\r' | b',' | b'}' | b']') => Some(i),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::extjson::parse_document_fields_serde;

    fn both(text: &str, fields: &[Str]) -> (Option<String>, Result<String, ()>) {
        let mut fast = Document::new();
        let fast = scan_fields_into(text, fields, &mut fast)
            .map(|()| fast.to_json_mode(crate::value::ExtJsonMode::Canonical));
        let mut full = Document::new();
        let full = parse_document_fields_serde(text, fields, &mut full)
            .map(|()| full.to_json_mode(crate::value::ExtJsonMode::Canonical))
            .map_err(|_| ());
        (fast, full)
    }

    const LINES: &[&str] = &[
        r#"{"orderId":"o-1","customerId":"c-7","status":"PAID","orderValue":12.5,"items":[1,{"a":[true,false,null]}],"ts":{"$date":"2026-11-01T10:00:00Z"}}"#,
        r#" { "a" : -0.5e+3 , "b" : "x\"y\\z\u00e9\n" , "c" : { } , "d" : [ ] } "#,
        r#"{"a":1,"a":2,"b":{"$numberLong":"7"},"z":"\ud83d\ude00"}"#,
        r#"{}"#,
    ];

    #[test]
    fn agrees_with_the_full_parser_and_never_accepts_more() {
        let fields = [
            Str::from("a"),
            Str::from("b"),
            Str::from("customerId"),
            Str::from("ts"),
        ];
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let alphabet = b"{}[]\":,\\ -+.0123456789eEtrufalsn\x01ab";
        for line in LINES {
            let (fast, full) = both(line, &fields);
            // The fast path handles these (only surrogate escapes go to the full parser).
            if !line.contains("\\ud8") {
                assert!(fast.is_some(), "{line}");
            }
            if let Some(fast) = fast {
                assert_eq!(Ok(fast), full, "{line}");
            }
            for _ in 0..4000 {
                let mut bytes = line.as_bytes().to_vec();
                for _ in 0..1 + next(3) {
                    let at = next(bytes.len() + 1);
                    match next(3) {
                        0 if at < bytes.len() => {
                            bytes.remove(at);
                        }
                        1 => bytes.insert(at, alphabet[next(alphabet.len())]),
                        _ if at < bytes.len() => bytes[at] = alphabet[next(alphabet.len())],
                        _ => {}
                    }
                }
                let Ok(text) = String::from_utf8(bytes) else {
                    continue;
                };
                let (fast, full) = both(&text, &fields);
                if let Some(fast) = fast {
                    assert_eq!(Ok(fast), full, "fast path disagrees on {text}");
                }
            }
        }
    }

    #[test]
    fn next_special_finds_the_first_quote_backslash_or_control_byte() {
        let naive = |s: &[u8]| s.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
        // Every special byte at every offset (inside and after the 8-byte words), with
        // high (UTF-8) and borrow-prone neighbours before and after it.
        for len in 0..24 {
            for at in 0..=len {
                for special in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                    for filler in [b'a', 0x21, 0x80, 0xff, 0x01 + 0x20] {
                        let mut s = vec![filler; len];
                        if at < len {
                            s[at] = special;
                            if at + 1 < len {
                                s[at + 1] = b'"';
                            }
                        }
                        assert_eq!(next_special(&s), naive(&s), "{s:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn numbers_read_in_one_pass_equal_the_full_parser() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200_000 {
            let r = next();
            let digits = 1 + (r % 19) as usize;
            let mantissa = next() % 10u64.pow(digits as u32);
            let mut raw = format!("{mantissa:0digits$}");
            if raw.len() > 1 && raw.starts_with('0') && r & 64 == 0 {
                raw = raw.trim_start_matches('0').to_string();
                if raw.is_empty() {
                    raw = "0".into();
                }
            }
            let point = (r >> 8) as usize % (raw.len() + 1);
            if point > 0 && point < raw.len() && !raw.starts_with('0') {
                raw.insert(point, '.');
            }
            if r & 128 != 0 {
                raw.insert(0, '-');
            }
            let full = parse_value(&raw);
            match number_at(raw.as_bytes(), 0) {
                Some((fast, end)) => {
                    assert_eq!(end, raw.len(), "{raw}");
                    let full = full.unwrap_or_else(|e| {
                        panic!("{raw}: fast path accepted, full parser says {e}")
                    });
                    match (&fast, &full) {
                        (Value::Double(a), Value::Double(b)) => {
                            assert_eq!(a.to_bits(), b.to_bits(), "{raw}")
                        }
                        _ => assert_eq!(format!("{fast:?}"), format!("{full:?}"), "{raw}"),
                    }
                }
                None => assert!(
                    (digits > 15 && raw.contains('.'))
                        || digits > 18
                        || raw.contains('e')
                        || raw == "-0"
                        || full.is_err(),
                    "fast path gave up on {raw}"
                ),
            }
        }
    }
}
