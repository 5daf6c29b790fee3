//! The `$match` query language, compiled once into a predicate tree.
//!
//! Semantics follow MongoDB's find filters: a condition on a path matches when any
//! value reached through arrays matches (`{"tags": "a"}` matches `{"tags": ["a", "b"]}`),
//! dotted paths descend through arrays of subdocuments, and `{"f": null}` matches a
//! missing field.
//!
//! Supported: `$eq $ne $gt $gte $lt $lte $in $nin $and $or $nor $not $exists $type
//! $regex/$options $elemMatch $size $all $mod $expr $comment $bitsAllSet $bitsAnySet
//! $bitsAllClear $bitsAnyClear`, implicit equality and BSON regular expression values.
//! Not supported (compile errors): geospatial operators, `$text`, `$where`, `$jsonSchema`.

mod node;

use crate::error::{path_index, path_key, CompileError, EvalError};
use crate::expr::{compile_expr, CompileCtx, Ctx, Env};
use crate::value::{compare_values, Document, Value};
use node::{sorted, type_bit, BitsOp, CmpOp, LeafMode, Node, QueryRegex, Seg, Subject, Test};

/// A compiled query filter.
#[derive(Debug, Clone)]
pub struct Query {
    root: Node,
}

impl Query {
    /// Compiles a filter document found at JSON path `path`.
    pub fn compile(filter: &Value, path: &str, cx: &mut CompileCtx) -> Result<Query, CompileError> {
        match filter {
            Value::Document(d) => Ok(Query {
                root: compile_filter(d, path, Some(cx))?,
            }),
            other => Err(CompileError::new(
                path,
                format!(
                    "a query filter must be an object, found {}",
                    other.type_name()
                ),
            )),
        }
    }

    /// True when `doc` matches. Fails only when a `$expr` inside fails.
    pub fn matches(&self, doc: &Document, env: &Env) -> Result<bool, EvalError> {
        self.root.eval(Subject::Doc(doc), &Ctx::new(doc, env))
    }

    /// Like [`Query::matches`], with the variables bound in `outer` visible to `$expr`
    /// (for example `$lookup`'s `let` variables in a sub-pipeline's `$match`). `$$ROOT`
    /// and `$$CURRENT` are `doc`.
    pub fn matches_in(&self, doc: &Document, outer: &Ctx<'_>) -> Result<bool, EvalError> {
        let ctx = Ctx {
            root: doc,
            current: doc,
            scope: outer.scope,
            env: outer.env,
        };
        self.root.eval(Subject::Doc(doc), &ctx)
    }
}

/// Combines conditions that must all hold.
fn and_of(mut nodes: Vec<Node>) -> Node {
    if nodes.len() == 1 {
        nodes.pop().unwrap_or(Node::Const(true))
    } else {
        Node::And(nodes)
    }
}

/// Top-level operators that take a whole filter rather than a field's value.
const PATHLESS: &[&str] = &[
    "$and",
    "$or",
    "$nor",
    "$expr",
    "$comment",
    "$where",
    "$text",
    "$jsonSchema",
    "$alwaysTrue",
    "$alwaysFalse",
    "$sampleRate",
];

