//! The document model: [`Value`] covers the BSON types MongoDB uses in practice and
//! [`Document`] is an ordered map of fields.
//!
//! Documents are small in practice (tens of fields), so a [`Document`] is a vector of
//! `(key, value)` pairs searched linearly: cheaper to build, clone and scan than a hash
//! map, and it keeps field order exactly as MongoDB does. Keys and strings are
//! [`CompactString`]s, which keep strings of up to 24 bytes inline without allocating.

mod compare;
mod extjson;
mod number;
mod scan;

pub use compare::{canonical_rank, compare_values, HashableValue, ValueHashMap, ValueHashSet};
pub use extjson::{
    parse_document, parse_document_fields, parse_document_fields_into, parse_value, ExtJsonError,
    ExtJsonMode,
};
pub use number::Number;

use compact_str::CompactString;
use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};

/// Document keys and string values.
pub type Str = CompactString;

/// IEEE 754-2008 128-bit decimal, as MongoDB's `decimal128`.
pub type Decimal128 = dec::Decimal128;

/// A value of the document model: MongoDB's BSON types.
#[derive(Clone, Debug)]
pub enum Value {
    /// An absent field. Produced by expression evaluation (e.g. `"$noSuchField"`, `$$REMOVE`);
    /// never stored inside a [`Document`]: inserting it is a no-op.
    Missing,
    /// BSON MinKey: compares lower than every other value.
    MinKey,
    /// BSON undefined (deprecated type, read for compatibility).
    Undefined,
    /// BSON null.
    Null,
    /// Boolean.
    Bool(bool),
    /// 32-bit integer (`int`).
    Int32(i32),
    /// 64-bit integer (`long`).
    Int64(i64),
    /// 64-bit binary floating point (`double`).
    Double(f64),
    /// 128-bit decimal floating point (`decimal`).
    Decimal(Decimal128),
    /// UTF-8 string.
    String(Str),
    /// UTC datetime in milliseconds since the Unix epoch.
    Date(i64),
    /// 12-byte ObjectId.
    ObjectId(ObjectId),
    /// Binary data with a subtype.
    Binary(Box<Binary>),
    /// Array of values.
    Array(Vec<Value>),
    /// Embedded document.
    Document(Document),
    /// Internal MongoDB timestamp (seconds, increment).
    Timestamp(Timestamp),
    /// Regular expression with options.
    Regex(Box<Regex>),
    /// BSON MaxKey: compares higher than every other value.
    MaxKey,
}

/// A 12-byte MongoDB ObjectId.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId(pub [u8; 12]);

impl ObjectId {
    /// Parses the 24-hex-digit form.
    pub fn parse_hex(s: &str) -> Option<ObjectId> {
        if s.len() != 24 {
            return None;
        }
        let mut bytes = [0u8; 12];
        hex::decode_to_slice(s, &mut bytes).ok()?;
        Some(ObjectId(bytes))
    }

    /// The 24-hex-digit form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Creation time embedded in the first four bytes, in seconds since the epoch.
    pub fn timestamp_secs(&self) -> u32 {
        u32::from_be_bytes([self.0[0], self.0[1], self.0[2], self.0[3]])
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId(\"{}\")", self.to_hex())
    }
}

/// BSON binary data.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Binary {
    /// BSON binary subtype (0 generic, 4 UUID, ...).
    pub subtype: u8,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// BSON internal timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Seconds since the epoch.
    pub t: u32,
    /// Ordinal within the second.
    pub i: u32,
}

/// BSON regular expression.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Regex {
    /// The pattern.
    pub pattern: String,
    /// Options such as `i`, `m`, `s`, `x`, sorted.
    pub options: String,
}

/// Byte equality that compares short slices inline: field names and short string
/// values are compared for every document, and a library `memcmp` call costs more than
/// the comparison itself at these lengths.
#[inline]
pub fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    // Two overlapping word reads cover any length from a word to two words.
    fn words<const N: usize>(a: &[u8], b: &[u8]) -> bool {
        match (a.first_chunk::<N>(), b.first_chunk::<N>()) {
            (Some(ah), Some(bh)) => ah == bh && a.last_chunk::<N>() == b.last_chunk::<N>(),
            _ => false,
        }
    }
    match a.len() {
        8..=16 => words::<8>(a, b),
        4..=7 => words::<4>(a, b),
        0..=3 => a.iter().zip(b).all(|(x, y)| x == y),
        _ => a == b,
    }
}

