//! The compiled predicate tree and its evaluation.
//!
//! Path traversal follows MongoDB's `BSONElementIterator`: a path descends through
//! embedded documents; at an array with more path left, every element that is a document
//! is searched with the rest of the path and a numeric component also selects the element
//! at that index; at the end of the path an array yields each of its elements and then
//! itself (unless the operator works on whole arrays: `$size`, `$elemMatch`). A scalar in
//! the middle of a path, or an absent field, yields "missing".

use crate::error::EvalError;
use crate::expr::{Ctx, Expr};
use crate::value::{canonical_rank, compare_values, Document, FieldHint, Number, Str, Value};
use std::cmp::Ordering;

/// The value seen for an absent field.
static MISSING: Value = Value::Missing;

/// One component of a dotted path, with its array index when it is one.
#[derive(Debug, Clone)]
pub(crate) struct Seg {
    pub name: Str,
    /// Where this component was last found in a document.
    pub hint: FieldHint,
    /// `Some(i)` when the component is a canonical decimal number (`0`, `12`, not `01`).
    pub index: Option<usize>,
}

impl Seg {
    pub fn new(name: &str) -> Seg {
        let canonical = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_digit())
            && (name.len() == 1 || !name.starts_with('0'));
        Seg {
            name: Str::from(name),
            hint: FieldHint::default(),
            index: if canonical { name.parse().ok() } else { None },
        }
    }
}

/// How a path treats an array found at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeafMode {
    /// Yield each element, then the array itself.
    Traverse,
    /// Yield only the array itself (`$size`, `$elemMatch`).
    Whole,
}

/// A node of the compiled filter.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Nor(Vec<Node>),
    Not(Box<Node>),
    /// `$expr`, evaluated against the root document.
    Expr(Expr),
    /// `$alwaysTrue` / `$alwaysFalse` / an empty `$all`.
    Const(bool),
    /// A test of the values reached by `path`. An empty path tests the subject itself
    /// as one value (the value form of `$elemMatch`).
    Leaf {
        path: Box<[Seg]>,
        mode: LeafMode,
        test: Test,
    },
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Lt,
    Lte,
    Gt,
    Gte,
}

/// A compiled regular expression with its source, for comparing with BSON regex values.
#[derive(Debug, Clone)]
pub(crate) struct QueryRegex {
    pub re: regex::Regex,
    pub pattern: String,
    /// Flags, sorted.
    pub options: String,
}

impl QueryRegex {
    fn matches(&self, v: &Value) -> bool {
        match v {
            Value::String(s) => self.re.is_match(s),
            // Stored regex options are kept sorted.
            Value::Regex(r) => r.pattern == self.pattern && r.options == self.options,
            _ => false,
        }
    }
}

/// Sorted copy of regex flags.
pub(crate) fn sorted(options: &str) -> String {
    let mut c: Vec<char> = options.chars().collect();
    c.sort_unstable();
    c.into_iter().collect()
}

/// The scalar-level test of a leaf.
#[derive(Debug, Clone)]
pub(crate) enum Test {
    Cmp(CmpOp, Value),
    In {
        /// Sorted by [`compare_values`] for binary search.
        values: Vec<Value>,
        has_null: bool,
        regexes: Vec<QueryRegex>,
    },
    Regex(QueryRegex),
    Exists,
    /// Bit set over type codes (see [`type_bit`]).
    Type(u32),
    Mod(i64, i64),
    Size(usize),
    /// `$bitsAllSet` & co: the bit positions to test, sorted.
    Bits(BitsOp, Vec<u64>),
    /// Value form: some element satisfies every condition (applied to the element alone).
    ElemMatchValue(Box<Node>),
    /// Document form: some element that is a document (or array) matches the filter.
    ElemMatchObject(Box<Node>),
}

/// The bitwise query operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BitsOp {
    AllSet,
    AnySet,
    AllClear,
    AnyClear,
}

/// The bits of a value: numbers are two's complement and sign-extended, binary data is a
/// little-endian unsigned number, zero-extended.
enum Bits<'a> {
    Num(i64),
    Bin(&'a [u8]),
}

