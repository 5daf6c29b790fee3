//! `$project`, `$addFields` / `$set` and `$unset`: a compiled tree of field paths.
//!
//! The semantics follow MongoDB's projection executor:
//! - inclusion: included fields keep the input document's order, then computed fields
//!   (and sub-objects holding computed fields) are appended in specification order; a
//!   sub-object that already holds a position keeps it;
//! - exclusion: the input document with the listed paths removed;
//! - `$addFields`: the input document with fields set in place (new ones appended).
//!
//! Every expression is evaluated against the input document (`$$ROOT`), before the
//! output is built, so values can be moved out of the owned input rather than cloned.
//! Dotted paths traverse arrays: the sub-projection applies to every element.

use crate::error::{path_index, path_key, CompileError, EvalError};
use crate::expr::{compile_expr, CompileCtx, Ctx, Env, Expr};
use crate::stages::{RefOutcome, Stage};
use crate::value::{Document, Str, Value};
use std::sync::Arc;

/// How the tree is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Inclusion,
    Exclusion,
    AddFields,
}

/// One level of the projection tree.
#[derive(Debug, Default)]
struct Node {
    /// Entries in specification order (the order computed fields are appended in).
    entries: Vec<(Str, Entry)>,
    /// True when this subtree holds a computed field.
    has_computed: bool,
    /// Number of included/excluded/child entries: the input fields this level reads.
    n_fields: usize,
    /// One probe per entry (same order), so looking up an input field rejects most
    /// entries without a string comparison: this lookup runs for every field of every
    /// document.
    probes: Vec<KeyProbe>,
    /// Bit `n` set when an entry's name is `n` bytes long (63 stands for 63 and more):
    /// most input fields are rejected on their length alone, before any probe.
    lengths: u64,
}

fn length_bit(len: usize) -> u64 {
    1 << len.min(63)
}

/// A key's length and its first and last eight (or, below eight bytes, four) bytes:
/// equal keys have equal probes, and keys of up to 16 bytes with equal probes are equal
/// (the bytes cover the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeyProbe {
    len: usize,
    head: u64,
    tail: u64,
}

impl KeyProbe {
    /// Keys longer than this need a string comparison after their probes matched.
    const COVERED: usize = 16;

    #[inline]
    fn of(key: &str) -> KeyProbe {
        let b = key.as_bytes();
        // Fixed-size reads rather than a variable-length `copy_from_slice`, which compiles
        // to a `memcpy` call costing more than the whole probe.
        let (head, tail) = match (b.first_chunk::<8>(), b.last_chunk::<8>()) {
            (Some(h), Some(t)) => (u64::from_le_bytes(*h), u64::from_le_bytes(*t)),
            // Four to seven bytes: the first and last four overlap and cover the key.
            _ if b.len() >= 4 => match (b.first_chunk::<4>(), b.last_chunk::<4>()) {
                (Some(h), Some(t)) => (
                    u64::from(u32::from_le_bytes(*h)) | u64::from(u32::from_le_bytes(*t)) << 32,
                    0,
                ),
                _ => (0, 0),
            },
            _ => {
                let h = b
                    .iter()
                    .enumerate()
                    .fold(0, |h, (i, &x)| h | u64::from(x) << (8 * i));
                (h, 0)
            }
        };
        KeyProbe {
            len: b.len(),
            head,
            tail,
        }
    }
}

#[derive(Debug)]
enum Entry {
    Include,
    Exclude,
    /// Index into the stage's expressions.
    Computed(usize),
    Child(Node),
}

impl Node {
    #[inline]
    fn get(&self, key: &str) -> Option<&Entry> {
        if self.lengths & length_bit(key.len()) == 0 {
            return None;
        }
        let probe = KeyProbe::of(key);
        self.probes
            .iter()
            .zip(&self.entries)
            .find(|(p, (k, _))| {
                **p == probe && (probe.len <= KeyProbe::COVERED || k.as_str() == key)
            })
            .map(|(_, (_, e))| e)
    }