/// Compiles a filter document. `cx` is `None` inside `$elemMatch`, where `$expr` is not
/// allowed.
fn compile_filter(
    d: &Document,
    path: &str,
    mut cx: Option<&mut CompileCtx>,
) -> Result<Node, CompileError> {
    let mut nodes = Vec::with_capacity(d.len());
    for (k, v) in d.iter() {
        let p = path_key(path, k);
        if !k.starts_with('$') {
            nodes.push(compile_field(k, v, &p)?);
            continue;
        }
        match k.as_str() {
            "$and" | "$or" | "$nor" => {
                let items = match v {
                    Value::Array(items) if !items.is_empty() => items,
                    _ => {
                        return Err(CompileError::new(
                            p,
                            format!("{k} must be a non-empty array of filter objects"),
                        ))
                    }
                };
                let mut children = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let ip = path_index(&p, i);
                    match item {
                        Value::Document(sub) => {
                            children.push(compile_filter(sub, &ip, cx.as_deref_mut())?)
                        }
                        other => {
                            return Err(CompileError::new(
                                ip,
                                format!(
                                    "{k} entries must be filter objects, found {}",
                                    other.type_name()
                                ),
                            ))
                        }
                    }
                }
                nodes.push(match k.as_str() {
                    "$and" => and_of(children),
                    "$or" if children.len() == 1 => children.remove(0),
                    "$or" => Node::Or(children),
                    _ => Node::Nor(children),
                });
            }
            "$expr" => {
                let Some(cx) = cx.as_deref_mut() else {
                    return Err(CompileError::new(
                        p,
                        "$expr can only be applied to the top-level document, not inside $elemMatch",
                    ));
                };
                nodes.push(Node::Expr(compile_expr(v, &p, cx)?));
            }
            "$comment" => {}
            "$alwaysTrue" | "$alwaysFalse" => {
                if v.as_i64_exact() != Some(1) {
                    return Err(CompileError::new(p, format!("{k} must be the number 1")));
                }
                nodes.push(Node::Const(k == "$alwaysTrue"));
            }
            "$where" => {
                return Err(CompileError::new(
                    p,
                    "$where is not allowed inside $match; use $expr instead",
                ))
            }
            "$text" | "$jsonSchema" | "$sampleRate" => {
                return Err(CompileError::new(
                    p,
                    format!("{k} is not supported in stream queries"),
                ))
            }
            _ => {
                return Err(CompileError::new(
                    path,
                    format!("unknown top level query operator '{k}'"),
                ))
            }
        }
    }
    Ok(and_of(nodes))
}

/// Splits a dotted field name into pre-parsed segments.
fn split_path(field: &str) -> Box<[Seg]> {
    field.split('.').map(Seg::new).collect()
}

/// True when `{field: v}` holds operators (`{$gt: 1}`) rather than a literal document.
fn is_operator_doc(d: &Document) -> bool {
    match d.iter().next() {
        Some((k, _)) => k.starts_with('$') && k != "$ref",
        None => false,
    }
}

/// Compiles `{field: value}`.
fn compile_field(field: &str, v: &Value, path: &str) -> Result<Node, CompileError> {
    let segs = split_path(field);
    match v {
        Value::Document(d) if is_operator_doc(d) => compile_ops(&segs, d, path),
        Value::Regex(r) => Ok(leaf(
            &segs,
            Test::Regex(build_regex(&r.pattern, &r.options, path)?),
        )),
        other => Ok(leaf(&segs, equality(other, path)?)),
    }
}

fn leaf(segs: &[Seg], test: Test) -> Node {
    let mode = match test {
        Test::Size(_) | Test::ElemMatchValue(_) | Test::ElemMatchObject(_) => LeafMode::Whole,
        _ => LeafMode::Traverse,
    };
    Node::Leaf {
        path: segs.into(),
        mode,
        test,
    }
}

fn equality(v: &Value, path: &str) -> Result<Test, CompileError> {
    comparison(CmpOp::Eq, v, path)
}

fn comparison(op: CmpOp, v: &Value, path: &str) -> Result<Test, CompileError> {
    if matches!(v, Value::Undefined | Value::Missing) {
        return Err(CompileError::new(path, "cannot compare to undefined"));
    }
    Ok(Test::Cmp(op, v.clone()))
}

