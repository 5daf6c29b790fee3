//! `$setWindowFields`: computes window functions over partitions of the input.
//!
//! ```json
//! {"$setWindowFields": {
//!     "partitionBy": "$state",
//!     "sortBy": {"orderDate": 1},
//!     "output": {"cumulativeQuantity": {"$sum": "$quantity",
//!                                       "window": {"documents": ["unbounded", "current"]}}}}}
//! ```
//!
//! A blocking stage: documents are buffered, then at the end of the input sorted by the
//! partition key and the `sortBy` fields (MongoDB's order, stable for ties), each
//! partition's outputs are computed against the unmodified input documents, set on the
//! documents (dotted paths allowed) and the documents emitted in that order. The
//! partition key treats a missing value as null and may not be an array; documents
//! whose key is an array, or whose sortBy value has the wrong type for a `range`
//! window, fail individually when they arrive.

mod bounds;
mod functions;

use super::{Stage, StageCompileFn};
use crate::error::{path_key, CompileError, EvalError};
use crate::expr::{compile_expr, doc_path, parse_field_path, CompileCtx, Ctx, Env, Expr};
use crate::value::{compare_values, Document, Str, Value};
use bounds::{check_range_value, TimeUnit};
use functions::{compile_output, Output};
use std::cmp::Ordering;
use std::sync::Arc;

/// Stages of this family.
pub(crate) const STAGES: &[(&str, StageCompileFn)] =
    &[("$setWindowFields", compile_set_window_fields)];

/// The `sortBy` fields: path and ascending flag.
type SortSpec = Vec<(Arc<[Str]>, bool)>;

#[derive(Debug)]
struct Config {
    partition: Option<Expr>,
    sort: SortSpec,
    outputs: Vec<Output>,
    /// The units of the range windows in use (`None` = numeric range).
    range_units: Vec<Option<TimeUnit>>,
}

/// A buffered document with its partition key and sort keys.
#[derive(Debug)]
struct Row {
    partition: Value,
    keys: Vec<Value>,
    doc: Document,
}

#[derive(Debug)]
struct SetWindowFields {
    cfg: Arc<Config>,
    rows: Vec<Row>,
}

fn err(path: impl Into<String>, msg: impl Into<String>) -> CompileError {
    CompileError::new(path, msg)
}

