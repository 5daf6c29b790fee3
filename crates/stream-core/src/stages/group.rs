//! `$group` and `$sortByCount`.
//!
//! `$group` evaluates the `_id` expression per document (missing becomes null), finds the
//! group in a hash map keyed by MongoDB equality ([`HashableValue`]: `1`, `1L` and `1.0`
//! are one group) and folds the document into that group's accumulators. It is blocking:
//! groups are emitted by [`Stage::finish`] in **first-seen order** (MongoDB leaves the
//! order undefined; follow with `$sort` when it matters). Each output document is `_id`
//! followed by the accumulated fields in specification order.
//!
//! A document that fails (its `_id` or an accumulator argument raises an error) changes
//! no group: every accumulator input is evaluated before any group is updated.
//!
//! Streaming update mode: [`Stage::on_trigger`] emits the current result of every group
//! changed since the previous trigger ([`GroupStage::emit_changed`]), or of every group
//! when `complete` ([`GroupStage::emit_all`]), without ending the input.

use super::accumulators::{compile_accumulator, Accumulator, AccumulatorSpec};
use super::{Stage, StageCompileFn};
use crate::error::{path_key, CompileError, EvalError};
use crate::expr::{compile_expr, CompileCtx, Ctx, Env, Expr};
use crate::value::{compare_values, Document, HashableValue, Str, Value};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

/// Stages of this family.
pub(crate) const STAGES: &[(&str, StageCompileFn)] = &[
    ("$group", compile_group),
    ("$sortByCount", compile_sort_by_count),
];

// ---------------------------------------------------------------------------------
// Helpers shared with `$bucket` and `$bucketAuto`.
// ---------------------------------------------------------------------------------

/// Accumulated output fields of a grouping stage, in specification order.
#[derive(Debug, Default)]
pub(crate) struct OutputFields {
    pub(crate) names: Vec<Str>,
    pub(crate) specs: Vec<AccumulatorSpec>,
}

impl OutputFields {
    /// Compiles one `name: {"$acc": arg}` field at `path` (the path of `name`).
    pub(crate) fn add(
        &mut self,
        stage: &str,
        name: &Str,
        spec: &Value,
        path: &str,
        cx: &mut CompileCtx,
    ) -> Result<(), CompileError> {
        if name.contains('.') {
            return Err(CompileError::new(
                path,
                format!("{stage}: the field name '{name}' cannot contain '.'"),
            ));
        }
        if name.starts_with('$') {
            return Err(CompileError::new(
                path,
                format!("{stage}: the field name '{name}' cannot be an operator name"),
            ));
        }
        if name.is_empty() {
            return Err(CompileError::new(
                path,
                format!("{stage}: field names cannot be empty"),
            ));
        }
        self.specs.push(compile_accumulator(spec, path, cx)?);
        self.names.push(name.clone());
        Ok(())
    }

    /// `{count: {$sum: 1}}`, the default output of `$bucket`/`$bucketAuto`.
    pub(crate) fn count(path: &str, cx: &mut CompileCtx) -> Result<OutputFields, CompileError> {
        let mut out = OutputFields::default();
        let spec = Value::Document(crate::doc! {"$sum" => 1});
        out.add("count", &Str::from("count"), &spec, path, cx)?;
        Ok(out)
    }

    /// Fresh accumulator states for the group with `_id` `key`.
    pub(crate) fn start(
        &self,
        key: &Value,
        env: &Env,
    ) -> Result<Vec<Box<dyn Accumulator>>, EvalError> {
        self.specs
            .iter()
            .map(|s| s.start_for_group(key, env))
            .collect()
    }

    /// Evaluates every accumulator's input for one document (nothing is updated yet).
    pub(crate) fn eval_inputs<'a>(
        &'a self,
        ctx: &Ctx<'a>,
    ) -> Result<Vec<Option<Cow<'a, Value>>>, EvalError> {
        self.specs.iter().map(|s| s.eval_input(ctx)).collect()
    }

    /// Folds inputs from [`OutputFields::eval_inputs`] into one group's states.
    pub(crate) fn apply(
        row: &mut [Box<dyn Accumulator>],
        inputs: Vec<Option<Cow<'_, Value>>>,
        ctx: &Ctx<'_>,
    ) -> Result<(), EvalError> {
        for (acc, input) in row.iter_mut().zip(inputs) {
            match input {
                Some(v) => acc.add_input(v),
                None => acc.update(ctx)?,
            }
        }
        Ok(())
    }

    /// The output document `{_id: id, <field>: <result>, ...}` (missing results are null).
    pub(crate) fn output(&self, id: Value, row: &[Box<dyn Accumulator>]) -> Document {
        let mut d = Document::with_capacity(1 + row.len());
        d.push_unchecked("_id", id);
        for (name, acc) in self.names.iter().zip(row) {
            let v = acc.result();
            d.insert(name.clone(), if v.is_missing() { Value::Null } else { v });
        }
        d
    }
}

