//! String expression operators: `$concat`, the substring/length/index families,
//! case conversion, `$split`, trimming, the `$regex*` operators, `$replaceOne`/
//! `$replaceAll` and `$strcasecmp`.
//!
//! Byte-oriented operators (`$substrBytes`, `$strLenBytes`, `$indexOfBytes`) count UTF-8
//! bytes; the `CP` variants count Unicode code points, as MongoDB does. Regular
//! expressions use the Rust `regex` crate: PCRE-only features (look-around,
//! backreferences, possessive quantifiers, ...) are reported as compile errors.

use super::{
    compile_expr, compile_fn, fn_op, named_args, CompileCtx, CompileFn, Ctx, Expr, Operator,
};
use crate::error::{path_key, CompileError, EvalError};
use crate::value::{Document, Value};
use std::borrow::Cow;
use std::sync::{Arc, Mutex};

/// Operators of this family.
pub(crate) const OPERATORS: &[(&str, CompileFn)] = &[
    ("$concat", |a, p, cx| {
        compile_fn("$concat", a, 0, usize::MAX, p, cx, eval_concat)
    }),
    ("$substrCP", |a, p, cx| {
        compile_fn("$substrCP", a, 3, 3, p, cx, eval_substr_cp)
    }),
    ("$substrBytes", |a, p, cx| {
        compile_fn("$substrBytes", a, 3, 3, p, cx, eval_substr_bytes)
    }),
    ("$substr", |a, p, cx| {
        compile_fn("$substr", a, 3, 3, p, cx, eval_substr)
    }),
    ("$toUpper", |a, p, cx| {
        compile_fn("$toUpper", a, 1, 1, p, cx, eval_to_upper)
    }),
    ("$toLower", |a, p, cx| {
        compile_fn("$toLower", a, 1, 1, p, cx, eval_to_lower)
    }),
    ("$split", |a, p, cx| {
        compile_fn("$split", a, 2, 2, p, cx, eval_split)
    }),
    ("$trim", |a, p, cx| {
        compile_trim("$trim", a, p, cx, eval_trim)
    }),
    ("$ltrim", |a, p, cx| {
        compile_trim("$ltrim", a, p, cx, eval_ltrim)
    }),
    ("$rtrim", |a, p, cx| {
        compile_trim("$rtrim", a, p, cx, eval_rtrim)
    }),
    ("$strLenCP", |a, p, cx| {
        compile_fn("$strLenCP", a, 1, 1, p, cx, eval_strlen_cp)
    }),
    ("$strLenBytes", |a, p, cx| {
        compile_fn("$strLenBytes", a, 1, 1, p, cx, eval_strlen_bytes)
    }),
    ("$indexOfCP", |a, p, cx| {
        compile_fn("$indexOfCP", a, 2, 4, p, cx, eval_index_of_cp)
    }),
    ("$indexOfBytes", |a, p, cx| {
        compile_fn("$indexOfBytes", a, 2, 4, p, cx, eval_index_of_bytes)
    }),
    ("$regexMatch", |a, p, cx| {
        compile_regex(RegexKind::Match, a, p, cx)
    }),
    ("$regexFind", |a, p, cx| {
        compile_regex(RegexKind::Find, a, p, cx)
    }),
    ("$regexFindAll", |a, p, cx| {
        compile_regex(RegexKind::FindAll, a, p, cx)
    }),
    ("$replaceOne", |a, p, cx| {
        compile_replace("$replaceOne", a, p, cx, eval_replace_one)
    }),
    ("$replaceAll", |a, p, cx| {
        compile_replace("$replaceAll", a, p, cx, eval_replace_all)
    }),
    ("$strcasecmp", |a, p, cx| {
        compile_fn("$strcasecmp", a, 2, 2, p, cx, eval_strcasecmp)
    }),
];

// ---------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------

/// MongoDB's string coercion (used by `$substr*`, `$toUpper`, `$toLower`, `$strcasecmp`):
/// null, undefined and missing become `""`; numbers and dates are formatted; other
/// types are an error naming `op`.
pub(crate) fn coerce_to_string<'v>(op: &str, v: &'v Value) -> Result<Cow<'v, str>, EvalError> {
    Ok(match v {
        Value::String(s) => Cow::Borrowed(s.as_str()),
        Value::Missing | Value::Null | Value::Undefined => Cow::Borrowed(""),
        Value::Int32(n) => Cow::Owned(n.to_string()),
        Value::Int64(n) => Cow::Owned(n.to_string()),
        Value::Double(d) => Cow::Owned(super::convert::format_double(*d)),
        Value::Decimal(d) => Cow::Owned(d.to_string()),
        Value::Date(ms) => Cow::Owned(
            super::datetime::iso_string(*ms).map_err(|e| EvalError::new(format!("{op}: {e}")))?,
        ),
        other => {
            return Err(EvalError::new(format!(
                "{op}: can't convert from BSON type {} to String",
                other.type_name()
            )))
        }
    })
}

