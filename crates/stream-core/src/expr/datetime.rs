//! Calendar arithmetic on epoch milliseconds with time zones, shared by the date
//! operators and window stages.
//!
//! Every function works on a UTC instant in epoch milliseconds plus a [`TimeZone`]
//! (UTC, a fixed UTC offset such as `+05:30`, or an Olson name such as
//! `America/New_York`) and follows MongoDB's date semantics: the calendar fields are
//! those of the local wall clock in that zone, `$dateAdd` clamps to the end of the
//! month, `$dateDiff` counts unit boundaries crossed, and `$dateTrunc` bins relative to
//! 2000-01-01 in the zone. Errors are plain messages without an operator name; callers
//! prefix the operator (`$dateAdd: ...`).

use chrono::{
    Datelike, Duration, NaiveDate, NaiveDateTime, Offset, TimeZone as _, Timelike, Weekday,
};

const MS_PER_SECOND: i64 = 1000;
const MS_PER_MINUTE: i64 = 60 * MS_PER_SECOND;
const MS_PER_HOUR: i64 = 60 * MS_PER_MINUTE;
const MS_PER_DAY: i64 = 24 * MS_PER_HOUR;

/// 2000-01-01T00:00:00Z, the reference point of `$dateTrunc` bins.
const TRUNC_REFERENCE_MILLIS: i64 = 946_684_800_000;

/// A time zone as accepted by the `timezone` argument of the date operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeZone {
    /// UTC (`"UTC"`, or an offset of zero such as `"+00:00"`).
    Utc,
    /// A fixed offset from UTC in seconds (`"+05:30"`, `"-0800"`, `"+03"`).
    Offset(i32),
    /// An Olson time zone identifier (`"America/New_York"`, `"GMT"`).
    Named(chrono_tz::Tz),
}

impl TimeZone {
    /// Parses an Olson identifier or a UTC offset `±HH`, `±HHMM` or `±HH:MM`.
    pub fn parse(s: &str) -> Option<TimeZone> {
        if s == "UTC" {
            return Some(TimeZone::Utc);
        }
        if let Some(secs) = parse_utc_offset(s) {
            return Some(if secs == 0 {
                TimeZone::Utc
            } else {
                TimeZone::Offset(secs)
            });
        }
        s.parse::<chrono_tz::Tz>().ok().map(TimeZone::Named)
    }

    /// True for UTC itself (not for zones that merely have a zero offset, like `GMT`).
    pub fn is_utc(&self) -> bool {
        matches!(self, TimeZone::Utc)
    }

    /// The zone's offset from UTC, in seconds, at the instant `millis`.
    pub fn offset_secs(&self, millis: i64) -> i32 {
        match self {
            TimeZone::Utc => 0,
            TimeZone::Offset(s) => *s,
            TimeZone::Named(tz) => match chrono::DateTime::from_timestamp_millis(millis) {
                Some(dt) => tz
                    .offset_from_utc_datetime(&dt.naive_utc())
                    .fix()
                    .local_minus_utc(),
                None => 0,
            },
        }
    }

    /// The local wall-clock time of the instant `millis` in this zone.
    pub fn local(&self, millis: i64) -> Result<Local, String> {
        let utc = chrono::DateTime::from_timestamp_millis(millis)
            .ok_or_else(|| format!("date {millis} is outside the supported range"))?
            .naive_utc();
        let offset = self.offset_secs(millis);
        let dt = utc
            .checked_add_signed(Duration::seconds(offset as i64))
            .ok_or_else(|| format!("date {millis} is outside the supported range"))?;
        Ok(Local {
            dt,
            offset_secs: offset,
        })
    }

    /// The instant whose wall-clock time in this zone is `local`. An ambiguous local time
    /// (clocks set back) resolves to the earlier instant; a local time skipped by a
    /// daylight-saving jump is read with the offset in force before the jump.
    pub fn local_to_millis(&self, local: NaiveDateTime) -> Result<i64, String> {
        let naive_utc = match self {
            TimeZone::Utc => Some(local),
            TimeZone::Offset(s) => local.checked_sub_signed(Duration::seconds(*s as i64)),
            TimeZone::Named(tz) => match tz.from_local_datetime(&local) {
                chrono::LocalResult::Single(dt) => Some(dt.naive_utc()),
                chrono::LocalResult::Ambiguous(a, _) => Some(a.naive_utc()),
                chrono::LocalResult::None => {
                    let before = local - Duration::days(1);
                    let off = tz.offset_from_utc_datetime(&before).fix().local_minus_utc();
                    local.checked_sub_signed(Duration::seconds(off as i64))
                }
            },
        };
        naive_utc
            .map(|n| n.and_utc().timestamp_millis())
            .ok_or_else(|| "date is outside the supported range".to_string())
    }
}

/// Parses `±HH`, `±HHMM` or `±HH:MM` into seconds east of UTC.
fn parse_utc_offset(s: &str) -> Option<i32> {
    let b = s.as_bytes();
    let sign = match b.first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits = |r: &[u8]| -> Option<i32> {
        if r.iter().all(u8::is_ascii_digit) {
            Some(r.iter().fold(0, |a, d| a * 10 + (d - b'0') as i32))
        } else {
            None
        }
    };
    let (h, m) = match b.len() {
        3 => (digits(&b[1..3])?, 0),
        5 => (digits(&b[1..3])?, digits(&b[3..5])?),
        6 if b[3] == b':' => (digits(&b[1..3])?, digits(&b[4..6])?),
        _ => return None,
    };
    Some(sign * (h * 3600 + m * 60))
}

/// A local wall-clock time and the UTC offset in force at that instant.
#[derive(Clone, Copy, Debug)]
pub struct Local {
    /// Local date and time (with milliseconds).
    pub dt: NaiveDateTime,
    /// Offset from UTC in seconds.
    pub offset_secs: i32,
}