    fn insert(&mut self, segs: &[Str], leaf: Entry) {
        match segs {
            [] => {}
            [last] => self.entries.push((last.clone(), leaf)),
            [first, rest @ ..] => {
                let pos = match self
                    .entries
                    .iter()
                    .position(|(k, e)| k == first && matches!(e, Entry::Child(_)))
                {
                    Some(p) => p,
                    None => {
                        self.entries
                            .push((first.clone(), Entry::Child(Node::default())));
                        self.entries.len() - 1
                    }
                };
                if let Entry::Child(c) = &mut self.entries[pos].1 {
                    c.insert(rest, leaf);
                }
            }
        }
    }

    /// Computes `has_computed` and `n_fields` bottom-up; returns `has_computed`.
    fn finish(&mut self) -> bool {
        let mut computed = false;
        let mut n = 0;
        for (_, e) in &mut self.entries {
            match e {
                Entry::Include | Entry::Exclude => n += 1,
                Entry::Computed(_) => computed = true,
                Entry::Child(c) => {
                    n += 1;
                    computed |= c.finish();
                }
            }
        }
        self.has_computed = computed;
        self.n_fields = n;
        self.probes = self.entries.iter().map(|(k, _)| KeyProbe::of(k)).collect();
        self.lengths = self
            .entries
            .iter()
            .fold(0, |m, (k, _)| m | length_bit(k.len()));
        computed
    }
}

#[derive(Debug)]
struct Spec {
    mode: Mode,
    root: Node,
    exprs: Vec<Expr>,
}

/// The compiled `$project` / `$addFields` / `$set` / `$unset` stage.
#[derive(Debug, Clone)]
struct Projection {
    name: &'static str,
    spec: Arc<Spec>,
    /// Values of the computed fields for the document being processed.
    scratch: Vec<Value>,
}

impl Stage for Projection {
    fn name(&self) -> &'static str {
        self.name
    }

    fn process(
        &mut self,
        mut doc: Document,
        env: &Env,
        out: &mut Vec<Document>,
    ) -> Result<(), EvalError> {
        let spec = &*self.spec;
        match spec.mode {
            Mode::Exclusion => exclude_doc(&spec.root, &mut doc),
            Mode::Inclusion => {
                eval_all(&spec.exprs, &doc, env, &mut self.scratch)?;
                doc = include_doc(&spec.root, doc, &mut self.scratch, false);
            }
            Mode::AddFields => {
                eval_all(&spec.exprs, &doc, env, &mut self.scratch)?;
                add_doc(&spec.root, &mut doc, &mut self.scratch, false);
            }
        }
        self.scratch.clear();
        out.push(doc);
        Ok(())
    }

    /// An inclusion projection builds its output from the borrowed input, cloning only
    /// the fields it keeps; the other modes edit a copy of the whole document anyway.
    fn process_ref(
        &mut self,
        doc: &Document,
        env: &Env,
        out: &mut Vec<Document>,
    ) -> Result<RefOutcome, EvalError> {
        let spec = &*self.spec;
        if spec.mode != Mode::Inclusion {
            self.process(doc.clone(), env, out)?;
            return Ok(RefOutcome::Emitted);
        }
        eval_all(&spec.exprs, doc, env, &mut self.scratch)?;
        let projected = include_doc_ref(&spec.root, doc, &mut self.scratch, false);
        self.scratch.clear();
        out.push(projected);
        Ok(RefOutcome::Emitted)
    }

    fn fresh(&self) -> Box<dyn Stage> {
        Box::new(Projection {
            name: self.name,
            spec: self.spec.clone(),
            scratch: Vec::new(),
        })
    }
}

fn eval_all(
    exprs: &[Expr],
    doc: &Document,
    env: &Env,
    out: &mut Vec<Value>,
) -> Result<(), EvalError> {
    out.clear();
    let ctx = Ctx::new(doc, env);
    for e in exprs {
        out.push(e.eval(&ctx)?.into_owned());
    }
    Ok(())
}

