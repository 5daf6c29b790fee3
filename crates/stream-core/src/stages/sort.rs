//! `$sort`: a blocking stage that buffers its input and emits it ordered by a compound
//! key in MongoDB's comparison order.
//!
//! Sort keys follow MongoDB: a missing field sorts as null; when the path reaches an
//! array, an ascending sort uses its smallest element and a descending sort its largest;
//! an empty array sorts before null. Equal keys keep their input order.

use super::{Stage, StageCompileFn, StageState};
use crate::error::{path_key, CompileError, EvalError};
use crate::expr::{CompileCtx, Env};
use crate::value::{compare_values, Document, Str, Value};
use std::cmp::Ordering;
use std::sync::Arc;

/// Stages of this family.
pub(crate) const STAGES: &[(&str, StageCompileFn)] = &[("$sort", compile_sort)];

/// One component of a compound sort key.
#[derive(Debug)]
struct SortKey {
    path: Vec<Str>,
    descending: bool,
}

/// A compiled sort specification; shared with other stages that sort.
#[derive(Debug)]
pub(crate) struct SortSpec {
    keys: Vec<SortKey>,
}

impl SortSpec {
    /// Compiles `{field: 1 | -1, ...}` found at `path`; `stage` names the error source.
    pub(crate) fn compile(spec: &Value, path: &str, stage: &str) -> Result<SortSpec, CompileError> {
        let Value::Document(d) = spec else {
            return Err(CompileError::new(
                path,
                format!("{stage}: the sort key specification must be an object like {{\"field\": 1}}, found {}", spec.type_name()),
            ));
        };
        if d.is_empty() {
            return Err(CompileError::new(
                path,
                format!("{stage}: the sort specification must have at least one sort key"),
            ));
        }
        let mut keys = Vec::with_capacity(d.len());
        for (k, v) in d.iter() {
            let p = path_key(path, k);
            let descending = match v {
                Value::Document(m) if m.contains_key("$meta") => {
                    return Err(CompileError::new(
                        p,
                        format!("{stage}: {{$meta: ...}} sort keys are not supported (there is no text or search score outside a database)"),
                    ))
                }
                v if v.as_f64() == Some(1.0) => false,
                v if v.as_f64() == Some(-1.0) => true,
                other => {
                    return Err(CompileError::new(
                        p,
                        format!("{stage}: sort key ordering must be 1 (for ascending) or -1 (for descending), found {}", other.to_json()),
                    ))
                }
            };
            keys.push(SortKey {
                path: split_sort_path(k, stage, &p)?,
                descending,
            });
        }
        Ok(SortSpec { keys })
    }

    /// The sort key of a document: one value per component.
    pub(crate) fn key_of(&self, doc: &Document) -> Vec<Value> {
        self.keys
            .iter()
            .map(|k| sort_key_value(doc, &k.path, k.descending))
            .collect()
    }