/// An integral number representable as an i32 (MongoDB's `Value::integral()`).
pub(crate) fn integral_i32(v: &Value) -> Option<i32> {
    v.as_number()
        .and_then(|n| n.to_i64_exact())
        .and_then(|n| i32::try_from(n).ok())
}

fn err(msg: String) -> EvalError {
    EvalError::new(msg)
}

fn is_utf8_continuation(b: u8) -> bool {
    b & 0xC0 == 0x80
}

/// Byte offset of the `cp`-th code point of `s` (`s.len()` when past the end).
fn cp_to_byte(s: &str, cp: usize) -> usize {
    s.char_indices().nth(cp).map_or(s.len(), |(i, _)| i)
}

// ---------------------------------------------------------------------------------
// $concat
// ---------------------------------------------------------------------------------

/// `$concat`: strings only; null or missing anywhere → null.
fn eval_concat(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let mut out = String::new();
    for a in args {
        match a.as_ref() {
            Value::String(s) => out.push_str(s),
            v if v.is_nullish() => return Ok(Value::Null),
            other => {
                return Err(err(format!(
                    "$concat only supports strings, not {}",
                    other.type_name()
                )))
            }
        }
    }
    Ok(Value::string(out))
}

// ---------------------------------------------------------------------------------
// $substrBytes / $substr / $substrCP
// ---------------------------------------------------------------------------------

fn eval_substr_bytes(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    substr_bytes("$substrBytes", args)
}

fn eval_substr(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    substr_bytes("$substr", args)
}

/// Numeric argument truncated to an i64 (MongoDB's `coerceToLong`).
fn numeric_arg(op: &str, what: &str, v: &Value) -> Result<i64, EvalError> {
    match v.as_number() {
        Some(n) => {
            let f = n.to_f64();
            Ok(n.to_i64_exact()
                .unwrap_or(if f.is_nan() { 0 } else { f.trunc() as i64 }))
        }
        None => Err(err(format!(
            "{op}: {what} must be a numeric type (is BSON type {})",
            v.type_name()
        ))),
    }
}

/// `$substrBytes: [string, byteIndex, byteCount]`. A negative index yields `""`, a
/// negative count takes the rest of the string; an index or end that falls inside a
/// multi-byte character is an error.
fn substr_bytes(op: &str, args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let s = coerce_to_string(op, &args[0])?;
    let start = numeric_arg(op, "starting index", &args[1])?;
    let count = numeric_arg(op, "length", &args[2])?;
    let bytes = s.as_bytes();
    let Ok(start) = usize::try_from(start) else {
        return Ok(Value::string(""));
    };
    if start >= bytes.len() {
        return Ok(Value::string(""));
    }
    if is_utf8_continuation(bytes[start]) {
        return Err(err(format!(
            "{op}: Invalid range, starting index is a UTF-8 continuation byte."
        )));
    }
    let end = match usize::try_from(count) {
        Ok(c) => start.saturating_add(c).min(bytes.len()),
        Err(_) => bytes.len(),
    };
    if end < bytes.len() && is_utf8_continuation(bytes[end]) {
        return Err(err(format!(
            "{op}: Invalid range, ending index is in the middle of a UTF-8 character."
        )));
    }
    match s.get(start..end) {
        Some(sub) => Ok(Value::string(sub)),
        None => Err(err(format!("{op}: invalid byte range {start}..{end}"))),
    }
}

/// Integral i32 argument of `$substrCP`.
fn cp_arg(op: &str, what: &str, v: &Value) -> Result<i32, EvalError> {
    if !v.is_number() {
        return Err(err(format!(
            "{op}: {what} must be a numeric type (is BSON type {})",
            v.type_name()
        )));
    }
    integral_i32(v).ok_or_else(|| {
        err(format!(
            "{op}: {what} cannot be represented as a 32-bit integral value: {}",
            v.to_json()
        ))
    })
}