/// A computed value: moved out when it is used once, cloned inside arrays (where the
/// same sub-projection applies to every element).
#[inline]
fn take_val(vals: &mut [Value], i: usize, shared: bool) -> Value {
    match vals.get_mut(i) {
        Some(v) if shared => v.clone(),
        Some(v) => std::mem::replace(v, Value::Missing),
        None => Value::Missing,
    }
}

fn include_doc(node: &Node, doc: Document, vals: &mut [Value], shared: bool) -> Document {
    let mut out = Document::with_capacity(node.entries.len());
    // Included fields and sub-projections keep the input document's order.
    let mut left = node.n_fields;
    if left > 0 {
        for (k, v) in doc {
            match node.get(&k) {
                Some(Entry::Include) => out.push_unchecked(k, v),
                Some(Entry::Child(c)) => {
                    let v = include_value(c, v, vals, shared);
                    out.push_unchecked(k, v);
                }
                _ => continue,
            }
            left -= 1;
            if left == 0 {
                break;
            }
        }
    }
    append_computed(node, &mut out, vals, shared);
    out
}

/// Appends the computed fields of an inclusion level, in specification order. A
/// sub-projection holding computed fields always produced a value already when its field
/// existed in the input (so it kept the input position); otherwise it is appended here.
fn append_computed(node: &Node, out: &mut Document, vals: &mut [Value], shared: bool) {
    if node.has_computed {
        for (k, e) in &node.entries {
            match e {
                Entry::Computed(i) => out.push_unchecked(k.clone(), take_val(vals, *i, shared)),
                Entry::Child(c) if c.has_computed && !out.contains_key(k) => {
                    out.push_unchecked(k.clone(), Value::Document(new_doc(c, vals, shared)));
                }
                _ => {}
            }
        }
    }
}

/// [`include_doc`] for a borrowed input: the same output, cloning only kept values.
fn include_doc_ref(node: &Node, doc: &Document, vals: &mut [Value], shared: bool) -> Document {
    let mut out = Document::with_capacity(node.entries.len());
    let mut left = node.n_fields;
    if left > 0 {
        for (k, v) in doc.iter() {
            match node.get(k) {
                Some(Entry::Include) => out.push_unchecked(k.clone(), v.clone()),
                Some(Entry::Child(c)) => {
                    let v = include_value_ref(c, v, vals, shared);
                    out.push_unchecked(k.clone(), v);
                }
                _ => continue,
            }
            left -= 1;
            if left == 0 {
                break;
            }
        }
    }
    append_computed(node, &mut out, vals, shared);
    out
}

/// [`include_value`] for a borrowed input.
fn include_value_ref(node: &Node, v: &Value, vals: &mut [Value], shared: bool) -> Value {
    match v {
        Value::Document(d) => Value::Document(include_doc_ref(node, d, vals, shared)),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|x| include_value_ref(node, x, vals, true))
                .filter(|x| !x.is_missing())
                .collect(),
        ),
        _ if node.has_computed => Value::Document(new_doc(node, vals, shared)),
        _ => Value::Missing,
    }
}

fn include_value(node: &Node, v: Value, vals: &mut [Value], shared: bool) -> Value {
    match v {
        Value::Document(d) => Value::Document(include_doc(node, d, vals, shared)),
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|x| include_value(node, x, vals, true))
                .filter(|x| !x.is_missing())
                .collect(),
        ),
        // A scalar where sub-fields were asked for: replaced by the computed fields.
        _ if node.has_computed => Value::Document(new_doc(node, vals, shared)),
        _ => Value::Missing,
    }
}

/// A document holding only the computed fields of `node`.
fn new_doc(node: &Node, vals: &mut [Value], shared: bool) -> Document {
    let mut d = Document::new();
    for (k, e) in &node.entries {
        match e {
            Entry::Computed(i) => d.push_unchecked(k.clone(), take_val(vals, *i, shared)),
            Entry::Child(c) if c.has_computed => {
                d.push_unchecked(k.clone(), Value::Document(new_doc(c, vals, shared)));
            }
            _ => {}
        }
    }
    d
}