/// Where a compiled field lookup last found its field (see [`Document::get_hinted`]).
/// Shared by the threads that run one compiled pipeline, hence atomic; a stale hint
/// only costs the scan it would have saved.
#[derive(Default)]
pub struct FieldHint(AtomicU32);

impl Clone for FieldHint {
    fn clone(&self) -> Self {
        FieldHint(AtomicU32::new(self.0.load(Ordering::Relaxed)))
    }
}

impl fmt::Debug for FieldHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FieldHint")
    }
}

/// An ordered document: field order is preserved and significant.
#[derive(Clone, Default)]
pub struct Document {
    fields: Vec<(Str, Value)>,
}

impl Document {
    /// An empty document.
    pub fn new() -> Self {
        Document { fields: Vec::new() }
    }

    /// An empty document with room for `n` fields.
    pub fn with_capacity(n: usize) -> Self {
        Document {
            fields: Vec::with_capacity(n),
        }
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Hints the CPU to start loading the document's first fields (where the keys
    /// usually looked up are) into cache; see [`crate::Pipeline::run_ref`].
    #[inline]
    pub fn prefetch(&self) {
        crate::prefetch::prefetch(self.fields.as_ptr(), 4);
    }

    /// True when the document has no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The value of a top-level field.
    #[inline]
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields
            .iter()
            .find(|(k, _)| bytes_eq(k.as_bytes(), key.as_bytes()))
            .map(|(_, v)| v)
    }

    /// [`Document::get`] that first tries the position where `hint` last found `key`.
    /// Documents of one stream usually share their shape, so a compiled path finds its
    /// field in one comparison instead of a scan. Keys are unique within a document, so
    /// the result is always the same as [`Document::get`]'s.
    #[inline]
    pub fn get_hinted(&self, key: &str, hint: &FieldHint) -> Option<&Value> {
        let at = hint.0.load(Ordering::Relaxed) as usize;
        if let Some((k, v)) = self.fields.get(at) {
            if bytes_eq(k.as_bytes(), key.as_bytes()) {
                return Some(v);
            }
        }
        let at = self
            .fields
            .iter()
            .position(|(k, _)| bytes_eq(k.as_bytes(), key.as_bytes()))?;
        hint.0.store(at as u32, Ordering::Relaxed);
        Some(&self.fields[at].1)
    }

