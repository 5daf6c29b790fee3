//! MongoDB Extended JSON v2, relaxed and canonical, in and out.
//!
//! Parsing goes straight from JSON text to [`Value`] in one pass (a serde visitor, no
//! intermediate `serde_json::Value`): objects whose first key is an Extended JSON
//! marker (`$oid`, `$date`, `$numberLong`, ...) become the typed value. Plain JSON
//! numbers become int32 when they fit, else int64, else double; numbers written with
//! a fraction or exponent are doubles — the relaxed-mode rules.

use super::{Binary, Document, ObjectId, Regex, Str, Timestamp, Value};
use base64::Engine;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt::{self, Write};

/// Output flavour of Extended JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ExtJsonMode {
    /// Plain JSON numbers where lossless, dates as ISO-8601 strings in `{"$date": ...}`.
    #[default]
    Relaxed,
    /// Every type explicit: `{"$numberInt": "1"}`, `{"$date": {"$numberLong": "..."}}`.
    Canonical,
}

/// An Extended JSON parse error, with the position serde_json reports.
#[derive(Debug, thiserror::Error)]
#[error("invalid JSON: {0}")]
pub struct ExtJsonError(#[from] serde_json::Error);

/// Parses one JSON / Extended JSON value.
pub fn parse_value(text: &str) -> Result<Value, ExtJsonError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let v = ValueSeed.deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

/// Parses one JSON / Extended JSON object into a document.
pub fn parse_document(text: &str) -> Result<Document, ExtJsonError> {
    match parse_value(text)? {
        Value::Document(d) => Ok(d),
        other => Err(ExtJsonError(de::Error::custom(format!(
            "expected a JSON object, found {}",
            other.type_name()
        )))),
    }
}

/// Parses one JSON object, keeping only the top-level fields named in `fields` (the
/// others are skipped without being built). Used with [`crate::Pipeline::input_fields`].
pub fn parse_document_fields(text: &str, fields: &[Str]) -> Result<Document, ExtJsonError> {
    let mut doc = Document::with_capacity(fields.len());
    parse_document_fields_into(text, fields, &mut doc)?;
    Ok(doc)
}

/// [`parse_document_fields`] into an existing document, which is cleared first: a reader
/// that evaluates each document by reference ([`crate::PipelineRun::push_ref`]) can reuse
/// one document for every line and so allocate nothing per line for it. After an error
/// the document holds an unspecified part of the input.
pub fn parse_document_fields_into(
    text: &str,
    fields: &[Str],
    doc: &mut Document,
) -> Result<(), ExtJsonError> {
    doc.fields.clear();
    if super::scan::scan_fields_into(text, fields, doc).is_some() {
        return Ok(());
    }
    doc.fields.clear();
    parse_document_fields_serde(text, fields, doc)
}

/// The general path of [`parse_document_fields_into`]: serde_json with a visitor that
/// skips unwanted fields. Handles what the fast scanner leaves to it (escaped keys,
/// surrogate escapes) and gives the error messages.
pub(super) fn parse_document_fields_serde(
    text: &str,
    fields: &[Str],
    doc: &mut Document,
) -> Result<(), ExtJsonError> {
    let mut de = serde_json::Deserializer::from_str(text);
    de::Deserializer::deserialize_map(&mut de, ProjectedVisitor { fields, doc })?;
    de.end()?;
    Ok(())
}

struct ProjectedVisitor<'f> {
    fields: &'f [Str],
    doc: &'f mut Document,
}

