//! Date operators: the part extractors (`$year` ... `$isoDayOfWeek`), `$dateToString`,
//! `$dateFromString`, `$dateToParts`, `$dateFromParts`, `$dateTrunc`, `$dateAdd`,
//! `$dateSubtract` and `$dateDiff`. The calendar work is in [`super::datetime`].
//!
//! Dates may be given as a date, a timestamp or an ObjectId (its creation time).
//! Arguments that are constants (time zone, unit, format) are checked at compile time.
//! A null or missing argument makes the result null, except where MongoDB has
//! `onNull` / `onError`.

use super::datetime::{self, TimeUnit, TimeZone};
use super::{compile_expr, named_args, CompileCtx, CompileFn, Ctx, Expr, Operator};
use crate::error::{path_index, path_key, CompileError, EvalError};
use crate::value::{Document, Value};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

/// Operators of this family.
pub(crate) const OPERATORS: &[(&str, CompileFn)] = &[
    ("$year", |a, p, cx| {
        compile_part("$year", Part::Year, a, p, cx)
    }),
    ("$month", |a, p, cx| {
        compile_part("$month", Part::Month, a, p, cx)
    }),
    ("$dayOfMonth", |a, p, cx| {
        compile_part("$dayOfMonth", Part::DayOfMonth, a, p, cx)
    }),
    ("$dayOfWeek", |a, p, cx| {
        compile_part("$dayOfWeek", Part::DayOfWeek, a, p, cx)
    }),
    ("$dayOfYear", |a, p, cx| {
        compile_part("$dayOfYear", Part::DayOfYear, a, p, cx)
    }),
    ("$hour", |a, p, cx| {
        compile_part("$hour", Part::Hour, a, p, cx)
    }),
    ("$minute", |a, p, cx| {
        compile_part("$minute", Part::Minute, a, p, cx)
    }),
    ("$second", |a, p, cx| {
        compile_part("$second", Part::Second, a, p, cx)
    }),
    ("$millisecond", |a, p, cx| {
        compile_part("$millisecond", Part::Millisecond, a, p, cx)
    }),
    ("$week", |a, p, cx| {
        compile_part("$week", Part::Week, a, p, cx)
    }),
    ("$isoWeek", |a, p, cx| {
        compile_part("$isoWeek", Part::IsoWeek, a, p, cx)
    }),
    ("$isoWeekYear", |a, p, cx| {
        compile_part("$isoWeekYear", Part::IsoWeekYear, a, p, cx)
    }),
    ("$isoDayOfWeek", |a, p, cx| {
        compile_part("$isoDayOfWeek", Part::IsoDayOfWeek, a, p, cx)
    }),
    ("$dateToString", compile_date_to_string),
    ("$dateFromString", compile_date_from_string),
    ("$dateToParts", compile_date_to_parts),
    ("$dateFromParts", compile_date_from_parts),
    ("$dateTrunc", compile_date_trunc),
    ("$dateAdd", |a, p, cx| {
        compile_date_add("$dateAdd", false, a, p, cx)
    }),
    ("$dateSubtract", |a, p, cx| {
        compile_date_add("$dateSubtract", true, a, p, cx)
    }),
    ("$dateDiff", compile_date_diff),
];

// ---------------------------------------------------------------------------------
// Shared argument helpers
// ---------------------------------------------------------------------------------

fn err(op: &str, msg: impl std::fmt::Display) -> EvalError {
    EvalError::new(format!("{op}: {msg}"))
}

/// Epoch millis of a date, timestamp or ObjectId.
fn coerce_date(v: &Value, op: &str, what: &str) -> Result<i64, EvalError> {
    match v {
        Value::Date(ms) => Ok(*ms),
        Value::Timestamp(t) => Ok(t.t as i64 * 1000),
        Value::ObjectId(o) => Ok(o.timestamp_secs() as i64 * 1000),
        other => Err(err(
            op,
            format!(
                "'{what}' must be a date, timestamp or objectId, found {}",
                other.type_name()
            ),
        )),
    }
}