fn add_doc(node: &Node, d: &mut Document, vals: &mut [Value], shared: bool) {
    for (k, e) in &node.entries {
        match e {
            Entry::Computed(i) => {
                let v = take_val(vals, *i, shared);
                match d.get_mut(k) {
                    // `$$REMOVE` or a missing value removes the field.
                    Some(_) if v.is_missing() => {
                        d.remove(k);
                    }
                    Some(slot) => *slot = v,
                    None => d.push_unchecked(k.clone(), v),
                }
            }
            Entry::Child(c) => match d.get_mut(k) {
                Some(v) => add_value(c, v, vals, shared),
                None => d.push_unchecked(k.clone(), Value::Document(new_doc(c, vals, shared))),
            },
            _ => {}
        }
    }
}

fn add_value(node: &Node, v: &mut Value, vals: &mut [Value], shared: bool) {
    match v {
        Value::Document(d) => add_doc(node, d, vals, shared),
        Value::Array(items) => {
            for x in items {
                add_value(node, x, vals, true);
            }
        }
        _ => *v = Value::Document(new_doc(node, vals, shared)),
    }
}

fn exclude_doc(node: &Node, d: &mut Document) {
    for (k, e) in &node.entries {
        match e {
            Entry::Exclude => {
                d.remove(k);
            }
            Entry::Child(c) => {
                if let Some(v) = d.get_mut(k) {
                    exclude_value(c, v);
                }
            }
            _ => {}
        }
    }
}