impl Local {
    /// Calendar year.
    pub fn year(&self) -> i32 {
        self.dt.year()
    }
    /// Month, 1-12.
    pub fn month(&self) -> u32 {
        self.dt.month()
    }
    /// Day of the month, 1-31.
    pub fn day(&self) -> u32 {
        self.dt.day()
    }
    /// Hour, 0-23.
    pub fn hour(&self) -> u32 {
        self.dt.hour()
    }
    /// Minute, 0-59.
    pub fn minute(&self) -> u32 {
        self.dt.minute()
    }
    /// Second, 0-59.
    pub fn second(&self) -> u32 {
        self.dt.second()
    }
    /// Millisecond, 0-999.
    pub fn millisecond(&self) -> u32 {
        self.dt.and_utc().timestamp_subsec_millis()
    }
    /// Day of the week, 1 (Sunday) to 7 (Saturday), as `$dayOfWeek`.
    pub fn day_of_week(&self) -> u32 {
        self.dt.weekday().num_days_from_sunday() + 1
    }
    /// Day of the year, 1-366.
    pub fn day_of_year(&self) -> u32 {
        self.dt.ordinal()
    }
    /// `$week`: week of the year, 0-53, weeks starting on Sunday; days before the
    /// year's first Sunday are in week 0.
    pub fn week(&self) -> u32 {
        (self.day_of_year() + 7 - self.day_of_week()) / 7
    }
    /// ISO 8601 week number, 1-53.
    pub fn iso_week(&self) -> u32 {
        self.dt.iso_week().week()
    }
    /// ISO 8601 week-numbering year.
    pub fn iso_week_year(&self) -> i32 {
        self.dt.iso_week().year()
    }
    /// ISO 8601 day of the week, 1 (Monday) to 7 (Sunday).
    pub fn iso_day_of_week(&self) -> u32 {
        self.dt.weekday().number_from_monday()
    }
}

const MONTH_NAMES: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Format specifiers `$dateToString` accepts (besides `%%`).
pub const TO_STRING_SPECIFIERS: &str = "bBdGHjLmMSwuUVYzZ";
/// Format specifiers `$dateFromString` accepts (besides `%%`).
pub const FROM_STRING_SPECIFIERS: &str = "bBdGHjLmMSuVYzZ";

/// MongoDB's default `$dateToString` format in UTC.
pub const ISO_FORMAT_Z: &str = "%Y-%m-%dT%H:%M:%S.%LZ";
/// MongoDB's default `$dateToString` format in a zone other than UTC.
pub const ISO_FORMAT_LOCAL: &str = "%Y-%m-%dT%H:%M:%S.%L";

/// Checks that every `%` in `format` is followed by one of `allowed` or by `%`.
pub fn validate_format(format: &str, allowed: &str) -> Result<(), String> {
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            continue;
        }
        match chars.next() {
            None => return Err("unmatched '%' at end of format string".into()),
            Some('%') => {}
            Some(s) if allowed.contains(s) => {}
            Some(s) => return Err(format!("invalid format character '%{s}' in format string")),
        }
    }
    Ok(())
}

fn push_padded(out: &mut String, n: i64, width: usize) -> Result<(), String> {
    if !(0..=9999).contains(&n) {
        return Err(format!(
            "could not convert date to string: date component was outside the supported range of 0-9999: {n}"
        ));
    }
    use std::fmt::Write;
    let _ = write!(out, "{n:0width$}");
    Ok(())
}

/// Formats the instant with MongoDB's `$dateToString` specifiers. The format must have
/// passed [`validate_format`] with [`TO_STRING_SPECIFIERS`]; an unknown specifier is an
/// error here too.
pub fn format_date(format: &str, millis: i64, tz: &TimeZone) -> Result<String, String> {
    let l = tz.local(millis)?;
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(spec) = chars.next() else {
            return Err("unmatched '%' at end of format string".into());
        };
        match spec {
            '%' => out.push('%'),
            'Y' => push_padded(&mut out, l.year() as i64, 4)?,
            'm' => push_padded(&mut out, l.month() as i64, 2)?,
            'd' => push_padded(&mut out, l.day() as i64, 2)?,
            'H' => push_padded(&mut out, l.hour() as i64, 2)?,
            'M' => push_padded(&mut out, l.minute() as i64, 2)?,
            'S' => push_padded(&mut out, l.second() as i64, 2)?,
            'L' => push_padded(&mut out, l.millisecond() as i64, 3)?,
            'j' => push_padded(&mut out, l.day_of_year() as i64, 3)?,
            'w' => push_padded(&mut out, l.day_of_week() as i64, 1)?,
            'U' => push_padded(&mut out, l.week() as i64, 2)?,
            'G' => push_padded(&mut out, l.iso_week_year() as i64, 4)?,
            'V' => push_padded(&mut out, l.iso_week() as i64, 2)?,
            'u' => push_padded(&mut out, l.iso_day_of_week() as i64, 1)?,
            'b' => out.push_str(&MONTH_NAMES[l.month() as usize - 1][..3]),
            'B' => out.push_str(MONTH_NAMES[l.month() as usize - 1]),
            'z' => {
                let off = l.offset_secs;
                out.push(if off < 0 { '-' } else { '+' });
                push_padded(&mut out, (off / 3600).abs() as i64, 2)?;
                push_padded(&mut out, ((off / 60).abs() % 60) as i64, 2)?;
            }
            'Z' => out.push_str(itoa::Buffer::new().format(l.offset_secs / 60)),
            other => {
                return Err(format!(
                    "invalid format character '%{other}' in format string"
                ))
            }
        }
    }
    Ok(out)
}

/// The ISO-8601 text MongoDB produces for a date converted to a string
/// (`2024-01-01T00:00:00.000Z`).
pub fn iso_string(millis: i64) -> Result<String, String> {
    format_date(ISO_FORMAT_Z, millis, &TimeZone::Utc)
}