/// Compiles an operator object `{$gt: 1, $lt: 5}` on a path (empty path: the value form
/// of `$elemMatch`). Each operator becomes its own condition; all must hold.
fn compile_ops(segs: &[Seg], d: &Document, path: &str) -> Result<Node, CompileError> {
    let mut nodes = Vec::with_capacity(d.len());
    let has_regex = d.contains_key("$regex");
    for (op, arg) in d.iter() {
        let p = path_key(path, op);
        let cmp = match op.as_str() {
            "$eq" => Some(CmpOp::Eq),
            "$lt" => Some(CmpOp::Lt),
            "$lte" => Some(CmpOp::Lte),
            "$gt" => Some(CmpOp::Gt),
            "$gte" => Some(CmpOp::Gte),
            _ => None,
        };
        if let Some(c) = cmp {
            nodes.push(leaf(segs, comparison(c, arg, &p)?));
            continue;
        }
        let node = match op.as_str() {
            "$ne" if matches!(arg, Value::Regex(_)) => {
                return Err(CompileError::new(
                    p,
                    "$ne cannot take a regex; use {$not: /pattern/} instead",
                ))
            }
            "$ne" => Node::Not(Box::new(leaf(segs, equality(arg, &p)?))),
            "$in" => leaf(segs, compile_in("$in", arg, &p)?),
            "$nin" => Node::Not(Box::new(leaf(segs, compile_in("$nin", arg, &p)?))),
            "$exists" => {
                let exists = leaf(segs, Test::Exists);
                if arg.is_truthy() {
                    exists
                } else {
                    Node::Not(Box::new(exists))
                }
            }
            "$type" => leaf(segs, Test::Type(compile_type(arg, &p)?)),
            "$regex" => leaf(segs, Test::Regex(compile_regex_op(d, arg, &p)?)),
            "$options" if has_regex => continue,
            "$options" => return Err(CompileError::new(p, "$options needs a $regex")),
            "$not" => Node::Not(Box::new(compile_not(segs, arg, &p)?)),
            "$elemMatch" => leaf(segs, compile_elem_match(arg, &p)?),
            "$size" => leaf(segs, Test::Size(compile_size(arg, &p)?)),
            "$all" => compile_all(segs, arg, &p)?,
            "$mod" => {
                let (divisor, remainder) = compile_mod(arg, &p)?;
                leaf(segs, Test::Mod(divisor, remainder))
            }
            "$near" | "$nearSphere" | "$geoWithin" | "$geoIntersects" | "$within" | "$box"
            | "$center" | "$centerSphere" | "$polygon" | "$geometry" => {
                return Err(CompileError::new(
                    p,
                    format!("geospatial query operator '{op}' is not supported"),
                ))
            }
            "$bitsAllSet" => leaf(segs, Test::Bits(BitsOp::AllSet, compile_bits(op, arg, &p)?)),
            "$bitsAnySet" => leaf(segs, Test::Bits(BitsOp::AnySet, compile_bits(op, arg, &p)?)),
            "$bitsAllClear" => leaf(
                segs,
                Test::Bits(BitsOp::AllClear, compile_bits(op, arg, &p)?),
            ),
            "$bitsAnyClear" => leaf(
                segs,
                Test::Bits(BitsOp::AnyClear, compile_bits(op, arg, &p)?),
            ),
            _ => {
                return Err(CompileError::new(
                    path,
                    format!("unknown query operator '{op}'"),
                ))
            }
        };
        nodes.push(node);
    }
    Ok(and_of(nodes))
}

fn compile_in(name: &str, arg: &Value, path: &str) -> Result<Test, CompileError> {
    let Value::Array(items) = arg else {
        return Err(CompileError::new(
            path,
            format!("{name} needs an array, found {}", arg.type_name()),
        ));
    };
    let mut values = Vec::with_capacity(items.len());
    let mut regexes = Vec::new();
    let mut has_null = false;
    for (i, item) in items.iter().enumerate() {
        match item {
            Value::Regex(r) => {
                regexes.push(build_regex(&r.pattern, &r.options, &path_index(path, i))?)
            }
            Value::Document(d) if is_operator_doc(d) => {
                return Err(CompileError::new(
                    path_index(path, i),
                    format!("cannot nest $ operators under {name}; list plain values"),
                ))
            }
            Value::Undefined | Value::Missing => {
                return Err(CompileError::new(
                    path_index(path, i),
                    format!("{name} cannot contain undefined"),
                ))
            }
            other => {
                has_null |= matches!(other, Value::Null);
                values.push(other.clone());
            }
        }
    }
    values.sort_by(compare_values);
    values.dedup_by(|a, b| compare_values(a, b).is_eq());
    Ok(Test::In {
        values,
        has_null,
        regexes,
    })
}