    /// Mutable access to a top-level field.
    #[inline]
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.fields
            .iter_mut()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, v)| v)
    }

    /// True when the field exists.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets a field, keeping its position when it already exists and appending otherwise.
    /// Inserting [`Value::Missing`] removes the field instead.
    pub fn insert(&mut self, key: impl Into<Str>, value: Value) {
        let key = key.into();
        if value.is_missing() {
            self.remove(&key);
            return;
        }
        match self.get_mut(&key) {
            Some(slot) => *slot = value,
            None => self.fields.push((key, value)),
        }
    }

    /// Appends a field without checking for an existing one with the same name.
    /// Only for builders that know the key is new (parsers, projections).
    #[inline]
    pub fn push_unchecked(&mut self, key: impl Into<Str>, value: Value) {
        if !value.is_missing() {
            self.fields.push((key.into(), value));
        }
    }

    /// Removes a field and returns its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let pos = self.fields.iter().position(|(k, _)| k.as_str() == key)?;
        Some(self.fields.remove(pos).1)
    }

    /// Iterates over `(key, value)` pairs in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&Str, &Value)> + DoubleEndedIterator {
        self.fields.iter().map(|(k, v)| (k, v))
    }

    /// Iterates mutably over `(key, value)` pairs in order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&Str, &mut Value)> {
        self.fields.iter_mut().map(|(k, v)| (&*k, v))
    }

    /// The field names in order.
    pub fn keys(&self) -> impl Iterator<Item = &Str> {
        self.fields.iter().map(|(k, _)| k)
    }

    /// Value at a dotted path (`a.b.c`) through embedded documents only; numeric
    /// segments index arrays. For MongoDB's array-traversing semantics use
    /// [`Value::get_path_expr`] (expressions) or the query module.
    pub fn get_path(&self, path: &str) -> Option<&Value> {
        let mut parts = path.split('.');
        let mut cur = self.get(parts.next()?)?;
        for part in parts {
            cur = match cur {
                Value::Document(d) => d.get(part)?,
                Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(cur)
    }

    /// Sets the value at a dotted path, creating embedded documents as needed.
    /// A non-document value on the way is replaced by a document (as `$addFields` does).
    pub fn set_path(&mut self, path: &[Str], value: Value) {
        match path {
            [] => {}
            [last] => self.insert(last.clone(), value),
            [first, rest @ ..] => {
                if value.is_missing() && !self.contains_key(first) {
                    return;
                }
                let child = match self.get_mut(first) {
                    Some(v @ Value::Document(_)) => v,
                    Some(v) => {
                        *v = Value::Document(Document::new());
                        v
                    }
                    None => {
                        self.fields
                            .push((first.clone(), Value::Document(Document::new())));
                        &mut self.fields.last_mut().expect("just pushed").1
                    }
                };
                if let Value::Document(d) = child {
                    d.set_path(rest, value);
                }
            }
        }
    }

    /// Removes the value at a dotted path; through arrays, removes it from every element
    /// that is a document (as `$unset` / exclusion projection do).
    pub fn remove_path(&mut self, path: &[Str]) {
        match path {
            [] => {}
            [last] => {
                self.remove(last);
            }
            [first, rest @ ..] => match self.get_mut(first) {
                Some(Value::Document(d)) => d.remove_path(rest),
                Some(Value::Array(items)) => {
                    for item in items {
                        if let Value::Document(d) = item {
                            d.remove_path(rest);
                        }
                    }
                }
                _ => {}
            },
        }
    }

    /// Consumes the document into its fields.
    pub fn into_fields(self) -> Vec<(Str, Value)> {
        self.fields
    }

    /// Keeps only the fields for which `keep` returns true.
    pub fn retain(&mut self, mut keep: impl FnMut(&Str, &mut Value) -> bool) {
        self.fields.retain_mut(|(k, v)| keep(k, v));
    }

    /// Relaxed Extended JSON text of this document.
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(64);
        extjson::write_document(&mut s, self, ExtJsonMode::Relaxed);
        s
    }
}

impl FromIterator<(Str, Value)> for Document {
    fn from_iter<T: IntoIterator<Item = (Str, Value)>>(iter: T) -> Self {
        let mut d = Document::new();
        for (k, v) in iter {
            d.insert(k, v);
        }
        d
    }
}

impl IntoIterator for Document {
    type Item = (Str, Value);
    type IntoIter = std::vec::IntoIter<(Str, Value)>;
    fn into_iter(self) -> Self::IntoIter {
        self.fields.into_iter()
    }
}

impl fmt::Debug for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

impl fmt::Display for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

/// MongoDB equality (numbers compare by value across types; documents by field order).
impl PartialEq for Document {
    fn eq(&self, other: &Self) -> bool {
        compare::compare_documents(self, other) == std::cmp::Ordering::Equal
    }
}

/// MongoDB equality: `Int32(1) == Double(1.0)`; use [`Value::identical`] to also compare types.
impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        compare_values(self, other) == std::cmp::Ordering::Equal
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