/// True for a grouping expression written as a `$path` or an operator object, which is
/// what `$bucket`, `$bucketAuto` and `$sortByCount` require.
pub(crate) fn is_path_or_operator(v: &Value) -> bool {
    match v {
        Value::String(s) => s.len() > 1 && s.starts_with('$'),
        Value::Document(d) => d.keys().next().is_some_and(|k| k.starts_with('$')),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------
// $group
// ---------------------------------------------------------------------------------

#[derive(Debug)]
struct GroupConfig {
    id: Expr,
    fields: OutputFields,
}

#[derive(Debug)]
struct GroupRow {
    key: Value,
    accs: Vec<Box<dyn Accumulator>>,
    changed: bool,
}

/// The `$group` stage with its run state.
#[derive(Debug)]
pub struct GroupStage {
    config: Arc<GroupConfig>,
    index: HashMap<HashableValue, usize>,
    groups: Vec<GroupRow>,
    changed: Vec<usize>,
}

impl GroupStage {
    fn new(config: Arc<GroupConfig>) -> Self {
        GroupStage {
            config,
            index: HashMap::new(),
            groups: Vec::new(),
            changed: Vec::new(),
        }
    }

    /// Streaming update mode: appends to `out` the current result of every group changed
    /// since the previous call (in first-change order) and leaves the groups open.
    pub fn emit_changed(&mut self, out: &mut Vec<Document>) {
        for i in std::mem::take(&mut self.changed) {
            if let Some(row) = self.groups.get_mut(i) {
                row.changed = false;
                out.push(self.config.fields.output(row.key.clone(), &row.accs));
            }
        }
    }

    /// Appends the current result of every group (first-seen order) and leaves the
    /// groups open.
    pub fn emit_all(&mut self, out: &mut Vec<Document>) {
        self.changed.clear();
        for row in &mut self.groups {
            row.changed = false;
            out.push(self.config.fields.output(row.key.clone(), &row.accs));
        }
    }

    /// Number of groups seen so far.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    fn drain(&mut self, out: &mut Vec<Document>) {
        self.index.clear();
        self.changed.clear();
        for row in self.groups.drain(..) {
            out.push(self.config.fields.output(row.key, &row.accs));
        }
    }
}

impl Stage for GroupStage {
    fn name(&self) -> &'static str {
        "$group"
    }

    fn process(
        &mut self,
        doc: Document,
        env: &Env,
        _out: &mut Vec<Document>,
    ) -> Result<(), EvalError> {
        let ctx = Ctx::new(&doc, env);
        let config = &*self.config;
        let key = config.id.eval(&ctx)?;
        let inputs = config.fields.eval_inputs(&ctx)?;
        let key = HashableValue(if key.is_missing() {
            Value::Null
        } else {
            key.into_owned()
        });
        let i = match self.index.get(&key) {
            Some(&i) => i,
            None => {
                let accs = config.fields.start(&key.0, env)?;
                self.groups.push(GroupRow {
                    key: key.0.clone(),
                    accs,
                    changed: false,
                });
                let i = self.groups.len() - 1;
                self.index.insert(key, i);
                i
            }
        };
        let row = &mut self.groups[i];
        OutputFields::apply(&mut row.accs, inputs, &ctx)?;
        if !row.changed {
            row.changed = true;
            self.changed.push(i);
        }
        Ok(())
    }

    fn finish(&mut self, _env: &Env, out: &mut Vec<Document>) -> Result<(), EvalError> {
        self.drain(out);
        Ok(())
    }

    fn fresh(&self) -> Box<dyn Stage> {
        Box::new(GroupStage::new(Arc::clone(&self.config)))
    }

    fn is_blocking(&self) -> bool {
        true
    }

    fn supports_trigger(&self) -> bool {
        true
    }

    fn on_trigger(
        &mut self,
        complete: bool,
        _env: &Env,
        out: &mut Vec<Document>,
    ) -> Result<(), EvalError> {
        if complete {
            self.emit_all(out);
        } else {
            self.emit_changed(out);
        }
        Ok(())
    }
}

/// Compiles `_id`: any expression; an object of field expressions makes a compound key
/// (`{_id: {a: 1}}` inclusion style is rejected as MongoDB does).
fn compile_id(id: &Value, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
    if let Value::Document(d) = id {
        if d.keys().next().is_some_and(|k| !k.starts_with('$')) {
            for (k, v) in d.iter() {
                if matches!(v, Value::Bool(_)) || v.is_number() {
                    return Err(CompileError::new(
                        path_key(path, k),
                        format!("$group does not support inclusion-style expressions in _id: use a field path like \"${k}\" or an expression"),
                    ));
                }
            }
        }
    }
    compile_expr(id, path, cx)
}