/// `$type`: a type name, a BSON type number, `"number"`, or an array of them.
fn compile_type(arg: &Value, path: &str) -> Result<u32, CompileError> {
    fn one(v: &Value, path: &str) -> Result<u32, CompileError> {
        match v {
            Value::String(s) => {
                let code = match s.as_str() {
                    "double" => 1,
                    "string" => 2,
                    "object" => 3,
                    "array" => 4,
                    "binData" => 5,
                    "undefined" => 6,
                    "objectId" => 7,
                    "bool" => 8,
                    "date" => 9,
                    "null" => 10,
                    "regex" => 11,
                    "dbPointer" => 12,
                    "javascript" => 13,
                    "symbol" => 14,
                    "javascriptWithScope" => 15,
                    "int" => 16,
                    "timestamp" => 17,
                    "long" => 18,
                    "decimal" => 19,
                    "minKey" => -1,
                    "maxKey" => 127,
                    "number" => {
                        return Ok(type_bit(1) | type_bit(16) | type_bit(18) | type_bit(19));
                    }
                    other => {
                        return Err(CompileError::new(
                            path,
                            format!("$type: unknown type name alias '{other}'"),
                        ))
                    }
                };
                Ok(type_bit(code))
            }
            v if v.is_number() => match v.as_i64_exact() {
                Some(n @ (-1 | 1..=19 | 127)) => Ok(type_bit(n as i32)),
                _ => Err(CompileError::new(
                    path,
                    format!("$type: invalid numerical type code {}", v.to_json()),
                )),
            },
            other => Err(CompileError::new(
                path,
                format!(
                    "$type needs a type name or number, found {}",
                    other.type_name()
                ),
            )),
        }
    }
    match arg {
        Value::Array(items) => {
            let mut set = 0;
            for (i, item) in items.iter().enumerate() {
                set |= one(item, &path_index(path, i))?;
            }
            Ok(set)
        }
        other => one(other, path),
    }
}

/// Builds a regex from MongoDB's pattern and flags (`i`, `m`, `s`, `x`, `u`).
fn build_regex(pattern: &str, options: &str, path: &str) -> Result<QueryRegex, CompileError> {
    let mut flags = String::new();
    for c in options.chars() {
        match c {
            'i' | 'm' | 's' | 'x' => {
                if !flags.contains(c) {
                    flags.push(c);
                }
            }
            // Unicode is always on.
            'u' => {}
            other => {
                return Err(CompileError::new(
                    path,
                    format!("$regex: invalid flag '{other}' in options (use i, m, s, x, u)"),
                ))
            }
        }
    }
    if pattern.contains('\0') {
        return Err(CompileError::new(
            path,
            "$regex: a regular expression cannot contain a null byte",
        ));
    }
    let source = if flags.is_empty() {
        pattern.to_string()
    } else {
        format!("(?{flags}){pattern}")
    };
    let re = regex::Regex::new(&source).map_err(|e| {
        CompileError::new(
            path,
            format!("$regex: invalid regular expression /{pattern}/: {e}"),
        )
    })?;
    Ok(QueryRegex {
        re,
        pattern: pattern.to_string(),
        options: sorted(options),
    })
}

/// `{$regex: "p", $options: "i"}` or `{$regex: /p/i}`.
fn compile_regex_op(d: &Document, arg: &Value, path: &str) -> Result<QueryRegex, CompileError> {
    let options = match d.get("$options") {
        None => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(other) => {
            return Err(CompileError::new(
                path,
                format!("$options must be a string, found {}", other.type_name()),
            ))
        }
    };
    match arg {
        Value::String(s) => build_regex(s, options.unwrap_or(""), path),
        Value::Regex(r) => {
            if !r.options.is_empty() && options.is_some_and(|o| !o.is_empty()) {
                return Err(CompileError::new(
                    path,
                    "options set in both $regex and $options",
                ));
            }
            let opts = if r.options.is_empty() {
                options.unwrap_or("")
            } else {
                &r.options
            };
            build_regex(&r.pattern, opts, path)
        }
        other => Err(CompileError::new(
            path,
            format!("$regex has to be a string, found {}", other.type_name()),
        )),
    }
}

/// `$not`: an operator object or a regex; the result is negated by the caller.
fn compile_not(segs: &[Seg], arg: &Value, path: &str) -> Result<Node, CompileError> {
    match arg {
        Value::Regex(r) => Ok(leaf(
            segs,
            Test::Regex(build_regex(&r.pattern, &r.options, path)?),
        )),
        Value::Document(d) if d.is_empty() => Err(CompileError::new(path, "$not cannot be empty")),
        Value::Document(d) if is_operator_doc(d) => compile_ops(segs, d, path),
        Value::Document(_) => Err(CompileError::new(
            path,
            "$not needs an operator object such as {$gt: 5} or a regex, not a literal document",
        )),
        other => Err(CompileError::new(
            path,
            format!(
                "$not needs an operator object or a regex, found {}",
                other.type_name()
            ),
        )),
    }
}

