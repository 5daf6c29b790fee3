//! MongoDB's cross-type comparison and sort order.
//!
//! Values of different types compare by a canonical type rank
//! (MinKey < missing/undefined < null < numbers < strings < objects < arrays < binData <
//! objectId < bool < date < timestamp < regex < MaxKey); numbers of every width compare
//! by numeric value. [`HashableValue`] hashes consistently with this equality, so
//! `1`, `1L`, `1.0` and `Decimal128("1")` fall into the same `$group` bucket.

use super::{Document, Number, Value};
use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

/// The canonical type rank used before comparing values of different types.
pub fn canonical_rank(v: &Value) -> u8 {
    match v {
        Value::MinKey => 0,
        Value::Missing | Value::Undefined => 1,
        Value::Null => 2,
        Value::Int32(_) | Value::Int64(_) | Value::Double(_) | Value::Decimal(_) => 3,
        Value::String(_) => 4,
        Value::Document(_) => 5,
        Value::Array(_) => 6,
        Value::Binary(_) => 7,
        Value::ObjectId(_) => 8,
        Value::Bool(_) => 9,
        Value::Date(_) => 10,
        Value::Timestamp(_) => 11,
        Value::Regex(_) => 12,
        Value::MaxKey => 13,
    }
}

/// Total order over values following MongoDB's comparison rules (no collation).
pub fn compare_values(a: &Value, b: &Value) -> Ordering {
    let (ra, rb) = (canonical_rank(a), canonical_rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        (Value::String(x), Value::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Document(x), Value::Document(y)) => compare_documents(x, y),
        (Value::Array(x), Value::Array(y)) => compare_arrays(x, y),
        (Value::Binary(x), Value::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then(x.subtype.cmp(&y.subtype))
            .then_with(|| x.bytes.cmp(&y.bytes)),
        (Value::ObjectId(x), Value::ObjectId(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Date(x), Value::Date(y)) => x.cmp(y),
        (Value::Timestamp(x), Value::Timestamp(y)) => x.cmp(y),
        (Value::Regex(x), Value::Regex(y)) => x
            .pattern
            .cmp(&y.pattern)
            .then_with(|| x.options.cmp(&y.options)),
        _ => match (Number::from_value(a), Number::from_value(b)) {
            (Some(x), Some(y)) => x.cmp_total(y),
            // Same rank without payload: MinKey, MaxKey, null, missing/undefined.
            _ => Ordering::Equal,
        },
    }
}

/// Arrays compare element by element, then by length.
pub(crate) fn compare_arrays(x: &[Value], y: &[Value]) -> Ordering {
    for (a, b) in x.iter().zip(y) {
        let o = compare_values(a, b);
        if o != Ordering::Equal {
            return o;
        }
    }
    x.len().cmp(&y.len())
}

/// Documents compare field by field: type rank of the value, then field name, then value.
pub(crate) fn compare_documents(x: &Document, y: &Document) -> Ordering {
    for ((ka, va), (kb, vb)) in x.iter().zip(y.iter()) {
        let o = canonical_rank(va)
            .cmp(&canonical_rank(vb))
            .then_with(|| ka.as_bytes().cmp(kb.as_bytes()))
            .then_with(|| compare_values(va, vb));
        if o != Ordering::Equal {
            return o;
        }
    }
    x.len().cmp(&y.len())
}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(compare_values(self, other))
    }
}

/// A hash map keyed by values with MongoDB equality. foldhash is several times faster
/// than the default SipHash on short keys and still seeded per map, which matters for
/// `$group`, whose keys come from input data.
pub type ValueHashMap<V> = std::collections::HashMap<HashableValue, V, foldhash::fast::RandomState>;

/// A hash set of values with MongoDB equality (see [`ValueHashMap`]).
pub type ValueHashSet = std::collections::HashSet<HashableValue, foldhash::fast::RandomState>;

/// A value usable as a hash-map key, with equality and hashing that follow MongoDB's
/// comparison (numbers equal across types hash alike).
#[derive(Clone, Debug)]
pub struct HashableValue(pub Value);

impl PartialEq for HashableValue {
    fn eq(&self, other: &Self) -> bool {
        compare_values(&self.0, &other.0) == Ordering::Equal
    }
}
impl Eq for HashableValue {}

impl Hash for HashableValue {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_value(&self.0, state);
    }
}

impl HashableValue {
    /// Feeds a borrowed value to `state` exactly as `HashableValue(v.clone())` would, so a
    /// key can be looked up without cloning it.
    pub fn hash_ref<H: Hasher>(v: &Value, state: &mut H) {
        hash_value(v, state);
    }
}

fn hash_value<H: Hasher>(v: &Value, state: &mut H) {
    state.write_u8(canonical_rank(v));
    match v {
        Value::Int32(n) => hash_f64(*n as f64, state),
        Value::Int64(n) => hash_f64(*n as f64, state),
        Value::Double(n) => hash_f64(*n, state),
        Value::Decimal(d) => hash_f64(super::number::decimal_to_f64(*d), state),
        Value::String(s) => s.as_bytes().hash(state),
        Value::Document(d) => {
            state.write_usize(d.len());
            for (k, v) in d.iter() {
                k.as_bytes().hash(state);
                hash_value(v, state);
            }
        }
        Value::Array(a) => {
            state.write_usize(a.len());
            for v in a {
                hash_value(v, state);
            }
        }
        Value::Binary(b) => b.hash(state),
        Value::ObjectId(o) => o.hash(state),
        Value::Bool(b) => b.hash(state),
        Value::Date(d) => d.hash(state),
        Value::Timestamp(t) => t.hash(state),
        Value::Regex(r) => r.hash(state),
        Value::MinKey | Value::MaxKey | Value::Null | Value::Missing | Value::Undefined => {}
    }
}

/// Equal numbers of different types must hash alike: hash their double value with
/// -0.0 folded into 0.0 and every NaN folded into one.
fn hash_f64<H: Hasher>(n: f64, state: &mut H) {
    let bits = if n.is_nan() {
        f64::NAN.to_bits()
    } else if n == 0.0 {
        0
    } else {
        n.to_bits()
    };
    state.write_u64(bits);
}
