//! Window bounds of `$setWindowFields` outputs: `documents: [lower, upper]` and
//! `range: [lower, upper]` (with an optional time `unit`), and the computation of each
//! document's window inside its sorted partition.

use crate::error::{path_index, path_key, CompileError};
use crate::expr::{compile_expr, doc_path, CompileCtx};
use crate::value::{compare_values, Document, Str, Value};
use chrono::{DateTime, Months, Utc};
use std::cmp::Ordering;

/// The unit of a `range` window or of `$derivative` / `$integral`: the same units as
/// `$dateAdd`.
pub(super) use crate::expr::datetime::TimeUnit;

/// Parses a `unit` argument (`"hour"`, ...).
pub(super) fn parse_unit(v: &Value, path: &str) -> Result<TimeUnit, CompileError> {
    let Some(s) = v.as_str() else {
        return Err(CompileError::new(
            path,
            format!("'unit' must be a string, found {}", v.type_name()),
        ));
    };
    TimeUnit::parse(s).ok_or_else(|| {
        CompileError::new(
            path,
            format!("unknown time unit '{s}'; use one of year, quarter, month, week, day, hour, minute, second, millisecond"),
        )
    })
}

/// Milliseconds in one unit, for the fixed-length units (`week` and smaller).
pub(super) fn unit_millis(unit: TimeUnit) -> Option<i64> {
    match unit {
        TimeUnit::Year | TimeUnit::Quarter | TimeUnit::Month => None,
        TimeUnit::Week => Some(604_800_000),
        TimeUnit::Day => Some(86_400_000),
        other => other.fixed_millis(),
    }
}

/// `millis + amount` units in UTC, calendar-aware for months, quarters and years (the
/// day of month is clamped to the end of a shorter month, as `$dateAdd` does).
/// Saturates instead of overflowing: a window bound past the date range is unbounded.
fn add_units(unit: TimeUnit, millis: i64, amount: i64) -> i64 {
    let saturate = if amount < 0 { i64::MIN } else { i64::MAX };
    if let Some(ms) = unit_millis(unit) {
        return amount
            .checked_mul(ms)
            .and_then(|d| millis.checked_add(d))
            .unwrap_or(saturate);
    }
    let months = match unit {
        TimeUnit::Year => amount.checked_mul(12),
        TimeUnit::Quarter => amount.checked_mul(3),
        _ => Some(amount),
    };
    let shifted = months.and_then(|m| {
        let dt = DateTime::<Utc>::from_timestamp_millis(millis)?;
        let n = Months::new(u32::try_from(m.unsigned_abs()).ok()?);
        let moved = if m < 0 {
            dt.checked_sub_months(n)
        } else {
            dt.checked_add_months(n)
        }?;
        Some(moved.timestamp_millis())
    });
    shifted.unwrap_or(saturate)
}

/// One side of a window.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Bound<T> {
    /// The first (lower) or last (upper) document of the partition.
    Unbounded,
    /// The current document.
    Current,
    /// An offset from the current document (documents) or its sortBy value (range).
    Offset(T),
}

/// The window of one output.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Bounds {
    /// `documents: [lower, upper]`: positions relative to the current document.
    Documents(Bound<i64>, Bound<i64>),
    /// `range: [lower, upper]`: sortBy values relative to the current document's.
    Range {
        lower: Bound<Value>,
        upper: Bound<Value>,
        unit: Option<TimeUnit>,
    },
}

impl Bounds {
    /// The default window: the whole partition.
    pub(super) const WHOLE: Bounds = Bounds::Documents(Bound::Unbounded, Bound::Unbounded);

    /// `["unbounded", "current"]`, the implicit window of rank-like functions.
    pub(super) const TO_CURRENT: Bounds = Bounds::Documents(Bound::Unbounded, Bound::Current);

    /// True when the window starts at the first document of the partition, so it only
    /// grows from one document to the next.
    pub(super) fn lower_unbounded(&self) -> bool {
        matches!(
            self,
            Bounds::Documents(Bound::Unbounded, _)
                | Bounds::Range {
                    lower: Bound::Unbounded,
                    ..
                }
        )
    }

    /// The time unit of a range window, if any.
    pub(super) fn range_unit(&self) -> Option<Option<TimeUnit>> {
        match self {
            Bounds::Range { unit, .. } => Some(*unit),
            Bounds::Documents(..) => None,
        }
    }