fn exclude_value(node: &Node, v: &mut Value) {
    match v {
        Value::Document(d) => exclude_doc(node, d),
        Value::Array(items) => {
            for x in items {
                exclude_value(node, x);
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------
// Compilation
// ---------------------------------------------------------------------------------

/// What a leaf of the specification is.
enum Leaf {
    Include,
    Exclude,
    Computed(Expr),
}

struct Parser<'c> {
    stage: &'static str,
    /// `$project` (1/0/true/false are inclusion flags) or `$addFields` (all expressions).
    project: bool,
    cx: &'c mut CompileCtx,
    /// Full dotted paths seen so far, to reject conflicting ones.
    seen: Vec<String>,
    leaves: Vec<(Vec<Str>, Leaf)>,
    /// Mode decided by the first non-`_id` inclusion/exclusion/computed field.
    mode: Option<Mode>,
    /// `Some(true)` for `_id: 1`, `Some(false)` for `_id: 0`.
    id_flag: Option<bool>,
}

/// Splits and checks a field name of a specification (`a.b.c`).
fn split_field(name: &str, stage: &str, path: &str) -> Result<Vec<Str>, CompileError> {
    if name.is_empty() {
        return Err(CompileError::new(
            path,
            format!("{stage}: field names may not be empty"),
        ));
    }
    let mut segs = Vec::new();
    for seg in name.split('.') {
        if seg.is_empty() {
            return Err(CompileError::new(
                path,
                format!("{stage}: field path '{name}' has an empty component"),
            ));
        }
        if seg.starts_with('$') {
            return Err(CompileError::new(
                path,
                format!("{stage}: field name '{seg}' may not start with '$' (to use an operator, write {{\"<field>\": {{\"$op\": ...}}}})"),
            ));
        }
        segs.push(Str::from(seg));
    }
    Ok(segs)
}

fn is_operator_object(d: &Document) -> bool {
    d.keys().next().is_some_and(|k| k.starts_with('$'))
}

impl Parser<'_> {
    fn parse_level(
        &mut self,
        spec: &Document,
        prefix: &[Str],
        path: &str,
    ) -> Result<(), CompileError> {
        for (k, v) in spec.iter() {
            let p = path_key(path, k);
            // $project accepts dotted names inside sub-objects; $addFields does not.
            if !self.project && !prefix.is_empty() && k.contains('.') && !k.starts_with('$') {
                return Err(CompileError::new(
                    &p,
                    format!("{}: cannot use dotted field name '{k}' in a sub-object; write the nested form or a dotted path at the top level", self.stage),
                ));
            }
            let mut segs = prefix.to_vec();
            segs.extend(split_field(k, self.stage, &p)?);
            let leaf = match v {
                Value::Document(sub) if sub.is_empty() => {
                    if self.project {
                        return Err(CompileError::new(
                            &p,
                            format!("{}: an empty object is not a valid value (to set an empty object write {{\"$literal\": {{}}}})", self.stage),
                        ));
                    }
                    Leaf::Computed(Expr::Literal(Value::Document(Document::new())))
                }
                Value::Document(sub) if is_operator_object(sub) => {
                    Leaf::Computed(compile_expr(v, &p, self.cx)?)
                }
                Value::Document(sub) => {
                    self.parse_level(sub, &segs, &p)?;
                    continue;
                }
                Value::Bool(_)
                | Value::Int32(_)
                | Value::Int64(_)
                | Value::Double(_)
                | Value::Decimal(_)
                    if self.project =>
                {
                    if v.is_truthy() {
                        Leaf::Include
                    } else {
                        Leaf::Exclude
                    }
                }
                _ => Leaf::Computed(compile_expr(v, &p, self.cx)?),
            };
            self.add_leaf(segs, leaf, &p)?;
        }
        Ok(())
    }

    fn add_leaf(&mut self, segs: Vec<Str>, leaf: Leaf, path: &str) -> Result<(), CompileError> {
        let full = segs.join(".");
        for s in &self.seen {
            let conflict = *s == full
                || (full.len() > s.len()
                    && full.starts_with(s.as_str())
                    && full.as_bytes()[s.len()] == b'.')
                || (s.len() > full.len()
                    && s.starts_with(full.as_str())
                    && s.as_bytes()[full.len()] == b'.');
            if conflict {
                return Err(CompileError::new(
                    path,
                    format!(
                        "{}: path collision: cannot specify both '{s}' and '{full}'",
                        self.stage
                    ),
                ));
            }
        }
        self.seen.push(full.clone());
        if self.project {
            let is_id = segs.len() == 1 && segs[0] == "_id";
            match &leaf {
                Leaf::Include | Leaf::Exclude if is_id => {
                    self.id_flag = Some(matches!(leaf, Leaf::Include));
                    return Ok(());
                }
                Leaf::Include | Leaf::Computed(_) => {
                    if self.mode == Some(Mode::Exclusion) {
                        let what = if matches!(leaf, Leaf::Include) {
                            format!(
                                "cannot do inclusion on field '{full}' in an exclusion projection"
                            )
                        } else {
                            format!("cannot use an expression for field '{full}' in an exclusion projection")
                        };
                        return Err(CompileError::new(
                            path,
                            format!("{}: {what} (an exclusion projection lists only fields set to 0 or false, except _id)", self.stage),
                        ));
                    }
                    self.mode = Some(Mode::Inclusion);
                }
                Leaf::Exclude => {
                    if self.mode == Some(Mode::Inclusion) {
                        return Err(CompileError::new(
                            path,
                            format!("{}: cannot do exclusion on field '{full}' in an inclusion projection (only _id may be excluded; use $$REMOVE to drop a computed field)", self.stage),
                        ));
                    }
                    self.mode = Some(Mode::Exclusion);
                }
            }
        }
        self.leaves.push((segs, leaf));
        Ok(())
    }
}

fn build(name: &'static str, mode: Mode, leaves: Vec<(Vec<Str>, Leaf)>) -> Box<dyn Stage> {
    let mut root = Node::default();
    let mut exprs = Vec::new();
    for (segs, leaf) in leaves {
        let entry = match leaf {
            Leaf::Include => Entry::Include,
            Leaf::Exclude => Entry::Exclude,
            Leaf::Computed(e) => {
                exprs.push(e);
                Entry::Computed(exprs.len() - 1)
            }
        };
        root.insert(&segs, entry);
    }
    root.finish();
    Box::new(Projection {
        name,
        spec: Arc::new(Spec { mode, root, exprs }),
        scratch: Vec::new(),
    })
}

fn spec_document<'v>(
    name: &str,
    spec: &'v Value,
    path: &str,
) -> Result<&'v Document, CompileError> {
    match spec {
        Value::Document(d) => Ok(d),
        other => Err(CompileError::new(
            path,
            format!(
                "{name} specification must be an object, found {}",
                other.type_name()
            ),
        )),
    }
}