fn compile_opt(
    a: &HashMap<&str, &Value>,
    key: &str,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Option<Expr>, CompileError> {
    a.get(key)
        .map(|v| compile_expr(v, &path_key(path, key), cx))
        .transpose()
}

/// An argument that is either parsed once at compile time or evaluated per document.
#[derive(Debug)]
enum Arg<T> {
    Fixed(T),
    Dynamic(Expr),
}

impl<T: Copy> Arg<T> {
    /// Compiles `v` (absent → `default`); a literal is parsed with `parse`, whose error
    /// becomes a compile error. A null literal stays dynamic (it makes the result null).
    fn compile(
        v: Option<&Value>,
        default: T,
        op: &str,
        path: &str,
        cx: &mut CompileCtx,
        parse: fn(&Value) -> Result<T, String>,
    ) -> Result<Arg<T>, CompileError> {
        let Some(v) = v else {
            return Ok(Arg::Fixed(default));
        };
        match compile_expr(v, path, cx)? {
            Expr::Literal(l) if !l.is_nullish() => parse(&l)
                .map(Arg::Fixed)
                .map_err(|m| CompileError::new(path, format!("{op}: {m}"))),
            e => Ok(Arg::Dynamic(e)),
        }
    }

    /// The value for this document; `None` when the argument is null or missing.
    fn eval(
        &self,
        ctx: &Ctx<'_>,
        op: &str,
        parse: fn(&Value) -> Result<T, String>,
    ) -> Result<Option<T>, EvalError> {
        match self {
            Arg::Fixed(t) => Ok(Some(*t)),
            Arg::Dynamic(e) => {
                let v = e.eval(ctx)?;
                if v.is_nullish() {
                    return Ok(None);
                }
                parse(&v).map(Some).map_err(|m| err(op, m))
            }
        }
    }
}

fn parse_tz(v: &Value) -> Result<TimeZone, String> {
    match v {
        Value::String(s) => {
            TimeZone::parse(s).ok_or_else(|| format!("unrecognized time zone identifier: \"{s}\""))
        }
        other => Err(format!(
            "timezone must evaluate to a string, found {}",
            other.type_name()
        )),
    }
}

fn parse_unit(v: &Value) -> Result<TimeUnit, String> {
    match v {
        Value::String(s) => TimeUnit::parse(s).ok_or_else(|| {
            format!("unknown time unit value: '{s}' (use year, quarter, month, week, day, hour, minute, second or millisecond)")
        }),
        other => Err(format!("'unit' must be a string, found {}", other.type_name())),
    }
}

fn parse_start_of_week(v: &Value) -> Result<u32, String> {
    match v {
        Value::String(s) => datetime::parse_day_of_week(s).ok_or_else(|| {
            format!("'startOfWeek' value cannot be recognized as a day of a week: '{s}'")
        }),
        other => Err(format!(
            "'startOfWeek' must be a string, found {}",
            other.type_name()
        )),
    }
}

fn parse_format(v: &Value, allowed: &str) -> Result<(), String> {
    match v {
        Value::String(s) => datetime::validate_format(s, allowed),
        other => Err(format!(
            "'format' must be a string, found {}",
            other.type_name()
        )),
    }
}

fn compile_tz(
    a: &HashMap<&str, &Value>,
    op: &str,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Arg<TimeZone>, CompileError> {
    Arg::compile(
        a.get("timezone").copied(),
        TimeZone::Utc,
        op,
        &path_key(path, "timezone"),
        cx,
        parse_tz,
    )
}

// ---------------------------------------------------------------------------------
// $year, $month, ... : one calendar field
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Part {
    Year,
    Month,
    DayOfMonth,
    DayOfWeek,
    DayOfYear,
    Hour,
    Minute,
    Second,
    Millisecond,
    Week,
    IsoWeek,
    IsoWeekYear,
    IsoDayOfWeek,
}

#[derive(Debug)]
struct PartOp {
    name: &'static str,
    part: Part,
    date: Expr,
    tz: Arg<TimeZone>,
}

impl Operator for PartOp {
    fn eval<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Cow<'a, Value>, EvalError> {
        let date = self.date.eval(ctx)?;
        if date.is_nullish() {
            return Ok(Cow::Owned(Value::Null));
        }
        let ms = coerce_date(&date, self.name, "date")?;
        let Some(tz) = self.tz.eval(ctx, self.name, parse_tz)? else {
            return Ok(Cow::Owned(Value::Null));
        };
        let l = tz.local(ms).map_err(|m| err(self.name, m))?;
        let n = match self.part {
            Part::Year => l.year(),
            Part::Month => l.month() as i32,
            Part::DayOfMonth => l.day() as i32,
            Part::DayOfWeek => l.day_of_week() as i32,
            Part::DayOfYear => l.day_of_year() as i32,
            Part::Hour => l.hour() as i32,
            Part::Minute => l.minute() as i32,
            Part::Second => l.second() as i32,
            Part::Millisecond => l.millisecond() as i32,
            Part::Week => l.week() as i32,
            Part::IsoWeek => l.iso_week() as i32,
            // MongoDB returns the ISO week-numbering year as a long.
            Part::IsoWeekYear => return Ok(Cow::Owned(Value::Int64(l.iso_week_year() as i64))),
            Part::IsoDayOfWeek => l.iso_day_of_week() as i32,
        };
        Ok(Cow::Owned(Value::Int32(n)))
    }
}

/// `{$year: <date>}`, `{$year: [<date>]}` or `{$year: {date, timezone}}`.
fn compile_part(
    name: &'static str,
    part: Part,
    args: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Expr, CompileError> {
    let (date, tz) = match args {
        Value::Document(d) if d.iter().next().is_some_and(|(k, _)| !k.starts_with('$')) => {
            let a = named_args(name, args, &["date"], &["timezone"], path)?;
            let date = compile_expr(a["date"], &path_key(path, "date"), cx)?;
            (date, compile_tz(&a, name, path, cx)?)
        }
        Value::Array(items) => {
            if items.len() != 1 {
                return Err(CompileError::new(
                    path,
                    format!("{name} takes exactly 1 argument, found {}", items.len()),
                ));
            }
            (
                compile_expr(&items[0], &path_index(path, 0), cx)?,
                Arg::Fixed(TimeZone::Utc),
            )
        }
        other => (compile_expr(other, path, cx)?, Arg::Fixed(TimeZone::Utc)),
    };
    Ok(Expr::Op(Arc::new(PartOp {
        name,
        part,
        date,
        tz,
    })))
}

// ---------------------------------------------------------------------------------
// $dateToString
// ---------------------------------------------------------------------------------

#[derive(Debug)]
struct DateToString {
    date: Expr,
    format: Option<Expr>,
    tz: Arg<TimeZone>,
    on_null: Option<Expr>,
}

const TO_STRING: &str = "$dateToString";

impl Operator for DateToString {
    fn eval<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Cow<'a, Value>, EvalError> {
        let date = self.date.eval(ctx)?;
        let format = match &self.format {
            Some(f) => {
                let f = f.eval(ctx)?;
                if !f.is_nullish() {
                    parse_format(&f, datetime::TO_STRING_SPECIFIERS)
                        .map_err(|m| err(TO_STRING, m))?;
                }
                Some(f)
            }
            None => None,
        };
        let tz = self.tz.eval(ctx, TO_STRING, parse_tz)?;
        if date.is_nullish() {
            return match &self.on_null {
                Some(e) => e.eval(ctx),
                None => Ok(Cow::Owned(Value::Null)),
            };
        }
        let Some(tz) = tz else {
            return Ok(Cow::Owned(Value::Null));
        };
        let fmt: &str = match &format {
            Some(f) => match f.as_str() {
                Some(s) => s,
                None => return Ok(Cow::Owned(Value::Null)),
            },
            None if tz.is_utc() => datetime::ISO_FORMAT_Z,
            None => datetime::ISO_FORMAT_LOCAL,
        };
        let ms = coerce_date(&date, TO_STRING, "date")?;
        let s = datetime::format_date(fmt, ms, &tz).map_err(|m| err(TO_STRING, m))?;
        Ok(Cow::Owned(Value::string(s)))
    }
}

fn compile_date_to_string(
    args: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Expr, CompileError> {
    let a = named_args(
        TO_STRING,
        args,
        &["date"],
        &["format", "timezone", "onNull"],
        path,
    )?;
    let date = compile_expr(a["date"], &path_key(path, "date"), cx)?;
    let format = compile_opt(&a, "format", path, cx)?;
    if let Some(Expr::Literal(f)) = &format {
        if !f.is_nullish() {
            parse_format(f, datetime::TO_STRING_SPECIFIERS).map_err(|m| {
                CompileError::new(path_key(path, "format"), format!("{TO_STRING}: {m}"))
            })?;
        }
    }
    let tz = compile_tz(&a, TO_STRING, path, cx)?;
    let on_null = compile_opt(&a, "onNull", path, cx)?;
    Ok(Expr::Op(Arc::new(DateToString {
        date,
        format,
        tz,
        on_null,
    })))
}

// ---------------------------------------------------------------------------------
// $dateFromString
// ---------------------------------------------------------------------------------

#[derive(Debug)]
struct DateFromString {
    date_string: Expr,
    format: Option<Expr>,
    tz: Arg<TimeZone>,
    on_error: Option<Expr>,
    on_null: Option<Expr>,
}

const FROM_STRING: &str = "$dateFromString";

impl Operator for DateFromString {
    fn eval<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Cow<'a, Value>, EvalError> {
        let input = self.date_string.eval(ctx)?;
        let format = match &self.format {
            Some(f) => {
                let f = f.eval(ctx)?;
                if !f.is_nullish() {
                    parse_format(&f, datetime::FROM_STRING_SPECIFIERS)
                        .map_err(|m| err(FROM_STRING, m))?;
                }
                Some(f)
            }
            None => None,
        };
        let tz = self.tz.eval(ctx, FROM_STRING, parse_tz)?;
        if input.is_nullish() {
            return match &self.on_null {
                Some(e) => e.eval(ctx),
                None => Ok(Cow::Owned(Value::Null)),
            };
        }
        let result = match input.as_ref() {
            Value::String(s) => {
                let Some(tz) = tz else {
                    return Ok(Cow::Owned(Value::Null));
                };
                let fmt = match &format {
                    Some(f) => match f.as_str() {
                        Some(f) => Some(f),
                        None => return Ok(Cow::Owned(Value::Null)),
                    },
                    None => None,
                };
                datetime::parse_date(s, &tz, fmt)
            }
            other => Err(format!(
                "'dateString' must be a string, found {} with value {other}",
                other.type_name()
            )),
        };
        match result {
            Ok(ms) => Ok(Cow::Owned(Value::Date(ms))),
            Err(m) => match &self.on_error {
                Some(e) => e.eval(ctx),
                None => Err(err(FROM_STRING, m)),
            },
        }
    }
}

fn compile_date_from_string(
    args: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Expr, CompileError> {
    let a = named_args(
        FROM_STRING,
        args,
        &["dateString"],
        &["format", "timezone", "onError", "onNull"],
        path,
    )?;
    let date_string = compile_expr(a["dateString"], &path_key(path, "dateString"), cx)?;
    let format = compile_opt(&a, "format", path, cx)?;
    if let Some(Expr::Literal(f)) = &format {
        if !f.is_nullish() {
            parse_format(f, datetime::FROM_STRING_SPECIFIERS).map_err(|m| {
                CompileError::new(path_key(path, "format"), format!("{FROM_STRING}: {m}"))
            })?;
        }
    }
    let tz = compile_tz(&a, FROM_STRING, path, cx)?;
    let on_error = compile_opt(&a, "onError", path, cx)?;
    let on_null = compile_opt(&a, "onNull", path, cx)?;
    Ok(Expr::Op(Arc::new(DateFromString {
        date_string,
        format,
        tz,
        on_error,
        on_null,
    })))
}

// ---------------------------------------------------------------------------------
// $dateToParts
// ---------------------------------------------------------------------------------

#[derive(Debug)]
struct DateToParts {
    date: Expr,
    tz: Arg<TimeZone>,
    iso: Arg<bool>,
}

const TO_PARTS: &str = "$dateToParts";

fn parse_bool(v: &Value) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("iso8601 must evaluate to a bool, found {}", v.type_name()))
}