    /// Parses a `window` object found at `path`. `sort` is the stage's sortBy.
    pub(super) fn parse(
        spec: &Value,
        path: &str,
        sort: &[(std::sync::Arc<[Str]>, bool)],
        has_sort: bool,
        cx: &mut CompileCtx,
    ) -> Result<Bounds, CompileError> {
        let Value::Document(d) = spec else {
            return Err(CompileError::new(
                path,
                format!(
                    "'window' field must be an object, found {}",
                    spec.type_name()
                ),
            ));
        };
        let documents = d.get("documents");
        let range = d.get("range");
        let unit = d.get("unit");
        for (k, _) in d.iter() {
            if !matches!(k.as_str(), "documents" | "range" | "unit") {
                return Err(CompileError::new(
                    path_key(path, k),
                    format!("unknown window field '{k}': a window has 'documents', or 'range' with an optional 'unit'"),
                ));
            }
        }
        if documents.is_some() && range.is_some() {
            return Err(CompileError::new(
                path,
                "window bounds can specify either 'documents' or 'range', not both",
            ));
        }
        if range.is_none() && unit.is_some() {
            return Err(CompileError::new(
                path_key(path, "unit"),
                "window bounds can only specify 'unit' with range-based bounds",
            ));
        }
        if let Some(docs) = documents {
            let p = path_key(path, "documents");
            let (lo, hi) = unpack(docs, &p)?;
            let parse_int = |v: &Value, p: &str| -> Result<i64, CompileError> {
                match v.as_i64_exact() {
                    Some(n) => Ok(n),
                    None => Err(CompileError::new(
                        p,
                        format!(
                            "numeric document-based bounds must be an integer, found {}",
                            v.to_json()
                        ),
                    )),
                }
            };
            let lower = parse_bound(lo, &path_index(&p, 0), cx, parse_int)?;
            let upper = parse_bound(hi, &path_index(&p, 1), cx, parse_int)?;
            if let (Some(l), Some(u)) = (numeric(&lower, 0), numeric(&upper, 0)) {
                if l > u {
                    return Err(CompileError::new(
                        &p,
                        format!("lower bound must not exceed upper bound: [{l}, {u}]"),
                    ));
                }
            }
            let bounds = Bounds::Documents(lower, upper);
            if bounds != Bounds::WHOLE && !has_sort {
                return Err(CompileError::new(
                    path,
                    "document-based bounds require a sortBy",
                ));
            }
            return Ok(bounds);
        }
        let Some(range) = range else {
            return Ok(Bounds::WHOLE);
        };
        let p = path_key(path, "range");
        let (lo, hi) = unpack(range, &p)?;
        let unit = match unit {
            Some(u) => Some(parse_unit(u, &path_key(path, "unit"))?),
            None => None,
        };
        let check = |v: &Value, p: &str| -> Result<Value, CompileError> {
            if unit.is_some() {
                match v.as_i64_exact() {
                    Some(_) => Ok(v.clone()),
                    None => Err(CompileError::new(
                        p,
                        format!(
                            "with 'unit', range-based bounds must be an integer, found {}",
                            v.to_json()
                        ),
                    )),
                }
            } else if v.is_number() {
                Ok(v.clone())
            } else {
                Err(CompileError::new(
                    p,
                    format!("range-based bounds must be a number, found {}", v.to_json()),
                ))
            }
        };
        let lower = parse_bound(lo, &path_index(&p, 0), cx, check)?;
        let upper = parse_bound(hi, &path_index(&p, 1), cx, check)?;
        let zero = Value::Int32(0);
        if let (Some(l), Some(u)) = (numeric(&lower, zero.clone()), numeric(&upper, zero)) {
            if compare_values(&l, &u) == Ordering::Greater {
                return Err(CompileError::new(
                    &p,
                    format!(
                        "lower bound must not exceed upper bound: [{}, {}]",
                        l.to_json(),
                        u.to_json()
                    ),
                ));
            }
        }
        if sort.len() != 1 {
            return Err(CompileError::new(
                path,
                "range-based bounds require sortBy a single field",
            ));
        }
        if !sort[0].1 {
            return Err(CompileError::new(
                path,
                "range-based bounds require an ascending sortBy",
            ));
        }
        Ok(Bounds::Range { lower, upper, unit })
    }