/// Compiles `$project`.
pub(crate) fn compile_project(
    spec: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Box<dyn Stage>, CompileError> {
    let d = spec_document("$project", spec, path)?;
    if d.is_empty() {
        return Err(CompileError::new(
            path,
            "$project specification must have at least one field",
        ));
    }
    let mut p = Parser {
        stage: "$project",
        project: true,
        cx,
        seen: Vec::new(),
        leaves: Vec::new(),
        mode: None,
        id_flag: None,
    };
    p.parse_level(d, &[], path)?;
    let id_specified = p.seen.iter().any(|s| s == "_id" || s.starts_with("_id."));
    let mode = match (p.mode, p.id_flag) {
        (Some(m), _) => m,
        (None, Some(false)) => Mode::Exclusion,
        _ => Mode::Inclusion,
    };
    let mut leaves = p.leaves;
    match (mode, p.id_flag) {
        (Mode::Inclusion, Some(true)) => leaves.push((vec![Str::from("_id")], Leaf::Include)),
        (Mode::Inclusion, None) if !id_specified => {
            leaves.push((vec![Str::from("_id")], Leaf::Include))
        }
        (Mode::Exclusion, Some(false)) => leaves.push((vec![Str::from("_id")], Leaf::Exclude)),
        _ => {}
    }
    Ok(build("$project", mode, leaves))
}

fn compile_add_fields_named(
    name: &'static str,
    spec: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Box<dyn Stage>, CompileError> {
    let d = spec_document(name, spec, path)?;
    let mut p = Parser {
        stage: name,
        project: false,
        cx,
        seen: Vec::new(),
        leaves: Vec::new(),
        mode: None,
        id_flag: None,
    };
    p.parse_level(d, &[], path)?;
    Ok(build(name, Mode::AddFields, p.leaves))
}

/// Compiles `$addFields`.
pub(crate) fn compile_add_fields(
    spec: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Box<dyn Stage>, CompileError> {
    compile_add_fields_named("$addFields", spec, path, cx)
}

/// Compiles `$set` (an alias of `$addFields`).
pub(crate) fn compile_set(
    spec: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Box<dyn Stage>, CompileError> {
    compile_add_fields_named("$set", spec, path, cx)
}

/// Compiles `$unset`: a field path or an array of field paths to remove.
pub(crate) fn compile_unset(
    spec: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Box<dyn Stage>, CompileError> {
    let items: Vec<(&Value, String)> = match spec {
        Value::String(_) => vec![(spec, path.to_string())],
        Value::Array(a) if !a.is_empty() => a
            .iter()
            .enumerate()
            .map(|(i, v)| (v, path_index(path, i)))
            .collect(),
        other => {
            return Err(CompileError::new(
                path,
                format!(
                "$unset specification must be a string or a non-empty array of strings, found {}",
                if matches!(other, Value::Array(_)) {
                    "an empty array".to_string()
                } else {
                    other.type_name().to_string()
                }
            ),
            ))
        }
    };
    let mut p = Parser {
        stage: "$unset",
        project: true,
        cx,
        seen: Vec::new(),
        leaves: Vec::new(),
        mode: None,
        id_flag: None,
    };
    for (v, item_path) in items {
        let Value::String(s) = v else {
            return Err(CompileError::new(
                item_path,
                format!(
                    "$unset: each field must be a string, found {}",
                    v.type_name()
                ),
            ));
        };
        let segs = split_field(s, "$unset", &item_path)?;
        p.add_leaf(segs, Leaf::Exclude, &item_path)?;
    }
    // `_id` is recorded as a flag by the $project rules; $unset removes it like any field.
    let mut leaves = p.leaves;
    if p.id_flag == Some(false) {
        leaves.push((vec![Str::from("_id")], Leaf::Exclude));
    }
    Ok(build("$unset", Mode::Exclusion, leaves))
}
