//! Object operators: `$mergeObjects`, `$objectToArray`, `$arrayToObject`, `$getField`,
//! `$setField` and `$unsetField`.

use super::{compile_expr, compile_fn, CompileCtx, CompileFn, Ctx, Expr, Operator};
use crate::error::{path_key, CompileError, EvalError};
use crate::value::{Document, Str, Value};
use std::borrow::Cow;
use std::sync::Arc;

/// Operators of this family.
pub(crate) const OPERATORS: &[(&str, CompileFn)] = &[
    ("$mergeObjects", compile_merge_objects),
    ("$objectToArray", compile_object_to_array),
    ("$arrayToObject", compile_array_to_object),
    ("$getField", compile_get_field),
    ("$setField", compile_set_field),
    ("$unsetField", compile_unset_field),
];

fn compile_merge_objects(
    args: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Expr, CompileError> {
    compile_fn(
        "$mergeObjects",
        args,
        0,
        usize::MAX,
        path,
        cx,
        eval_merge_objects,
    )
}

fn compile_object_to_array(
    args: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Expr, CompileError> {
    compile_fn("$objectToArray", args, 1, 1, path, cx, eval_object_to_array)
}

fn compile_array_to_object(
    args: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Expr, CompileError> {
    compile_fn("$arrayToObject", args, 1, 1, path, cx, eval_array_to_object)
}

/// `$mergeObjects`: one document with the fields of every argument in order; a later
/// document's value wins for a repeated field (which keeps its first position).
/// Null and missing arguments are ignored; no arguments give `{}`.
fn eval_merge_objects(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let mut out = Document::new();
    for a in args {
        match a.as_ref() {
            v if v.is_nullish() => {}
            Value::Document(d) => {
                for (k, v) in d.iter() {
                    out.insert(k.clone(), v.clone());
                }
            }
            v => {
                return Err(EvalError::new(format!(
                    "$mergeObjects: requires object inputs, but input {} is of type {}",
                    v.to_json(),
                    v.type_name()
                )))
            }
        }
    }
    Ok(Value::Document(out))
}

/// `$objectToArray`: `{a: 1}` → `[{k: "a", v: 1}]`, in field order. Null/missing → null.
fn eval_object_to_array(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let [a] = args else {
        return Err(EvalError::new("$objectToArray: expected 1 argument"));
    };
    match a.as_ref() {
        v if v.is_nullish() => Ok(Value::Null),
        Value::Document(d) => Ok(Value::Array(
            d.iter()
                .map(|(k, v)| {
                    let mut kv = Document::with_capacity(2);
                    kv.push_unchecked("k", Value::String(k.clone()));
                    kv.push_unchecked("v", v.clone());
                    Value::Document(kv)
                })
                .collect(),
        )),
        v => Err(EvalError::new(format!(
            "$objectToArray: requires a document input, found {}",
            v.type_name()
        ))),
    }
}

/// `$arrayToObject`: `[[k, v], ...]` or `[{k, v}, ...]` (the first element decides the
/// form; all must use it) → a document. A repeated key keeps its first position and
/// takes its last value. Null/missing → null.
fn eval_array_to_object(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let [a] = args else {
        return Err(EvalError::new("$arrayToObject: expected 1 argument"));
    };
    let items = match a.as_ref() {
        v if v.is_nullish() => return Ok(Value::Null),
        Value::Array(items) => items,
        v => {
            return Err(EvalError::new(format!(
                "$arrayToObject: requires an array input, found {}",
                v.type_name()
            )))
        }
    };
    let mut out = Document::with_capacity(items.len());
    let Some(first) = items.first() else {
        return Ok(Value::Document(out));
    };
    let pairs = match first {
        Value::Array(_) => true,
        Value::Document(_) => false,
        v => {
            return Err(EvalError::new(format!(
            "$arrayToObject: elements must be [key, value] arrays or {{k, v}} objects, found {}",
            v.type_name()
        )))
        }
    };
    for item in items {
        let (key, value) = match (pairs, item) {
            (true, Value::Array(kv)) => {
                let [k, v] = kv.as_slice() else {
                    return Err(EvalError::new(format!(
                        "$arrayToObject: requires [key, value] arrays of size 2, found an array of size {}",
                        kv.len()
                    )));
                };
                (k, v)
            }
            (false, Value::Document(d)) => {
                let (Some(k), Some(v), 2) = (d.get("k"), d.get("v"), d.len()) else {
                    return Err(EvalError::new(format!(
                        "$arrayToObject: requires objects with exactly the fields 'k' and 'v', found {}",
                        d.to_json()
                    )));
                };
                (k, v)
            }
            (_, other) => {
                return Err(EvalError::new(format!(
                    "$arrayToObject: elements must all be {} (as the first one), found {}",
                    if pairs { "arrays" } else { "objects" },
                    other.type_name()
                )))
            }
        };
        let Value::String(key) = key else {
            return Err(EvalError::new(format!(
                "$arrayToObject: keys must be strings, found {}",
                key.type_name()
            )));
        };
        if key.contains('\0') {
            return Err(EvalError::new(
                "$arrayToObject: keys must not contain a null byte",
            ));
        }
        out.insert(key.clone(), value.clone());
    }
    Ok(Value::Document(out))
}

// ---------------------------------------------------------------------------------
// $getField
// ---------------------------------------------------------------------------------

/// `$getField`: a field of a document by its literal name (which may contain `.` or
/// start with `$`).
#[derive(Debug)]
struct GetField {
    field: Expr,
    /// `None` reads `$$CURRENT` (the string short form).
    input: Option<Expr>,
}

impl Operator for GetField {
    fn eval<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Cow<'a, Value>, EvalError> {
        let field = self.field.eval(ctx)?;
        let Value::String(name) = field.as_ref() else {
            return Err(EvalError::new(format!(
                "$getField: 'field' must evaluate to a string, but got {}",
                field.type_name()
            )));
        };
        let Some(input) = &self.input else {
            return Ok(ctx
                .current
                .get(name)
                .map_or(Cow::Owned(Value::Missing), Cow::Borrowed));
        };
        Ok(match input.eval(ctx)? {
            Cow::Borrowed(Value::Document(d)) => d
                .get(name)
                .map_or(Cow::Owned(Value::Missing), Cow::Borrowed),
            Cow::Owned(Value::Document(mut d)) => {
                Cow::Owned(d.remove(name).unwrap_or(Value::Missing))
            }
            v if v.is_missing() => Cow::Owned(Value::Missing),
            v if v.is_nullish() => Cow::Owned(Value::Null),
            // Any other input has no fields.
            _ => Cow::Owned(Value::Missing),
        })
    }
}

/// `{$getField: {field, input}}` or the short form `{$getField: <field>}` reading
/// `$$CURRENT`. `field` may be any expression evaluating to a string (MongoDB 7.2+);
/// a constant must be a string.
fn compile_get_field(args: &Value, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
    let named = match args {
        Value::Document(d) => !d.keys().next().is_some_and(|k| k.starts_with('$')),
        _ => false,
    };
    let (field, input) = if named {
        let (field, input) = field_and_input("$getField", args, &[], path)?;
        let input = input
            .ok_or_else(|| CompileError::new(path, "$getField requires 'input' to be specified"))?;
        (
            compile_expr(field, &path_key(path, "field"), cx)?,
            Some(compile_expr(input, &path_key(path, "input"), cx)?),
        )
    } else {
        (compile_expr(args, path, cx)?, None)
    };
    if let Some(c) = field.as_literal() {
        if !matches!(c, Value::String(_)) {
            return Err(CompileError::new(
                if named {
                    path_key(path, "field")
                } else {
                    path.to_string()
                },
                format!(
                    "$getField requires 'field' to evaluate to type String, but got {}",
                    c.type_name()
                ),
            ));
        }
    }
    Ok(Expr::Op(Arc::new(GetField { field, input })))
}

/// The `field` and `input` arguments of `$getField`/`$setField`/`$unsetField` (plus
/// the `extra` ones), rejecting unknown arguments and a missing `field`.
fn field_and_input<'v>(
    op: &str,
    args: &'v Value,
    extra: &[&str],
    path: &str,
) -> Result<(&'v Value, Option<&'v Value>), CompileError> {
    let Value::Document(d) = args else {
        return Err(CompileError::new(
            path,
            format!(
                "{op} requires an object as an argument, found {}",
                args.type_name()
            ),
        ));
    };
    for k in d.keys() {
        if k != "field" && k != "input" && !extra.contains(&k.as_str()) {
            return Err(CompileError::new(
                path_key(path, k),
                format!("{op}: unknown argument '{k}'"),
            ));
        }
    }
    let field = d
        .get("field")
        .ok_or_else(|| CompileError::new(path, format!("{op} requires 'field' to be specified")))?;
    Ok((field, d.get("input")))
}

// ---------------------------------------------------------------------------------
// $setField / $unsetField
// ---------------------------------------------------------------------------------

/// `$setField` / `$unsetField`: a copy of `input` with one field (named literally) set
/// or removed. A value of `$$REMOVE` (or any missing value) removes the field.
#[derive(Debug)]
struct SetField {
    op: &'static str,
    field: Str,
    input: Expr,
    /// `None` for `$unsetField`.
    value: Option<Expr>,
}

impl Operator for SetField {
    fn eval<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Cow<'a, Value>, EvalError> {
        let input = self.input.eval(ctx)?;
        if input.is_nullish() {
            return Ok(Cow::Owned(Value::Null));
        }
        let mut doc = match input {
            Cow::Owned(Value::Document(d)) => d,
            Cow::Borrowed(Value::Document(d)) => d.clone(),
            other => {
                return Err(EvalError::new(format!(
                    "{}: 'input' must evaluate to an object, found {}",
                    self.op,
                    other.type_name()
                )))
            }
        };
        let value = match &self.value {
            Some(e) => e.eval_owned(ctx)?,
            None => Value::Missing,
        };
        doc.insert(self.field.clone(), value);
        Ok(Cow::Owned(Value::Document(doc)))
    }
}