    /// The inclusive window `(first, last)` of the document at `i` in a sorted partition,
    /// or `None` when the window is empty. For range windows every document of the
    /// partition has a sortBy value of the right type (checked when buffering).
    pub(super) fn endpoints(
        &self,
        i: usize,
        docs: &[Document],
        sort_path: &[Str],
    ) -> Option<(usize, usize)> {
        let n = docs.len() as i64;
        match self {
            Bounds::Documents(lower, upper) => {
                let cur = i as i64;
                let lo = match lower {
                    Bound::Unbounded => 0,
                    Bound::Current => cur,
                    Bound::Offset(k) => cur.saturating_add(*k),
                };
                let hi = match upper {
                    Bound::Unbounded => n - 1,
                    Bound::Current => cur,
                    Bound::Offset(k) => cur.saturating_add(*k),
                };
                if lo > n - 1 || hi < 0 {
                    return None;
                }
                let (lo, hi) = (lo.clamp(0, n - 1), hi.clamp(0, n - 1));
                (lo <= hi).then_some((lo as usize, hi as usize))
            }
            Bounds::Range { lower, upper, unit } => {
                let value_at = |j: usize| doc_path(&docs[j], sort_path);
                let base = value_at(i);
                let threshold = |delta: &Value| -> Value {
                    match (unit, base.as_ref()) {
                        (Some(u), Value::Date(ms)) => {
                            Value::Date(add_units(*u, *ms, delta.as_i64_exact().unwrap_or(0)))
                        }
                        _ => match (base.as_number(), delta.as_number()) {
                            (Some(a), Some(b)) => a.add(b).to_value(),
                            _ => base.as_ref().clone(),
                        },
                    }
                };
                // The partition is sorted ascending on these values: binary search.
                let n = docs.len();
                let lo = match lower {
                    Bound::Unbounded => 0,
                    Bound::Current => i,
                    Bound::Offset(delta) => {
                        let t = threshold(delta);
                        let j = partition_point(n, |j| {
                            compare_values(&value_at(j), &t) == Ordering::Less
                        });
                        (j < n).then_some(j)?
                    }
                };
                let hi = match upper {
                    Bound::Unbounded => n - 1,
                    Bound::Current => i,
                    Bound::Offset(delta) => {
                        let t = threshold(delta);
                        let end = partition_point(n, |j| {
                            compare_values(&t, &value_at(j)) != Ordering::Less
                        });
                        if end <= lo {
                            return None;
                        }
                        end - 1
                    }
                };
                (lo <= hi).then_some((lo, hi))
            }
        }
    }
}

/// The first index in `0..n` for which `pred` is false (`pred` holds on a prefix).
fn partition_point(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// The numeric value of a bound with `current` as zero; `None` for `unbounded`.
fn numeric<T: Clone>(b: &Bound<T>, zero: T) -> Option<T> {
    match b {
        Bound::Unbounded => None,
        Bound::Current => Some(zero),
        Bound::Offset(v) => Some(v.clone()),
    }
}

fn unpack<'v>(v: &'v Value, path: &str) -> Result<(&'v Value, &'v Value), CompileError> {
    match v {
        Value::Array(items) if items.len() == 2 => Ok((&items[0], &items[1])),
        other => Err(CompileError::new(
            path,
            format!(
                "window bounds must be a 2-element array, found {}",
                other.to_json()
            ),
        )),
    }
}

fn parse_bound<T>(
    v: &Value,
    path: &str,
    cx: &mut CompileCtx,
    convert: impl Fn(&Value, &str) -> Result<T, CompileError>,
) -> Result<Bound<T>, CompileError> {
    if let Value::String(s) = v {
        return match s.as_str() {
            "unbounded" => Ok(Bound::Unbounded),
            "current" => Ok(Bound::Current),
            _ if s.starts_with('$') => Err(CompileError::new(
                path,
                "window bounds expression must be a constant",
            )),
            _ => Err(CompileError::new(
                path,
                format!("window bounds must be 'unbounded', 'current', or a number, found \"{s}\""),
            )),
        };
    }
    let e = compile_expr(v, path, cx)?;
    match e.as_literal() {
        Some(c) => Ok(Bound::Offset(convert(c, path)?)),
        None => Err(CompileError::new(
            path,
            "window bounds expression must be a constant",
        )),
    }
}