impl<'de> Visitor<'de> for ProjectedVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Every key of the input is looked up among the wanted fields. Their bytes are
        // taken out of the `Str`s once per document (up to 16; further ones are read in
        // place), and lengths and first bytes are compared before whole names, so most
        // keys are rejected without a string compare.
        const CACHED: usize = 16;
        let mut names: [&[u8]; CACHED] = [&[]; CACHED];
        let cached = self.fields.len().min(CACHED);
        for (slot, f) in names.iter_mut().zip(self.fields) {
            *slot = f.as_bytes();
        }
        let same = |f: &[u8], k: &[u8]| f.len() == k.len() && f.first() == k.first() && f == k;
        let wanted = |k: &[u8]| {
            names[..cached].iter().position(|f| same(f, k)).or_else(|| {
                let rest = self.fields.get(CACHED..)?;
                let i = rest.iter().position(|f| same(f.as_bytes(), k))?;
                Some(CACHED + i)
            })
        };
        // Fields already read (bit i for `fields[i]`): a repeated key replaces the earlier
        // value (the last one wins, as in MongoDB's parsers); beyond 64 fields, look it up.
        let mut seen: u64 = 0;
        while let Some(KeyRef(k)) = map.next_key()? {
            match wanted(k.as_bytes()) {
                Some(i) => {
                    let v = map.next_value_seed(ValueSeed)?;
                    let field = &self.fields[i];
                    let bit = 1u64.checked_shl(i as u32).unwrap_or(0);
                    if bit != 0 && seen & bit == 0 {
                        seen |= bit;
                        self.doc.push_unchecked(field.clone(), v);
                    } else {
                        self.doc.push_json_field(field.clone(), v);
                    }
                }
                None => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

impl<'de> serde::Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ValueSeed.deserialize(d)
    }
}

impl<'de> serde::Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match ValueSeed.deserialize(d)? {
            Value::Document(doc) => Ok(doc),
            other => Err(de::Error::custom(format!(
                "expected a JSON object, found {}",
                other.type_name()
            ))),
        }
    }
}

impl serde::Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Round-trip through our own writer so every serializer sees relaxed Extended JSON.
        let text = self.to_json();
        let raw: Box<serde_json::value::RawValue> =
            serde_json::value::RawValue::from_string(text).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

impl serde::Serialize for Document {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let raw: Box<serde_json::value::RawValue> =
            serde_json::value::RawValue::from_string(self.to_json())
                .map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

struct ValueSeed;

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

fn int_value(n: i64) -> Value {
    match i32::try_from(n) {
        Ok(i) => Value::Int32(i),
        Err(_) => Value::Int64(n),
    }
}

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(int_value(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(match i64::try_from(v) {
            Ok(n) => int_value(n),
            Err(_) => Value::Double(v as f64),
        })
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Double(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(Str::from(v)))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(Str::from(v)))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(4));
        while let Some(v) = seq.next_element_seed(ValueSeed)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let first: Option<KeyBuf> = map.next_key()?;
        let Some(KeyBuf(first)) = first else {
            return Ok(Value::Document(Document::new()));
        };
        if first.starts_with('$') {
            if let Some(v) = parse_extended(&first, &mut map)? {
                return Ok(v);
            }
        }
        let mut doc = Document::with_capacity(8);
        let v = map.next_value_seed(ValueSeed)?;
        doc.push_json_field(first, v);
        while let Some(KeyBuf(k)) = map.next_key()? {
            let v = map.next_value_seed(ValueSeed)?;
            doc.push_json_field(k, v);
        }
        Ok(Value::Document(doc))
    }
}

impl Document {
    /// JSON objects may repeat a key; the last one wins, as in MongoDB's parsers.
    pub(super) fn push_json_field(&mut self, k: Str, v: Value) {
        if self.contains_key(&k) {
            self.insert(k, v);
        } else {
            self.push_unchecked(k, v);
        }
    }
}