/// `$substrCP: [string, cpIndex, cpCount]`: both non-negative integers.
fn eval_substr_cp(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    const OP: &str = "$substrCP";
    let s = coerce_to_string(OP, &args[0])?;
    let start = cp_arg(OP, "starting index", &args[1])?;
    let count = cp_arg(OP, "length", &args[2])?;
    if count < 0 {
        return Err(err(format!("{OP}: length must be a nonnegative integer.")));
    }
    if start < 0 {
        return Err(err(format!(
            "{OP}: the starting index must be nonnegative integer."
        )));
    }
    let b0 = cp_to_byte(&s, start as usize);
    let b1 = b0 + cp_to_byte(&s[b0..], count as usize);
    Ok(Value::string(&s[b0..b1]))
}

// ---------------------------------------------------------------------------------
// $toUpper / $toLower / $strcasecmp
// ---------------------------------------------------------------------------------

/// `$toUpper`: ASCII letters only, as MongoDB.
fn eval_to_upper(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    Ok(Value::string(
        coerce_to_string("$toUpper", &args[0])?.to_ascii_uppercase(),
    ))
}

/// `$toLower`: ASCII letters only, as MongoDB.
fn eval_to_lower(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    Ok(Value::string(
        coerce_to_string("$toLower", &args[0])?.to_ascii_lowercase(),
    ))
}

/// `$strcasecmp`: ASCII case-insensitive comparison → -1, 0 or 1.
fn eval_strcasecmp(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let a = coerce_to_string("$strcasecmp", &args[0])?;
    let b = coerce_to_string("$strcasecmp", &args[1])?;
    let ord = a
        .bytes()
        .map(|c| c.to_ascii_uppercase())
        .cmp(b.bytes().map(|c| c.to_ascii_uppercase()));
    Ok(Value::Int32(ord as i32))
}

// ---------------------------------------------------------------------------------
// $split / $strLen*
// ---------------------------------------------------------------------------------

/// `$split: [string, delimiter]`: null or missing → null; the delimiter must be non-empty.
fn eval_split(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let (input, sep) = (args[0].as_ref(), args[1].as_ref());
    if input.is_nullish() || sep.is_nullish() {
        return Ok(Value::Null);
    }
    let Value::String(input) = input else {
        return Err(err(format!(
            "$split requires an expression that evaluates to a string as a first argument, found: {}",
            input.type_name()
        )));
    };
    let Value::String(sep) = sep else {
        return Err(err(format!(
            "$split requires an expression that evaluates to a string as a second argument, found: {}",
            sep.type_name()
        )));
    };
    if sep.is_empty() {
        return Err(err("$split requires a non-empty separator".to_string()));
    }
    Ok(Value::Array(
        input.split(sep.as_str()).map(Value::string).collect(),
    ))
}

fn string_arg<'v>(op: &str, v: &'v Value) -> Result<&'v str, EvalError> {
    v.as_str().ok_or_else(|| {
        err(format!(
            "{op} requires a string argument, found: {}",
            v.type_name()
        ))
    })
}

fn len_value(n: usize) -> Value {
    i32::try_from(n).map_or(Value::Int64(n as i64), Value::Int32)
}

/// `$strLenBytes`: UTF-8 byte length; the argument must be a string (null is an error).
fn eval_strlen_bytes(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    Ok(len_value(string_arg("$strLenBytes", &args[0])?.len()))
}

/// `$strLenCP`: code point count; the argument must be a string (null is an error).
fn eval_strlen_cp(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    Ok(len_value(
        string_arg("$strLenCP", &args[0])?.chars().count(),
    ))
}

// ---------------------------------------------------------------------------------
// $indexOfBytes / $indexOfCP
// ---------------------------------------------------------------------------------

/// A non-negative integral start or end index.
fn index_arg(op: &str, which: &str, v: &Value) -> Result<usize, EvalError> {
    let n = integral_i32(v).ok_or_else(|| {
        err(format!(
            "{op} requires an integral {which} index, found a value of type: {}, with value: {}",
            v.type_name(),
            v.to_json()
        ))
    })?;
    usize::try_from(n).map_err(|_| {
        err(format!(
            "{op} requires a nonnegative {which} index, found: {n}"
        ))
    })
}

/// The string, token and optional bounds shared by `$indexOfBytes` and `$indexOfCP`;
/// `None` when the string is null or missing.
type IndexArgs<'v> = (&'v str, &'v str, usize, Option<usize>);