/// The MongoDB type names returned by `$type` and accepted by `$type` queries.
impl Value {
    /// The `$type` name: `"double"`, `"string"`, `"object"`, `"array"`, `"binData"`,
    /// `"undefined"`, `"objectId"`, `"bool"`, `"date"`, `"null"`, `"regex"`, `"int"`,
    /// `"timestamp"`, `"long"`, `"decimal"`, `"minKey"`, `"maxKey"` or `"missing"`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Missing => "missing",
            Value::MinKey => "minKey",
            Value::Undefined => "undefined",
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int32(_) => "int",
            Value::Int64(_) => "long",
            Value::Double(_) => "double",
            Value::Decimal(_) => "decimal",
            Value::String(_) => "string",
            Value::Date(_) => "date",
            Value::ObjectId(_) => "objectId",
            Value::Binary(_) => "binData",
            Value::Array(_) => "array",
            Value::Document(_) => "object",
            Value::Timestamp(_) => "timestamp",
            Value::Regex(_) => "regex",
            Value::MaxKey => "maxKey",
        }
    }

    /// The BSON type number (`1` double, `2` string, ... `-1` minKey, `127` maxKey).
    pub fn bson_type_number(&self) -> i32 {
        match self {
            Value::Missing => 0,
            Value::MinKey => -1,
            Value::Undefined => 6,
            Value::Null => 10,
            Value::Bool(_) => 8,
            Value::Int32(_) => 16,
            Value::Int64(_) => 18,
            Value::Double(_) => 1,
            Value::Decimal(_) => 19,
            Value::String(_) => 2,
            Value::Date(_) => 9,
            Value::ObjectId(_) => 7,
            Value::Binary(_) => 5,
            Value::Array(_) => 4,
            Value::Document(_) => 3,
            Value::Timestamp(_) => 17,
            Value::Regex(_) => 11,
            Value::MaxKey => 127,
        }
    }

    /// True for [`Value::Missing`].
    #[inline]
    pub fn is_missing(&self) -> bool {
        matches!(self, Value::Missing)
    }

    /// True for null, undefined and missing: the values `$ifNull` and most operators
    /// treat as "no value".
    #[inline]
    pub fn is_nullish(&self) -> bool {
        matches!(self, Value::Missing | Value::Null | Value::Undefined)
    }

    /// True for int, long, double and decimal.
    #[inline]
    pub fn is_number(&self) -> bool {
        matches!(
            self,
            Value::Int32(_) | Value::Int64(_) | Value::Double(_) | Value::Decimal(_)
        )
    }

    /// MongoDB truthiness in expressions: false, null, missing, undefined and numeric
    /// zero are false; everything else (including empty strings and arrays) is true.
    pub fn is_truthy(&self) -> bool {
        match self {
            Value::Missing | Value::Null | Value::Undefined => false,
            Value::Bool(b) => *b,
            Value::Int32(n) => *n != 0,
            Value::Int64(n) => *n != 0,
            Value::Double(n) => *n != 0.0,
            Value::Decimal(d) => !d.is_zero(),
            _ => true,
        }
    }

    /// The string, if this is a string.
    #[inline]
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        }
    }

    /// The document, if this is a document.
    #[inline]
    pub fn as_document(&self) -> Option<&Document> {
        match self {
            Value::Document(d) => Some(d),
            _ => None,
        }
    }

    /// The array, if this is an array.
    #[inline]
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The boolean, if this is a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The number, if this is a numeric value.
    #[inline]
    pub fn as_number(&self) -> Option<Number> {
        Number::from_value(self)
    }

    /// The value as `f64` if numeric (lossy for large longs and decimals).
    pub fn as_f64(&self) -> Option<f64> {
        self.as_number().map(|n| n.to_f64())
    }

    /// The value as `i64` if it is a number with an exact integral value in range.
    pub fn as_i64_exact(&self) -> Option<i64> {
        self.as_number().and_then(|n| n.to_i64_exact())
    }

    /// A string value.
    pub fn string(s: impl Into<Str>) -> Value {
        Value::String(s.into())
    }

    /// Type-exact structural equality: `Int32(1)` is not identical to `Double(1.0)`,
    /// NaN is identical to NaN, field order matters. Used by tests and conformance checks.
    pub fn identical(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Double(a), Value::Double(b)) => {
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()) || a == b
            }
            (Value::Decimal(a), Value::Decimal(b)) => a.to_string() == b.to_string(),
            (Value::Array(a), Value::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.identical(y))
            }
            (Value::Document(a), Value::Document(b)) => a.identical(b),
            _ => std::mem::discriminant(self) == std::mem::discriminant(other) && self == other,
        }
    }

    /// Value of a field path in aggregation-expression semantics: through an array, the
    /// path is applied to every element and the results (missing ones dropped) form an
    /// array. Returns [`Value::Missing`] when absent. Borrows when no array is crossed.
    pub fn get_path_expr<'a, S: AsRef<str>>(&'a self, path: &[S]) -> Cow<'a, Value> {
        let mut cur = self;
        for (i, seg) in path.iter().enumerate() {
            match cur {
                Value::Document(d) => match d.get(seg.as_ref()) {
                    Some(v) => cur = v,
                    None => return Cow::Owned(Value::Missing),
                },
                Value::Array(items) => {
                    let rest = &path[i..];
                    let mut out = Vec::with_capacity(items.len());
                    for item in items {
                        match item {
                            Value::Document(_) | Value::Array(_) => {
                                let v = item.get_path_expr(rest);
                                if !v.is_missing() {
                                    out.push(v.into_owned());
                                }
                            }
                            _ => {}
                        }
                    }
                    return Cow::Owned(Value::Array(out));
                }
                _ => return Cow::Owned(Value::Missing),
            }
        }
        Cow::Borrowed(cur)
    }

    /// Relaxed Extended JSON text of this value.
    pub fn to_json(&self) -> String {
        let mut s = String::new();
        extjson::write_value(&mut s, self, ExtJsonMode::Relaxed);
        s
    }

    /// Extended JSON text of this value in the given mode.
    pub fn to_json_mode(&self, mode: ExtJsonMode) -> String {
        let mut s = String::new();
        extjson::write_value(&mut s, self, mode);
        s
    }
}