    /// Compares two keys produced by [`SortSpec::key_of`].
    pub(crate) fn compare(&self, a: &[Value], b: &[Value]) -> Ordering {
        for ((k, x), y) in self.keys.iter().zip(a).zip(b) {
            let o = compare_values(x, y);
            let o = if k.descending { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    }
}

fn split_sort_path(name: &str, stage: &str, path: &str) -> Result<Vec<Str>, CompileError> {
    if name.is_empty() {
        return Err(CompileError::new(
            path,
            format!("{stage}: a sort field name may not be empty"),
        ));
    }
    let mut segs = Vec::new();
    for seg in name.split('.') {
        if seg.is_empty() {
            return Err(CompileError::new(
                path,
                format!("{stage}: sort field '{name}' has an empty component"),
            ));
        }
        if seg.starts_with('$') {
            return Err(CompileError::new(
                path,
                format!("{stage}: sort field component '{seg}' of '{name}' may not start with '$'"),
            ));
        }
        segs.push(Str::from(seg));
    }
    Ok(segs)
}

/// The sort key of one component: the value at `path`, with arrays reduced to their
/// smallest (ascending) or largest (descending) element.
fn sort_key_value(doc: &Document, path: &[Str], descending: bool) -> Value {
    let Some((first, rest)) = path.split_first() else {
        return Value::Null;
    };
    match doc.get(first) {
        None => Value::Null,
        // Fast path: a scalar or document reached without crossing an array.
        Some(v) if rest.is_empty() && !matches!(v, Value::Array(_)) => normalize(v),
        Some(v) => {
            let mut best: Option<&Value> = None;
            let mut saw_empty = false;
            let mut saw_null = false;
            collect(v, rest, &mut |x| match x {
                Leaf::Value(x) => {
                    let better = match best {
                        None => true,
                        Some(b) => {
                            let o = compare_values(x, b);
                            if descending {
                                o == Ordering::Greater
                            } else {
                                o == Ordering::Less
                            }
                        }
                    };
                    if better {
                        best = Some(x);
                    }
                }
                Leaf::Null => saw_null = true,
                Leaf::EmptyArray => saw_empty = true,
            });
            // Candidates that are not stored values: null (missing) and the empty array
            // (which sorts as `undefined`, before null).
            let mut out = best.map(normalize);
            if saw_null {
                out = Some(pick(out, Value::Null, descending));
            }
            if saw_empty {
                out = Some(pick(out, Value::Undefined, descending));
            }
            out.unwrap_or(Value::Null)
        }
    }
}

fn normalize(v: &Value) -> Value {
    match v {
        Value::Missing => Value::Null,
        other => other.clone(),
    }
}

fn pick(cur: Option<Value>, cand: Value, descending: bool) -> Value {
    match cur {
        None => cand,
        Some(c) => {
            let o = compare_values(&cand, &c);
            if (descending && o == Ordering::Greater) || (!descending && o == Ordering::Less) {
                cand
            } else {
                c
            }
        }
    }
}

enum Leaf<'a> {
    Value(&'a Value),
    Null,
    EmptyArray,
}

/// Visits every value reached by `rest` from `v`, expanding arrays as MongoDB's sort key
/// generator does: arrays on the way are traversed element by element, an array at the
/// end contributes its elements (nested arrays stay whole).
fn collect<'a>(v: &'a Value, rest: &[Str], f: &mut impl FnMut(Leaf<'a>)) {
    match (v, rest.split_first()) {
        (Value::Array(items), None) => {
            if items.is_empty() {
                f(Leaf::EmptyArray);
            }
            for item in items {
                f(Leaf::Value(item));
            }
        }
        (_, None) => f(Leaf::Value(v)),
        (Value::Document(d), Some((seg, more))) => match d.get(seg) {
            Some(x) => collect(x, more, f),
            None => f(Leaf::Null),
        },
        (Value::Array(items), Some(_)) => {
            if items.is_empty() {
                f(Leaf::Null);
            }
            for item in items {
                match item {
                    Value::Document(_) => collect(item, rest, f),
                    _ => f(Leaf::Null),
                }
            }
        }
        _ => f(Leaf::Null),
    }
}

#[derive(Debug)]
struct Sort {
    spec: Arc<SortSpec>,
    buf: Vec<(Vec<Value>, Document)>,
}

impl Stage for Sort {
    fn name(&self) -> &'static str {
        "$sort"
    }

    fn process(
        &mut self,
        doc: Document,
        _env: &Env,
        _out: &mut Vec<Document>,
    ) -> Result<(), EvalError> {
        let key = self.spec.key_of(&doc);
        self.buf.push((key, doc));
        Ok(())
    }

    fn finish(&mut self, _env: &Env, out: &mut Vec<Document>) -> Result<(), EvalError> {
        let mut buf = std::mem::take(&mut self.buf);
        // Stable: documents with equal keys keep their arrival order.
        buf.sort_by(|a, b| self.spec.compare(&a.0, &b.0));
        out.reserve(buf.len());
        out.extend(buf.into_iter().map(|(_, d)| d));
        Ok(())
    }

    fn fresh(&self) -> Box<dyn Stage> {
        Box::new(Sort {
            spec: self.spec.clone(),
            buf: Vec::new(),
        })
    }

    fn is_blocking(&self) -> bool {
        true
    }

    /// The buffered documents, in arrival order (keys are recomputed on restore).
    fn checkpoint_state(&self) -> Result<StageState, EvalError> {
        let docs = self
            .buf
            .iter()
            .map(|(_, d)| Value::Document(d.clone()))
            .collect();
        Ok(StageState::State(Value::Array(docs)))
    }

    fn restore_state(&mut self, state: &Value) -> Result<(), EvalError> {
        let Value::Array(docs) = state else {
            return Err(EvalError::new(format!(
                "$sort: invalid checkpoint state of type {}, expected an array of documents",
                state.type_name()
            )));
        };
        let mut buf = Vec::with_capacity(docs.len());
        for d in docs {
            let Value::Document(d) = d else {
                return Err(EvalError::new(
                    "$sort: invalid checkpoint state, expected an array of documents",
                ));
            };
            buf.push((self.spec.key_of(d), d.clone()));
        }
        self.buf = buf;
        Ok(())
    }
}

fn compile_sort(
    spec: &Value,
    path: &str,
    _cx: &mut CompileCtx,
) -> Result<Box<dyn Stage>, CompileError> {
    Ok(Box::new(Sort {
        spec: Arc::new(SortSpec::compile(spec, path, "$sort")?),
        buf: Vec::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::parse_document;

    fn key(doc: &str, path: &str, descending: bool) -> String {
        let d = parse_document(doc).expect("test document");
        let segs: Vec<Str> = path.split('.').map(Str::from).collect();
        sort_key_value(&d, &segs, descending).to_json()
    }

    #[test]
    fn nested_arrays_stay_whole() {
        assert_eq!(key(r#"{"a": [[1, 2], 0]}"#, "a", false), "0");
        assert_eq!(key(r#"{"a": [[1, 2], 0]}"#, "a", true), "[1,2]");
    }

    #[test]
    fn missing_and_scalars_in_arrays_count_as_null() {
        assert_eq!(key(r#"{"a": [{"b": 1}, 5]}"#, "a.b", false), "null");
        assert_eq!(key(r#"{"a": [{"b": 1}, {"c": 2}]}"#, "a.b", true), "1");
        assert_eq!(key(r#"{"a": 5}"#, "a.b", false), "null");
        assert_eq!(key(r#"{}"#, "a", false), "null");
    }

    #[test]
    fn empty_array_sorts_before_null() {
        let empty = parse_document(r#"{"a": []}"#).expect("doc");
        let null = parse_document(r#"{"a": null}"#).expect("doc");
        let spec = SortSpec::compile(
            &crate::value::parse_value(r#"{"a": 1}"#).expect("spec"),
            "p",
            "$sort",
        )
        .expect("compiles");
        assert_eq!(
            spec.compare(&spec.key_of(&empty), &spec.key_of(&null)),
            Ordering::Less
        );
    }
}