fn compile_group(
    spec: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Box<dyn Stage>, CompileError> {
    let Value::Document(d) = spec else {
        return Err(CompileError::new(
            path,
            format!("$group expects an object like {{\"_id\": \"$key\", \"total\": {{\"$sum\": \"$x\"}}}}, found {}", spec.type_name()),
        ));
    };
    let Some(id) = d.get("_id") else {
        return Err(CompileError::new(
            path,
            "$group requires an '_id' field (use \"_id\": null to group all documents)",
        ));
    };
    let id = compile_id(id, &path_key(path, "_id"), cx)?;
    let mut fields = OutputFields::default();
    for (name, acc) in d.iter() {
        if name == "_id" {
            continue;
        }
        fields.add("$group", name, acc, &path_key(path, name), cx)?;
    }
    Ok(Box::new(GroupStage::new(Arc::new(GroupConfig {
        id,
        fields,
    }))))
}

// ---------------------------------------------------------------------------------
// $sortByCount
// ---------------------------------------------------------------------------------

/// `{$sortByCount: expr}` = `$group` by `expr` with `count: {$sum: 1}`, then sort by
/// `count` descending (ties keep first-seen group order).
#[derive(Debug)]
struct SortByCount {
    group: GroupStage,
}

impl Stage for SortByCount {
    fn name(&self) -> &'static str {
        "$sortByCount"
    }

    fn process(
        &mut self,
        doc: Document,
        env: &Env,
        out: &mut Vec<Document>,
    ) -> Result<(), EvalError> {
        self.group.process(doc, env, out)
    }

    fn finish(&mut self, _env: &Env, out: &mut Vec<Document>) -> Result<(), EvalError> {
        let mut docs = Vec::with_capacity(self.group.group_count());
        self.group.drain(&mut docs);
        docs.sort_by(|a, b| {
            let (x, y) = (
                a.get("count").unwrap_or(&Value::Null),
                b.get("count").unwrap_or(&Value::Null),
            );
            compare_values(y, x)
        });
        out.append(&mut docs);
        Ok(())
    }

    fn fresh(&self) -> Box<dyn Stage> {
        Box::new(SortByCount {
            group: GroupStage::new(Arc::clone(&self.group.config)),
        })
    }

    fn is_blocking(&self) -> bool {
        true
    }
}

fn compile_sort_by_count(
    spec: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Box<dyn Stage>, CompileError> {
    if !is_path_or_operator(spec) {
        return Err(CompileError::new(
            path,
            format!(
                "$sortByCount expects a field path like \"$tag\" or an expression object, found {}",
                spec.to_json()
            ),
        ));
    }
    let id = compile_expr(spec, path, cx)?;
    let fields = OutputFields::count(path, cx)?;
    Ok(Box::new(SortByCount {
        group: GroupStage::new(Arc::new(GroupConfig { id, fields })),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::parse_value;

    #[test]
    fn emit_changed_reports_only_touched_groups() {
        let spec = parse_value(r#"{"_id": "$k", "n": {"$sum": 1}}"#).unwrap();
        let mut cx = CompileCtx::default();
        let d = spec.as_document().unwrap();
        let id = compile_id(d.get("_id").unwrap(), "_id", &mut cx).unwrap();
        let mut fields = OutputFields::default();
        fields
            .add("$group", &Str::from("n"), d.get("n").unwrap(), "n", &mut cx)
            .unwrap();
        let mut stage = GroupStage::new(Arc::new(GroupConfig { id, fields }));
        let env = Env { now: 0 };
        let mut out = Vec::new();
        for k in ["a", "b", "a"] {
            stage
                .process(crate::doc! {"k" => k}, &env, &mut out)
                .unwrap();
        }
        assert!(out.is_empty());
        stage.emit_changed(&mut out);
        let shown: Vec<String> = out.iter().map(|d| d.to_json()).collect();
        assert_eq!(shown, [r#"{"_id":"a","n":2}"#, r#"{"_id":"b","n":1}"#]);
        out.clear();
        stage
            .process(crate::doc! {"k" => "b"}, &env, &mut out)
            .unwrap();
        stage.on_trigger(false, &env, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].to_json(), r#"{"_id":"b","n":2}"#);
        out.clear();
        stage.on_trigger(true, &env, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        out.clear();
        stage.finish(&env, &mut out).unwrap();
        assert_eq!(out.len(), 2);
    }
}