fn compile_set_window_fields(
    spec: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Box<dyn Stage>, CompileError> {
    let Value::Document(d) = spec else {
        return Err(err(
            path,
            format!("$setWindowFields expects an object with 'partitionBy', 'sortBy' and 'output', found {}", spec.type_name()),
        ));
    };
    let mut partition = None;
    let mut sort = SortSpec::new();
    let mut output = None;
    for (k, v) in d.iter() {
        let p = path_key(path, k);
        match k.as_str() {
            "partitionBy" => partition = Some(compile_expr(v, &p, cx)?),
            "sortBy" => sort = parse_sort(v, &p)?,
            "output" => output = Some((v, p)),
            _ => {
                return Err(err(
                    &p,
                    format!("$setWindowFields: unknown field '{k}'; expected 'partitionBy', 'sortBy' or 'output'"),
                ))
            }
        }
    }
    let Some((output, opath)) = output else {
        return Err(err(path, "$setWindowFields requires an 'output' object"));
    };
    let Value::Document(od) = output else {
        return Err(err(
            &opath,
            format!("'output' must be an object, found {}", output.type_name()),
        ));
    };
    let mut outputs = Vec::with_capacity(od.len());
    for (name, spec) in od.iter() {
        let p = path_key(&opath, name);
        if name.is_empty() || name.starts_with('$') {
            return Err(err(
                &p,
                format!("output field name '{name}' must be a non-empty field path not starting with '$'"),
            ));
        }
        let field = parse_field_path(name, &p)?;
        outputs.push(compile_output(field, spec, &p, &sort, cx)?);
    }
    for (i, a) in outputs.iter().enumerate() {
        for b in &outputs[i + 1..] {
            let n = a.path.len().min(b.path.len());
            if a.path[..n] == b.path[..n] {
                return Err(err(
                    &opath,
                    format!(
                        "specification contains two conflicting paths: '{}' and '{}'",
                        a.path.join("."),
                        b.path.join(".")
                    ),
                ));
            }
        }
    }
    let mut range_units = Vec::new();
    for o in &outputs {
        if let Some(unit) = o.bounds.range_unit() {
            if !range_units.contains(&unit) {
                range_units.push(unit);
            }
        }
    }
    Ok(Box::new(SetWindowFields {
        cfg: Arc::new(Config {
            partition,
            sort,
            outputs,
            range_units,
        }),
        rows: Vec::new(),
    }))
}

fn parse_sort(v: &Value, path: &str) -> Result<SortSpec, CompileError> {
    let Value::Document(d) = v else {
        return Err(err(
            path,
            format!(
                "sortBy must be an object like {{\"field\": 1}}, found {}",
                v.type_name()
            ),
        ));
    };
    if d.is_empty() {
        return Err(err(path, "sortBy must have at least one sort key"));
    }
    let mut out = SortSpec::with_capacity(d.len());
    for (k, dir) in d.iter() {
        let p = path_key(path, k);
        let field = parse_field_path(k, &p)?;
        let asc = match dir.as_number().and_then(|n| n.to_i64_exact()) {
            Some(1) => true,
            Some(-1) => false,
            _ => {
                return Err(err(
                    &p,
                    format!(
                        "sort order must be 1 (ascending) or -1 (descending), found {}",
                        dir.to_json()
                    ),
                ))
            }
        };
        out.push((field, asc));
    }
    Ok(out)
}

/// The value a document sorts by for one sortBy field, as `$sort` does: missing sorts as
/// null; an array sorts by its smallest element ascending, its largest descending; an
/// empty array sorts before null.
fn sort_key(doc: &Document, path: &[Str], asc: bool) -> Value {
    let v = doc_path(doc, path);
    match v.as_ref() {
        Value::Missing | Value::Undefined => Value::Null,
        Value::Array(items) => {
            let mut best: Option<&Value> = None;
            let flat = items.iter().flat_map(|x| match x {
                Value::Array(inner) => inner.as_slice(),
                other => std::slice::from_ref(other),
            });
            for item in flat {
                let better = best.is_none_or(|b| {
                    let c = compare_values(item, b);
                    if asc {
                        c == Ordering::Less
                    } else {
                        c == Ordering::Greater
                    }
                });
                if better {
                    best = Some(item);
                }
            }
            best.cloned().unwrap_or(Value::Undefined)
        }
        other => other.clone(),
    }
}

fn compare_keys(a: &[Value], b: &[Value], sort: &SortSpec) -> Ordering {
    for ((x, y), (_, asc)) in a.iter().zip(b).zip(sort) {
        let c = compare_values(x, y);
        if c != Ordering::Equal {
            return if *asc { c } else { c.reverse() };
        }
    }
    Ordering::Equal
}

impl Stage for SetWindowFields {
    fn name(&self) -> &'static str {
        "$setWindowFields"
    }

    fn process(
        &mut self,
        doc: Document,
        env: &Env,
        _out: &mut Vec<Document>,
    ) -> Result<(), EvalError> {
        let cfg = &self.cfg;
        let partition = match &cfg.partition {
            None => Value::Null,
            Some(e) => {
                let v = e.eval(&Ctx::new(&doc, env))?;
                match v.as_ref() {
                    Value::Array(_) => return Err(EvalError::new(
                        "$setWindowFields: the partitionBy expression cannot evaluate to an array",
                    )),
                    Value::Missing => Value::Null,
                    _ => v.into_owned(),
                }
            }
        };
        if let Some((path, _)) = cfg.sort.first() {
            for unit in &cfg.range_units {
                check_range_value(&doc_path(&doc, path), *unit)
                    .map_err(|m| EvalError::new(format!("$setWindowFields: {m}")))?;
            }
        }
        let keys = cfg
            .sort
            .iter()
            .map(|(p, asc)| sort_key(&doc, p, *asc))
            .collect();
        self.rows.push(Row {
            partition,
            keys,
            doc,
        });
        Ok(())
    }

    fn finish(&mut self, env: &Env, out: &mut Vec<Document>) -> Result<(), EvalError> {
        let cfg = Arc::clone(&self.cfg);
        let mut rows = std::mem::take(&mut self.rows);
        rows.sort_by(|a, b| {
            compare_values(&a.partition, &b.partition)
                .then_with(|| compare_keys(&a.keys, &b.keys, &cfg.sort))
        });
        let sort_path: &[Str] = cfg.sort.first().map_or(&[], |(p, _)| &p[..]);
        let mut first_error: Option<EvalError> = None;
        let mut failed = 0usize;
        let mut rows = rows.into_iter().peekable();
        while let Some(first) = rows.next() {
            let key = first.partition;
            let mut docs = vec![first.doc];
            while let Some(row) =
                rows.next_if(|r| compare_values(&r.partition, &key) == Ordering::Equal)
            {
                docs.push(row.doc);
            }
            let mut results: Vec<_> = cfg
                .outputs
                .iter()
                .map(|o| o.compute(&docs, sort_path, env).into_iter())
                .collect();
            for mut doc in docs {
                let mut values = Vec::with_capacity(results.len());
                let mut error = None;
                for r in results.iter_mut() {
                    match r.next() {
                        Some(Ok(v)) => values.push(v),
                        Some(Err(e)) => {
                            error.get_or_insert(e);
                        }
                        None => {}
                    }
                }
                if let Some(e) = error {
                    failed += 1;
                    first_error.get_or_insert(e);
                    continue;
                }
                for (o, v) in cfg.outputs.iter().zip(values) {
                    doc.set_path(&o.path, v);
                }
                out.push(doc);
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) if failed == 1 => Err(e),
            Some(e) => Err(EvalError::new(format!(
                "{} ({} more documents failed)",
                e.message,
                failed - 1
            ))),
        }
    }

    fn fresh(&self) -> Box<dyn Stage> {
        Box::new(SetWindowFields {
            cfg: Arc::clone(&self.cfg),
            rows: Vec::new(),
        })
    }

    fn is_blocking(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::parse_document;

    #[test]
    fn sort_keys_follow_sort_semantics() {
        let doc = parse_document(r#"{"a": [3, 1, [0, 7]], "e": [], "n": null}"#).unwrap();
        let path = |s: &str| -> Vec<Str> { vec![s.into()] };
        assert!(sort_key(&doc, &path("a"), true).identical(&Value::Int32(0)));
        assert!(sort_key(&doc, &path("a"), false).identical(&Value::Int32(7)));
        assert!(sort_key(&doc, &path("e"), true).identical(&Value::Undefined));
        assert!(sort_key(&doc, &path("n"), true).identical(&Value::Null));
        assert!(sort_key(&doc, &path("missing"), true).identical(&Value::Null));
    }

    #[test]
    fn errors_in_one_partition_do_not_drop_the_others() {
        let p = crate::Pipeline::compile_json(
            r#"[{"$setWindowFields": {"partitionBy": "$g", "sortBy": {"x": 1},
                "output": {"d": {"$derivative": {"input": "$y"}, "window": {"documents": [-1, 0]}}}}}]"#,
        )
        .unwrap();
        let docs = [
            r#"{"g": 1, "x": 1, "y": "a"}"#,
            r#"{"g": 1, "x": 2, "y": 2}"#,
            r#"{"g": 2, "x": 1, "y": 1}"#,
            r#"{"g": 2, "x": 3, "y": 5}"#,
        ]
        .map(|s| parse_document(s).unwrap());
        let result = p.run(docs);
        assert_eq!(result.errors.len(), 1, "{:?}", result.errors);
        // Both documents of partition 1 fail ($subtract of strings), reported as one
        // error of the stage; partition 2 is unaffected.
        let msg = result.errors[0].to_string();
        assert!(
            msg.contains("$derivative") && msg.contains("(1 more documents failed)"),
            "{msg}"
        );
        let out: Vec<String> = result.documents.iter().map(|d| d.to_json()).collect();
        assert_eq!(
            out,
            [
                r#"{"g":2,"x":1,"y":1,"d":null}"#,
                r#"{"g":2,"x":3,"y":5,"d":2.0}"#
            ]
        );
    }
}
