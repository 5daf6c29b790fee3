//! Set operators over arrays: `$setUnion`, `$setIntersection`, `$setDifference`,
//! `$setEquals`, `$setIsSubset`, `$anyElementTrue` and `$allElementsTrue`.
//!
//! Elements are compared with MongoDB equality ([`compare_values`]): `1`, `1.0` and
//! `NumberLong(1)` are the same element; duplicates count once. As in MongoDB,
//! `$setUnion` and `$setIntersection` return their elements in ascending sort order and
//! `$setDifference` keeps the order of its first argument.

use super::{compile_fn, CompileCtx, CompileFn, Expr};
use crate::error::{CompileError, EvalError};
use crate::value::{compare_values, Value};
use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BTreeSet;

/// Operators of this family.
pub(crate) const OPERATORS: &[(&str, CompileFn)] = &[
    ("$setUnion", compile_set_union),
    ("$setIntersection", compile_set_intersection),
    ("$setDifference", compile_set_difference),
    ("$setEquals", compile_set_equals),
    ("$setIsSubset", compile_set_is_subset),
    ("$anyElementTrue", compile_any_element_true),
    ("$allElementsTrue", compile_all_elements_true),
];

/// Defines a compile function for an operator whose arguments are all evaluated first.
macro_rules! fn_operator {
    ($compile:ident, $name:literal, $min:expr, $max:expr, $eval:ident) => {
        fn $compile(args: &Value, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
            compile_fn($name, args, $min, $max, path, cx, $eval)
        }
    };
}

fn_operator!(
    compile_set_union,
    "$setUnion",
    0,
    usize::MAX,
    eval_set_union
);
fn_operator!(
    compile_set_intersection,
    "$setIntersection",
    0,
    usize::MAX,
    eval_set_intersection
);
fn_operator!(
    compile_set_difference,
    "$setDifference",
    2,
    2,
    eval_set_difference
);
fn_operator!(
    compile_set_equals,
    "$setEquals",
    2,
    usize::MAX,
    eval_set_equals
);
fn_operator!(
    compile_set_is_subset,
    "$setIsSubset",
    2,
    2,
    eval_set_is_subset
);
fn_operator!(
    compile_any_element_true,
    "$anyElementTrue",
    1,
    1,
    eval_any_element_true
);
fn_operator!(
    compile_all_elements_true,
    "$allElementsTrue",
    1,
    1,
    eval_all_elements_true
);

/// A borrowed value ordered by MongoDB's comparison, for ordered sets.
#[derive(Clone, Copy)]
struct Ordered<'a>(&'a Value);

impl PartialEq for Ordered<'_> {
    fn eq(&self, other: &Self) -> bool {
        compare_values(self.0, other.0) == Ordering::Equal
    }
}
impl Eq for Ordered<'_> {}
impl PartialOrd for Ordered<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ordered<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_values(self.0, other.0)
    }
}

/// The distinct elements of `items`, sorted; among equal elements the first is kept.
fn sorted_set(items: &[Value]) -> Vec<&Value> {
    let mut set: Vec<&Value> = items.iter().collect();
    set.sort_by(|a, b| compare_values(a, b)); // stable: equal elements keep their order
    set.dedup_by(|b, a| compare_values(a, b) == Ordering::Equal);
    set
}

fn contains(sorted: &[&Value], v: &Value) -> bool {
    sorted.binary_search_by(|x| compare_values(x, v)).is_ok()
}

fn to_array(set: Vec<&Value>) -> Value {
    Value::Array(set.into_iter().cloned().collect())
}

/// `$setUnion`: the distinct elements of all the arrays. A null/missing argument → null.
fn eval_set_union(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let mut all: Vec<&Value> = Vec::new();
    for a in args {
        match a.as_ref() {
            v if v.is_nullish() => return Ok(Value::Null),
            Value::Array(items) => all.extend(items.iter()),
            v => {
                return Err(EvalError::new(format!(
                    "$setUnion: all operands must be arrays, but one is of type {}",
                    v.type_name()
                )))
            }
        }
    }
    all.sort_by(|a, b| compare_values(a, b));
    all.dedup_by(|b, a| compare_values(a, b) == Ordering::Equal);
    Ok(to_array(all))
}

/// `$setIntersection`: the elements present in every array (no arguments → `[]`).
/// A null/missing argument → null.
fn eval_set_intersection(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let mut current: Option<Vec<&Value>> = None;
    for a in args {
        let items = match a.as_ref() {
            v if v.is_nullish() => return Ok(Value::Null),
            Value::Array(items) => items,
            v => {
                return Err(EvalError::new(format!(
                    "$setIntersection: all operands must be arrays, but one is of type {}",
                    v.type_name()
                )))
            }
        };
        current = Some(match current {
            None => sorted_set(items),
            Some(cur) if cur.is_empty() => cur,
            Some(cur) => {
                // Keep the elements of the smaller set that the other one contains.
                let next = sorted_set(items);
                let (mut small, large) = if cur.len() > next.len() {
                    (next, cur)
                } else {
                    (cur, next)
                };
                small.retain(|v| contains(&large, v));
                small
            }
        });
    }
    Ok(to_array(current.unwrap_or_default()))
}