fn index_of_args<'v>(
    op: &str,
    args: &'v [Cow<'_, Value>],
) -> Result<Option<IndexArgs<'v>>, EvalError> {
    let input = match args[0].as_ref() {
        Value::String(s) => s.as_str(),
        v if v.is_nullish() => return Ok(None),
        other => {
            return Err(err(format!(
                "{op} requires a string as the first argument, found: {}",
                other.type_name()
            )))
        }
    };
    let token = args[1].as_str().ok_or_else(|| {
        err(format!(
            "{op} requires a string as the second argument, found: {}",
            args[1].type_name()
        ))
    })?;
    let start = match args.get(2) {
        Some(v) => index_arg(op, "starting", v)?,
        None => 0,
    };
    let end = match args.get(3) {
        Some(v) => Some(index_arg(op, "ending", v)?),
        None => None,
    };
    Ok(Some((input, token, start, end)))
}

fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `$indexOfBytes: [string, substring, start?, end?]` → byte index or -1.
fn eval_index_of_bytes(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let Some((input, token, start, end)) = index_of_args("$indexOfBytes", args)? else {
        return Ok(Value::Null);
    };
    let end = end.map_or(input.len(), |e| e.min(input.len()));
    if start > end {
        return Ok(Value::Int32(-1));
    }
    Ok(
        match find_bytes(&input.as_bytes()[start..end], token.as_bytes()) {
            Some(i) => len_value(start + i),
            None => Value::Int32(-1),
        },
    )
}

/// `$indexOfCP: [string, substring, start?, end?]` → code point index or -1.
fn eval_index_of_cp(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    let Some((input, token, start, end)) = index_of_args("$indexOfCP", args)? else {
        return Ok(Value::Null);
    };
    let len = input.chars().count();
    let end = end.map_or(len, |e| e.min(len));
    if start > end {
        return Ok(Value::Int32(-1));
    }
    let b0 = cp_to_byte(input, start);
    let b1 = b0 + cp_to_byte(&input[b0..], end - start);
    Ok(match input[b0..b1].find(token) {
        Some(i) => len_value(start + input[b0..b0 + i].chars().count()),
        None => Value::Int32(-1),
    })
}

// ---------------------------------------------------------------------------------
// $trim / $ltrim / $rtrim
// ---------------------------------------------------------------------------------

fn compile_trim(
    name: &'static str,
    args: &Value,
    path: &str,
    cx: &mut CompileCtx,
    f: super::EvalFn,
) -> Result<Expr, CompileError> {
    let a = named_args(name, args, &["input"], &["chars"], path)?;
    let mut exprs = vec![compile_expr(a["input"], &path_key(path, "input"), cx)?];
    if let Some(chars) = a.get("chars") {
        exprs.push(compile_expr(chars, &path_key(path, "chars"), cx)?);
    }
    Ok(fn_op(name, exprs, f))
}

/// MongoDB's default whitespace set for `$trim`, including the null character.
fn is_trim_whitespace(c: char) -> bool {
    matches!(
        c,
        '\0' | ' ' | '\t' | '\n' | '\u{0B}' | '\u{0C}' | '\r' | '\u{A0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200A}'
    )
}

fn eval_trim(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    trim("$trim", args, true, true)
}

fn eval_ltrim(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    trim("$ltrim", args, true, false)
}

fn eval_rtrim(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    trim("$rtrim", args, false, true)
}