/// A map key borrowed from the input when it has no escapes, so skipped keys cost no
/// copy at all.
struct KeyRef<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for KeyRef<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyRef<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<KeyRef<'de>, E> {
                Ok(KeyRef(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<KeyRef<'de>, E> {
                Ok(KeyRef(std::borrow::Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// A map key read without going through `String` when serde_json can lend it.
struct KeyBuf(Str);

impl<'de> serde::Deserialize<'de> for KeyBuf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyBuf;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_str<E>(self, v: &str) -> Result<KeyBuf, E> {
                Ok(KeyBuf(Str::from(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Reads the rest of an object whose first key is `key` when that key is an Extended
/// JSON marker; returns `None` (having consumed nothing) for other `$` keys such as
/// query operators.
fn parse_extended<'de, A: MapAccess<'de>>(
    key: &str,
    map: &mut A,
) -> Result<Option<Value>, A::Error> {
    use de::Error;
    let v = match key {
        "$oid" => {
            let s: String = map.next_value()?;
            Value::ObjectId(
                ObjectId::parse_hex(&s)
                    .ok_or_else(|| A::Error::custom(format!("$oid: '{s}' is not 24 hex digits")))?,
            )
        }
        "$numberInt" => {
            let s: String = map.next_value()?;
            Value::Int32(
                s.parse()
                    .map_err(|_| A::Error::custom(format!("$numberInt: '{s}' is not an int32")))?,
            )
        }
        "$numberLong" => {
            let s: String = map.next_value()?;
            Value::Int64(
                s.parse()
                    .map_err(|_| A::Error::custom(format!("$numberLong: '{s}' is not an int64")))?,
            )
        }
        "$numberDouble" => {
            let s: String = map.next_value()?;
            Value::Double(
                parse_double_text(&s).ok_or_else(|| {
                    A::Error::custom(format!("$numberDouble: '{s}' is not a double"))
                })?,
            )
        }
        "$numberDecimal" => {
            let s: String = map.next_value()?;
            Value::Decimal(
                s.parse().map_err(|_| {
                    A::Error::custom(format!("$numberDecimal: '{s}' is not a decimal"))
                })?,
            )
        }
        "$date" => {
            let v = map.next_value_seed(ValueSeed)?;
            Value::Date(match &v {
                Value::String(s) => crate::value::extjson::parse_iso_date(s).ok_or_else(|| {
                    A::Error::custom(format!("$date: '{s}' is not an ISO-8601 date"))
                })?,
                Value::Int64(n) => *n,
                Value::Int32(n) => *n as i64,
                Value::Double(n) if n.fract() == 0.0 => *n as i64,
                _ => {
                    return Err(A::Error::custom(
                        "$date: expected an ISO-8601 string or {\"$numberLong\": \"<millis>\"}",
                    ))
                }
            })
        }
        "$binary" => {
            let v = map.next_value_seed(ValueSeed)?;
            match v {
                Value::Document(d) => {
                    let b64 = d.get("base64").and_then(Value::as_str).ok_or_else(|| {
                        A::Error::custom("$binary: missing string field 'base64'")
                    })?;
                    let sub = d.get("subType").and_then(Value::as_str).unwrap_or("00");
                    binary_value(b64, sub).map_err(A::Error::custom)?
                }
                Value::String(b64) => {
                    // Legacy form {"$binary": "<base64>", "$type": "<hex>"}.
                    let sub = match map.next_key::<KeyBuf>()? {
                        Some(KeyBuf(k)) if k == "$type" => map.next_value::<String>()?,
                        _ => return Err(A::Error::custom("$binary: expected '$type' after it")),
                    };
                    binary_value(&b64, &sub).map_err(A::Error::custom)?
                }
                _ => return Err(A::Error::custom("$binary: expected an object")),
            }
        }
        "$uuid" => {
            let s: String = map.next_value()?;
            let hexs: String = s.chars().filter(|c| *c != '-').collect();
            let bytes = hex::decode(&hexs)
                .ok()
                .filter(|b| b.len() == 16)
                .ok_or_else(|| A::Error::custom(format!("$uuid: '{s}' is not a UUID")))?;
            Value::Binary(Box::new(Binary { subtype: 4, bytes }))
        }
        "$timestamp" => {
            let v = map.next_value_seed(ValueSeed)?;
            let d = v
                .as_document()
                .ok_or_else(|| A::Error::custom("$timestamp: expected {\"t\": .., \"i\": ..}"))?;
            let get = |k: &str| {
                d.get(k)
                    .and_then(Value::as_i64_exact)
                    .and_then(|n| u32::try_from(n).ok())
            };
            match (get("t"), get("i")) {
                (Some(t), Some(i)) => Value::Timestamp(Timestamp { t, i }),
                _ => return Err(A::Error::custom("$timestamp: 't' and 'i' must be uint32")),
            }
        }
        "$regularExpression" => {
            let v = map.next_value_seed(ValueSeed)?;
            let d = v.as_document().ok_or_else(|| {
                A::Error::custom("$regularExpression: expected {\"pattern\": .., \"options\": ..}")
            })?;
            let pattern = d.get("pattern").and_then(Value::as_str).unwrap_or_default();
            let options = d.get("options").and_then(Value::as_str).unwrap_or_default();
            Value::Regex(Box::new(Regex {
                pattern: pattern.to_string(),
                options: sorted_options(options),
            }))
        }
        "$minKey" => {
            let _: de::IgnoredAny = map.next_value()?;
            Value::MinKey
        }
        "$maxKey" => {
            let _: de::IgnoredAny = map.next_value()?;
            Value::MaxKey
        }
        "$undefined" => {
            let _: de::IgnoredAny = map.next_value()?;
            Value::Undefined
        }
        "$symbol" => Value::String(Str::from(map.next_value::<String>()?)),
        _ => return Ok(None),
    };
    if map.next_key::<KeyBuf>()?.is_some() {
        return Err(A::Error::custom(format!(
            "Extended JSON {key} must be the only key of its object"
        )));
    }
    Ok(Some(v))
}

fn binary_value(b64: &str, subtype_hex: &str) -> Result<Value, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("$binary: invalid base64: {e}"))?;
    let subtype = u8::from_str_radix(subtype_hex, 16)
        .map_err(|_| format!("$binary: subType '{subtype_hex}' is not a hex byte"))?;
    Ok(Value::Binary(Box::new(Binary { subtype, bytes })))
}

pub(crate) fn sorted_options(opts: &str) -> String {
    let mut c: Vec<char> = opts.chars().collect();
    c.sort_unstable();
    c.dedup();
    c.into_iter().collect()
}

fn parse_double_text(s: &str) -> Option<f64> {
    match s {
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Parses an ISO-8601 / RFC 3339 date-time (`2024-01-31T10:00:00Z`,
/// `2024-01-31T10:00:00.123+02:00`, or a bare date `2024-01-31`) into epoch millis.
pub fn parse_iso_date(s: &str) -> Option<i64> {
    if let Some(ms) = parse_utc_date_fast(s) {
        return Some(ms);
    }
    if let Ok(dt) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(dt.timestamp_millis());
    }
    let fmts = [
        "%Y-%m-%dT%H:%M:%S%.f%#z",
        "%Y-%m-%dT%H:%M:%S%#z",
        "%Y-%m-%dT%H:%M%#z",
    ];
    for f in fmts {
        if let Ok(dt) = chrono::DateTime::parse_from_str(s, f) {
            return Some(dt.timestamp_millis());
        }
    }
    let naive_fmts = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S%.f",
    ];
    for f in naive_fmts {
        if let Ok(dt) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return Some(dt.and_utc().timestamp_millis());
        }
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|dt| dt.and_utc().timestamp_millis())
}

/// The common shape `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`, parsed without allocating; dates in
/// event streams are nearly always in this form. Anything else returns `None`.
fn parse_utc_date_fast(s: &str) -> Option<i64> {
    let all = s.as_bytes();
    // A fixed-size head: the digit reads below need no bounds checks.
    let b = all.first_chunk::<20>()?;
    if b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let digit = |c: u8| {
        let d = c.wrapping_sub(b'0');
        (d < 10).then_some(i64::from(d))
    };
    let two = |i: usize| Some(digit(b[i])? * 10 + digit(b[i + 1])?);
    let year = two(0)? * 100 + two(2)?;
    let (month, day) = (two(5)?, two(8)?);
    let (hour, minute, second) = (two(11)?, two(14)?, two(17)?);
    let mut millis = 0;
    let rest = match b[19] {
        b'.' => {
            let (mut frac, mut digits) = (0i64, 0u32);
            for &c in &all[20..] {
                let Some(d) = digit(c) else { break };
                frac = frac * 10 + d;
                digits += 1;
                if digits > 9 {
                    return None;
                }
            }
            if digits == 0 {
                return None;
            }
            millis = match digits {
                3 => frac,
                _ => frac * 1000 / 10i64.pow(digits),
            };
            &all[20 + digits as usize..]
        }
        _ => &all[19..],
    };
    if rest != b"Z" {
        return None;
    }
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (H. Hinnant's
/// `days_from_civil`: years counted from March, in 400-year eras).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Formats epoch millis as `YYYY-MM-DDTHH:MM:SS[.mmm]Z` (milliseconds only when non-zero).
pub fn format_iso_date(millis: i64) -> Option<String> {
    let dt = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(millis)?;
    Some(if millis.rem_euclid(1000) == 0 {
        dt.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        dt.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
    })
}

pub(crate) fn write_document(out: &mut String, d: &Document, mode: ExtJsonMode) {
    out.push('{');
    for (i, (k, v)) in d.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(out, k);
        out.push(':');
        write_value(out, v, mode);
    }
    out.push('}');
}

pub(crate) fn write_value(out: &mut String, v: &Value, mode: ExtJsonMode) {
    let canonical = mode == ExtJsonMode::Canonical;
    match v {
        Value::Missing | Value::Null => out.push_str("null"),
        Value::Undefined => out.push_str(r#"{"$undefined":true}"#),
        Value::MinKey => out.push_str(r#"{"$minKey":1}"#),
        Value::MaxKey => out.push_str(r#"{"$maxKey":1}"#),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int32(n) => {
            if canonical {
                let _ = write!(out, r#"{{"$numberInt":"{n}"}}"#);
            } else {
                out.push_str(itoa::Buffer::new().format(*n));
            }
        }
        Value::Int64(n) => {
            if canonical {
                let _ = write!(out, r#"{{"$numberLong":"{n}"}}"#);
            } else {
                out.push_str(itoa::Buffer::new().format(*n));
            }
        }
        Value::Double(n) => {
            if !n.is_finite() {
                let s = if n.is_nan() {
                    "NaN"
                } else if *n > 0.0 {
                    "Infinity"
                } else {
                    "-Infinity"
                };
                let _ = write!(out, r#"{{"$numberDouble":"{s}"}}"#);
            } else if canonical {
                out.push_str(r#"{"$numberDouble":""#);
                write_f64(out, *n);
                out.push_str(r#""}"#);
            } else {
                write_f64(out, *n);
            }
        }
        Value::Decimal(d) => {
            let _ = write!(out, r#"{{"$numberDecimal":"{d}"}}"#);
        }
        Value::String(s) => write_str(out, s),
        Value::Date(ms) => match format_iso_date(*ms) {
            Some(iso) if !canonical && (0..=253_402_300_799_999).contains(ms) => {
                let _ = write!(out, r#"{{"$date":"{iso}"}}"#);
            }
            _ => {
                let _ = write!(out, r#"{{"$date":{{"$numberLong":"{ms}"}}}}"#);
            }
        },
        Value::ObjectId(o) => {
            let _ = write!(out, r#"{{"$oid":"{}"}}"#, o.to_hex());
        }
        Value::Binary(b) => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(&b.bytes);
            let _ = write!(
                out,
                r#"{{"$binary":{{"base64":"{b64}","subType":"{:02x}"}}}}"#,
                b.subtype
            );
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item, mode);
            }
            out.push(']');
        }
        Value::Document(d) => write_document(out, d, mode),
        Value::Timestamp(t) => {
            let _ = write!(out, r#"{{"$timestamp":{{"t":{},"i":{}}}}}"#, t.t, t.i);
        }
        Value::Regex(r) => {
            out.push_str(r#"{"$regularExpression":{"pattern":"#);
            write_str(out, &r.pattern);
            out.push_str(r#","options":"#);
            write_str(out, &r.options);
            out.push_str("}}");
        }
    }
}

/// Shortest round-trip text of a finite double, always with a `.` or exponent so it
/// reads back as a double (`15.0`, `1e+300`).
fn write_f64(out: &mut String, n: f64) {
    let mut buf = ryu::Buffer::new();
    let s = buf.format_finite(n);
    out.push_str(s);
}

fn write_str(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        // Most bytes need no escape: one cheap test before the full match.
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => {
                out.push_str(&s[start..i]);
                let _ = write!(out, "\\u{:04x}", b);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.push_str(&s[start..i]);
        out.push_str(esc);
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_take_the_narrowest_type() {
        assert!(parse_value("1").unwrap().identical(&Value::Int32(1)));
        assert!(parse_value("3000000000")
            .unwrap()
            .identical(&Value::Int64(3_000_000_000)));
        assert!(parse_value("1.0").unwrap().identical(&Value::Double(1.0)));
        assert!(parse_value("1e2").unwrap().identical(&Value::Double(100.0)));
        assert!(parse_value("18446744073709551615")
            .unwrap()
            .identical(&Value::Double(1.8446744073709552e19)));
    }

    #[test]
    fn typed_markers_are_read() {
        let v = parse_value(
            r#"{"a": {"$numberLong": "5"}, "b": {"$date": "2024-01-31T10:00:00.250Z"},
                "c": {"$oid": "65a1b2c3d4e5f60718293a4b"}, "d": {"$numberDecimal": "1.10"},
                "e": {"$binary": "AQI=", "$type": "00"}, "f": {"$date": {"$numberLong": "-1000"}},
                "q": {"$regex": "^a", "$options": "i"}}"#,
        )
        .unwrap();
        let d = v.as_document().unwrap();
        assert!(d.get("a").unwrap().identical(&Value::Int64(5)));
        assert!(d
            .get("b")
            .unwrap()
            .identical(&Value::Date(1_706_695_200_250)));
        assert_eq!(d.get("c").unwrap().type_name(), "objectId");
        assert_eq!(
            d.get("d").unwrap().to_json(),
            r#"{"$numberDecimal":"1.10"}"#
        );
        assert_eq!(
            d.get("e").unwrap().to_json(),
            r#"{"$binary":{"base64":"AQI=","subType":"00"}}"#
        );
        assert!(d.get("f").unwrap().identical(&Value::Date(-1000)));
        // Query operators are not Extended JSON: {$regex, $options} stays a document.
        assert_eq!(d.get("q").unwrap().type_name(), "object");
    }

    #[test]
    fn relaxed_and_canonical_output() {
        let d = parse_document(r#"{"n": 1, "l": {"$numberLong": "2"}, "x": 2.0, "t": {"$date": "2024-01-31T10:00:00Z"}, "inf": {"$numberDouble": "Infinity"}}"#).unwrap();
        assert_eq!(
            d.to_json(),
            r#"{"n":1,"l":2,"x":2.0,"t":{"$date":"2024-01-31T10:00:00Z"},"inf":{"$numberDouble":"Infinity"}}"#
        );
        assert_eq!(
            d.to_json_mode(ExtJsonMode::Canonical),
            r#"{"n":{"$numberInt":"1"},"l":{"$numberLong":"2"},"x":{"$numberDouble":"2.0"},"t":{"$date":{"$numberLong":"1706695200000"}},"inf":{"$numberDouble":"Infinity"}}"#
        );
        // Dates before 1970 use the canonical form even in relaxed mode.
        assert_eq!(
            Value::Date(-1).to_json(),
            r#"{"$date":{"$numberLong":"-1"}}"#
        );
    }

    #[test]
    fn fast_and_general_date_parsers_agree() {
        for s in [
            "2024-01-31T10:00:00Z",
            "2024-02-29T23:59:59.999Z",
            "1969-12-31T23:59:59.5Z",
            "0001-01-01T00:00:00Z",
            "2024-01-31T10:00:00.123456789Z",
        ] {
            let general = chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .timestamp_millis();
            assert_eq!(parse_utc_date_fast(s), Some(general), "{s}");
        }
        assert_eq!(parse_utc_date_fast("2023-02-29T00:00:00Z"), None);
        assert_eq!(
            parse_iso_date("2024-01-31T10:00:00+01:00"),
            Some(1_706_691_600_000)
        );
    }

    #[test]
    fn projected_parse_keeps_only_named_fields() {
        let fields = [Str::from("b"), Str::from("d")];
        let d = parse_document_fields(
            r#"{"a": {"x": [1, 2]}, "b": 2, "c": "s", "d": {"$numberLong": "4"}}"#,
            &fields,
        )
        .unwrap();
        assert_eq!(d.to_json(), r#"{"b":2,"d":4}"#);
        assert!(parse_document_fields("[1]", &fields).is_err());
        assert!(parse_document_fields(r#"{"a": }"#, &fields).is_err());
    }

    #[test]
    fn projected_parse_into_reuses_the_document() {
        let fields = [
            Str::from("b"),
            Str::from("longer_field_name_x"),
            Str::from("a"),
        ];
        let mut d = Document::new();
        parse_document_fields_into(r#"{"a": 1, "z": 0, "b": 2}"#, &fields, &mut d).unwrap();
        assert_eq!(d.to_json(), r#"{"a":1,"b":2}"#);
        // The document is cleared first; a repeated key keeps its first position and
        // takes the last value, as the full parser does.
        let text = r#"{"b": 1, "longer_field_name_x": true, "b": 3, "longer_field_name_y": 0}"#;
        parse_document_fields_into(text, &fields, &mut d).unwrap();
        assert_eq!(d.to_json(), r#"{"b":3,"longer_field_name_x":true}"#);
        assert!(d.identical(&parse_document_fields(text, &fields).unwrap()));
        let full = parse_document(text).unwrap();
        assert_eq!(full.get("b").map(Value::to_json).as_deref(), Some("3"));
    }

    #[test]
    fn strings_are_escaped() {
        let v = Value::string("a\"b\\c\n\u{1}é");
        assert_eq!(v.to_json(), r#""a\"b\\c\n\u0001é""#);
        assert!(parse_value(&v.to_json()).unwrap().identical(&v));
    }

    #[test]
    fn bad_markers_say_what_is_wrong() {
        let e = parse_value(r#"{"$oid": "xyz"}"#).unwrap_err().to_string();
        assert!(e.contains("$oid: 'xyz' is not 24 hex digits"), "{e}");
        let e = parse_value(r#"{"$date": "yesterday"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an ISO-8601 date"), "{e}");
        let e = parse_value(r#"{"$numberLong": "1", "x": 2}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be the only key"), "{e}");
    }

    #[test]
    fn fast_date_path_agrees_with_chrono_over_four_centuries() {
        // Every day from 1800 to 2200 (leap rules of 1800/1900/2000/2100 included), at
        // varying times, against chrono; invalid days are refused by both.
        let mut ms = chrono::NaiveDate::from_ymd_opt(1800, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc().timestamp_millis())
            .expect("valid date");
        let end = 7_258_118_400_000; // 2200-01-01
        let mut step = 0i64;
        while ms < end {
            let text = format_iso_date(ms).expect("in range");
            assert_eq!(parse_utc_date_fast(&text), Some(ms), "{text}");
            step = (step + 7_919) % 86_400_000;
            ms += 86_400_000 + step % 3_600_000;
        }
        for bad in [
            "2023-02-29T00:00:00Z",
            "2100-02-29T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-00-10T00:00:00Z",
            "2024-0a-10T00:00:00Z",
            "2024-01-10T24:00:00Z",
            "2024-01-10T00:00:00.Z",
            "2024-01-10T00:00:00.1234567890Z",
            "2024-01-10T00:00:00.123",
            "2024-01-10T00:00:00",
            "2024-01-10T00:00:00ZZ",
            "+2024-01-10T00:00:00Z",
        ] {
            assert_eq!(parse_utc_date_fast(bad), None, "{bad}");
        }
        assert!(parse_utc_date_fast("2024-02-29T23:59:59.999Z").is_some());
    }
}