// ---------------------------------------------------------------------------------
// Parsing ($dateFromString, $toDate)
// ---------------------------------------------------------------------------------

/// Date and time fields gathered while parsing; `None` is "not in the string".
#[derive(Default, Debug)]
struct Parsed {
    year: Option<i64>,
    month: Option<i64>,
    day: Option<i64>,
    hour: Option<i64>,
    minute: Option<i64>,
    second: Option<i64>,
    millis: Option<i64>,
    day_of_year: Option<i64>,
    iso_year: Option<i64>,
    iso_week: Option<i64>,
    iso_day: Option<i64>,
    /// Offset found in the string, seconds east of UTC.
    offset: Option<i32>,
}

struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn done(&self) -> bool {
        self.pos >= self.s.len()
    }
    /// Between `min` and `max` digits.
    fn number(&mut self, min: usize, max: usize) -> Option<i64> {
        let start = self.pos;
        let mut n: i64 = 0;
        while self.pos - start < max {
            match self.peek() {
                Some(d @ b'0'..=b'9') => {
                    n = n * 10 + (d - b'0') as i64;
                    self.pos += 1;
                }
                _ => break,
            }
        }
        if self.pos - start < min {
            self.pos = start;
            None
        } else {
            Some(n)
        }
    }
    /// Fraction digits after a `.`, as milliseconds (extra digits truncated).
    fn fraction_millis(&mut self) -> Option<i64> {
        let start = self.pos;
        let mut ms = 0;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            let i = self.pos - start;
            if i < 3 {
                ms += (d - b'0') as i64 * [100, 10, 1][i];
            }
            self.pos += 1;
        }
        (self.pos > start).then_some(ms)
    }
    /// `Z`, `UTC`, `GMT`, `±HH`, `±HHMM` or `±HH:MM`.
    fn zone(&mut self) -> Option<i32> {
        let rest = &self.s[self.pos..];
        for (name, len) in [("Z", 1), ("UTC", 3), ("GMT", 3)] {
            if rest.starts_with(name.as_bytes()) {
                self.pos += len;
                // "GMT+02:00" style.
                if matches!(self.peek(), Some(b'+' | b'-')) {
                    return self.numeric_offset();
                }
                return Some(0);
            }
        }
        self.numeric_offset()
    }
    fn numeric_offset(&mut self) -> Option<i32> {
        let start = self.pos;
        let sign = match self.peek() {
            Some(b'+') => 1,
            Some(b'-') => -1,
            _ => return None,
        };
        self.pos += 1;
        let Some(h) = self.number(2, 2) else {
            self.pos = start;
            return None;
        };
        let m = if self.eat(b':') {
            match self.number(2, 2) {
                Some(m) => m,
                None => {
                    self.pos = start;
                    return None;
                }
            }
        } else {
            self.number(2, 2).unwrap_or(0)
        };
        Some(sign * (h * 3600 + m * 60) as i32)
    }
    fn skip_spaces(&mut self) {
        while self.eat(b' ') {}
    }
    /// `st`, `nd`, `rd` or `th` after a day number.
    fn ordinal_suffix(&mut self) {
        let rest = &self.s[self.pos..];
        if ["st", "nd", "rd", "th"]
            .iter()
            .any(|suf| rest.len() >= 2 && rest[..2].eq_ignore_ascii_case(suf.as_bytes()))
        {
            self.pos += 2;
        }
    }
    /// A full month name or its three-letter abbreviation (with an optional `.`).
    fn any_month_name(&mut self) -> Option<i64> {
        let m = self.month_name(true).or_else(|| self.month_name(false))?;
        self.eat(b'.');
        Some(m)
    }
    fn month_name(&mut self, full: bool) -> Option<i64> {
        let rest = &self.s[self.pos..];
        for (i, name) in MONTH_NAMES.iter().enumerate() {
            let name = if full { *name } else { &name[..3] };
            if rest.len() >= name.len() && rest[..name.len()].eq_ignore_ascii_case(name.as_bytes())
            {
                self.pos += name.len();
                return Some(i as i64 + 1);
            }
        }
        None
    }
}

/// Parses a date string the way `$dateFromString` and `$toDate` do: with `format`
/// (MongoDB's `$dateFromString` specifiers) or, without one, ISO-8601 style strings
/// (`2024-01-31`, `2024-01-31T10:00:00.123Z`, `2024-01-31 10:00:00+02:00`,
/// `2024/01/31`, `01/31/2024`, `January 31, 2024`, `31 Jan 2024 10:00`). A string without an offset is read as local time in
/// `tz`; a string with one may not be combined with a time zone other than UTC.
pub fn parse_date(s: &str, tz: &TimeZone, format: Option<&str>) -> Result<i64, String> {
    let err = |what: &str| format!("error parsing date string '{s}': {what}");
    let parsed = match format {
        Some(f) => parse_with_format(s, f).map_err(|e| err(&e))?,
        None => parse_default(s).ok_or_else(|| err("not a recognised date format"))?,
    };
    build_date(s, parsed, tz)
}