/// `{input, chars?}`: null or missing input or chars → null.
fn trim(op: &str, args: &[Cow<'_, Value>], left: bool, right: bool) -> Result<Value, EvalError> {
    let input = match args[0].as_ref() {
        Value::String(s) => s.as_str(),
        v if v.is_nullish() => return Ok(Value::Null),
        other => {
            return Err(err(format!(
                "{op} requires its input to be a string, got {} (of type {}) instead.",
                other.to_json(),
                other.type_name()
            )))
        }
    };
    let chars: Option<Vec<char>> = match args.get(1).map(|c| c.as_ref()) {
        None => None,
        Some(Value::String(c)) => Some(c.chars().collect()),
        Some(v) if v.is_nullish() => return Ok(Value::Null),
        Some(other) => {
            return Err(err(format!(
                "{op} requires 'chars' to be a string, got {} (of type {}) instead.",
                other.to_json(),
                other.type_name()
            )))
        }
    };
    let strip = |c: char| match &chars {
        Some(set) => set.contains(&c),
        None => is_trim_whitespace(c),
    };
    let mut out = input;
    if left {
        out = out.trim_start_matches(strip);
    }
    if right {
        out = out.trim_end_matches(strip);
    }
    Ok(Value::string(out))
}

// ---------------------------------------------------------------------------------
// $replaceOne / $replaceAll
// ---------------------------------------------------------------------------------

fn compile_replace(
    name: &'static str,
    args: &Value,
    path: &str,
    cx: &mut CompileCtx,
    f: super::EvalFn,
) -> Result<Expr, CompileError> {
    let a = named_args(name, args, &["input", "find", "replacement"], &[], path)?;
    let mut exprs = Vec::with_capacity(3);
    for key in ["input", "find", "replacement"] {
        exprs.push(compile_expr(a[key], &path_key(path, key), cx)?);
    }
    Ok(fn_op(name, exprs, f))
}

/// The three string arguments of `$replace*`; `None` when any is null or missing.
/// Non-string values are reported before null ones, as MongoDB does.
fn replace_args<'v>(
    op: &str,
    args: &'v [Cow<'_, Value>],
) -> Result<Option<[&'v str; 3]>, EvalError> {
    for (v, name) in args.iter().zip(["input", "find", "replacement"]) {
        if !v.is_nullish() && v.as_str().is_none() {
            return Err(err(format!(
                "{op} requires that '{name}' be a string, found: {}",
                v.to_json()
            )));
        }
    }
    match (args[0].as_str(), args[1].as_str(), args[2].as_str()) {
        (Some(i), Some(f), Some(r)) => Ok(Some([i, f, r])),
        _ => Ok(None),
    }
}

fn eval_replace_one(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    Ok(match replace_args("$replaceOne", args)? {
        Some([input, find, repl]) => Value::string(input.replacen(find, repl, 1)),
        None => Value::Null,
    })
}

fn eval_replace_all(args: &[Cow<'_, Value>]) -> Result<Value, EvalError> {
    Ok(match replace_args("$replaceAll", args)? {
        Some([input, find, repl]) => Value::string(input.replace(find, repl)),
        None => Value::Null,
    })
}

// ---------------------------------------------------------------------------------
// $regexMatch / $regexFind / $regexFindAll
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RegexKind {
    Match,
    Find,
    FindAll,
}

impl RegexKind {
    fn name(self) -> &'static str {
        match self {
            RegexKind::Match => "$regexMatch",
            RegexKind::Find => "$regexFind",
            RegexKind::FindAll => "$regexFindAll",
        }
    }

    /// The result when the input or the regex is null or missing.
    fn no_input(self) -> Value {
        match self {
            RegexKind::Match => Value::Bool(false),
            RegexKind::Find => Value::Null,
            RegexKind::FindAll => Value::Array(Vec::new()),
        }
    }
}

/// The most recently compiled dynamic regex with its flags.
type RegexCache = Mutex<Option<(String, regex::Regex)>>;

#[derive(Debug)]
enum RegexSpec {
    /// Compiled once at pipeline compile time; `None` for a null regex.
    Const(Option<regex::Regex>),
    /// Evaluated for each document; the last compiled regex is reused while the
    /// pattern and flags stay the same.
    Dynamic {
        regex: Expr,
        options: Option<Expr>,
        last: RegexCache,
    },
}

#[derive(Debug)]
struct RegexOp {
    kind: RegexKind,
    input: Expr,
    spec: RegexSpec,
}

