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

use super::accumulators::{compile_accumulator, Accumulator, AccumulatorSpec, GroupAcc};
use super::{RefOutcome, Stage, StageCompileFn, StageState};
use crate::error::{path_key, CompileError, EvalError};
use crate::expr::{compile_expr, CompileCtx, Ctx, Env, Expr};
use crate::value::{compare_values, Document, HashableValue, Str, Value};
use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Arc;

/// Stages of this family.
pub(crate) const STAGES: &[(&str, StageCompileFn)] = &[
    ("$group", compile_group),
    ("$sortByCount", compile_sort_by_count),
];

// ---------------------------------------------------------------------------------
// Helpers shared with `$bucket` and `$bucketAuto`.
// ---------------------------------------------------------------------------------

/// Accumulators per stage whose inputs are evaluated without a heap allocation.
const INLINE_INPUTS: usize = 8;

/// The evaluated accumulator inputs of one document; `None` marks an accumulator that
/// reads the document itself through [`Accumulator::update`].
pub(crate) struct Inputs<'a> {
    len: usize,
    inline: [Option<Cow<'a, Value>>; INLINE_INPUTS],
    /// Used only beyond [`INLINE_INPUTS`] accumulators.
    heap: Vec<Option<Cow<'a, Value>>>,
}

impl<'a> Inputs<'a> {
    fn new(len: usize) -> Self {
        let heap = if len > INLINE_INPUTS {
            vec![None; len]
        } else {
            Vec::new()
        };
        Inputs {
            len,
            inline: Default::default(),
            heap,
        }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [Option<Cow<'a, Value>>] {
        if self.len > INLINE_INPUTS {
            &mut self.heap
        } else {
            &mut self.inline[..self.len]
        }
    }
}

/// Accumulated output fields of a grouping stage, in specification order.
#[derive(Debug, Default)]
pub(crate) struct OutputFields {
    pub(crate) names: Vec<Str>,
    pub(crate) specs: Vec<AccumulatorSpec>,
    /// True when a name repeats or is `_id`: [`OutputFields::output`] must then insert
    /// (replace) rather than append.
    repeated: bool,
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
        self.repeated |= name == "_id" || self.names.contains(name);
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