fn parse_default(s: &str) -> Option<Parsed> {
    let mut c = Cursor {
        s: s.trim().as_bytes(),
        pos: 0,
    };
    let mut p = Parsed::default();
    if c.peek().is_some_and(|b| b.is_ascii_alphabetic()) {
        // "February 8, 2017", "Feb 8 2017"
        p.month = Some(c.any_month_name()?);
        c.skip_spaces();
        p.day = Some(c.number(1, 2)?);
        c.ordinal_suffix();
        c.eat(b',');
        c.skip_spaces();
        p.year = Some(c.number(4, 4)?);
    } else {
        let first = c.number(1, 4)?;
        let digits = c.pos;
        if digits == 4 && (c.eat(b'-') || c.eat(b'/')) {
            let sep = c.s[c.pos - 1];
            p.year = Some(first);
            p.month = Some(c.number(1, 2)?);
            if !c.eat(sep) {
                return None;
            }
            p.day = Some(c.number(1, 2)?);
        } else if digits <= 2 && c.eat(b'/') {
            // American month/day/year.
            p.month = Some(first);
            p.day = Some(c.number(1, 2)?);
            if !c.eat(b'/') {
                return None;
            }
            p.year = Some(c.number(4, 4)?);
        } else if digits <= 2 {
            // "8 February 2017", "8th Feb 2017"
            p.day = Some(first);
            c.ordinal_suffix();
            c.skip_spaces();
            p.month = Some(c.any_month_name()?);
            c.eat(b',');
            c.skip_spaces();
            p.year = Some(c.number(4, 4)?);
        } else {
            return None;
        }
    }
    let had_sep = c.eat(b'T') || c.eat(b't') || c.eat(b' ');
    if had_sep && matches!(c.peek(), Some(b'0'..=b'9')) {
        p.hour = Some(c.number(1, 2)?);
        if !c.eat(b':') {
            return None;
        }
        p.minute = Some(c.number(2, 2)?);
        if c.eat(b':') {
            p.second = Some(c.number(2, 2)?);
            if c.eat(b'.') || c.eat(b',') {
                p.millis = Some(c.fraction_millis()?);
            }
        }
        c.eat(b' ');
    }
    if !c.done() {
        p.offset = Some(c.zone()?);
    }
    c.done().then_some(p)
}

fn parse_with_format(s: &str, format: &str) -> Result<Parsed, String> {
    validate_format(format, FROM_STRING_SPECIFIERS)?;
    let mut c = Cursor {
        s: s.as_bytes(),
        pos: 0,
    };
    let mut p = Parsed::default();
    let fmt = format.as_bytes();
    let mut i = 0;
    while i < fmt.len() {
        let f = fmt[i];
        if f != b'%' {
            if !c.eat(f) {
                return Err(format!(
                    "the format separator '{}' does not match",
                    f as char
                ));
            }
            i += 1;
            continue;
        }
        let spec = fmt.get(i + 1).copied().unwrap_or(b'%');
        i += 2;
        let at = c.pos;
        let missing = |what: &str| format!("expected {what} at position {at}");
        match spec {
            b'%' => {
                if !c.eat(b'%') {
                    return Err("expected '%'".into());
                }
            }
            b'Y' => p.year = Some(c.number(4, 4).ok_or_else(|| missing("a four digit year"))?),
            b'G' => {
                p.iso_year = Some(
                    c.number(4, 4)
                        .ok_or_else(|| missing("a four digit ISO year"))?,
                )
            }
            b'm' => p.month = Some(c.number(1, 2).ok_or_else(|| missing("a two digit month"))?),
            b'd' => p.day = Some(c.number(1, 2).ok_or_else(|| missing("a two digit day"))?),
            b'H' => p.hour = Some(c.number(1, 2).ok_or_else(|| missing("a two digit hour"))?),
            b'M' => {
                p.minute = Some(
                    c.number(1, 2)
                        .ok_or_else(|| missing("a two digit minute"))?,
                )
            }
            b'S' => {
                p.second = Some(
                    c.number(1, 2)
                        .ok_or_else(|| missing("a two digit second"))?,
                )
            }
            b'L' => {
                p.millis = Some(
                    c.number(1, 3)
                        .ok_or_else(|| missing("a three digit millisecond"))?,
                )
            }
            b'j' => {
                p.day_of_year = Some(
                    c.number(1, 3)
                        .ok_or_else(|| missing("a three digit day of year"))?,
                )
            }
            b'V' => {
                p.iso_week = Some(
                    c.number(1, 2)
                        .ok_or_else(|| missing("a two digit ISO week"))?,
                )
            }
            b'u' => {
                p.iso_day = Some(
                    c.number(1, 1)
                        .ok_or_else(|| missing("an ISO day of week"))?,
                )
            }
            b'b' => {
                p.month = Some(
                    c.month_name(false)
                        .ok_or_else(|| missing("a three letter month name"))?,
                )
            }
            b'B' => p.month = Some(c.month_name(true).ok_or_else(|| missing("a month name"))?),
            b'z' => p.offset = Some(c.zone().ok_or_else(|| missing("a time zone offset"))?),
            b'Z' => {
                let neg = if c.eat(b'-') {
                    true
                } else {
                    c.eat(b'+');
                    false
                };
                let m = c
                    .number(1, 4)
                    .ok_or_else(|| missing("an offset in minutes"))?;
                p.offset = Some(((if neg { -m } else { m }) * 60) as i32);
            }
            other => return Err(format!("invalid format character '%{}'", other as char)),
        }
    }
    if !c.done() {
        return Err("trailing data".into());
    }
    Ok(p)
}

fn build_date(s: &str, p: Parsed, tz: &TimeZone) -> Result<i64, String> {
    let invalid = || format!("error parsing date string '{s}': the parsed date was invalid");
    let date = if p.iso_year.is_some() || p.iso_week.is_some() || p.iso_day.is_some() {
        let (Some(y), Some(w)) = (p.iso_year, p.iso_week) else {
            return Err(incomplete(s));
        };
        let d = p.iso_day.unwrap_or(1);
        if !(1..=53).contains(&w) || !(1..=7).contains(&d) {
            return Err(invalid());
        }
        iso_date(y, w, d).ok_or_else(invalid)?
    } else if let (Some(y), Some(doy), None) = (p.year, p.day_of_year, p.month) {
        NaiveDate::from_yo_opt(y as i32, doy as u32).ok_or_else(invalid)?
    } else {
        let (Some(y), Some(m), Some(d)) = (p.year, p.month, p.day) else {
            return Err(incomplete(s));
        };
        let (Ok(y), Ok(m), Ok(d)) = (i32::try_from(y), u32::try_from(m), u32::try_from(d)) else {
            return Err(invalid());
        };
        NaiveDate::from_ymd_opt(y, m, d).ok_or_else(invalid)?
    };
    let h = p.hour.unwrap_or(0);
    let mi = p.minute.unwrap_or(0);
    let sec = p.second.unwrap_or(0);
    let ms = p.millis.unwrap_or(0);
    if !(0..24).contains(&h) || !(0..60).contains(&mi) || !(0..60).contains(&sec) {
        return Err(invalid());
    }
    let local = date
        .and_hms_milli_opt(h as u32, mi as u32, sec as u32, ms as u32)
        .ok_or_else(invalid)?;
    match p.offset {
        Some(off) => {
            if !tz.is_utc() {
                return Err(format!(
                    "error parsing date string '{s}': you cannot pass in a date/time string with a UTC offset together with a timezone argument"
                ));
            }
            TimeZone::Offset(off).local_to_millis(local)
        }
        None => tz.local_to_millis(local),
    }
}