impl<'a> Bits<'a> {
    /// `None` for values without bits (non-numbers, fractional or out-of-range numbers).
    fn of(v: &'a Value) -> Option<Bits<'a>> {
        match v {
            Value::Binary(b) => Some(Bits::Bin(&b.bytes)),
            _ => Some(Bits::Num(v.as_number()?.to_i64_exact()?)),
        }
    }

    fn get(&self, p: u64) -> bool {
        match self {
            Bits::Num(n) if p >= 64 => *n < 0,
            Bits::Num(n) => n >> p & 1 == 1,
            Bits::Bin(bytes) => usize::try_from(p / 8)
                .ok()
                .and_then(|i| bytes.get(i))
                .is_some_and(|byte| byte >> (p % 8) & 1 == 1),
        }
    }
}

fn bits_match(op: BitsOp, positions: &[u64], v: &Value) -> bool {
    let Some(bits) = Bits::of(v) else {
        return false;
    };
    match op {
        BitsOp::AllSet => positions.iter().all(|&p| bits.get(p)),
        BitsOp::AnySet => positions.iter().any(|&p| bits.get(p)),
        BitsOp::AllClear => positions.iter().all(|&p| !bits.get(p)),
        BitsOp::AnyClear => positions.iter().any(|&p| !bits.get(p)),
    }
}

/// The bit of a BSON type code in a `$type` set.
pub(crate) fn type_bit(code: i32) -> u32 {
    match code {
        -1 => 1,
        127 => 1 << 31,
        1..=30 => 1 << code,
        _ => 0,
    }
}

fn cmp_matches(op: CmpOp, e: &Value, rhs: &Value) -> bool {
    // The most common case, a string against a string: compared bytewise, exactly as
    // `compare_values` does, without its type dispatch.
    if let (Value::String(a), Value::String(b)) = (e, rhs) {
        return match op {
            CmpOp::Eq => crate::value::bytes_eq(a.as_bytes(), b.as_bytes()),
            _ => ordering_matches(op, a.as_bytes().cmp(b.as_bytes())),
        };
    }
    if canonical_rank(e) != canonical_rank(rhs) {
        // Different type brackets never compare, except: missing equals null, and MinKey /
        // MaxKey bound everything.
        return match rhs {
            Value::Null => e.is_missing() && matches!(op, CmpOp::Eq | CmpOp::Lte | CmpOp::Gte),
            Value::MaxKey => matches!(op, CmpOp::Lt | CmpOp::Lte),
            Value::MinKey => matches!(op, CmpOp::Gt | CmpOp::Gte),
            _ => false,
        };
    }
    if op != CmpOp::Eq {
        // NaN equals NaN but is neither less nor greater than anything.
        let e_nan = e.as_number().is_some_and(Number::is_nan);
        let r_nan = rhs.as_number().is_some_and(Number::is_nan);
        if e_nan || r_nan {
            return matches!(op, CmpOp::Lte | CmpOp::Gte) && e_nan && r_nan;
        }
    }
    ordering_matches(op, compare_values(e, rhs))
}

/// Whether `e <op> rhs` holds given how `e` compares with `rhs`.
fn ordering_matches(op: CmpOp, o: Ordering) -> bool {
    match op {
        CmpOp::Eq => o == Ordering::Equal,
        CmpOp::Lt => o == Ordering::Less,
        CmpOp::Lte => o != Ordering::Greater,
        CmpOp::Gt => o == Ordering::Greater,
        CmpOp::Gte => o != Ordering::Less,
    }
}

/// MongoDB's `$mod` dividend: numbers truncated toward zero, when they fit a long.
fn mod_dividend(v: &Value) -> Option<i64> {
    let n = v.as_number()?;
    if let Some(i) = n.to_i64_exact() {
        return Some(i);
    }
    let f = n.to_f64();
    if !f.is_finite() {
        return None;
    }
    let t = f.trunc();
    if (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&t) {
        Some(t as i64)
    } else {
        None
    }
}

impl Test {
    /// Does one value (not traversed) pass the test?
    fn matches(&self, v: &Value, ctx: &Ctx<'_>) -> Result<bool, EvalError> {
        Ok(match self {
            Test::Cmp(op, rhs) => cmp_matches(*op, v, rhs),
            Test::In {
                values,
                has_null,
                regexes,
            } => {
                (*has_null && v.is_missing())
                    || values
                        .binary_search_by(|probe| compare_values(probe, v))
                        .is_ok()
                    || regexes.iter().any(|r| r.matches(v))
            }
            Test::Regex(r) => r.matches(v),
            Test::Exists => !v.is_missing(),
            Test::Type(set) => !v.is_missing() && set & type_bit(v.bson_type_number()) != 0,
            Test::Mod(divisor, remainder) => match mod_dividend(v) {
                Some(d) => d.checked_rem(*divisor).unwrap_or(0) == *remainder,
                None => false,
            },
            Test::Size(n) => matches!(v, Value::Array(a) if a.len() == *n),
            Test::Bits(op, positions) => bits_match(*op, positions, v),
            Test::ElemMatchValue(node) => match v {
                Value::Array(items) => {
                    for item in items {
                        if node.eval(Subject::Value(item), ctx)? {
                            return Ok(true);
                        }
                    }
                    false
                }
                _ => false,
            },
            Test::ElemMatchObject(node) => match v {
                Value::Array(items) => {
                    for item in items {
                        let subject = match item {
                            Value::Document(d) => Subject::Doc(d),
                            Value::Array(_) => Subject::Value(item),
                            _ => continue,
                        };
                        if node.eval(subject, ctx)? {
                            return Ok(true);
                        }
                    }
                    false
                }
                _ => false,
            },
        })
    }
}

/// What a node is evaluated against.
#[derive(Clone, Copy)]
pub(crate) enum Subject<'a> {
    /// A document (the root, or an element in `$elemMatch`'s document form).
    Doc(&'a Document),
    /// One value: an element in `$elemMatch`'s value form, or an array element treated
    /// as a document with fields `"0"`, `"1"`, ... in the document form.
    Value(&'a Value),
}

impl Node {
    /// Evaluates against `subject`; `$expr` evaluates with `ctx` (whose root and current
    /// document are the document being matched).
    pub fn eval(&self, subject: Subject<'_>, ctx: &Ctx<'_>) -> Result<bool, EvalError> {
        match self {
            Node::And(children) => {
                for c in children {
                    if !c.eval(subject, ctx)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Node::Or(children) => {
                for c in children {
                    if c.eval(subject, ctx)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Node::Nor(children) => {
                for c in children {
                    if c.eval(subject, ctx)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Node::Not(c) => Ok(!c.eval(subject, ctx)?),
            Node::Const(b) => Ok(*b),
            Node::Expr(e) => Ok(e.eval(ctx)?.is_truthy()),
            Node::Leaf { path, mode, test } => {
                // Fast path for the most common filter, a top-level field compared with a
                // constant: without an array to traverse, the value is tested directly.
                if let (Subject::Doc(d), [only], Test::Cmp(op, rhs)) = (subject, &path[..], test) {
                    match d.get_hinted(&only.name, &only.hint) {
                        Some(Value::Array(_)) => {}
                        Some(v) => return Ok(cmp_matches(*op, v, rhs)),
                        None => return Ok(cmp_matches(*op, &MISSING, rhs)),
                    }
                }
                let mut err = None;
                let mut f = |v: &Value| match test.matches(v, ctx) {
                    Ok(b) => b,
                    Err(e) => {
                        err = Some(e);
                        true
                    }
                };
                let found = match (path.split_first(), subject) {
                    (None, Subject::Value(v)) => f(v),
                    (None, Subject::Doc(_)) => false,
                    (Some((first, _)), Subject::Doc(d)) => walk_from(
                        d.get_hinted(&first.name, &first.hint),
                        path,
                        0,
                        *mode,
                        &mut f,
                    ),
                    (Some((first, _)), Subject::Value(v)) => {
                        let start = match v {
                            Value::Document(d) => d.get(&first.name),
                            Value::Array(items) => first.index.and_then(|i| items.get(i)),
                            _ => None,
                        };
                        walk_from(start, path, 0, *mode, &mut f)
                    }
                };
                match err {
                    Some(e) => Err(e),
                    None => Ok(found),
                }
            }
        }
    }
}

/// Visits the values reached from `cur`, the value of `path[i]` in its container.
/// Stops and returns true as soon as `f` does.
fn walk_from(
    mut cur: Option<&Value>,
    path: &[Seg],
    mut i: usize,
    mode: LeafMode,
    f: &mut dyn FnMut(&Value) -> bool,
) -> bool {
    loop {
        let Some(v) = cur else {
            return f(&MISSING);
        };
        let last = i + 1 == path.len();
        match v {
            Value::Array(items) => return walk_array(v, items, &path[i + 1..], mode, f),
            _ if last => return f(v),
            Value::Document(d) => {
                i += 1;
                cur = d.get_hinted(&path[i].name, &path[i].hint);
            }
            _ => return f(&MISSING),
        }
    }
}

/// Visits the values reached by `rest` from an array value.
fn walk_array(
    array: &Value,
    items: &[Value],
    rest: &[Seg],
    mode: LeafMode,
    f: &mut dyn FnMut(&Value) -> bool,
) -> bool {
    let Some(next) = rest.first() else {
        if mode == LeafMode::Traverse && items.iter().any(&mut *f) {
            return true;
        }
        return f(array);
    };
    for (idx, elem) in items.iter().enumerate() {
        let offset_match = next.index == Some(idx);
        match elem {
            Value::Document(d) => {
                if walk_from(d.get(&next.name), rest, 0, mode, f) {
                    return true;
                }
                if offset_match {
                    let found = if rest.len() == 1 {
                        f(elem)
                    } else {
                        walk_from(d.get(&rest[1].name), rest, 1, mode, f)
                    };
                    if found {
                        return true;
                    }
                }
            }
            _ if offset_match => {
                if rest.len() == 1 {
                    if f(elem) {
                        return true;
                    }
                } else if let Value::Array(inner) = elem {
                    if walk_array(elem, inner, &rest[1..], mode, f) {
                        return true;
                    }
                }
            }
            _ => {}
        }
    }
    false
}