    /// Fresh (mostly unboxed) accumulator states for the `$group` group with `_id` `key`.
    fn start_row(&self, key: &Value, env: &Env) -> Result<RowAccs, EvalError> {
        Ok(match self.specs.as_slice() {
            [a] => RowAccs::One(a.start_group_acc(key, env)?),
            [a, b] => RowAccs::Two([a.start_group_acc(key, env)?, b.start_group_acc(key, env)?]),
            specs => RowAccs::Many(
                specs
                    .iter()
                    .map(|s| s.start_group_acc(key, env))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }

    /// Evaluates every accumulator's input for one document (nothing is updated yet).
    /// Filled in place: the inputs are large enough that moving them costs.
    pub(crate) fn eval_inputs<'a>(
        &'a self,
        ctx: &Ctx<'a>,
        inputs: &mut Inputs<'a>,
    ) -> Result<(), EvalError> {
        for (slot, spec) in inputs.as_mut_slice().iter_mut().zip(&self.specs) {
            *slot = spec.eval_input(ctx)?;
        }
        Ok(())
    }

    /// Empty inputs for [`OutputFields::eval_inputs`].
    pub(crate) fn new_inputs(&self) -> Inputs<'_> {
        Inputs::new(self.specs.len())
    }

    /// Folds inputs from [`OutputFields::eval_inputs`] into one group's states.
    pub(crate) fn apply<A: Accumulator>(
        row: &mut [A],
        inputs: &mut Inputs<'_>,
        ctx: &Ctx<'_>,
    ) -> Result<(), EvalError> {
        for (acc, input) in row.iter_mut().zip(inputs.as_mut_slice()) {
            match input.take() {
                Some(v) => acc.add_input(v),
                None => acc.update(ctx)?,
            }
        }
        Ok(())
    }

    /// One group's accumulator states for a checkpoint; `None` when one cannot be saved.
    pub(crate) fn save_row<A: Accumulator>(row: &[A]) -> Option<Value> {
        row.iter()
            .map(|a| a.save_state())
            .collect::<Option<Vec<_>>>()
            .map(Value::Array)
    }

    /// Rebuilds one group's states from [`OutputFields::save_row`].
    pub(crate) fn restore_row(
        &self,
        stage: &str,
        state: &Value,
    ) -> Result<Vec<Box<dyn Accumulator>>, EvalError> {
        self.restore_row_with(stage, state, AccumulatorSpec::start)
    }

    /// [`OutputFields::restore_row`] with states made by `start`.
    fn restore_row_with<A: Accumulator>(
        &self,
        stage: &str,
        state: &Value,
        start: impl Fn(&AccumulatorSpec) -> A,
    ) -> Result<Vec<A>, EvalError> {
        let states = state
            .as_array()
            .filter(|a| a.len() == self.specs.len())
            .ok_or_else(|| invalid_state(stage, state))?;
        self.specs
            .iter()
            .zip(states)
            .map(|(spec, st)| {
                let mut acc = start(spec);
                acc.restore_state(st)
                    .map_err(|e| EvalError::new(format!("{stage}: {e}")))?;
                Ok(acc)
            })
            .collect()
    }

    /// The output document `{_id: id, <field>: <result>, ...}` (missing results are null).
    pub(crate) fn output<A: Accumulator>(&self, id: Value, row: &[A]) -> Document {
        let mut d = Document::with_capacity(1 + row.len());
        d.push_unchecked("_id", id);
        for (name, acc) in self.names.iter().zip(row) {
            let v = acc.result();
            let v = if v.is_missing() { Value::Null } else { v };
            if self.repeated {
                d.insert(name.clone(), v);
            } else {
                d.push_unchecked(name.clone(), v);
            }
        }
        d
    }
}

/// The error for a checkpoint state that this stage did not produce.
pub(crate) fn invalid_state(stage: &str, state: &Value) -> EvalError {
    let mut text = state.to_json();
    if text.len() > 80 {
        let cut = (0..=80)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text.truncate(cut);
        text.push_str("...");
    }
    EvalError::new(format!("{stage}: invalid checkpoint state {text}"))
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

/// One group: its key next to its accumulator states (one cache miss per document of an
/// existing group for the common one- and two-accumulator specifications).
#[derive(Debug)]
struct GroupRow {
    key: Value,
    changed: bool,
    accs: RowAccs,
}

/// The accumulator states of one group, inline for up to two accumulators.
#[derive(Debug)]
enum RowAccs {
    One(GroupAcc),
    Two([GroupAcc; 2]),
    Many(Vec<GroupAcc>),
}

impl RowAccs {
    fn from_vec(mut v: Vec<GroupAcc>) -> RowAccs {
        match v.len() {
            1 => match v.pop() {
                Some(a) => RowAccs::One(a),
                None => RowAccs::Many(v),
            },
            2 => match <[GroupAcc; 2]>::try_from(v) {
                Ok(two) => RowAccs::Two(two),
                Err(v) => RowAccs::Many(v),
            },
            _ => RowAccs::Many(v),
        }
    }

    fn as_slice(&self) -> &[GroupAcc] {
        match self {
            RowAccs::One(a) => std::slice::from_ref(a),
            RowAccs::Two(two) => two,
            RowAccs::Many(v) => v,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [GroupAcc] {
        match self {
            RowAccs::One(a) => std::slice::from_mut(a),
            RowAccs::Two(two) => two,
            RowAccs::Many(v) => v,
        }
    }
}

/// The groups' index by MongoDB key equality, looked up with a borrowed key so that a
/// document of an existing group costs no clone of its key: `heads` maps a key's hash
/// (consistent with [`HashableValue`]) to the newest group with that hash, and `next[i]`
/// chains group `i` to the previous group with the same hash (collisions are rare).
/// Hashes and indexes are 32-bit ([`NO_GROUP`] ends a chain) so that the table stays
/// small enough to remain in cache with tens of thousands of groups.
#[derive(Debug, Default)]
struct GroupIndex {
    hasher: foldhash::fast::RandomState,
    heads: HashMap<u32, u32, BuildHasherDefault<PrehashedHasher>>,
    next: Vec<u32>,
}

/// The end of a chain in [`GroupIndex::next`].
const NO_GROUP: u32 = u32::MAX;

impl GroupIndex {
    fn hash(&self, key: &Value) -> u32 {
        let mut h = self.hasher.build_hasher();
        HashableValue::hash_ref(key, &mut h);
        let h = h.finish();
        (h ^ (h >> 32)) as u32
    }

    /// The group whose key equals `key` (which hashes to `hash`).
    fn find(&self, hash: u32, key: &Value, groups: &[GroupRow]) -> Option<usize> {
        let mut cur = self.heads.get(&hash).copied().unwrap_or(NO_GROUP);
        while cur != NO_GROUP {
            let i = cur as usize;
            let row = groups.get(i)?;
            if keys_equal(&row.key, key) {
                return Some(i);
            }
            cur = self.next.get(i).copied().unwrap_or(NO_GROUP);
        }
        None
    }

    /// Records the group about to be appended at index `i` (= the number of earlier
    /// groups); fails when there are too many groups to index.
    fn insert(&mut self, hash: u32, i: usize) -> Result<(), EvalError> {
        debug_assert_eq!(self.next.len(), i);
        let i = u32::try_from(i)
            .ok()
            .filter(|i| *i != NO_GROUP)
            .ok_or_else(|| {
                EvalError::new(format!(
                    "$group: too many groups (at most {NO_GROUP}); group by a coarser key"
                ))
            })?;
        let prev = self.heads.insert(hash, i);
        self.next.push(prev.unwrap_or(NO_GROUP));
        Ok(())
    }

    fn clear(&mut self) {
        self.heads.clear();
        self.next.clear();
    }
}

/// MongoDB key equality ([`compare_values`] is `Equal`), with a fast path for the common
/// string keys (equal strings are equal bytes: no collation here).
fn keys_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => x.as_bytes() == y.as_bytes(),
        _ => compare_values(a, b) == Ordering::Equal,
    }
}

/// The hasher of [`GroupIndex::heads`], whose keys are already hashes.
#[derive(Debug, Default)]
struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u32` is used; this keeps any other use correct.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u32(&mut self, n: u32) {
        // The table takes its bucket from the low bits and its tag from the top 7 bits:
        // both must come from the hash.
        self.0 = u64::from(n) | (u64::from(n) << 32);
    }
}

/// The `$group` stage with its run state.
#[derive(Debug)]
pub struct GroupStage {
    config: Arc<GroupConfig>,
    index: GroupIndex,
    groups: Vec<GroupRow>,
    changed: Vec<usize>,
}

impl GroupStage {
    fn new(config: Arc<GroupConfig>) -> Self {
        GroupStage {
            config,
            index: GroupIndex::default(),
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
                out.push(
                    self.config
                        .fields
                        .output(row.key.clone(), row.accs.as_slice()),
                );
            }
        }
    }

    /// Appends the current result of every group (first-seen order) and leaves the
    /// groups open.
    pub fn emit_all(&mut self, out: &mut Vec<Document>) {
        self.changed.clear();
        for row in &mut self.groups {
            row.changed = false;
            out.push(
                self.config
                    .fields
                    .output(row.key.clone(), row.accs.as_slice()),
            );
        }
    }

    /// Number of groups seen so far.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Folds one document into its group (reading it only).
    fn add(&mut self, doc: &Document, env: &Env) -> Result<(), EvalError> {
        let ctx = Ctx::new(doc, env);
        let config = &*self.config;
        let key = config.id.eval(&ctx)?;
        let mut inputs = config.fields.new_inputs();
        config.fields.eval_inputs(&ctx, &mut inputs)?;
        let key: &Value = if key.is_missing() { &Value::Null } else { &key };
        let hash = self.index.hash(key);
        let i = match self.index.find(hash, key, &self.groups) {
            Some(i) => i,
            None => {
                let accs = config.fields.start_row(key, env)?;
                let i = self.groups.len();
                self.index.insert(hash, i)?;
                self.groups.push(GroupRow {
                    key: key.clone(),
                    changed: false,
                    accs,
                });
                i
            }
        };
        let row = &mut self.groups[i];
        OutputFields::apply(row.accs.as_mut_slice(), &mut inputs, &ctx)?;
        if !row.changed {
            row.changed = true;
            self.changed.push(i);
        }
        Ok(())
    }

    fn drain(&mut self, out: &mut Vec<Document>) {
        self.index.clear();
        self.changed.clear();
        for row in self.groups.drain(..) {
            out.push(self.config.fields.output(row.key, row.accs.as_slice()));
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
        self.add(&doc, env)
    }

    fn process_ref(
        &mut self,
        doc: &Document,
        env: &Env,
        _out: &mut Vec<Document>,
    ) -> Result<RefOutcome, EvalError> {
        self.add(doc, env)?;
        Ok(RefOutcome::Emitted)
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

    /// `[[key, [accumulator states...], changedSinceTrigger], ...]` in first-seen order.
    fn checkpoint_state(&self) -> Result<StageState, EvalError> {
        let mut groups = Vec::with_capacity(self.groups.len());
        for row in &self.groups {
            let Some(states) = OutputFields::save_row(row.accs.as_slice()) else {
                return Ok(StageState::Unsupported);
            };
            groups.push(Value::Array(vec![
                row.key.clone(),
                states,
                Value::Bool(row.changed),
            ]));
        }
        Ok(StageState::State(Value::Array(groups)))
    }

    fn restore_state(&mut self, state: &Value) -> Result<(), EvalError> {
        let name = self.name();
        let items = state.as_array().ok_or_else(|| invalid_state(name, state))?;
        let mut restored = GroupStage::new(Arc::clone(&self.config));
        for item in items {
            let Some([key, states, Value::Bool(changed)]) = item.as_array() else {
                return Err(invalid_state(name, item));
            };
            let accs = self.config.fields.restore_row_with(
                name,
                states,
                AccumulatorSpec::start_plain_group_acc,
            )?;
            let i = restored.groups.len();
            let hash = restored.index.hash(key);
            if restored.index.find(hash, key, &restored.groups).is_some() {
                return Err(invalid_state(name, item));
            }
            restored.index.insert(hash, i)?;
            restored.groups.push(GroupRow {
                key: key.clone(),
                changed: *changed,
                accs: RowAccs::from_vec(accs),
            });
            if *changed {
                restored.changed.push(i);
            }
        }
        *self = restored;
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

    fn process_ref(
        &mut self,
        doc: &Document,
        env: &Env,
        out: &mut Vec<Document>,
    ) -> Result<RefOutcome, EvalError> {
        self.group.process_ref(doc, env, out)
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

    fn checkpoint_state(&self) -> Result<StageState, EvalError> {
        self.group.checkpoint_state()
    }

    fn restore_state(&mut self, state: &Value) -> Result<(), EvalError> {
        self.group.restore_state(state)
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
    fn group_index_chains_hash_collisions() {
        let row = |key: Value| GroupRow {
            key,
            changed: false,
            accs: RowAccs::Many(Vec::new()),
        };
        let groups = vec![
            row(Value::from("a")),
            row(Value::from(1)),
            row(Value::from("c")),
        ];
        let mut index = GroupIndex::default();
        // Force all three keys under one hash: lookups must still tell them apart.
        for i in 0..groups.len() {
            index.insert(7, i).unwrap();
        }
        assert_eq!(index.find(7, &Value::from("a"), &groups), Some(0));
        assert_eq!(index.find(7, &Value::from("c"), &groups), Some(2));
        // MongoDB equality: 1.0 is the group of 1.
        assert_eq!(index.find(7, &Value::from(1.0), &groups), Some(1));
        assert_eq!(index.find(7, &Value::from("b"), &groups), None);
        assert_eq!(index.find(8, &Value::from("a"), &groups), None);
        // Equal keys hash alike across numeric types.
        assert_eq!(index.hash(&Value::from(1)), index.hash(&Value::Int64(1)));
        assert_eq!(index.hash(&Value::from(1)), index.hash(&Value::from(1.0)));
    }

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
        let env = Env::at(0);
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

    /// Runs `docs` through `$group` in one go, and again with a checkpoint taken after
    /// `split` documents restored into a fresh stage through canonical Extended JSON.
    fn checkpoint_round_trip(
        group: &str,
        docs: &[&str],
        split: usize,
    ) -> (Vec<String>, Vec<String>) {
        let spec = parse_value(group).unwrap();
        let proto = compile_group(&spec, "g", &mut CompileCtx::default()).unwrap();
        let env = Env::at(0);
        let docs: Vec<Document> = docs
            .iter()
            .map(|d| crate::value::parse_document(d).unwrap())
            .collect();
        let show = |out: Vec<Document>| -> Vec<String> {
            out.iter()
                .map(|d| d.to_json_mode(crate::value::ExtJsonMode::Canonical))
                .collect()
        };
        let mut whole = proto.fresh();
        let mut out = Vec::new();
        for d in &docs {
            whole.process(d.clone(), &env, &mut out).unwrap();
        }
        whole.finish(&env, &mut out).unwrap();
        let expected = show(std::mem::take(&mut out));
        let mut first = proto.fresh();
        for d in &docs[..split] {
            first.process(d.clone(), &env, &mut out).unwrap();
        }
        let StageState::State(state) = first.checkpoint_state().unwrap() else {
            panic!("no state")
        };
        let text = state.to_json_mode(crate::value::ExtJsonMode::Canonical);
        let mut second = proto.fresh();
        second.restore_state(&parse_value(&text).unwrap()).unwrap();
        for d in &docs[split..] {
            second.process(d.clone(), &env, &mut out).unwrap();
        }
        second.finish(&env, &mut out).unwrap();
        (expected, show(out))
    }

    #[test]
    fn checkpoint_restores_every_accumulator() {
        let group = r#"{"_id": "$k", "s": {"$sum": "$v"}, "a": {"$avg": "$v"}, "mn": {"$min": "$v"}, "mx": {"$max": "$v"},
            "f": {"$first": "$v"}, "l": {"$last": "$v"}, "p": {"$push": "$v"}, "u": {"$addToSet": "$v"},
            "m": {"$mergeObjects": "$d"}, "sd": {"$stdDevSamp": "$v"}, "c": {"$count": {}},
            "t": {"$top": {"output": "$v", "sortBy": {"v": -1}}}, "bn": {"$bottomN": {"n": 2, "output": "$v", "sortBy": {"v": 1}}},
            "fn": {"$firstN": {"n": 2, "input": "$v"}}, "ln": {"$lastN": {"n": 2, "input": "$v"}},
            "xn": {"$maxN": {"n": 2, "input": "$v"}}, "in": {"$minN": {"n": 2, "input": "$v"}}}"#;
        let docs = [
            r#"{"k": "a", "v": 1, "d": {"x": 1}}"#,
            r#"{"k": "b", "v": {"$numberLong": "5"}}"#,
            r#"{"k": "a", "v": 2.5, "d": {"y": 2}}"#,
            r#"{"k": "a", "v": {"$numberDecimal": "1.10"}}"#,
            r#"{"k": "b", "v": 2147483647}"#,
            r#"{"k": "a", "v": null}"#,
            r#"{"k": "b", "v": 3}"#,
        ];
        for split in 0..=docs.len() {
            let (expected, restored) = checkpoint_round_trip(group, &docs, split);
            assert_eq!(expected, restored, "split at {split}");
        }
    }

    #[test]
    fn checkpoint_keeps_dynamic_n_and_rejects_bad_state() {
        let group = r#"{"_id": {"n": "$n"}, "f": {"$firstN": {"n": "$n", "input": "$v"}}}"#;
        let docs = [
            r#"{"n": 1, "v": 1}"#,
            r#"{"n": 2, "v": 2}"#,
            r#"{"n": 1, "v": 3}"#,
            r#"{"n": 2, "v": 4}"#,
            r#"{"n": 2, "v": 5}"#,
        ];
        for split in 0..=docs.len() {
            let (expected, restored) = checkpoint_round_trip(group, &docs, split);
            assert_eq!(expected, restored, "split at {split}");
        }
        let proto = compile_group(
            &parse_value(group).unwrap(),
            "g",
            &mut CompileCtx::default(),
        )
        .unwrap();
        let mut stage = proto.fresh();
        assert!(stage
            .restore_state(&parse_value(r#"[["x"]]"#).unwrap())
            .is_err());
        assert!(stage.restore_state(&parse_value("5").unwrap()).is_err());
        assert!(stage
            .restore_state(&parse_value(r#"[[{"n": 1}, [[1, 2]], false]]"#).unwrap())
            .is_err());
    }
}
