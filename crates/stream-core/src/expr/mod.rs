//! The aggregation expression language, compiled once into a tree of [`Expr`] nodes.
//!
//! Compilation resolves field paths into segments, variables into slots and operator
//! names into [`Operator`] objects; evaluation walks the tree against one document.
//! Evaluation returns `Cow<Value>`: a field path or literal borrows from the document
//! or the tree and nothing is cloned until a value must be owned.
//!
//! Each family of operators lives in its own module and exports an `OPERATORS` table of
//! `(name, compile function)`; [`compile_expr`] dispatches on the operator name.

mod accumulate;
mod arith;
mod array;
mod compare;
mod cond;
mod convert;
mod date;
pub mod datetime;
mod misc;
mod object;
mod set;
mod string;

use crate::error::{path_index, path_key, CompileError, EvalError};
use crate::functions::FunctionRegistry;
use crate::value::{Document, FieldHint, Str, Value};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

/// Identifier of a user variable slot (`$$x` bound by `$let`, `$map`, `$filter`, ...).
pub type VarId = usize;

/// A compiled expression.
#[derive(Debug, Clone)]
pub enum Expr {
    /// A constant.
    Literal(Value),
    /// `"$a.b.c"`: a path from `$$CURRENT`, with where its first component was last found.
    FieldPath(Arc<[Str]>, FieldHint),
    /// `"$$name.a.b"`: a variable, optionally followed by a path.
    Variable(Variable, Arc<[Str]>),
    /// `[e1, e2, ...]`: an array whose elements are expressions (missing becomes null).
    Array(Arc<[Expr]>),
    /// `{k: e, ...}`: a document whose values are expressions (missing fields omitted).
    Object(Arc<[(Str, Expr)]>),
    /// `{"$op": args}`.
    Op(Arc<dyn Operator>),
}

/// What a `$$variable` refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variable {
    /// `$$ROOT`: the top-level document.
    Root,
    /// `$$CURRENT`: the current document (the root except inside `$redact`).
    Current,
    /// `$$NOW`: the same instant for a whole pipeline run.
    Now,
    /// A user variable bound by `$let`, `$map`, `$filter`, `$reduce`, ...
    User(VarId),
}

/// An operator node. Implement [`Operator::eval`]; everything else is dispatch.
pub trait Operator: Send + Sync + fmt::Debug {
    /// Evaluates against the context.
    fn eval<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Cow<'a, Value>, EvalError>;
}

/// Per-run environment shared by every evaluation in a pipeline run.
#[derive(Debug, Clone)]
pub struct Env {
    /// `$$NOW` in epoch milliseconds.
    pub now: i64,
    /// Event time (epoch milliseconds) of the input document being processed, when the
    /// streaming runtime knows it (the source's `timeField` or record timestamp). Window
    /// stages read it; expressions do not.
    pub event_time: Option<i64>,
}

impl Env {
    /// An environment whose `$$NOW` is the current wall-clock time.
    pub fn now() -> Env {
        Env::at(chrono::Utc::now().timestamp_millis())
    }

    /// An environment whose `$$NOW` is `now` (epoch milliseconds).
    pub fn at(now: i64) -> Env {
        Env {
            now,
            event_time: None,
        }
    }
}

impl Default for Env {
    fn default() -> Self {
        Env::now()
    }
}

/// A variable binding in a chain of scopes.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// Enclosing scope.
    pub parent: Option<&'a Scope<'a>>,
    /// The variable bound here.
    pub id: VarId,
    /// Its value.
    pub value: &'a Value,
}

/// What an expression is evaluated against.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// `$$ROOT`.
    pub root: &'a Document,
    /// `$$CURRENT`, the base of field paths.
    pub current: &'a Document,
    /// Innermost variable scope.
    pub scope: Option<&'a Scope<'a>>,
    /// Run environment.
    pub env: &'a Env,
}

impl<'a> Ctx<'a> {
    /// A context for evaluating against `doc` as both root and current document.
    pub fn new(doc: &'a Document, env: &'a Env) -> Ctx<'a> {
        Ctx {
            root: doc,
            current: doc,
            scope: None,
            env,
        }
    }

    /// A child context with `id` bound to `value`, for use inside `f`.
    #[inline]
    pub fn with_var<R>(&self, id: VarId, value: &Value, f: impl FnOnce(&Ctx<'_>) -> R) -> R {
        let scope = Scope {
            parent: self.scope,
            id,
            value,
        };
        let ctx = Ctx {
            root: self.root,
            current: self.current,
            scope: Some(&scope),
            env: self.env,
        };
        f(&ctx)
    }

    /// The value bound to a user variable.
    pub fn lookup(&self, id: VarId) -> Option<&'a Value> {
        let mut s = self.scope;
        while let Some(scope) = s {
            if scope.id == id {
                return Some(scope.value);
            }
            s = scope.parent;
        }
        None
    }
}