/// `$setDifference: [a, b]`: the distinct elements of `a` that are not in `b`, in the
/// order of `a`. A null/missing argument → null.
fn eval_set_difference(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let [a, b] = args else {
        return Err(EvalError::new("$setDifference: expected 2 arguments"));
    };
    if a.is_nullish() || b.is_nullish() {
        return Ok(Value::Null);
    }
    let (Value::Array(lhs), Value::Array(rhs)) = (a.as_ref(), b.as_ref()) else {
        let (which, v) = if a.as_array().is_none() {
            ("first", a)
        } else {
            ("second", b)
        };
        return Err(EvalError::new(format!(
            "$setDifference: both operands must be arrays, but the {which} is of type {}",
            v.type_name()
        )));
    };
    // Holds the elements of `b` and those of `a` already output.
    let mut seen: BTreeSet<Ordered> = rhs.iter().map(Ordered).collect();
    let out = lhs
        .iter()
        .filter(|v| seen.insert(Ordered(v)))
        .cloned()
        .collect();
    Ok(Value::Array(out))
}

/// `$setEquals`: true when every array has the same distinct elements. Each argument
/// must be an array (null is an error).
fn eval_set_equals(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let mut first: Option<Vec<&Value>> = None;
    let mut equal = true;
    for (i, a) in args.iter().enumerate() {
        let Value::Array(items) = a.as_ref() else {
            return Err(EvalError::new(format!(
                "$setEquals: all operands must be arrays, but argument {} is of type {}",
                i + 1,
                a.type_name()
            )));
        };
        let set = sorted_set(items);
        match &first {
            None => first = Some(set),
            Some(f) => {
                equal &= f.len() == set.len()
                    && f.iter()
                        .zip(&set)
                        .all(|(x, y)| compare_values(x, y) == Ordering::Equal);
            }
        }
    }
    Ok(Value::Bool(equal))
}

/// `$setIsSubset: [a, b]`: true when every element of `a` is in `b`. Both arguments
/// must be arrays (null is an error).
fn eval_set_is_subset(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let [a, b] = args else {
        return Err(EvalError::new("$setIsSubset: expected 2 arguments"));
    };
    let Value::Array(lhs) = a.as_ref() else {
        return Err(EvalError::new(format!(
            "$setIsSubset: both operands must be arrays, but the first is of type {}",
            a.type_name()
        )));
    };
    let Value::Array(rhs) = b.as_ref() else {
        return Err(EvalError::new(format!(
            "$setIsSubset: both operands must be arrays, but the second is of type {}",
            b.type_name()
        )));
    };
    let rhs = sorted_set(rhs);
    Ok(Value::Bool(lhs.iter().all(|v| contains(&rhs, v))))
}

fn elements<'v>(op: &str, args: &'v [Cow<'_, Value>]) -> Result<&'v [Value], EvalError> {
    match args {
        [a] => a.as_array().ok_or_else(|| {
            EvalError::new(format!(
                "{op}: the argument must be an array, but is {}",
                a.type_name()
            ))
        }),
        _ => Err(EvalError::new(format!("{op}: expected 1 argument"))),
    }
}

/// `$anyElementTrue: [array]`: true when some element is truthy (`[]` → false).
fn eval_any_element_true(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let items = elements("$anyElementTrue", args)?;
    Ok(Value::Bool(items.iter().any(Value::is_truthy)))
}

/// `$allElementsTrue: [array]`: true when no element is falsy (`[]` → true).
fn eval_all_elements_true(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let items = elements("$allElementsTrue", args)?;
    Ok(Value::Bool(items.iter().all(Value::is_truthy)))
}

#[cfg(test)]
mod tests {
    use crate::expr::Expression;
    use crate::value::{parse_document, parse_value};

    fn json(expr: &str, doc: &str) -> String {
        let e = Expression::compile(&parse_value(expr).expect("expr json")).expect("compiles");
        match e.evaluate(&parse_document(doc).expect("doc json")) {
            Ok(v) => v.to_json(),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn set_operations() {
        let doc = r#"{"a": ["c", 1, "a", 1.0, 2], "b": [2, "a", {"$numberLong": "1"}]}"#;
        assert_eq!(
            json(r#"{"$setUnion": ["$a", "$b"]}"#, doc),
            r#"[1,2,"a","c"]"#
        );
        assert_eq!(
            json(r#"{"$setIntersection": ["$a", "$b"]}"#, doc),
            r#"[1,2,"a"]"#
        );
        assert_eq!(json(r#"{"$setDifference": ["$a", "$b"]}"#, doc), r#"["c"]"#);
        assert_eq!(
            json(r#"{"$setDifference": ["$b", ["a"]]}"#, doc),
            r#"[2,1]"#
        );
        assert_eq!(
            json(r#"{"$setEquals": ["$a", ["a", "c", 2, 1]]}"#, doc),
            "true"
        );
        assert_eq!(json(r#"{"$setIsSubset": ["$b", "$a"]}"#, doc), "true");
        assert_eq!(json(r#"{"$setUnion": ["$a", "$nope"]}"#, doc), "null");
        assert!(json(r#"{"$setIsSubset": ["$nope", "$a"]}"#, doc).starts_with("error"));
        assert_eq!(json(r#"{"$anyElementTrue": [[0, null, []]]}"#, doc), "true");
        assert_eq!(json(r#"{"$allElementsTrue": [[1, 0]]}"#, doc), "false");
        assert_eq!(json(r#"{"$allElementsTrue": [[]]}"#, doc), "true");
    }
}