impl Operator for DateToParts {
    fn eval<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Cow<'a, Value>, EvalError> {
        let date = self.date.eval(ctx)?;
        let Some(tz) = self.tz.eval(ctx, TO_PARTS, parse_tz)? else {
            return Ok(Cow::Owned(Value::Null));
        };
        let Some(iso) = self.iso.eval(ctx, TO_PARTS, parse_bool)? else {
            return Ok(Cow::Owned(Value::Null));
        };
        if date.is_nullish() {
            return Ok(Cow::Owned(Value::Null));
        }
        let ms = coerce_date(&date, TO_PARTS, "date")?;
        let l = tz.local(ms).map_err(|m| err(TO_PARTS, m))?;
        let mut d = Document::with_capacity(7);
        if iso {
            d.push_unchecked("isoWeekYear", Value::Int32(l.iso_week_year()));
            d.push_unchecked("isoWeek", Value::Int32(l.iso_week() as i32));
            d.push_unchecked("isoDayOfWeek", Value::Int32(l.iso_day_of_week() as i32));
        } else {
            d.push_unchecked("year", Value::Int32(l.year()));
            d.push_unchecked("month", Value::Int32(l.month() as i32));
            d.push_unchecked("day", Value::Int32(l.day() as i32));
        }
        d.push_unchecked("hour", Value::Int32(l.hour() as i32));
        d.push_unchecked("minute", Value::Int32(l.minute() as i32));
        d.push_unchecked("second", Value::Int32(l.second() as i32));
        d.push_unchecked("millisecond", Value::Int32(l.millisecond() as i32));
        Ok(Cow::Owned(Value::Document(d)))
    }
}