/// Value at a field path of a document, with expression semantics (see
/// [`Value::get_path_expr`]). Missing → [`Value::Missing`].
#[inline]
pub fn doc_path<'a>(doc: &'a Document, path: &[Str]) -> Cow<'a, Value> {
    doc_path_hinted(doc, path, &FieldHint::default())
}

/// [`doc_path`] whose first component is looked up with `hint`.
#[inline]
fn doc_path_hinted<'a>(doc: &'a Document, path: &[Str], hint: &FieldHint) -> Cow<'a, Value> {
    let Some((first, rest)) = path.split_first() else {
        return Cow::Owned(Value::Missing);
    };
    match doc.get_hinted(first, hint) {
        None => Cow::Owned(Value::Missing),
        Some(v) if rest.is_empty() => Cow::Borrowed(v),
        Some(v) => v.get_path_expr(rest),
    }
}

impl Expr {
    /// Evaluates the expression.
    #[inline]
    pub fn eval<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Cow<'a, Value>, EvalError> {
        match self {
            Expr::Literal(v) => Ok(Cow::Borrowed(v)),
            Expr::FieldPath(path, hint) => Ok(doc_path_hinted(ctx.current, path, hint)),
            Expr::Variable(var, path) => Ok(eval_variable(*var, path, ctx)),
            Expr::Op(op) => op.eval(ctx),
            Expr::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items.iter() {
                    let v = item.eval(ctx)?;
                    out.push(if v.is_missing() {
                        Value::Null
                    } else {
                        v.into_owned()
                    });
                }
                Ok(Cow::Owned(Value::Array(out)))
            }
            Expr::Object(fields) => {
                let mut doc = Document::with_capacity(fields.len());
                for (k, e) in fields.iter() {
                    let v = e.eval(ctx)?;
                    doc.push_unchecked(k.clone(), v.into_owned());
                }
                Ok(Cow::Owned(Value::Document(doc)))
            }
        }
    }

    /// Evaluates to an owned value.
    pub fn eval_owned(&self, ctx: &Ctx<'_>) -> Result<Value, EvalError> {
        self.eval(ctx).map(Cow::into_owned)
    }

    /// The constant value, when the expression is a literal.
    pub fn as_literal(&self) -> Option<&Value> {
        match self {
            Expr::Literal(v) => Some(v),
            _ => None,
        }
    }

    /// True when the expression is exactly `$$ROOT` / `$$CURRENT` with no path.
    pub fn is_root(&self) -> bool {
        matches!(self, Expr::Variable(Variable::Root | Variable::Current, p) if p.is_empty())
    }
}

fn eval_variable<'a>(var: Variable, path: &[Str], ctx: &Ctx<'a>) -> Cow<'a, Value> {
    match var {
        Variable::Root | Variable::Current => {
            let doc = if var == Variable::Root {
                ctx.root
            } else {
                ctx.current
            };
            if path.is_empty() {
                Cow::Owned(Value::Document(doc.clone()))
            } else {
                doc_path(doc, path)
            }
        }
        Variable::Now => {
            let now = Value::Date(ctx.env.now);
            if path.is_empty() {
                Cow::Owned(now)
            } else {
                Cow::Owned(Value::Missing)
            }
        }
        Variable::User(id) => match ctx.lookup(id) {
            Some(v) if path.is_empty() => Cow::Borrowed(v),
            Some(v) => v.get_path_expr(path),
            None => Cow::Owned(Value::Missing),
        },
    }
}

/// Compile-time context: the function registry and the variables in scope.
#[derive(Clone)]
pub struct CompileCtx {
    functions: Arc<FunctionRegistry>,
    scopes: Vec<(Str, VarId)>,
    next_var: VarId,
}

impl fmt::Debug for CompileCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompileCtx")
            .field("scopes", &self.scopes)
            .finish()
    }
}

impl Default for CompileCtx {
    fn default() -> Self {
        CompileCtx::new(Arc::new(FunctionRegistry::new()))
    }
}