fn incomplete(s: &str) -> String {
    format!("an incomplete date/time string has been found, with elements missing: '{s}'")
}

/// The date of ISO week `week`, day `day` (1 = Monday) of ISO year `year`; out-of-range
/// weeks and days carry into neighbouring weeks and years.
fn iso_date(year: i64, week: i64, day: i64) -> Option<NaiveDate> {
    let monday_w1 = NaiveDate::from_isoywd_opt(i32::try_from(year).ok()?, 1, Weekday::Mon)?;
    monday_w1.checked_add_signed(Duration::try_days((week - 1) * 7 + (day - 1))?)
}

// ---------------------------------------------------------------------------------
// Building dates from parts ($dateFromParts)
// ---------------------------------------------------------------------------------

fn add_time(
    date: NaiveDate,
    hour: i64,
    minute: i64,
    second: i64,
    millis: i64,
) -> Option<NaiveDateTime> {
    let ms = hour
        .checked_mul(MS_PER_HOUR)?
        .checked_add(minute.checked_mul(MS_PER_MINUTE)?)?
        .checked_add(second.checked_mul(MS_PER_SECOND)?)?
        .checked_add(millis)?;
    date.and_hms_opt(0, 0, 0)?
        .checked_add_signed(Duration::try_milliseconds(ms)?)
}

/// The instant of a local calendar date and time in `tz`, as `$dateFromParts`.
/// Out-of-range months, days, hours, minutes, seconds and milliseconds carry into the
/// next larger unit (month 14 is February of the next year, day 0 the last day of the
/// previous month).
#[allow(clippy::too_many_arguments)]
pub fn from_parts(
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
    millis: i64,
    tz: &TimeZone,
) -> Result<i64, String> {
    let overflow = || "the date is outside the supported range".to_string();
    let months = year
        .checked_mul(12)
        .and_then(|m| m.checked_add(month - 1))
        .ok_or_else(overflow)?;
    let (y, m) = (months.div_euclid(12), months.rem_euclid(12) + 1);
    let first = NaiveDate::from_ymd_opt(i32::try_from(y).map_err(|_| overflow())?, m as u32, 1)
        .ok_or_else(overflow)?;
    let date = first
        .checked_add_signed(Duration::try_days(day - 1).ok_or_else(overflow)?)
        .ok_or_else(overflow)?;
    let local = add_time(date, hour, minute, second, millis).ok_or_else(overflow)?;
    tz.local_to_millis(local)
}

/// The instant of an ISO week date and local time in `tz`, as `$dateFromParts` with
/// `isoWeekYear`; out-of-range weeks, days and time fields carry.
#[allow(clippy::too_many_arguments)]
pub fn from_iso_parts(
    iso_year: i64,
    iso_week: i64,
    iso_day: i64,
    hour: i64,
    minute: i64,
    second: i64,
    millis: i64,
    tz: &TimeZone,
) -> Result<i64, String> {
    let overflow = || "the date is outside the supported range".to_string();
    let date = iso_date(iso_year, iso_week, iso_day).ok_or_else(overflow)?;
    let local = add_time(date, hour, minute, second, millis).ok_or_else(overflow)?;
    tz.local_to_millis(local)
}

// ---------------------------------------------------------------------------------
// Units: $dateAdd, $dateDiff, $dateTrunc
// ---------------------------------------------------------------------------------

/// A time unit of `$dateAdd`, `$dateDiff`, `$dateTrunc` and window ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeUnit {
    /// Calendar year.
    Year,
    /// Calendar quarter (three months).
    Quarter,
    /// Calendar month.
    Month,
    /// Week (seven days).
    Week,
    /// Day.
    Day,
    /// Hour.
    Hour,
    /// Minute.
    Minute,
    /// Second.
    Second,
    /// Millisecond.
    Millisecond,
}

impl TimeUnit {
    /// Parses `"year"`, `"quarter"`, `"month"`, `"week"`, `"day"`, `"hour"`, `"minute"`,
    /// `"second"` or `"millisecond"`.
    pub fn parse(s: &str) -> Option<TimeUnit> {
        Some(match s {
            "year" => TimeUnit::Year,
            "quarter" => TimeUnit::Quarter,
            "month" => TimeUnit::Month,
            "week" => TimeUnit::Week,
            "day" => TimeUnit::Day,
            "hour" => TimeUnit::Hour,
            "minute" => TimeUnit::Minute,
            "second" => TimeUnit::Second,
            "millisecond" => TimeUnit::Millisecond,
            _ => return None,
        })
    }

    /// The unit's name as MongoDB spells it.
    pub fn name(self) -> &'static str {
        match self {
            TimeUnit::Year => "year",
            TimeUnit::Quarter => "quarter",
            TimeUnit::Month => "month",
            TimeUnit::Week => "week",
            TimeUnit::Day => "day",
            TimeUnit::Hour => "hour",
            TimeUnit::Minute => "minute",
            TimeUnit::Second => "second",
            TimeUnit::Millisecond => "millisecond",
        }
    }

    /// Length in milliseconds of the fixed-length units (hour and smaller).
    pub fn fixed_millis(self) -> Option<i64> {
        match self {
            TimeUnit::Hour => Some(MS_PER_HOUR),
            TimeUnit::Minute => Some(MS_PER_MINUTE),
            TimeUnit::Second => Some(MS_PER_SECOND),
            TimeUnit::Millisecond => Some(1),
            _ => None,
        }
    }
}