fn compile_elem_match(arg: &Value, path: &str) -> Result<Test, CompileError> {
    let Value::Document(d) = arg else {
        return Err(CompileError::new(
            path,
            format!("$elemMatch needs an object, found {}", arg.type_name()),
        ));
    };
    let value_form = match d.iter().next() {
        Some((k, _)) => k.starts_with('$') && !PATHLESS.contains(&k.as_str()),
        None => false,
    };
    if value_form {
        Ok(Test::ElemMatchValue(Box::new(compile_ops(&[], d, path)?)))
    } else {
        Ok(Test::ElemMatchObject(Box::new(compile_filter(
            d, path, None,
        )?)))
    }
}

fn compile_size(arg: &Value, path: &str) -> Result<usize, CompileError> {
    if !arg.is_number() {
        return Err(CompileError::new(
            path,
            format!("$size needs a number, found {}", arg.type_name()),
        ));
    }
    match arg.as_i64_exact() {
        Some(n) if n >= 0 => Ok(n as usize),
        Some(_) => Err(CompileError::new(path, "$size may not be negative")),
        None => Err(CompileError::new(
            path,
            format!("$size must be a whole number, found {}", arg.to_json()),
        )),
    }
}

/// `$all`: every listed value (or `$elemMatch` condition) must match.
fn compile_all(segs: &[Seg], arg: &Value, path: &str) -> Result<Node, CompileError> {
    let Value::Array(items) = arg else {
        return Err(CompileError::new(
            path,
            format!("$all needs an array, found {}", arg.type_name()),
        ));
    };
    if items.is_empty() {
        return Ok(Node::Const(false));
    }
    let is_elem_match = |v: &Value| matches!(v, Value::Document(d) if d.iter().next().is_some_and(|(k, _)| k == "$elemMatch"));
    let elem_match_form = is_elem_match(&items[0]);
    let mut nodes = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let ip = path_index(path, i);
        if elem_match_form {
            match item {
                Value::Document(d) if is_elem_match(item) && d.len() == 1 => {
                    let em = d.get("$elemMatch").unwrap_or(&Value::Null);
                    nodes.push(leaf(
                        segs,
                        compile_elem_match(em, &path_key(&ip, "$elemMatch"))?,
                    ));
                }
                _ => {
                    return Err(CompileError::new(
                        ip,
                        "$all: when the first element is an $elemMatch, every element must be one",
                    ))
                }
            }
            continue;
        }
        match item {
            Value::Regex(r) => nodes.push(leaf(
                segs,
                Test::Regex(build_regex(&r.pattern, &r.options, &ip)?),
            )),
            Value::Document(d) if is_operator_doc(d) => {
                return Err(CompileError::new(
                    ip,
                    "$all: no $ operators allowed in its values (except a leading $elemMatch)",
                ))
            }
            other => nodes.push(leaf(segs, equality(other, &ip)?)),
        }
    }
    Ok(and_of(nodes))
}