impl CompileCtx {
    /// A context resolving `$function` names against `functions`.
    pub fn new(functions: Arc<FunctionRegistry>) -> Self {
        CompileCtx {
            functions,
            scopes: Vec::new(),
            next_var: 0,
        }
    }

    /// The registry for `$function`.
    pub fn functions(&self) -> &FunctionRegistry {
        &self.functions
    }

    /// Binds a new variable name; shadows an outer one of the same name until
    /// [`CompileCtx::unbind`]. Checks MongoDB's naming rule.
    pub fn bind(&mut self, name: &str, path: &str) -> Result<VarId, CompileError> {
        validate_var_name(name, path)?;
        let id = self.next_var;
        self.next_var += 1;
        self.scopes.push((Str::from(name), id));
        Ok(id)
    }

    /// Removes the `n` most recently bound variables.
    pub fn unbind(&mut self, n: usize) {
        let len = self.scopes.len().saturating_sub(n);
        self.scopes.truncate(len);
    }

    /// Resolves a user variable name.
    pub fn lookup(&self, name: &str) -> Option<VarId> {
        self.scopes
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, id)| *id)
    }
}

/// User variable names start with a lowercase ASCII letter or a non-ASCII character.
fn validate_var_name(name: &str, path: &str) -> Result<(), CompileError> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || !c.is_ascii())
        && name.chars().all(|c| c.is_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(CompileError::new(
            path,
            format!("invalid variable name '{name}': it must start with a lowercase letter and contain only letters, digits and '_'"),
        ))
    }
}

/// Compiles an operator's arguments at `path` into an expression.
pub type CompileFn =
    fn(args: &Value, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError>;

fn operator_table() -> &'static HashMap<&'static str, CompileFn> {
    static TABLE: OnceLock<HashMap<&'static str, CompileFn>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut m = HashMap::new();
        for table in [
            misc::OPERATORS,
            accumulate::OPERATORS,
            arith::OPERATORS,
            compare::OPERATORS,
            cond::OPERATORS,
            string::OPERATORS,
            array::OPERATORS,
            set::OPERATORS,
            object::OPERATORS,
            convert::OPERATORS,
            date::OPERATORS,
        ] {
            for (name, f) in table {
                m.insert(*name, *f);
            }
        }
        m
    })
}

/// Names of every expression operator, sorted (for documentation and tooling).
pub fn operator_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = operator_table().keys().copied().collect();
    names.sort_unstable();
    names
}

/// True when `name` (with its `$`) is a known expression operator.
pub fn is_operator(name: &str) -> bool {
    operator_table().contains_key(name)
}

/// Compiles an expression found at JSON path `path`.
pub fn compile_expr(v: &Value, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
    match v {
        Value::String(s) if s.starts_with("$$") => compile_variable(&s[2..], path, cx),
        Value::String(s) if s.starts_with('$') => Ok(Expr::FieldPath(
            parse_field_path(&s[1..], path)?,
            FieldHint::default(),
        )),
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(compile_expr(item, &path_index(path, i), cx)?);
            }
            if out.iter().all(|e| matches!(e, Expr::Literal(_))) {
                let vals = out
                    .into_iter()
                    .map(|e| match e {
                        Expr::Literal(Value::Missing) => Value::Null,
                        Expr::Literal(v) => v,
                        _ => unreachable!("checked all literal"),
                    })
                    .collect();
                return Ok(Expr::Literal(Value::Array(vals)));
            }
            Ok(Expr::Array(out.into()))
        }
        Value::Document(d) => {
            let mut iter = d.iter();
            match iter.next() {
                None => Ok(Expr::Literal(Value::Document(Document::new()))),
                Some((k, args)) if k.starts_with('$') => {
                    if d.len() > 1 {
                        return Err(CompileError::new(
                            path,
                            format!("an expression object with operator '{k}' must have exactly one field, found {}", d.len()),
                        ));
                    }
                    let op_path = path_key(path, k);
                    match operator_table().get(k.as_str()) {
                        Some(f) => f(args, &op_path, cx),
                        None => Err(CompileError::new(
                            op_path,
                            format!("unknown expression operator '{k}'"),
                        )),
                    }
                }
                Some(_) => compile_object(d, path, cx),
            }
        }
        other => Ok(Expr::Literal(other.clone())),
    }
}

