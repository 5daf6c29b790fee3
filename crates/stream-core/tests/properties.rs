//! Property tests for the document model: MongoDB's comparison order is a total order
//! consistent with hashing, numeric comparison is exact across types, integer
//! arithmetic promotes on overflow, and Extended JSON round-trips.

use proptest::prelude::*;
use std::cmp::Ordering;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use stream_core::value::{
    compare_values, parse_value, Document, ExtJsonMode, HashableValue, Number, ObjectId, Value,
};

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(Value::MinKey),
        Just(Value::MaxKey),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::Int32),
        any::<i64>().prop_map(Value::Int64),
        (-1000i64..1000).prop_map(Value::Int64),
        any::<f64>().prop_map(Value::Double),
        (-1000i32..1000).prop_map(|n| Value::Double(n as f64 / 4.0)),
        (-1000i64..1000).prop_map(|n| Value::Decimal(
            format!("{}.{}", n / 10, (n % 10).abs())
                .parse()
                .unwrap_or_default()
        )),
        "[a-c]{0,3}".prop_map(Value::string),
        (-10_000_000_000_000i64..10_000_000_000_000).prop_map(Value::Date),
        any::<[u8; 12]>().prop_map(|b| Value::ObjectId(ObjectId(b))),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-c]{1,2}", inner), 0..3).prop_map(|fields| {
                let mut d = Document::new();
                for (k, v) in fields {
                    d.insert(k, v);
                }
                Value::Document(d)
            }),
        ]
    })
}

fn hash_of(v: &Value) -> u64 {
    let mut h = DefaultHasher::new();
    HashableValue(v.clone()).hash(&mut h);
    h.finish()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn comparison_is_antisymmetric(a in value(), b in value()) {
        prop_assert_eq!(compare_values(&a, &b), compare_values(&b, &a).reverse());
    }

    #[test]
    fn comparison_is_transitive(a in value(), b in value(), c in value()) {
        let mut v = [a, b, c];
        v.sort_by(compare_values);
        prop_assert_ne!(compare_values(&v[0], &v[2]), Ordering::Greater);
        if compare_values(&v[0], &v[1]) == Ordering::Equal && compare_values(&v[1], &v[2]) == Ordering::Equal {
            prop_assert_eq!(compare_values(&v[0], &v[2]), Ordering::Equal);
        }
    }

    #[test]
    fn equal_values_hash_alike(a in value(), b in value()) {
        if compare_values(&a, &b) == Ordering::Equal {
            prop_assert_eq!(hash_of(&a), hash_of(&b));
        }
    }

    #[test]
    fn integers_equal_across_widths(n in any::<i32>()) {
        let forms = [Value::Int32(n), Value::Int64(n as i64), Value::Double(n as f64), Value::Decimal(n.into())];
        for a in &forms {
            for b in &forms {
                prop_assert_eq!(compare_values(a, b), Ordering::Equal, "{:?} vs {:?}", a, b);
                prop_assert_eq!(hash_of(a), hash_of(b));
            }
        }
    }

    #[test]
    fn long_vs_double_is_exact(a in any::<i64>(), b in any::<i64>(), frac in prop_oneof![Just(0.0), Just(0.5), Just(-0.25)]) {
        // A double close to a long must compare by exact value, not after rounding the long.
        let d = b as f64 + frac;
        let got = compare_values(&Value::Int64(a), &Value::Double(d));
        let exact = if d >= 9.223_372_036_854_776e18 {
            Ordering::Less
        } else if d < -9.223_372_036_854_776e18 {
            Ordering::Greater
        } else {
            // d's integral part is exact below 2^63.
            let t = d.trunc() as i64;
            match a.cmp(&t) {
                Ordering::Equal => 0.0f64.partial_cmp(&(d - d.trunc())).unwrap(),
                o => o,
            }
        };
        prop_assert_eq!(got, exact);
    }

    #[test]
    fn int_arithmetic_promotes_on_overflow(a in any::<i32>(), b in any::<i32>()) {
        let sum = Number::Int32(a).add(Number::Int32(b));
        let exact = a as i64 + b as i64;
        match sum {
            Number::Int32(r) => prop_assert_eq!(r as i64, exact),
            Number::Int64(r) => { prop_assert_eq!(r, exact); prop_assert!(i32::try_from(exact).is_err()); }
            other => prop_assert!(false, "unexpected {:?}", other),
        }
        let prod = Number::Int32(a).mul(Number::Int32(b));
        let exact = a as i64 * b as i64;
        match prod {
            Number::Int32(r) => prop_assert_eq!(r as i64, exact),
            Number::Int64(r) => { prop_assert_eq!(r, exact); prop_assert!(i32::try_from(exact).is_err()); }
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    #[test]
    fn long_overflow_becomes_double(a in any::<i64>(), b in any::<i64>()) {
        let sum = Number::Int64(a).add(Number::Int64(b));
        match a.checked_add(b) {
            Some(r) => prop_assert!(matches!(sum, Number::Int64(x) if x == r)),
            None => prop_assert!(matches!(sum, Number::Double(x) if x == a as f64 + b as f64)),
        }
    }

    #[test]
    fn extended_json_round_trips(v in value()) {
        // Canonical mode keeps every type; relaxed mode writes int64 as a plain number
        // (read back as int32 when it fits), so it keeps the value but not the width.
        let text = v.to_json_mode(ExtJsonMode::Canonical);
        let back = parse_value(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert!(back.identical(&v), "{:?} -> {} -> {:?}", v, text, back);
        let text = v.to_json_mode(ExtJsonMode::Relaxed);
        let back = parse_value(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(compare_values(&back, &v), Ordering::Equal, "{:?} -> {} -> {:?}", v, text, back);
    }
}