/// Checks the sortBy value of a document that will be the current document of a range
/// window: a date when the window has a unit, otherwise a number.
pub(super) fn check_range_value(v: &Value, unit: Option<TimeUnit>) -> Result<(), String> {
    match (unit, v) {
        (Some(_), Value::Date(_)) => Ok(()),
        (Some(_), other) => Err(format!(
            "invalid range: expected the sortBy field to be a date, but it was {}",
            other.type_name()
        )),
        (None, Value::Date(_)) => Err(
            "invalid range: for windows that involve date or time ranges, a unit must be provided"
                .to_string(),
        ),
        (None, other) if other.is_number() => Ok(()),
        (None, other) => Err(format!(
            "invalid range: expected the sortBy field to be a number, but it was {}",
            other.type_name()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::parse_document;

    fn ms(s: &str) -> i64 {
        match parse_document(&format!(r#"{{"d": {{"$date": "{s}"}}}}"#))
            .unwrap()
            .get("d")
        {
            Some(Value::Date(ms)) => *ms,
            other => panic!("not a date: {other:?}"),
        }
    }

    #[test]
    fn calendar_units_clamp_to_month_end() {
        let jan31 = ms("2024-01-31T10:00:00Z");
        assert_eq!(
            add_units(TimeUnit::Month, jan31, 1),
            ms("2024-02-29T10:00:00Z")
        );
        assert_eq!(
            add_units(TimeUnit::Month, jan31, -2),
            ms("2023-11-30T10:00:00Z")
        );
        assert_eq!(
            add_units(TimeUnit::Quarter, jan31, 1),
            ms("2024-04-30T10:00:00Z")
        );
        assert_eq!(
            add_units(TimeUnit::Year, ms("2024-02-29T00:00:00Z"), 1),
            ms("2025-02-28T00:00:00Z")
        );
        assert_eq!(
            add_units(TimeUnit::Week, jan31, -1),
            ms("2024-01-24T10:00:00Z")
        );
        assert_eq!(add_units(TimeUnit::Millisecond, i64::MAX, 1), i64::MAX);
        assert_eq!(add_units(TimeUnit::Year, 0, i64::MIN), i64::MIN);
    }

    fn docs(xs: &[i32]) -> Vec<Document> {
        xs.iter()
            .map(|x| parse_document(&format!(r#"{{"x": {x}}}"#)).unwrap())
            .collect()
    }

    #[test]
    fn document_endpoints_clamp_to_the_partition() {
        let d = docs(&[1, 2, 3, 4]);
        let path: Vec<Str> = vec!["x".into()];
        let b = Bounds::Documents(Bound::Offset(-1), Bound::Offset(1));
        assert_eq!(b.endpoints(0, &d, &path), Some((0, 1)));
        assert_eq!(b.endpoints(3, &d, &path), Some((2, 3)));
        let after = Bounds::Documents(Bound::Offset(5), Bound::Unbounded);
        assert_eq!(after.endpoints(0, &d, &path), None);
        let before = Bounds::Documents(Bound::Unbounded, Bound::Offset(-1));
        assert_eq!(before.endpoints(0, &d, &path), None);
        assert_eq!(before.endpoints(2, &d, &path), Some((0, 1)));
    }

    #[test]
    fn range_endpoints_follow_sort_values() {
        let d = docs(&[1, 2, 2, 5, 9]);
        let path: Vec<Str> = vec!["x".into()];
        let range = |lo: Bound<Value>, hi: Bound<Value>| Bounds::Range {
            lower: lo,
            upper: hi,
            unit: None,
        };
        let around = range(
            Bound::Offset(Value::Int32(-1)),
            Bound::Offset(Value::Int32(1)),
        );
        assert_eq!(around.endpoints(1, &d, &path), Some((0, 2)));
        assert_eq!(around.endpoints(3, &d, &path), Some((3, 3)));
        let peers = range(
            Bound::Offset(Value::Int32(0)),
            Bound::Offset(Value::Int32(0)),
        );
        assert_eq!(peers.endpoints(2, &d, &path), Some((1, 2)));
        // "current" is the current document itself, not its peers.
        let current = range(Bound::Current, Bound::Current);
        assert_eq!(current.endpoints(2, &d, &path), Some((2, 2)));
        let gap = range(
            Bound::Offset(Value::Int32(-3)),
            Bound::Offset(Value::Int32(-2)),
        );
        assert_eq!(gap.endpoints(4, &d, &path), None);
        assert_eq!(gap.endpoints(3, &d, &path), Some((1, 2)));
    }
}