/// Parses a `startOfWeek` value: a day name or its three-letter abbreviation, in any
/// case. Returns the ISO day number, 1 (Monday) to 7 (Sunday).
pub fn parse_day_of_week(s: &str) -> Option<u32> {
    const DAYS: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    let lower = s.to_ascii_lowercase();
    DAYS.iter()
        .position(|d| *d == lower || d[..3] == lower)
        .map(|i| i as u32 + 1)
}

/// The default `startOfWeek`: Sunday.
pub const DEFAULT_START_OF_WEEK: u32 = 7;

fn days_in_month(year: i32, month: u32) -> u32 {
    let (ny, nm) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    match (
        NaiveDate::from_ymd_opt(ny, nm, 1),
        NaiveDate::from_ymd_opt(year, month, 1),
    ) {
        (Some(next), Some(this)) => (next - this).num_days() as u32,
        _ => 31,
    }
}

fn date_add_overflow() -> String {
    "the result is outside the supported date range".to_string()
}

/// `$dateAdd`: adds `amount` units to the instant. Units of a day or longer are added
/// to the local calendar date in `tz` keeping the local time of day, and a month
/// addition that lands past the end of the month clamps to its last day (Jan 31 + 1
/// month = Feb 28/29). Shorter units add exact durations.
pub fn date_add(millis: i64, unit: TimeUnit, amount: i64, tz: &TimeZone) -> Result<i64, String> {
    if let Some(ms) = unit.fixed_millis() {
        return amount
            .checked_mul(ms)
            .and_then(|d| millis.checked_add(d))
            .ok_or_else(date_add_overflow);
    }
    // MongoDB's bound on the amount: roughly what fits the date range.
    let max_days: i64 = (u64::MAX / MS_PER_DAY as u64) as i64 + 1;
    let max_years = max_days / 365 + 1;
    let limit = match unit {
        TimeUnit::Year => max_years,
        TimeUnit::Quarter => max_years * 4,
        TimeUnit::Month => max_years * 12,
        TimeUnit::Week => max_days / 7,
        _ => max_days,
    };
    if amount <= -limit || amount >= limit {
        return Err(format!(
            "invalid 'amount' parameter value: {amount} {}",
            unit.name()
        ));
    }
    let local = tz.local(millis)?.dt;
    let new_local = match unit {
        TimeUnit::Year | TimeUnit::Quarter | TimeUnit::Month => {
            let per = match unit {
                TimeUnit::Year => 12,
                TimeUnit::Quarter => 3,
                _ => 1,
            };
            let months = local.year() as i64 * 12 + local.month0() as i64 + amount * per;
            let y = i32::try_from(months.div_euclid(12)).map_err(|_| date_add_overflow())?;
            let m = months.rem_euclid(12) as u32 + 1;
            let d = local.day().min(days_in_month(y, m));
            NaiveDate::from_ymd_opt(y, m, d)
                .ok_or_else(date_add_overflow)?
                .and_time(local.time())
        }
        _ => {
            let days = if unit == TimeUnit::Week {
                amount * 7
            } else {
                amount
            };
            local
                .checked_add_signed(Duration::try_days(days).ok_or_else(date_add_overflow)?)
                .ok_or_else(date_add_overflow)?
        }
    };
    tz.local_to_millis(new_local)
        .map_err(|_| date_add_overflow())
}

/// Day of the week counted from `start_of_week` (ISO number): 0 for the first day.
fn week_day_index(d: NaiveDate, start_of_week: u32) -> i64 {
    ((d.weekday().number_from_monday() + 7 - start_of_week) % 7) as i64
}

fn diff_days(start: NaiveDate, end: NaiveDate) -> i64 {
    (end - start).num_days()
}

fn diff_weeks(start: NaiveDate, end: NaiveDate, start_of_week: u32) -> i64 {
    (diff_days(start, end) + week_day_index(start, start_of_week)
        - week_day_index(end, start_of_week))
        / 7
}

fn diff_months(start: NaiveDate, end: NaiveDate) -> i64 {
    (end.year() as i64 - start.year() as i64) * 12 + end.month() as i64 - start.month() as i64
}

fn diff_quarters(start: NaiveDate, end: NaiveDate) -> i64 {
    (end.year() as i64 - start.year() as i64) * 4 + end.month0() as i64 / 3
        - start.month0() as i64 / 3
}

/// `$dateDiff`: the number of unit boundaries crossed from `start` to `end` on the
/// local calendar of `tz` (negative when `end` is earlier). Weeks start on
/// `start_of_week` (ISO day number, 7 = Sunday). Hours, minutes and seconds are
/// corrected for a change of UTC offset between the two instants, so they count
/// elapsed boundaries.
pub fn date_diff(
    start: i64,
    end: i64,
    unit: TimeUnit,
    tz: &TimeZone,
    start_of_week: u32,
) -> Result<i64, String> {
    if unit == TimeUnit::Millisecond {
        return end
            .checked_sub(start)
            .ok_or_else(|| "dateDiff overflowed".to_string());
    }
    let s = tz.local(start)?;
    let e = tz.local(end)?;
    let (sd, ed) = (s.dt.date(), e.dt.date());
    let z = (s.offset_secs - e.offset_secs) as i64;
    let hours = || diff_days(sd, ed) * 24 + e.hour() as i64 - s.hour() as i64;
    let minutes = || hours() * 60 + e.minute() as i64 - s.minute() as i64;
    Ok(match unit {
        TimeUnit::Year => e.year() as i64 - s.year() as i64,
        TimeUnit::Quarter => diff_quarters(sd, ed),
        TimeUnit::Month => diff_months(sd, ed),
        TimeUnit::Week => diff_weeks(sd, ed, start_of_week),
        TimeUnit::Day => diff_days(sd, ed),
        TimeUnit::Hour => hours() + z / 3600,
        TimeUnit::Minute => minutes() + z / 60,
        TimeUnit::Second => minutes() * 60 + e.second() as i64 - s.second() as i64 + z,
        // Returned early above; kept for exhaustiveness.
        TimeUnit::Millisecond => end.saturating_sub(start),
    })
}

