//! `$replaceRoot` / `$replaceWith`, `$count`, `$unwind` and `$redact`.

use crate::error::{path_key, CompileError, EvalError};
use crate::expr::{compile_expr, named_args, parse_field_path, CompileCtx, Ctx, Env, Expr};
use crate::stages::{Stage, StageState};
use crate::value::{Document, Str, Value};
use std::borrow::Cow;
use std::sync::Arc;

/// Mutable access to the value at `segs`, descending through embedded documents only
/// (an array or scalar on the way means the path does not exist).
fn path_mut<'a>(doc: &'a mut Document, segs: &[Str]) -> Option<&'a mut Value> {
    let (first, rest) = segs.split_first()?;
    let mut cur = doc.get_mut(first)?;
    for seg in rest {
        cur = match cur {
            Value::Document(d) => d.get_mut(seg)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Shows a value in an error message (`MISSING` for an absent value, as MongoDB does).
fn show(v: &Value) -> String {
    if v.is_missing() {
        "MISSING".to_string()
    } else {
        v.to_json()
    }
}

// ---------------------------------------------------------------------------------
// $replaceRoot / $replaceWith
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct ReplaceRoot {
    name: &'static str,
    /// How the error names the expression: `'newRoot'` or `'replacement document'`.
    what: &'static str,
    expr: Arc<Expr>,
}

impl Stage for ReplaceRoot {
    fn name(&self) -> &'static str {
        self.name
    }

    fn process(
        &mut self,
        mut doc: Document,
        env: &Env,
        out: &mut Vec<Document>,
    ) -> Result<(), EvalError> {
        // A plain path to an embedded document moves it out instead of cloning it.
        if let Expr::FieldPath(segs, _) = &*self.expr {
            if let Some(Value::Document(d)) = path_mut(&mut doc, segs) {
                out.push(std::mem::take(d));
                return Ok(());
            }
        }
        if self.expr.is_root() {
            out.push(doc);
            return Ok(());
        }
        let v = self.expr.eval(&Ctx::new(&doc, env))?;
        match v {
            Cow::Owned(Value::Document(d)) => out.push(d),
            Cow::Borrowed(Value::Document(d)) => out.push(d.clone()),
            other => {
                return Err(EvalError::new(format!(
                    "{}: {} must evaluate to an object, but resulting value was: {}. Type of resulting value: '{}'",
                    self.name,
                    self.what,
                    show(&other),
                    other.type_name()
                )))
            }
        }
        Ok(())
    }

    fn fresh(&self) -> Box<dyn Stage> {
        Box::new(self.clone())
    }
}

/// Compiles `$replaceRoot: {newRoot: <expr>}`.
pub(crate) fn compile_replace_root(
    spec: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Box<dyn Stage>, CompileError> {
    let a = named_args("$replaceRoot", spec, &["newRoot"], &[], path)?;
    let expr = compile_expr(a["newRoot"], &path_key(path, "newRoot"), cx)?;
    Ok(Box::new(ReplaceRoot {
        name: "$replaceRoot",
        what: "'newRoot' expression",
        expr: Arc::new(expr),
    }))
}

/// Compiles `$replaceWith: <expr>`.
pub(crate) fn compile_replace_with(
    spec: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Box<dyn Stage>, CompileError> {
    let expr = compile_expr(spec, path, cx)?;
    Ok(Box::new(ReplaceRoot {
        name: "$replaceWith",
        what: "'replacement document'",
        expr: Arc::new(expr),
    }))
}

// ---------------------------------------------------------------------------------
// $count
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Count {
    field: Str,
    count: u64,
}

impl Stage for Count {
    fn name(&self) -> &'static str {
        "$count"
    }

    fn process(
        &mut self,
        _doc: Document,
        _env: &Env,
        _out: &mut Vec<Document>,
    ) -> Result<(), EvalError> {
        self.count += 1;
        Ok(())
    }

    fn finish(&mut self, _env: &Env, out: &mut Vec<Document>) -> Result<(), EvalError> {
        // Like `$group: {_id: null, n: {$sum: 1}}`: no input, no output; an int while it fits.
        if self.count > 0 {
            let n = match i32::try_from(self.count) {
                Ok(n) => Value::Int32(n),
                Err(_) => Value::Int64(i64::try_from(self.count).unwrap_or(i64::MAX)),
            };
            let mut d = Document::with_capacity(1);
            d.push_unchecked(self.field.clone(), n);
            out.push(d);
        }
        self.count = 0;
        Ok(())
    }

    fn fresh(&self) -> Box<dyn Stage> {
        Box::new(Count {
            field: self.field.clone(),
            count: 0,
        })
    }

    fn is_blocking(&self) -> bool {
        true
    }

    fn checkpoint_state(&self) -> Result<StageState, EvalError> {
        Ok(StageState::State(Value::Int64(self.count as i64)))
    }

    fn restore_state(&mut self, state: &Value) -> Result<(), EvalError> {
        self.count = super::restore_counter("$count", state)?;
        Ok(())
    }
}

/// Compiles `$count: "<field>"`.
pub(crate) fn compile_count(
    spec: &Value,
    path: &str,
    _cx: &mut CompileCtx,
) -> Result<Box<dyn Stage>, CompileError> {
    let err = |m: &str| Err(CompileError::new(path, format!("$count: {m}")));
    let Value::String(s) = spec else {
        return err(&format!(
            "the count field must be a non-empty string, found {}",
            spec.type_name()
        ));
    };
    if s.is_empty() {
        return err("the count field must be a non-empty string");
    }
    if s.starts_with('$') {
        return err(&format!(
            "the count field cannot be a $-prefixed path, found '{s}'"
        ));
    }
    if s.contains('\0') {
        return err("the count field cannot contain a null byte");
    }
    if s.contains('.') {
        return err(&format!("the count field cannot contain '.', found '{s}'"));
    }
    Ok(Box::new(Count {
        field: s.clone(),
        count: 0,
    }))
}

// ---------------------------------------------------------------------------------
// $unwind
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Unwind {
    path: Arc<[Str]>,
    index: Option<Arc<[Str]>>,
    preserve: bool,
    /// The index path is a prefix of (or equal to) the unwound path: the index wins.
    conflicting: bool,
}

impl Unwind {
    fn emit(&self, mut doc: Document, index: Value, out: &mut Vec<Document>) {
        if let Some(ip) = &self.index {
            doc.set_path(ip, index);
        }
        out.push(doc);
    }
}

impl Stage for Unwind {
    fn name(&self) -> &'static str {
        "$unwind"
    }

    fn process(
        &mut self,
        mut doc: Document,
        _env: &Env,
        out: &mut Vec<Document>,
    ) -> Result<(), EvalError> {
        let slot = path_mut(&mut doc, &self.path);
        match slot {
            Some(Value::Array(items)) if items.is_empty() => {
                if self.preserve {
                    if let Some((last, parent)) = self.path.split_last() {
                        match path_mut(&mut doc, parent) {
                            Some(Value::Document(p)) => {
                                p.remove(last);
                            }
                            _ if parent.is_empty() => {
                                doc.remove(last);
                            }
                            _ => {}
                        }
                    }
                    self.emit(doc, Value::Null, out);
                }
            }
            Some(Value::Array(items)) => {
                let items = std::mem::take(items);
                let n = items.len();
                out.reserve(n);
                for (i, item) in items.into_iter().enumerate() {
                    // The last element reuses the input document; the others clone it
                    // (with the array already taken out, so it is not copied n times).
                    let mut d = if i + 1 == n {
                        std::mem::take(&mut doc)
                    } else {
                        doc.clone()
                    };
                    if !self.conflicting {
                        if let Some(slot) = path_mut(&mut d, &self.path) {
                            *slot = item;
                        }
                    }
                    self.emit(d, Value::Int64(i as i64), out);
                }
            }
            Some(v) if !v.is_nullish() => self.emit(doc, Value::Null, out),
            _ => {
                if self.preserve {
                    self.emit(doc, Value::Null, out);
                }
            }
        }
        Ok(())
    }

    fn fresh(&self) -> Box<dyn Stage> {
        Box::new(self.clone())
    }
}

/// Compiles `$unwind: "$path"` or `$unwind: {path, includeArrayIndex, preserveNullAndEmptyArrays}`.
pub(crate) fn compile_unwind(
    spec: &Value,
    path: &str,
    _cx: &mut CompileCtx,
) -> Result<Box<dyn Stage>, CompileError> {
    let (field, field_path, index, preserve) = match spec {
        Value::String(s) => (s.as_str(), path.to_string(), None, false),
        Value::Document(d) => {
            let mut field = None;
            let mut index = None;
            let mut preserve = false;
            for (k, v) in d.iter() {
                let p = path_key(path, k);
                match (k.as_str(), v) {
                    ("path", Value::String(s)) => field = Some(s.as_str()),
                    ("path", other) => {
                        return Err(CompileError::new(
                            p,
                            format!("$unwind: expected a string as the path, found {}", other.type_name()),
                        ))
                    }
                    ("includeArrayIndex", Value::String(s)) if !s.is_empty() => {
                        if s.starts_with('$') {
                            return Err(CompileError::new(
                                p,
                                format!("$unwind: includeArrayIndex should not be prefixed with a '$': {s}"),
                            ));
                        }
                        index = Some(parse_field_path(s, &p)?);
                    }
                    ("includeArrayIndex", other) => {
                        return Err(CompileError::new(
                            p,
                            format!("$unwind: expected a non-empty string for includeArrayIndex, found {}", other.to_json()),
                        ))
                    }
                    ("preserveNullAndEmptyArrays", Value::Bool(b)) => preserve = *b,
                    ("preserveNullAndEmptyArrays", other) => {
                        return Err(CompileError::new(
                            p,
                            format!("$unwind: expected a boolean for preserveNullAndEmptyArrays, found {}", other.type_name()),
                        ))
                    }
                    _ => {
                        return Err(CompileError::new(
                            p,
                            format!("$unwind: unrecognized option '{k}' (expected path, includeArrayIndex, preserveNullAndEmptyArrays)"),
                        ))
                    }
                }
            }
            let Some(field) = field else {
                return Err(CompileError::new(path, "$unwind: no path specified"));
            };
            (field, path_key(path, "path"), index, preserve)
        }
        other => {
            return Err(CompileError::new(
                path,
                format!(
                    "$unwind: expected either a string or an object as specification, found {}",
                    other.type_name()
                ),
            ))
        }
    };
    let Some(rest) = field.strip_prefix('$') else {
        return Err(CompileError::new(
            field_path,
            format!("$unwind: the path should be prefixed with a '$': write \"${field}\""),
        ));
    };
    let segs = parse_field_path(rest, &field_path)?;
    let conflicting = index
        .as_ref()
        .is_some_and(|ip: &Arc<[Str]>| ip.len() <= segs.len() && segs[..ip.len()] == ip[..]);
    Ok(Box::new(Unwind {
        path: segs,
        index,
        preserve,
        conflicting,
    }))
}

// ---------------------------------------------------------------------------------
// $redact
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Redact {
    expr: Arc<Expr>,
}

enum Decision {
    Keep,
    Prune,
    Descend,
}

impl Redact {
    fn decide(
        &self,
        current: &Document,
        root: &Document,
        env: &Env,
    ) -> Result<Decision, EvalError> {
        let ctx = Ctx {
            root,
            current,
            scope: None,
            env,
        };
        let v = self.expr.eval(&ctx)?;
        // MongoDB binds the three variables to the strings "keep", "prune" and "descend";
        // this engine compiles them to "$$KEEP", ... Both spellings are decisions.
        match v.as_str() {
            Some("$$KEEP" | "keep") => Ok(Decision::Keep),
            Some("$$PRUNE" | "prune") => Ok(Decision::Prune),
            Some("$$DESCEND" | "descend") => Ok(Decision::Descend),
            _ => Err(EvalError::new(format!(
                "$redact: the expression must return $$KEEP, $$DESCEND or $$PRUNE, but returned {}",
                show(&v)
            ))),
        }
    }

    /// Redacts an embedded document; `None` when it is pruned.
    fn redact_doc(
        &self,
        current: &Document,
        root: &Document,
        env: &Env,
    ) -> Result<Option<Document>, EvalError> {
        match self.decide(current, root, env)? {
            Decision::Keep => Ok(Some(current.clone())),
            Decision::Prune => Ok(None),
            Decision::Descend => self.descend(current, root, env).map(Some),
        }
    }

    fn descend(
        &self,
        current: &Document,
        root: &Document,
        env: &Env,
    ) -> Result<Document, EvalError> {
        let mut out = Document::with_capacity(current.len());
        for (k, v) in current.iter() {
            if let Some(v) = self.redact_value(v, root, env)? {
                out.push_unchecked(k.clone(), v);
            }
        }
        Ok(out)
    }

    fn redact_value(
        &self,
        v: &Value,
        root: &Document,
        env: &Env,
    ) -> Result<Option<Value>, EvalError> {
        match v {
            Value::Document(d) => Ok(self.redact_doc(d, root, env)?.map(Value::Document)),
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    if let Some(x) = self.redact_value(item, root, env)? {
                        out.push(x);
                    }
                }
                Ok(Some(Value::Array(out)))
            }
            other => Ok(Some(other.clone())),
        }
    }
}

impl Stage for Redact {
    fn name(&self) -> &'static str {
        "$redact"
    }

    fn process(
        &mut self,
        doc: Document,
        env: &Env,
        out: &mut Vec<Document>,
    ) -> Result<(), EvalError> {
        match self.decide(&doc, &doc, env)? {
            Decision::Keep => out.push(doc),
            Decision::Prune => {}
            Decision::Descend => out.push(self.descend(&doc, &doc, env)?),
        }
        Ok(())
    }

    fn fresh(&self) -> Box<dyn Stage> {
        Box::new(self.clone())
    }
}

/// Compiles `$redact: <expr>`; `$$DESCEND`, `$$PRUNE` and `$$KEEP` compile to marker strings.
pub(crate) fn compile_redact(
    spec: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Box<dyn Stage>, CompileError> {
    Ok(Box::new(Redact {
        expr: Arc::new(compile_expr(spec, path, cx)?),
    }))
}