/// Compiles `{k: expr, ...}` where no key is an operator.
pub fn compile_object(d: &Document, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
    let mut fields = Vec::with_capacity(d.len());
    let mut all_literal = true;
    for (k, v) in d.iter() {
        let p = path_key(path, k);
        if k.starts_with('$') {
            return Err(CompileError::new(
                p,
                format!("field name '{k}' may not start with '$' in an object expression (operators must be the only field)"),
            ));
        }
        if k.contains('.') {
            return Err(CompileError::new(
                p,
                format!("field name '{k}' may not contain '.' in an object expression"),
            ));
        }
        let e = compile_expr(v, &p, cx)?;
        all_literal &= matches!(e, Expr::Literal(_));
        fields.push((k.clone(), e));
    }
    if all_literal {
        let mut doc = Document::with_capacity(fields.len());
        for (k, e) in fields {
            if let Expr::Literal(v) = e {
                doc.push_unchecked(k, v);
            }
        }
        return Ok(Expr::Literal(Value::Document(doc)));
    }
    Ok(Expr::Object(fields.into()))
}

/// Splits `a.b.c` (without the `$`) into segments, rejecting empty ones.
pub fn parse_field_path(s: &str, path: &str) -> Result<Arc<[Str]>, CompileError> {
    if s.is_empty() {
        return Err(CompileError::new(
            path,
            "'$' by itself is not a valid field path",
        ));
    }
    let mut segs = Vec::new();
    for seg in s.split('.') {
        if seg.is_empty() {
            return Err(CompileError::new(
                path,
                format!("field path '${s}' has an empty component"),
            ));
        }
        if seg.starts_with('$') {
            return Err(CompileError::new(
                path,
                format!("field path component '{seg}' of '${s}' may not start with '$'"),
            ));
        }
        segs.push(Str::from(seg));
    }
    Ok(segs.into())
}

fn compile_variable(s: &str, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
    let (name, rest) = match s.split_once('.') {
        Some((n, r)) => (n, Some(r)),
        None => (s, None),
    };
    let sub: Arc<[Str]> = match rest {
        Some(r) => parse_field_path(r, path)?,
        None => Arc::from(Vec::new()),
    };
    let var = match name {
        "ROOT" => Variable::Root,
        "CURRENT" => Variable::Current,
        "NOW" => Variable::Now,
        "REMOVE" => return Ok(Expr::Literal(Value::Missing)),
        // $redact's decisions are compiled to marker strings the stage recognises.
        "DESCEND" | "PRUNE" | "KEEP" => {
            return Ok(Expr::Literal(Value::string(format!("$${name}"))))
        }
        _ => match cx.lookup(name) {
            Some(id) => Variable::User(id),
            None => {
                return Err(CompileError::new(
                    path,
                    format!("use of undefined variable '$${name}'"),
                ))
            }
        },
    };
    Ok(Expr::Variable(var, sub))
}

// ---------------------------------------------------------------------------------
// Helpers shared by operator modules.
// ---------------------------------------------------------------------------------

/// The argument list of an operator: an array's elements, or a single non-array argument.
pub fn arg_list(args: &Value) -> Vec<&Value> {
    match args {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    }
}

/// Compiles an operator's argument list, checking the count is within `min..=max`.
pub fn compile_args(
    name: &str,
    args: &Value,
    min: usize,
    max: usize,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Vec<Expr>, CompileError> {
    let list = arg_list(args);
    if list.len() < min || list.len() > max {
        let expected = if min == max {
            format!("exactly {min}")
        } else if max == usize::MAX {
            format!("at least {min}")
        } else {
            format!("between {min} and {max}")
        };
        return Err(CompileError::new(
            path,
            format!("{name} takes {expected} argument(s), found {}", list.len()),
        ));
    }
    list.into_iter()
        .enumerate()
        .map(|(i, a)| {
            let p = if matches!(args, Value::Array(_)) {
                path_index(path, i)
            } else {
                path.to_string()
            };
            compile_expr(a, &p, cx)
        })
        .collect()
}

/// The fields of an operator's object argument (`{$map: {input, as, in}}` style),
/// rejecting unknown fields and missing required ones.
pub fn named_args<'v>(
    name: &str,
    args: &'v Value,
    required: &[&str],
    optional: &[&str],
    path: &str,
) -> Result<HashMap<&'v str, &'v Value>, CompileError> {
    let Value::Document(d) = args else {
        return Err(CompileError::new(
            path,
            format!(
                "{name} expects an object argument, found {}",
                args.type_name()
            ),
        ));
    };
    let mut out = HashMap::new();
    for (k, v) in d.iter() {
        if !required.contains(&k.as_str()) && !optional.contains(&k.as_str()) {
            return Err(CompileError::new(
                path_key(path, k),
                format!("{name}: unknown argument '{k}'"),
            ));
        }
        out.insert(k.as_str(), v);
    }
    for r in required {
        if !out.contains_key(r) {
            return Err(CompileError::new(
                path,
                format!("{name}: missing required argument '{r}'"),
            ));
        }
    }
    Ok(out)
}