/// The bit positions of a bitwise operator's argument: a non-negative integer bitmask,
/// binary data (a little-endian bitmask) or an array of bit positions.
fn compile_bits(name: &str, arg: &Value, path: &str) -> Result<Vec<u64>, CompileError> {
    let mut positions = Vec::new();
    match arg {
        Value::Binary(b) => {
            for (i, byte) in b.bytes.iter().enumerate() {
                for bit in 0..8 {
                    if byte >> bit & 1 == 1 {
                        positions.push(i as u64 * 8 + bit);
                    }
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                match item.as_i64_exact() {
                    Some(p) if p >= 0 => positions.push(p as u64),
                    _ => {
                        return Err(CompileError::new(
                            path_index(path, i),
                            format!(
                                "{name}: bit positions must be non-negative integers, found {}",
                                item.to_json()
                            ),
                        ))
                    }
                }
            }
            positions.sort_unstable();
            positions.dedup();
        }
        v if v.is_number() => match v.as_i64_exact() {
            Some(mask) if mask >= 0 => positions.extend((0..63).filter(|b| mask >> b & 1 == 1)),
            _ => {
                return Err(CompileError::new(
                    path,
                    format!(
                        "{name}: the bitmask must be a non-negative 64-bit integer, found {}",
                        v.to_json()
                    ),
                ))
            }
        },
        other => {
            return Err(CompileError::new(
                path,
                format!(
                "{name} takes a bitmask number, binary data or an array of bit positions, found {}",
                other.type_name()
            ),
            ))
        }
    }
    Ok(positions)
}

/// `$mod: [divisor, remainder]`; doubles and decimals are truncated toward zero.
fn compile_mod(arg: &Value, path: &str) -> Result<(i64, i64), CompileError> {
    let Value::Array(items) = arg else {
        return Err(CompileError::new(
            path,
            "malformed $mod: it needs an array [divisor, remainder]",
        ));
    };
    if items.len() != 2 {
        return Err(CompileError::new(
            path,
            format!(
                "malformed $mod: it needs exactly 2 elements [divisor, remainder], found {}",
                items.len()
            ),
        ));
    }
    let part = |v: &Value, what: &str| -> Result<i64, CompileError> {
        let n = v.as_number().ok_or_else(|| {
            CompileError::new(
                path,
                format!(
                    "malformed $mod: {what} is not a number, found {}",
                    v.type_name()
                ),
            )
        })?;
        if let Some(i) = n.to_i64_exact() {
            return Ok(i);
        }
        let t = n.to_f64().trunc();
        if t.is_finite() && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&t) {
            Ok(t as i64)
        } else {
            Err(CompileError::new(
                path,
                format!(
                    "malformed $mod: {what} {} is not representable as a 64-bit integer",
                    v.to_json()
                ),
            ))
        }
    };
    let divisor = part(&items[0], "divisor")?;
    let remainder = part(&items[1], "remainder")?;
    if divisor == 0 {
        return Err(CompileError::new(path, "$mod: divisor cannot be 0"));
    }
    Ok((divisor, remainder))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{parse_document, parse_value};

    fn q(filter: &str) -> Query {
        let f = parse_value(filter).expect("filter json");
        Query::compile(&f, "q", &mut CompileCtx::default()).expect("compiles")
    }

    fn m(filter: &str, doc: &str) -> bool {
        let d = parse_document(doc).expect("doc json");
        q(filter).matches(&d, &Env::at(0)).expect("evaluates")
    }

    fn err(filter: &str) -> String {
        let f = parse_value(filter).expect("filter json");
        Query::compile(&f, "q", &mut CompileCtx::default())
            .expect_err("should fail")
            .to_string()
    }

    #[test]
    fn numeric_path_components() {
        assert!(m(r#"{"a.0.b": 1}"#, r#"{"a": [{"b": 1}, {"b": 2}]}"#));
        assert!(!m(r#"{"a.1.b": 1}"#, r#"{"a": [{"b": 1}, {"b": 2}]}"#));
        assert!(m(r#"{"a.1": 5}"#, r#"{"a": [4, 5]}"#));
        // A leading zero is a field name, not an index.
        assert!(!m(r#"{"a.01": 5}"#, r#"{"a": [4, 5]}"#));
        // Nested arrays through an index.
        assert!(m(r#"{"a.0.1": 3}"#, r#"{"a": [[2, 3]]}"#));
        // A field literally named "0" in a subdocument.
        assert!(m(r#"{"a.0": 7}"#, r#"{"a": [{"0": 7}]}"#));
    }

    #[test]
    fn nested_arrays_are_not_implicitly_flattened() {
        assert!(!m(r#"{"a.b": 1}"#, r#"{"a": [[{"b": 1}]]}"#));
        assert!(!m(r#"{"a": 1}"#, r#"{"a": [[1]]}"#));
        assert!(m(r#"{"a": [1]}"#, r#"{"a": [[1]]}"#));
    }

    #[test]
    fn comparison_brackets_and_nan() {
        assert!(!m(r#"{"a": {"$gt": 5}}"#, r#"{"a": "9"}"#));
        assert!(m(r#"{"a": {"$lt": {"$maxKey": 1}}}"#, r#"{"a": "x"}"#));
        assert!(m(r#"{"a": {"$gte": {"$minKey": 1}}}"#, r#"{"a": null}"#));
        assert!(!m(
            r#"{"a": {"$gt": 1}}"#,
            r#"{"a": {"$numberDouble": "NaN"}}"#
        ));
        assert!(m(
            r#"{"a": {"$gte": {"$numberDouble": "NaN"}}}"#,
            r#"{"a": {"$numberDouble": "NaN"}}"#
        ));
        assert!(m(r#"{"a": {"$gte": null}}"#, r#"{"b": 1}"#));
        assert!(!m(r#"{"a": {"$gt": null}}"#, r#"{"b": 1}"#));
    }

    #[test]
    fn in_uses_sorted_lookup_and_regexes() {
        assert!(m(
            r#"{"a": {"$in": [3, 1, 2.0, "x"]}}"#,
            r#"{"a": {"$numberLong": "2"}}"#
        ));
        assert!(m(
            r#"{"a": {"$in": [{"$regularExpression": {"pattern": "^b", "options": ""}}]}}"#,
            r#"{"a": ["a", "bc"]}"#
        ));
        assert!(m(r#"{"a": {"$in": [null]}}"#, r#"{}"#));
        assert!(!m(r#"{"a": {"$in": []}}"#, r#"{"a": 1}"#));
    }

    #[test]
    fn mod_truncates() {
        assert!(m(r#"{"a": {"$mod": [4, 0]}}"#, r#"{"a": 8.9}"#));
        assert!(m(r#"{"a": {"$mod": [4.5, 0]}}"#, r#"{"a": 8}"#));
        assert!(m(
            r#"{"a": {"$mod": [-1, 0]}}"#,
            r#"{"a": {"$numberLong": "-9223372036854775808"}}"#
        ));
        assert!(!m(r#"{"a": {"$mod": [4, 0]}}"#, r#"{"a": "8"}"#));
    }

    #[test]
    fn matches_in_sees_outer_variables() {
        let mut cx = CompileCtx::default();
        let id = cx.bind("limit", "let").expect("valid name");
        let f = parse_value(r#"{"$expr": {"$lt": ["$a", "$$limit"]}}"#).expect("filter json");
        let query = Query::compile(&f, "q", &mut cx).expect("compiles");
        let doc = parse_document(r#"{"a": 3}"#).expect("doc json");
        let env = Env::at(0);
        let outer_doc = Document::new();
        let outer = Ctx::new(&outer_doc, &env);
        let at = |limit: i32| {
            outer
                .with_var(id, &Value::Int32(limit), |c| query.matches_in(&doc, c))
                .expect("evaluates")
        };
        assert!(at(5));
        assert!(!at(2));
    }

    #[test]
    fn bits_and_elem_match_forms() {
        assert!(m(
            r#"{"a": {"$bitsAllSet": [0, 2]}}"#,
            r#"{"a": {"$numberLong": "5"}}"#
        ));
        assert!(!m(r#"{"a": {"$bitsAllSet": [0, 1]}}"#, r#"{"a": 5}"#));
        assert!(m(r#"{"a": {"$bitsAllClear": [70]}}"#, r#"{"a": 5}"#));
        // Document form over nested arrays: the inner array's indexes are its fields.
        assert!(m(
            r#"{"a": {"$elemMatch": {"1": 7}}}"#,
            r#"{"a": [[6, 7]]}"#
        ));
        // Value form applies each condition to the element itself, without traversal.
        assert!(!m(
            r#"{"a": {"$elemMatch": {"$eq": 1}}}"#,
            r#"{"a": [[1]]}"#
        ));
        assert!(m(
            r#"{"a": {"$elemMatch": {"$elemMatch": {"$eq": 1}}}}"#,
            r#"{"a": [[1]]}"#
        ));
    }

    #[test]
    fn errors_name_the_path() {
        assert_eq!(
            err(r#"{"age": {"$gtt": 1}}"#),
            "q.age: unknown query operator '$gtt'"
        );
        assert!(err(r#"{"$or": []}"#).starts_with("q.$or: $or must be a non-empty array"));
        assert!(err(r#"{"a": {"$not": 5}}"#).starts_with("q.a.$not:"));
        assert!(err(r#"{"a": {"$elemMatch": {"$expr": true}}}"#).contains("$expr"));
        assert!(err(r#"{"a": {"$options": "i"}}"#).contains("$options needs a $regex"));
        assert!(err(r#"{"a": {"$regex": "("}}"#)
            .starts_with("q.a.$regex: $regex: invalid regular expression"));
    }
}