/// `$dateTrunc`: the start of the `bin_size`-unit bin containing the instant. Bins are
/// aligned to 2000-01-01T00:00 local time in `tz` (for weeks, to the first
/// `start_of_week` on or after it). Hours and shorter units bin by elapsed time from
/// that reference; longer units by calendar position.
pub fn date_trunc(
    millis: i64,
    unit: TimeUnit,
    bin_size: i64,
    tz: &TimeZone,
    start_of_week: u32,
) -> Result<i64, String> {
    let overflow = || "dateTrunc overflowed".to_string();
    if bin_size <= 0 {
        return Err(format!(
            "'binSize' must be greater than 0, found {bin_size}"
        ));
    }
    let mut ref_millis =
        TRUNC_REFERENCE_MILLIS - tz.offset_secs(TRUNC_REFERENCE_MILLIS) as i64 * 1000;
    let mut ref_date = NaiveDate::from_ymd_opt(2000, 1, 1).ok_or_else(overflow)?;
    if let Some(unit_ms) = unit.fixed_millis() {
        let bin_ms = bin_size.checked_mul(unit_ms).ok_or_else(overflow)?;
        let shifted = millis.checked_sub(ref_millis).ok_or_else(overflow)?;
        return millis
            .checked_sub(shifted.rem_euclid(bin_ms))
            .ok_or_else(overflow);
    }
    if bin_size > 100_000_000_000 {
        return Err("unsupported 'binSize' value: it may be at most 100000000000".into());
    }
    if unit == TimeUnit::Week {
        // 2000-01-01 is a Saturday (ISO 6).
        let ref_index = (6 + 7 - start_of_week) % 7;
        let adjust = ((7 - ref_index) % 7) as i64;
        ref_millis += adjust * MS_PER_DAY;
        ref_date += Duration::days(adjust);
    }
    let d = tz.local(millis)?.dt.date();
    let distance = match unit {
        TimeUnit::Year => d.year() as i64 - 2000,
        TimeUnit::Quarter => diff_quarters(ref_date, d),
        TimeUnit::Month => diff_months(ref_date, d),
        TimeUnit::Week => diff_weeks(ref_date, d, start_of_week),
        _ => diff_days(ref_date, d),
    };
    let lower = distance - distance.rem_euclid(bin_size);
    date_add(ref_millis, unit, lower, tz)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s)
            .expect("test date")
            .timestamp_millis()
    }

    #[test]
    fn zones_parse() {
        assert_eq!(TimeZone::parse("+05:30"), Some(TimeZone::Offset(19800)));
        assert_eq!(TimeZone::parse("-0800"), Some(TimeZone::Offset(-28800)));
        assert_eq!(TimeZone::parse("+03"), Some(TimeZone::Offset(10800)));
        assert_eq!(TimeZone::parse("+00:00"), Some(TimeZone::Utc));
        assert!(matches!(
            TimeZone::parse("America/New_York"),
            Some(TimeZone::Named(_))
        ));
        assert_eq!(TimeZone::parse("Mars/Olympus"), None);
        assert_eq!(TimeZone::parse("+5"), None);
    }

    #[test]
    fn week_numbers() {
        // 2016-01-01 is a Friday: week 0, ISO week 53 of 2015.
        let l = TimeZone::Utc.local(ms("2016-01-01T00:00:00Z")).unwrap();
        assert_eq!(
            (l.week(), l.iso_week(), l.iso_week_year(), l.day_of_week()),
            (0, 53, 2015, 6)
        );
        let l = TimeZone::Utc.local(ms("2017-01-01T00:00:00Z")).unwrap(); // Sunday
        assert_eq!((l.week(), l.day_of_week(), l.iso_day_of_week()), (1, 1, 7));
    }

    #[test]
    fn formatting() {
        let t = ms("2014-01-01T08:15:39.736Z");
        assert_eq!(
            format_date(
                "%Y-%m-%d %H:%M:%S.%L %j %w %U %G %V %u %% %b %B",
                t,
                &TimeZone::Utc
            )
            .unwrap(),
            "2014-01-01 08:15:39.736 001 4 00 2014 01 3 % Jan January"
        );
        let ny = TimeZone::parse("America/New_York").unwrap();
        assert_eq!(
            format_date("%H:%M %z %Z", t, &ny).unwrap(),
            "03:15 -0500 -300"
        );
        let ist = TimeZone::parse("+05:30").unwrap();
        assert_eq!(format_date("%z %Z", t, &ist).unwrap(), "+0530 330");
        assert!(validate_format("%Y-%q", TO_STRING_SPECIFIERS).is_err());
        assert!(validate_format("%Y-%", TO_STRING_SPECIFIERS).is_err());
    }

    #[test]
    fn parsing() {
        let utc = TimeZone::Utc;
        assert_eq!(
            parse_date("2017-02-08T12:10:40.787Z", &utc, None),
            Ok(ms("2017-02-08T12:10:40.787Z"))
        );
        assert_eq!(
            parse_date("2017-02-08", &utc, None),
            Ok(ms("2017-02-08T00:00:00Z"))
        );
        assert_eq!(
            parse_date("2017-02-08T12:10:40+05:00", &utc, None),
            Ok(ms("2017-02-08T07:10:40Z"))
        );
        let ny = TimeZone::parse("America/New_York").unwrap();
        assert_eq!(
            parse_date("2017-02-08T12:10:40.787", &ny, None),
            Ok(ms("2017-02-08T17:10:40.787Z"))
        );
        assert!(parse_date("2017-02-08T12:10:40Z", &ny, None).is_err());
        assert_eq!(
            parse_date("15-06-2018", &utc, Some("%d-%m-%Y")),
            Ok(ms("2018-06-15T00:00:00Z"))
        );
        assert_eq!(
            parse_date("2018-W01-1", &utc, Some("%G-W%V-%u")),
            Ok(ms("2018-01-01T00:00:00Z"))
        );
        assert!(parse_date("2018-13-01", &utc, Some("%Y-%m-%d")).is_err());
        assert!(parse_date("2018-06", &utc, Some("%Y-%m")).is_err());
        assert!(parse_date("not a date", &utc, None).is_err());
        assert_eq!(
            parse_date("February 8, 2017", &utc, None),
            Ok(ms("2017-02-08T00:00:00Z"))
        );
        assert_eq!(
            parse_date("8th Feb 2017 10:20", &utc, None),
            Ok(ms("2017-02-08T10:20:00Z"))
        );
        assert_eq!(
            parse_date("Aug 14 2011 GMT", &utc, None),
            Ok(ms("2011-08-14T00:00:00Z"))
        );
    }

    #[test]
    fn adding() {
        let utc = TimeZone::Utc;
        assert_eq!(
            date_add(ms("2020-01-31T10:00:00Z"), TimeUnit::Month, 1, &utc),
            Ok(ms("2020-02-29T10:00:00Z"))
        );
        assert_eq!(
            date_add(ms("2020-03-31T10:00:00Z"), TimeUnit::Month, -1, &utc),
            Ok(ms("2020-02-29T10:00:00Z"))
        );
        assert_eq!(
            date_add(ms("2020-02-29T00:00:00Z"), TimeUnit::Year, 1, &utc),
            Ok(ms("2021-02-28T00:00:00Z"))
        );
        let ny = TimeZone::parse("America/New_York").unwrap();
        // Across the DST change the local time of day is kept.
        assert_eq!(
            date_add(ms("2020-11-01T01:30:00Z"), TimeUnit::Day, 1, &ny),
            Ok(ms("2020-11-02T02:30:00Z"))
        );
        assert_eq!(
            date_add(ms("2020-11-01T05:50:02Z"), TimeUnit::Hour, 1, &ny),
            Ok(ms("2020-11-01T06:50:02Z"))
        );
    }

    #[test]
    fn diffing() {
        let utc = TimeZone::Utc;
        let d = |a, b, u| date_diff(ms(a), ms(b), u, &utc, DEFAULT_START_OF_WEEK).unwrap();
        assert_eq!(
            d(
                "2020-12-31T23:59:59Z",
                "2021-01-01T00:00:00Z",
                TimeUnit::Year
            ),
            1
        );
        assert_eq!(
            d(
                "2021-01-01T00:00:00Z",
                "2021-12-31T23:59:59Z",
                TimeUnit::Year
            ),
            0
        );
        assert_eq!(
            d(
                "2021-01-01T10:00:00Z",
                "2021-01-02T09:00:00Z",
                TimeUnit::Day
            ),
            1
        );
        assert_eq!(
            d(
                "2021-01-02T10:00:00Z",
                "2021-01-01T09:00:00Z",
                TimeUnit::Day
            ),
            -1
        );
        // 2021-01-02 is a Saturday, 2021-01-03 a Sunday.
        assert_eq!(
            d(
                "2021-01-02T00:00:00Z",
                "2021-01-03T00:00:00Z",
                TimeUnit::Week
            ),
            1
        );
        assert_eq!(
            d(
                "2021-01-03T00:00:00Z",
                "2021-01-09T00:00:00Z",
                TimeUnit::Week
            ),
            0
        );
        assert_eq!(
            d(
                "2021-01-01T00:00:00Z",
                "2021-04-01T00:00:00Z",
                TimeUnit::Quarter
            ),
            1
        );
    }

    #[test]
    fn truncating() {
        let utc = TimeZone::Utc;
        let t = ms("2021-03-20T11:30:05.200Z");
        assert_eq!(
            date_trunc(t, TimeUnit::Month, 1, &utc, 7),
            Ok(ms("2021-03-01T00:00:00Z"))
        );
        assert_eq!(
            date_trunc(t, TimeUnit::Quarter, 1, &utc, 7),
            Ok(ms("2021-01-01T00:00:00Z"))
        );
        assert_eq!(
            date_trunc(t, TimeUnit::Week, 1, &utc, 7),
            Ok(ms("2021-03-14T00:00:00Z"))
        );
        assert_eq!(
            date_trunc(t, TimeUnit::Week, 1, &utc, 1),
            Ok(ms("2021-03-15T00:00:00Z"))
        );
        assert_eq!(
            date_trunc(t, TimeUnit::Hour, 2, &utc, 7),
            Ok(ms("2021-03-20T10:00:00Z"))
        );
        assert_eq!(
            date_trunc(t, TimeUnit::Year, 5, &utc, 7),
            Ok(ms("2020-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn from_parts_carries() {
        let utc = TimeZone::Utc;
        assert_eq!(
            from_parts(2017, 14, 1, 0, 0, 0, 0, &utc),
            Ok(ms("2018-02-01T00:00:00Z"))
        );
        assert_eq!(
            from_parts(2017, 2, 0, 0, 0, 0, 0, &utc),
            Ok(ms("2017-01-31T00:00:00Z"))
        );
        assert_eq!(
            from_parts(2017, 1, 1, 25, 0, 0, 0, &utc),
            Ok(ms("2017-01-02T01:00:00Z"))
        );
        assert_eq!(
            from_iso_parts(2017, 1, 1, 0, 0, 0, 0, &utc),
            Ok(ms("2017-01-02T00:00:00Z"))
        );
    }
}