impl Document {
    /// Type-exact structural equality (see [`Value::identical`]).
    pub fn identical(&self, other: &Document) -> bool {
        self.len() == other.len()
            && self
                .fields
                .iter()
                .zip(&other.fields)
                .all(|((ka, va), (kb, vb))| ka == kb && va.identical(vb))
    }

    /// Extended JSON text of this document in the given mode.
    pub fn to_json_mode(&self, mode: ExtJsonMode) -> String {
        let mut s = String::with_capacity(64);
        extjson::write_document(&mut s, self, mode);
        s
    }

    /// Appends the Extended JSON text of this document to `out` (no allocation of its own).
    pub fn write_json(&self, out: &mut String, mode: ExtJsonMode) {
        extjson::write_document(out, self, mode);
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int32(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int64(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Double(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::String(v.into())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::String(v.into())
    }
}
impl From<Document> for Value {
    fn from(v: Document) -> Self {
        Value::Document(v)
    }
}
impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Self {
        Value::Array(v)
    }
}

/// Builds a [`Document`] from `key => value` pairs: `doc! {"a" => 1, "b" => "x"}`.
#[macro_export]
macro_rules! doc {
    () => { $crate::value::Document::new() };
    ($($k:expr => $v:expr),+ $(,)?) => {{
        let mut d = $crate::value::Document::new();
        $( d.insert($k, $crate::value::Value::from($v)); )+
        d
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_eq_agrees_with_slice_equality_at_every_length_and_position() {
        for len in 0..40usize {
            let a: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            assert!(bytes_eq(&a, &a.clone()), "len {len}");
            assert!(!bytes_eq(&a, &a[..len.saturating_sub(1)]) || len == 0);
            for at in 0..len {
                let mut b = a.clone();
                b[at] ^= 0x20;
                assert!(!bytes_eq(&a, &b), "len {len}, differing at {at}");
            }
        }
    }

    #[test]
    fn a_hinted_lookup_finds_the_same_field_whatever_the_hint() {
        let hint = FieldHint::default();
        let shapes = [
            parse_document(r#"{"a": 1, "b": 2, "c": 3}"#).unwrap(),
            parse_document(r#"{"c": 4, "a": 5}"#).unwrap(),
            parse_document(r#"{"b": 6}"#).unwrap(),
            parse_document(r#"{"x": 0, "y": 0, "z": 0, "c": 7}"#).unwrap(),
        ];
        for _ in 0..2 {
            for d in &shapes {
                for key in ["a", "b", "c", "nope"] {
                    assert_eq!(
                        d.get_hinted(key, &hint).map(|v| format!("{v:?}")),
                        d.get(key).map(|v| format!("{v:?}")),
                        "{key} in {d:?}"
                    );
                }
            }
        }
    }
}