fn compile_regex(
    kind: RegexKind,
    args: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Expr, CompileError> {
    let name = kind.name();
    let a = named_args(name, args, &["input", "regex"], &["options"], path)?;
    let input = compile_expr(a["input"], &path_key(path, "input"), cx)?;
    let regex_path = path_key(path, "regex");
    let regex = compile_expr(a["regex"], &regex_path, cx)?;
    let options = match a.get("options") {
        Some(o) => Some(compile_expr(o, &path_key(path, "options"), cx)?),
        None => None,
    };
    let spec = match (regex.as_literal(), options.as_ref().map(Expr::as_literal)) {
        (Some(r), None) | (Some(r), Some(Some(_))) => {
            let o = options.as_ref().and_then(Expr::as_literal);
            let compiled = build_regex(name, r, o, None)
                .map_err(|e| CompileError::new(regex_path, e.message))?;
            RegexSpec::Const(compiled)
        }
        _ => RegexSpec::Dynamic {
            regex,
            options,
            last: Mutex::new(None),
        },
    };
    Ok(Expr::Op(Arc::new(RegexOp { kind, input, spec })))
}

/// Builds the regex from a `regex` value (string or BSON regex) and an `options`
/// value; `Ok(None)` when the regex is null or missing. With a cache, an unchanged
/// pattern and flags reuse the previously compiled regex.
fn build_regex(
    op: &str,
    regex: &Value,
    options: Option<&Value>,
    cache: Option<&RegexCache>,
) -> Result<Option<regex::Regex>, EvalError> {
    let (pattern, regex_flags) = match regex {
        v if v.is_nullish() => return Ok(None),
        Value::String(s) => (s.as_str(), ""),
        Value::Regex(r) => (r.pattern.as_str(), r.options.as_str()),
        _ => {
            return Err(err(format!(
                "{op} needs 'regex' to be of type string or regex"
            )))
        }
    };
    let option_flags = match options {
        None => "",
        Some(v) if v.is_nullish() => "",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(err(format!("{op} needs 'options' to be of type string"))),
    };
    if !regex_flags.is_empty() && !option_flags.is_empty() {
        return Err(err(format!(
            "{op}: regex option(s) specified in both 'regex' and 'option' fields"
        )));
    }
    if pattern.contains('\0') {
        return Err(err(format!(
            "{op}: regular expression cannot contain an embedded null byte"
        )));
    }
    if option_flags.contains('\0') {
        return Err(err(format!(
            "{op}: regular expression options string cannot contain an embedded null byte"
        )));
    }
    let flags = if regex_flags.is_empty() {
        option_flags
    } else {
        regex_flags
    };
    if let Some(Ok(guard)) = cache.map(Mutex::lock) {
        if let Some((f, re)) = guard.as_ref() {
            if f == flags && re.as_str() == pattern {
                return Ok(Some(re.clone()));
            }
        }
    }
    let mut builder = regex::RegexBuilder::new(pattern);
    for flag in flags.chars() {
        match flag {
            'i' => builder.case_insensitive(true),
            'm' => builder.multi_line(true),
            's' => builder.dot_matches_new_line(true),
            'x' => builder.ignore_whitespace(true),
            other => return Err(err(format!("{op} invalid flag in regex options: {other}"))),
        };
    }
    let re = builder.build().map_err(|e| {
        let detail = e.to_string().replace('\n', " ");
        let detail = detail.split_whitespace().collect::<Vec<_>>().join(" ");
        err(format!(
            "{op}: invalid regular expression /{pattern}/: {detail} (the Rust regex syntax is used: look-around and backreferences are not supported)"
        ))
    })?;
    if let Some(Ok(mut guard)) = cache.map(Mutex::lock) {
        *guard = Some((flags.to_string(), re.clone()));
    }
    Ok(Some(re))
}

/// `{match, idx, captures}` for one match; `idx` is in code points.
fn match_document(caps: &regex::Captures<'_>, idx: usize) -> Value {
    let matched = caps.get(0).map_or("", |m| m.as_str());
    let captures = caps
        .iter()
        .skip(1)
        .map(|g| g.map_or(Value::Null, |g| Value::string(g.as_str())))
        .collect();
    let mut d = Document::with_capacity(3);
    d.push_unchecked("match", Value::string(matched));
    d.push_unchecked("idx", len_value(idx));
    d.push_unchecked("captures", Value::Array(captures));
    Value::Document(d)
}

fn run_regex(kind: RegexKind, re: &regex::Regex, input: &str) -> Value {
    match kind {
        RegexKind::Match => Value::Bool(re.is_match(input)),
        RegexKind::Find => match re.captures(input) {
            Some(caps) => {
                let start = caps.get(0).map_or(0, |m| m.start());
                match_document(&caps, input[..start].chars().count())
            }
            None => Value::Null,
        },
        RegexKind::FindAll => {
            // MongoDB's loop: resume at the end of each match, one code point further
            // after an empty match.
            let mut out = Vec::new();
            let (mut pos, mut counted_byte, mut counted_cp) = (0usize, 0usize, 0usize);
            while pos <= input.len() {
                let Some(caps) = re.captures_at(input, pos) else {
                    break;
                };
                let Some(m) = caps.get(0) else { break };
                counted_cp += input[counted_byte..m.start()].chars().count();
                counted_byte = m.start();
                out.push(match_document(&caps, counted_cp));
                pos = if m.is_empty() {
                    match input[m.end()..].chars().next() {
                        Some(c) => m.end() + c.len_utf8(),
                        None => break,
                    }
                } else {
                    m.end()
                };
            }
            Value::Array(out)
        }
    }
}

impl Operator for RegexOp {
    fn eval<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Cow<'a, Value>, EvalError> {
        let name = self.kind.name();
        let input = self.input.eval(ctx)?;
        let text = match input.as_ref() {
            Value::String(s) => Some(s.as_str()),
            v if v.is_nullish() => None,
            _ => return Err(err(format!("{name} needs 'input' to be of type string"))),
        };
        let dynamic;
        let re = match &self.spec {
            RegexSpec::Const(re) => re.as_ref(),
            RegexSpec::Dynamic {
                regex,
                options,
                last,
            } => {
                let r = regex.eval(ctx)?;
                let o = match options {
                    Some(o) => Some(o.eval(ctx)?),
                    None => None,
                };
                dynamic = build_regex(name, &r, o.as_deref(), Some(last))?;
                dynamic.as_ref()
            }
        };
        Ok(Cow::Owned(match (text, re) {
            (Some(text), Some(re)) => run_regex(self.kind, re, text),
            _ => self.kind.no_input(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::expr::Expression;
    use crate::value::{parse_document, parse_value};

    fn eval(expr: &str, doc: &str) -> Result<String, String> {
        let e = Expression::compile(&parse_value(expr).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let d = parse_document(doc).map_err(|e| e.to_string())?;
        e.evaluate(&d)
            .map(|v| v.to_json())
            .map_err(|e| e.to_string())
    }

    fn ok(expr: &str, want: &str) {
        assert_eq!(eval(expr, "{}").as_deref(), Ok(want), "{expr}");
    }

    fn fails(expr: &str, want: &str) {
        match eval(expr, "{}") {
            Err(e) => assert!(e.contains(want), "{expr}: {e}"),
            Ok(v) => panic!("{expr}: expected error {want:?}, got {v}"),
        }
    }

    #[test]
    fn concat_and_case() {
        ok(r#"{"$concat": ["a", "b", "c"]}"#, r#""abc""#);
        ok(r#"{"$concat": ["a", null]}"#, "null");
        ok(r#"{"$concat": ["a", "$nope"]}"#, "null");
        fails(
            r#"{"$concat": ["a", 1]}"#,
            "$concat only supports strings, not int",
        );
        ok(r#"{"$toUpper": "abé1"}"#, r#""ABé1""#);
        ok(r#"{"$toLower": null}"#, r#""""#);
        ok(r#"{"$toLower": 12}"#, r#""12""#);
        ok(r#"{"$strcasecmp": ["ABC", "abc"]}"#, "0");
        ok(r#"{"$strcasecmp": ["abd", "ABC"]}"#, "1");
    }

    #[test]
    fn substrings() {
        ok(r#"{"$substrBytes": ["abcde", 1, 2]}"#, r#""bc""#);
        ok(r#"{"$substrBytes": ["abcde", -1, 2]}"#, r#""""#);
        ok(r#"{"$substrBytes": ["abcde", 1, -1]}"#, r#""bcde""#);
        ok(r#"{"$substr": [12345, 1, 2]}"#, r#""23""#);
        fails(
            r#"{"$substrBytes": ["éa", 1, 1]}"#,
            "starting index is a UTF-8 continuation byte",
        );
        fails(
            r#"{"$substrBytes": ["éa", 0, 1]}"#,
            "ending index is in the middle of a UTF-8 character",
        );
        ok(r#"{"$substrCP": ["cafétéria", 5, 4]}"#, r#""éria""#);
        ok(r#"{"$substrCP": ["abc", 5, 4]}"#, r#""""#);
        fails(r#"{"$substrCP": ["abc", 1.5, 1]}"#, "32-bit integral");
        fails(
            r#"{"$substrCP": ["abc", 0, -1]}"#,
            "length must be a nonnegative integer",
        );
    }

    #[test]
    fn index_of() {
        ok(r#"{"$indexOfBytes": ["cafétéria", "é"]}"#, "3");
        ok(r#"{"$indexOfCP": ["cafétéria", "é"]}"#, "3");
        ok(r#"{"$indexOfCP": ["cafétéria", "é", 4]}"#, "5");
        ok(r#"{"$indexOfBytes": ["cafétéria", "é", 4]}"#, "6");
        ok(r#"{"$indexOfBytes": ["abc", "b", 0, 1]}"#, "-1");
        ok(r#"{"$indexOfBytes": ["abc", "", 3]}"#, "3");
        ok(r#"{"$indexOfBytes": ["abc", "b", 5, 2]}"#, "-1");
        ok(r#"{"$indexOfBytes": [null, "b"]}"#, "null");
        fails(
            r#"{"$indexOfBytes": ["abc", null]}"#,
            "second argument, found: null",
        );
        fails(
            r#"{"$indexOfCP": ["abc", "b", -1]}"#,
            "nonnegative starting index",
        );
    }

    #[test]
    fn trim_split_len() {
        ok(
            r#"{"$trim": {"input": " \n good bye \t "}}"#,
            r#""good bye""#,
        );
        ok(
            r#"{"$ltrim": {"input": " ggggoodbyeeeee", "chars": "ge "}}"#,
            r#""oodbyeeeee""#,
        );
        ok(
            r#"{"$rtrim": {"input": "ggggoodbyeeeee ", "chars": "ge"}}"#,
            r#""ggggoodbyeeeee ""#,
        );
        ok(r#"{"$trim": {"input": "\u00a0x\u2003"}}"#, r#""x""#);
        ok(r#"{"$trim": {"input": "x", "chars": null}}"#, "null");
        fails(
            r#"{"$trim": {"input": 1}}"#,
            "$trim requires its input to be a string, got 1 (of type int) instead.",
        );
        ok(
            r#"{"$split": ["June-15-2013", "-"]}"#,
            r#"["June","15","2013"]"#,
        );
        ok(
            r#"{"$split": ["astronomical", "astro"]}"#,
            r#"["","nomical"]"#,
        );
        fails(r#"{"$split": ["a", ""]}"#, "non-empty separator");
        ok(r#"{"$strLenBytes": "cafétéria"}"#, "11");
        ok(r#"{"$strLenCP": "cafétéria"}"#, "9");
        fails(
            r#"{"$strLenCP": null}"#,
            "$strLenCP requires a string argument, found: null",
        );
    }

    #[test]
    fn regex() {
        ok(
            r#"{"$regexMatch": {"input": "Abc", "regex": "^a", "options": "i"}}"#,
            "true",
        );
        ok(
            r#"{"$regexMatch": {"input": null, "regex": "^a"}}"#,
            "false",
        );
        ok(
            r#"{"$regexFind": {"input": "café 42", "regex": "(\\d)(x)?"}}"#,
            r#"{"match":"4","idx":5,"captures":["4",null]}"#,
        );
        ok(
            r#"{"$regexFindAll": {"input": "baaa", "regex": "a*"}}"#,
            r#"[{"match":"","idx":0,"captures":[]},{"match":"aaa","idx":1,"captures":[]},{"match":"","idx":4,"captures":[]}]"#,
        );
        ok(
            r#"{"$regexFindAll": {"input": "a1b2", "regex": {"$regularExpression": {"pattern": "[a-z]\\d", "options": ""}}}}"#,
            r#"[{"match":"a1","idx":0,"captures":[]},{"match":"b2","idx":2,"captures":[]}]"#,
        );
        fails(
            r#"{"$regexMatch": {"input": "a", "regex": "(?=a)"}}"#,
            "expression.$regexMatch.regex: $regexMatch: invalid regular expression",
        );
        fails(
            r#"{"$regexMatch": {"input": "a", "regex": "a", "options": "q"}}"#,
            "invalid flag in regex options: q",
        );
        fails(
            r#"{"$regexMatch": {"input": 1, "regex": "a"}}"#,
            "needs 'input' to be of type string",
        );
        assert_eq!(
            eval(
                r#"{"$regexMatch": {"input": "$s", "regex": "$r"}}"#,
                r#"{"s": "xay", "r": "a"}"#
            )
            .as_deref(),
            Ok("true")
        );
    }

    #[test]
    fn replace() {
        ok(
            r#"{"$replaceOne": {"input": "aXbXc", "find": "X", "replacement": "-"}}"#,
            r#""a-bXc""#,
        );
        ok(
            r#"{"$replaceAll": {"input": "aXbXc", "find": "X", "replacement": "-"}}"#,
            r#""a-b-c""#,
        );
        ok(
            r#"{"$replaceAll": {"input": "abc", "find": null, "replacement": "-"}}"#,
            "null",
        );
        fails(
            r#"{"$replaceAll": {"input": 5, "find": null, "replacement": "-"}}"#,
            "requires that 'input' be a string, found: 5",
        );
    }
}