fn compile_date_to_parts(
    args: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Expr, CompileError> {
    let a = named_args(TO_PARTS, args, &["date"], &["timezone", "iso8601"], path)?;
    let date = compile_expr(a["date"], &path_key(path, "date"), cx)?;
    let tz = compile_tz(&a, TO_PARTS, path, cx)?;
    let iso = Arg::compile(
        a.get("iso8601").copied(),
        false,
        TO_PARTS,
        &path_key(path, "iso8601"),
        cx,
        parse_bool,
    )?;
    Ok(Expr::Op(Arc::new(DateToParts { date, tz, iso })))
}

// ---------------------------------------------------------------------------------
// $dateFromParts
// ---------------------------------------------------------------------------------

const FROM_PARTS: &str = "$dateFromParts";

/// Fields in evaluation order: the first three are year/month/day or their ISO
/// counterparts; `bounded` ones must fit a 16-bit integer.
#[derive(Debug)]
struct DateFromParts {
    iso: bool,
    /// (name, expression, default, bounded)
    fields: Vec<(&'static str, Option<Expr>, i64, bool)>,
    tz: Arg<TimeZone>,
}

impl Operator for DateFromParts {
    fn eval<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Cow<'a, Value>, EvalError> {
        let mut vals = [0i64; 7];
        let mut null = false;
        for (i, (name, e, default, bounded)) in self.fields.iter().enumerate() {
            let Some(e) = e else {
                vals[i] = *default;
                continue;
            };
            let v = e.eval(ctx)?;
            if v.is_nullish() {
                null = true;
                continue;
            }
            let n = v.as_i64_exact().ok_or_else(|| {
                err(
                    FROM_PARTS,
                    format!(
                        "'{name}' must evaluate to an integer, found {} with value {v}",
                        v.type_name()
                    ),
                )
            })?;
            if *bounded && !(-32768..=32767).contains(&n) {
                return Err(err(
                    FROM_PARTS,
                    format!("'{name}' must evaluate to a value in the range [-32768, 32767]; value {n} is not in range"),
                ));
            }
            vals[i] = n;
        }
        let Some(tz) = self.tz.eval(ctx, FROM_PARTS, parse_tz)? else {
            return Ok(Cow::Owned(Value::Null));
        };
        if null {
            return Ok(Cow::Owned(Value::Null));
        }
        let year_name = self.fields[0].0;
        if !(1..=9999).contains(&vals[0]) {
            return Err(err(
                FROM_PARTS,
                format!(
                    "'{year_name}' must evaluate to an integer in the range 1 to 9999, found {}",
                    vals[0]
                ),
            ));
        }
        let [y, m, d, h, mi, s, ms] = vals;
        let r = if self.iso {
            datetime::from_iso_parts(y, m, d, h, mi, s, ms, &tz)
        } else {
            datetime::from_parts(y, m, d, h, mi, s, ms, &tz)
        };
        r.map(|ms| Cow::Owned(Value::Date(ms)))
            .map_err(|m| err(FROM_PARTS, m))
    }
}

fn compile_date_from_parts(
    args: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Expr, CompileError> {
    const CAL: [&str; 3] = ["year", "month", "day"];
    const ISO: [&str; 3] = ["isoWeekYear", "isoWeek", "isoDayOfWeek"];
    let a = named_args(
        FROM_PARTS,
        args,
        &[],
        &[
            "year",
            "month",
            "day",
            "isoWeekYear",
            "isoWeek",
            "isoDayOfWeek",
            "hour",
            "minute",
            "second",
            "millisecond",
            "timezone",
        ],
        path,
    )?;
    let has_cal = CAL.iter().any(|k| a.contains_key(k));
    let has_iso = ISO.iter().any(|k| a.contains_key(k));
    if has_cal && has_iso {
        return Err(CompileError::new(
            path,
            format!("{FROM_PARTS}: 'year', 'month' and 'day' cannot be combined with 'isoWeekYear', 'isoWeek' and 'isoDayOfWeek'"),
        ));
    }
    let iso = has_iso;
    let date_names = if iso { ISO } else { CAL };
    if !a.contains_key(date_names[0]) {
        return Err(CompileError::new(
            path,
            format!(
                "{FROM_PARTS}: '{}' is required (or use 'year' / 'isoWeekYear')",
                date_names[0]
            ),
        ));
    }
    let mut fields = Vec::with_capacity(7);
    let specs: [(&'static str, i64, bool); 7] = [
        (date_names[0], 1970, false),
        (date_names[1], 1, true),
        (date_names[2], 1, true),
        ("hour", 0, true),
        ("minute", 0, true),
        ("second", 0, false),
        ("millisecond", 0, false),
    ];
    for (name, default, bounded) in specs {
        fields.push((name, compile_opt(&a, name, path, cx)?, default, bounded));
    }
    let tz = compile_tz(&a, FROM_PARTS, path, cx)?;
    Ok(Expr::Op(Arc::new(DateFromParts { iso, fields, tz })))
}

// ---------------------------------------------------------------------------------
// $dateTrunc
// ---------------------------------------------------------------------------------

const TRUNC: &str = "$dateTrunc";

fn parse_bin_size(v: &Value) -> Result<i64, String> {
    let n = v.as_i64_exact().ok_or_else(|| {
        format!(
            "'binSize' must be a 64-bit integer, found {} of type {}",
            v,
            v.type_name()
        )
    })?;
    if n <= 0 {
        return Err(format!("'binSize' must be greater than 0, found {n}"));
    }
    Ok(n)
}

#[derive(Debug)]
struct DateTrunc {
    date: Expr,
    unit: Arg<TimeUnit>,
    bin_size: Arg<i64>,
    tz: Arg<TimeZone>,
    start_of_week: Arg<u32>,
}

impl Operator for DateTrunc {
    fn eval<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Cow<'a, Value>, EvalError> {
        let null = || Ok(Cow::Owned(Value::Null));
        let date = self.date.eval(ctx)?;
        if date.is_nullish() {
            return null();
        }
        let Some(bin) = self.bin_size.eval(ctx, TRUNC, parse_bin_size)? else {
            return null();
        };
        let Some(unit) = self.unit.eval(ctx, TRUNC, parse_unit)? else {
            return null();
        };
        let sow = if unit == TimeUnit::Week {
            match self.start_of_week.eval(ctx, TRUNC, parse_start_of_week)? {
                Some(s) => s,
                None => return null(),
            }
        } else {
            datetime::DEFAULT_START_OF_WEEK
        };
        let Some(tz) = self.tz.eval(ctx, TRUNC, parse_tz)? else {
            return null();
        };
        let ms = coerce_date(&date, TRUNC, "date")?;
        datetime::date_trunc(ms, unit, bin, &tz, sow)
            .map(|r| Cow::Owned(Value::Date(r)))
            .map_err(|m| err(TRUNC, m))
    }
}

fn compile_date_trunc(args: &Value, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
    let a = named_args(
        TRUNC,
        args,
        &["date", "unit"],
        &["binSize", "timezone", "startOfWeek"],
        path,
    )?;
    let date = compile_expr(a["date"], &path_key(path, "date"), cx)?;
    let unit = Arg::compile(
        Some(a["unit"]),
        TimeUnit::Day,
        TRUNC,
        &path_key(path, "unit"),
        cx,
        parse_unit,
    )?;
    let bin_size = Arg::compile(
        a.get("binSize").copied(),
        1,
        TRUNC,
        &path_key(path, "binSize"),
        cx,
        parse_bin_size,
    )?;
    let tz = compile_tz(&a, TRUNC, path, cx)?;
    let start_of_week = Arg::compile(
        a.get("startOfWeek").copied(),
        datetime::DEFAULT_START_OF_WEEK,
        TRUNC,
        &path_key(path, "startOfWeek"),
        cx,
        parse_start_of_week,
    )?;
    Ok(Expr::Op(Arc::new(DateTrunc {
        date,
        unit,
        bin_size,
        tz,
        start_of_week,
    })))
}

// ---------------------------------------------------------------------------------
// $dateAdd / $dateSubtract
// ---------------------------------------------------------------------------------

#[derive(Debug)]
struct DateAdd {
    name: &'static str,
    negate: bool,
    start: Expr,
    unit: Arg<TimeUnit>,
    amount: Expr,
    tz: Arg<TimeZone>,
}

impl Operator for DateAdd {
    fn eval<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Cow<'a, Value>, EvalError> {
        let null = || Ok(Cow::Owned(Value::Null));
        let start = self.start.eval(ctx)?;
        if start.is_nullish() {
            return null();
        }
        let Some(unit) = self.unit.eval(ctx, self.name, parse_unit)? else {
            return null();
        };
        let amount = self.amount.eval(ctx)?;
        if amount.is_nullish() {
            return null();
        }
        let Some(tz) = self.tz.eval(ctx, self.name, parse_tz)? else {
            return null();
        };
        let ms = coerce_date(&start, self.name, "startDate")?;
        let mut n = amount.as_i64_exact().ok_or_else(|| {
            err(
                self.name,
                format!(
                    "expects an integer amount of time units, found {} {amount}",
                    amount.type_name()
                ),
            )
        })?;
        if self.negate {
            n = n
                .checked_neg()
                .ok_or_else(|| err(self.name, format!("invalid 'amount' parameter value: {n}")))?;
        }
        datetime::date_add(ms, unit, n, &tz)
            .map(|r| Cow::Owned(Value::Date(r)))
            .map_err(|m| err(self.name, m))
    }
}

fn compile_date_add(
    name: &'static str,
    negate: bool,
    args: &Value,
    path: &str,
    cx: &mut CompileCtx,
) -> Result<Expr, CompileError> {
    let a = named_args(
        name,
        args,
        &["startDate", "unit", "amount"],
        &["timezone"],
        path,
    )?;
    let start = compile_expr(a["startDate"], &path_key(path, "startDate"), cx)?;
    let unit = Arg::compile(
        Some(a["unit"]),
        TimeUnit::Day,
        name,
        &path_key(path, "unit"),
        cx,
        parse_unit,
    )?;
    let amount = compile_expr(a["amount"], &path_key(path, "amount"), cx)?;
    let tz = compile_tz(&a, name, path, cx)?;
    Ok(Expr::Op(Arc::new(DateAdd {
        name,
        negate,
        start,
        unit,
        amount,
        tz,
    })))
}

// ---------------------------------------------------------------------------------
// $dateDiff
// ---------------------------------------------------------------------------------

const DIFF: &str = "$dateDiff";

#[derive(Debug)]
struct DateDiff {
    start: Expr,
    end: Expr,
    unit: Arg<TimeUnit>,
    tz: Arg<TimeZone>,
    start_of_week: Arg<u32>,
}

impl Operator for DateDiff {
    fn eval<'a>(&'a self, ctx: &Ctx<'a>) -> Result<Cow<'a, Value>, EvalError> {
        let null = || Ok(Cow::Owned(Value::Null));
        let start = self.start.eval(ctx)?;
        if start.is_nullish() {
            return null();
        }
        let end = self.end.eval(ctx)?;
        if end.is_nullish() {
            return null();
        }
        let Some(unit) = self.unit.eval(ctx, DIFF, parse_unit)? else {
            return null();
        };
        let sow = if unit == TimeUnit::Week {
            match self.start_of_week.eval(ctx, DIFF, parse_start_of_week)? {
                Some(s) => s,
                None => return null(),
            }
        } else {
            datetime::DEFAULT_START_OF_WEEK
        };
        let Some(tz) = self.tz.eval(ctx, DIFF, parse_tz)? else {
            return null();
        };
        let s = coerce_date(&start, DIFF, "startDate")?;
        let e = coerce_date(&end, DIFF, "endDate")?;
        datetime::date_diff(s, e, unit, &tz, sow)
            .map(|n| Cow::Owned(Value::Int64(n)))
            .map_err(|m| err(DIFF, m))
    }
}

fn compile_date_diff(args: &Value, path: &str, cx: &mut CompileCtx) -> Result<Expr, CompileError> {
    let a = named_args(
        DIFF,
        args,
        &["startDate", "endDate", "unit"],
        &["timezone", "startOfWeek"],
        path,
    )?;
    let start = compile_expr(a["startDate"], &path_key(path, "startDate"), cx)?;
    let end = compile_expr(a["endDate"], &path_key(path, "endDate"), cx)?;
    let unit = Arg::compile(
        Some(a["unit"]),
        TimeUnit::Day,
        DIFF,
        &path_key(path, "unit"),
        cx,
        parse_unit,
    )?;
    let tz = compile_tz(&a, DIFF, path, cx)?;
    let start_of_week = Arg::compile(
        a.get("startOfWeek").copied(),
        datetime::DEFAULT_START_OF_WEEK,
        DIFF,
        &path_key(path, "startOfWeek"),
        cx,
        parse_start_of_week,
    )?;
    Ok(Expr::Op(Arc::new(DateDiff {
        start,
        end,
        unit,
        tz,
        start_of_week,
    })))
}

#[cfg(test)]
mod tests {
    use crate::expr::Expression;
    use crate::value::{parse_document, parse_value};

    fn run(expr: &str, doc: &str) -> String {
        let e = match Expression::compile(&parse_value(expr).unwrap()) {
            Ok(e) => e,
            Err(e) => return format!("compile error: {e}"),
        };
        match e.evaluate(&parse_document(doc).unwrap()) {
            Ok(v) => v.to_json(),
            Err(e) => format!("error: {e}"),
        }
    }

    const DOC: &str = r#"{"d": {"$date": "2014-01-01T08:15:39.736Z"}}"#;

    #[test]
    fn parts() {
        assert_eq!(run(r#"{"$year": "$d"}"#, DOC), "2014");
        assert_eq!(
            run(
                r#"{"$hour": {"date": "$d", "timezone": "America/New_York"}}"#,
                DOC
            ),
            "3"
        );
        assert_eq!(
            run(r#"{"$minute": {"date": "$d", "timezone": "+05:30"}}"#, DOC),
            "45"
        );
        assert_eq!(run(r#"{"$dayOfWeek": ["$d"]}"#, DOC), "4");
        assert_eq!(run(r#"{"$isoWeekYear": "$d"}"#, DOC), "2014");
        assert_eq!(run(r#"{"$year": "$nope"}"#, DOC), "null");
        assert!(run(r#"{"$year": "2014"}"#, DOC).starts_with("error: $year:"));
        assert!(run(
            r#"{"$year": {"date": "$d", "timezone": "Nowhere/City"}}"#,
            DOC
        )
        .contains("expression.$year.timezone"));
        assert_eq!(
            run(r#"{"$second": {"$timestamp": {"t": 1, "i": 1}}}"#, "{}"),
            "1"
        );
    }

    #[test]
    fn to_and_from_string() {
        assert_eq!(
            run(r#"{"$dateToString": {"date": "$d"}}"#, DOC),
            r#""2014-01-01T08:15:39.736Z""#
        );
        assert_eq!(
            run(
                r#"{"$dateToString": {"date": "$d", "timezone": "America/New_York"}}"#,
                DOC
            ),
            r#""2014-01-01T03:15:39.736""#
        );
        assert_eq!(
            run(
                r#"{"$dateToString": {"date": "$x", "onNull": "none"}}"#,
                DOC
            ),
            r#""none""#
        );
        assert!(
            run(r#"{"$dateToString": {"date": "$d", "format": "%Q"}}"#, DOC)
                .starts_with("compile error")
        );
        assert_eq!(
            run(
                r#"{"$dateFromString": {"dateString": "06-15-2018", "format": "%m-%d-%Y"}}"#,
                "{}"
            ),
            r#"{"$date":"2018-06-15T00:00:00Z"}"#
        );
        assert_eq!(
            run(
                r#"{"$dateFromString": {"dateString": "x", "onError": 0}}"#,
                "{}"
            ),
            "0"
        );
    }

    #[test]
    fn parts_documents() {
        assert_eq!(
            run(r#"{"$dateToParts": {"date": "$d", "iso8601": true}}"#, DOC),
            r#"{"isoWeekYear":2014,"isoWeek":1,"isoDayOfWeek":3,"hour":8,"minute":15,"second":39,"millisecond":736}"#
        );
        assert_eq!(
            run(
                r#"{"$dateFromParts": {"year": 2017, "month": 14, "day": 1, "hour": 12}}"#,
                "{}"
            ),
            r#"{"$date":"2018-02-01T12:00:00Z"}"#
        );
        assert!(
            run(r#"{"$dateFromParts": {"year": 2017, "isoWeek": 1}}"#, "{}")
                .starts_with("compile error")
        );
        assert!(run(r#"{"$dateFromParts": {"year": 10000}}"#, "{}").contains("range 1 to 9999"));
    }

    #[test]
    fn arithmetic() {
        assert_eq!(
            run(
                r#"{"$dateAdd": {"startDate": "$d", "unit": "month", "amount": 1}}"#,
                DOC
            ),
            r#"{"$date":"2014-02-01T08:15:39.736Z"}"#
        );
        assert_eq!(
            run(
                r#"{"$dateDiff": {"startDate": "$d", "endDate": {"$date": "2015-01-01T00:00:00Z"}, "unit": "year"}}"#,
                DOC
            ),
            "1"
        );
        assert_eq!(
            run(r#"{"$dateTrunc": {"date": "$d", "unit": "hour"}}"#, DOC),
            r#"{"$date":"2014-01-01T08:00:00Z"}"#
        );
        assert!(run(
            r#"{"$dateTrunc": {"date": "$d", "unit": "fortnight"}}"#,
            DOC
        )
        .starts_with("compile error"));
    }
}