fn compile_set_field(args: &Value, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
    compile_field_mutation("$setField", args, path, cx)
}

fn compile_unset_field(
    args: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Expr, CompileError> {
    compile_field_mutation("$unsetField", args, path, cx)
}

/// `{$setField: {field, input, value}}` / `{$unsetField: {field, input}}`; `field` must
/// be a constant string.
fn compile_field_mutation(
    op: &'static str,
    args: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Expr, CompileError> {
    let is_set = op == "$setField";
    let extra: &[&str] = if is_set { &["value"] } else { &[] };
    let (field, input) = field_and_input(op, args, extra, path)?;
    let field_path = path_key(path, "field");
    if let Value::String(s) = field {
        if s.starts_with('$') {
            return Err(CompileError::new(
                field_path,
                format!("{op}: 'field' must be a constant string, but '{s}' is a field path reference (did you mean {{\"$literal\": \"{s}\"}}?)"),
            ));
        }
    }
    let field = match compile_expr(field, &field_path, cx)? {
        Expr::Literal(Value::String(s)) => s,
        Expr::Literal(other) => {
            return Err(CompileError::new(
                field_path,
                format!("{op} requires 'field' to evaluate to type String, but got {}", other.type_name()),
            ))
        }
        _ => {
            return Err(CompileError::new(
                field_path,
                format!("{op} requires 'field' to evaluate to a constant string, but got a non-constant expression"),
            ))
        }
    };
    let input = input
        .ok_or_else(|| CompileError::new(path, format!("{op} requires 'input' to be specified")))?;
    let input = compile_expr(input, &path_key(path, "input"), cx)?;
    let value = match args.as_document().and_then(|d| d.get("value")) {
        Some(v) => Some(compile_expr(v, &path_key(path, "value"), cx)?),
        None if is_set => {
            return Err(CompileError::new(
                path,
                "$setField requires 'value' to be specified",
            ))
        }
        None => None,
    };
    Ok(Expr::Op(Arc::new(SetField {
        op,
        field,
        input,
        value,
    })))
}

#[cfg(test)]
mod tests {
    use crate::expr::Expression;
    use crate::value::{parse_document, parse_value, Value};

    fn eval(expr: &str, doc: &str) -> Result<Value, String> {
        let e = Expression::compile(&parse_value(expr).expect("expr json"))
            .map_err(|e| e.to_string())?;
        e.evaluate(&parse_document(doc).expect("doc json"))
            .map_err(|e| e.to_string())
    }

    fn json(expr: &str, doc: &str) -> String {
        match eval(expr, doc) {
            Ok(v) if v.is_missing() => "<missing>".into(),
            Ok(v) => v.to_json(),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn merge_and_convert() {
        assert_eq!(
            json(
                r#"{"$mergeObjects": [{"a": 1, "b": 2}, null, "$x", {"a": 3}]}"#,
                "{}"
            ),
            r#"{"a":3,"b":2}"#
        );
        assert_eq!(
            json(r#"{"$objectToArray": {"$literal": {"x": 1}}}"#, "{}"),
            r#"[{"k":"x","v":1}]"#
        );
        assert_eq!(
            json(
                r#"{"$arrayToObject": [[["a", 1], ["b", 2], ["a", 3]]]}"#,
                "{}"
            ),
            r#"{"a":3,"b":2}"#
        );
        assert_eq!(
            json(
                r#"{"$arrayToObject": {"$literal": [{"v": 1, "k": "a"}]}}"#,
                "{}"
            ),
            r#"{"a":1}"#
        );
        assert!(json(
            r#"{"$arrayToObject": [[["a", 1], {"k": "b", "v": 2}]]}"#,
            "{}"
        )
        .starts_with("error"));
    }

    #[test]
    fn get_and_set_field() {
        let doc = r#"{"a.b": 1, "$p": 2, "s": {"x": null}}"#;
        assert_eq!(json(r#"{"$getField": "a.b"}"#, doc), "1");
        assert_eq!(json(r#"{"$getField": {"$literal": "$p"}}"#, doc), "2");
        assert_eq!(
            json(r#"{"$getField": {"field": "x", "input": "$s"}}"#, doc),
            "null"
        );
        assert_eq!(
            json(r#"{"$getField": {"field": "y", "input": "$s"}}"#, doc),
            "<missing>"
        );
        assert_eq!(
            json(r#"{"$getField": {"field": "y", "input": "$nope"}}"#, doc),
            "<missing>"
        );
        assert!(json(r#"{"$getField": {"field": 5, "input": "$s"}}"#, doc).contains("type String"));
        assert_eq!(
            json(
                r#"{"$setField": {"field": "a.b", "input": "$$ROOT", "value": "$$REMOVE"}}"#,
                doc
            ),
            r#"{"$p":2,"s":{"x":null}}"#
        );
        assert_eq!(
            json(
                r#"{"$setField": {"field": "n", "input": "$s", "value": 1}}"#,
                doc
            ),
            r#"{"x":null,"n":1}"#
        );
        assert!(json(
            r#"{"$setField": {"field": "$n", "input": "$s", "value": 1}}"#,
            doc
        )
        .contains("$literal"));
    }
}