/// Signature of a function over fully evaluated arguments.
pub type EvalFn = fn(args: &[Cow<'_, Value>]) -> Result<Value, EvalError>;

/// An operator whose arguments are all evaluated before a plain function combines them.
/// Most operators are this; those with lazy arguments (`$cond`, `$and`, `$map`, ...)
/// implement [`Operator`] themselves.
pub struct FnOp {
    /// Operator name for debugging.
    pub name: &'static str,
    /// Argument expressions.
    pub args: Vec<Expr>,
    /// The function applied to the evaluated arguments.
    pub f: EvalFn,
}

impl fmt::Debug for FnOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(self.name).field("args", &self.args).finish()
    }
}

impl Operator for FnOp {
    fn eval<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Cow<'a, Value>, EvalError> {
        match self.args.as_slice() {
            [a] => {
                let a = a.eval(ctx)?;
                (self.f)(std::slice::from_ref(&a)).map(Cow::Owned)
            }
            [a, b] => {
                let vals = [a.eval(ctx)?, b.eval(ctx)?];
                (self.f)(&vals).map(Cow::Owned)
            }
            args => {
                let mut vals = Vec::with_capacity(args.len());
                for a in args {
                    vals.push(a.eval(ctx)?);
                }
                (self.f)(&vals).map(Cow::Owned)
            }
        }
    }
}

/// Builds an [`FnOp`] expression, folding it to a literal when every argument is
/// constant and the function succeeds on them.
pub fn fn_op(name: &'static str, args: Vec<Expr>, f: EvalFn) -> Expr {
    if args.iter().all(|a| a.as_literal().is_some()) {
        let vals: Vec<Cow<Value>> = args
            .iter()
            .filter_map(|a| a.as_literal().map(Cow::Borrowed))
            .collect();
        if let Ok(v) = f(&vals) {
            return Expr::Literal(v);
        }
    }
    Expr::Op(Arc::new(FnOp { name, args, f }))
}

/// Compiles a plain function operator taking between `min` and `max` arguments.
pub fn compile_fn(
    name: &'static str,
    args: &Value,
    min: usize,
    max: usize,
    path: &str,
    cx: &mut CompileCtx,
    f: EvalFn,
) -> Result<Expr, CompileError> {
    let args = compile_args(name, args, min, max, path, cx)?;
    Ok(fn_op(name, args, f))
}

/// A standalone compiled expression for the rule-engine API.
///
/// ```
/// use stream_core::expr::Expression;
/// use stream_core::value::{parse_document, parse_value};
///
/// let e = Expression::compile(&parse_value(r#"{"$multiply": ["$price", "$qty"]}"#).unwrap()).unwrap();
/// let doc = parse_document(r#"{"price": 2.5, "qty": 4}"#).unwrap();
/// assert_eq!(e.evaluate(&doc).unwrap().to_json(), "10.0");
/// ```
#[derive(Debug, Clone)]
pub struct Expression {
    expr: Expr,
}

impl Expression {
    /// Compiles an expression with no registered functions.
    pub fn compile(v: &Value) -> Result<Expression, CompileError> {
        Self::compile_with(v, &mut CompileCtx::default())
    }

    /// Compiles an expression with a given context (for `$function`).
    pub fn compile_with(v: &Value, cx: &mut CompileCtx) -> Result<Expression, CompileError> {
        Ok(Expression {
            expr: compile_expr(v, "expression", cx)?,
        })
    }

    /// Evaluates against one document (`$$NOW` is the current time).
    pub fn evaluate(&self, doc: &Document) -> Result<Value, EvalError> {
        let env = Env::now();
        self.expr.eval_owned(&Ctx::new(doc, &env))
    }

    /// The compiled tree.
    pub fn expr(&self) -> &Expr {
        &self.expr
    }
}
