//! ISO-8601 times as Celery sends and reads them (`celery-protocol.md` §2).
//!
//! [`parse()`] accepts what Python's `dateutil.isoparse` accepts in practice:
//! `T`, `t` or a space between date and time, basic (`20260102T030405`) or
//! extended form, a fraction of any length after `.` or `,` (truncated to
//! microseconds), `Z`/`z`, `±HH`, `±HHMM` or `±HH:MM`, and `24:00`. A time
//! without offset (naive) is read as **UTC**, Celery's default timezone.
//!
//! [`format()`] writes Celery's own form, always with an explicit offset:
//! `2026-11-23T11:01:56.630562+00:00`.
//!
//! ```
//! use celeriac_core::wire::time;
//! let a = time::parse("2026-11-23T11:01:56.630562+00:00").unwrap();
//! assert_eq!(time::parse("2026-11-23 11:01:56.630562123Z").unwrap(), a);
//! assert_eq!(time::parse("2026-11-23T12:01:56.630562+01:00").unwrap(), a);
//! assert_eq!(time::parse("2026-11-23T11:01:56.630562").unwrap(), a); // naive = UTC
//! assert_eq!(time::format(a), "2026-11-23T11:01:56.630562+00:00");
//! ```

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, Utc};

/// Why a time could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ISO-8601 time `{input}`: {reason}")]
pub struct TimeError {
    /// The text that was given (cut to 64 characters).
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Writes a UTC time as Celery does: microseconds and `+00:00`.
pub fn format(t: DateTime<Utc>) -> String {
    let mut s = t.to_rfc3339_opts(SecondsFormat::Micros, true);
    if s.ends_with('Z') {
        s.pop();
        s.push_str("+00:00");
    }
    s
}

/// Reads an ISO-8601 time the way `dateutil.isoparse` does; naive is UTC.
pub fn parse(input: &str) -> Result<DateTime<Utc>, TimeError> {
    let fail = |reason: &'static str| TimeError {
        input: input.chars().take(64).collect(),
        reason,
    };
    let mut c = Cursor {
        s: input.trim().as_bytes(),
        at: 0,
    };
    let date = parse_date(&mut c).ok_or_else(|| fail("expected a date YYYY-MM-DD"))?;
    if c.done() {
        return Ok(date.and_time(NaiveTime::MIN).and_utc());
    }
    match c.next() {
        Some(b'T' | b't' | b' ') => {}
        _ => return Err(fail("expected `T` or a space after the date")),
    }
    let (time, extra_day) =
        parse_time(&mut c).ok_or_else(|| fail("expected a time HH:MM[:SS[.ffffff]]"))?;
    let offset_secs = parse_offset(&mut c).ok_or_else(|| fail("invalid UTC offset"))?;
    if !c.done() {
        return Err(fail("unexpected text after the time"));
    }
    let local = NaiveDateTime::new(date, time);
    let shift = Duration::try_seconds(i64::from(offset_secs))
        .and_then(|off| Duration::try_days(i64::from(extra_day)).map(|d| d - off))
        .ok_or_else(|| fail("offset out of range"))?;
    local
        .checked_add_signed(shift)
        .map(|t| t.and_utc())
        .ok_or_else(|| fail("time out of range"))
}

struct Cursor<'a> {
    s: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn done(&self) -> bool {
        self.at >= self.s.len()
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }
    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }
    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.at += 1;
            true
        } else {
            false
        }
    }
    /// Reads exactly `n` ASCII digits.
    fn digits(&mut self, n: usize) -> Option<u32> {
        let part = self.s.get(self.at..self.at + n)?;
        let mut v = 0u32;
        for &d in part {
            if !d.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u32::from(d - b'0');
        }
        self.at += n;
        Some(v)
    }
}

fn parse_date(c: &mut Cursor<'_>) -> Option<NaiveDate> {
    let year = c.digits(4)?;
    let extended = c.eat(b'-');
    let month = c.digits(2)?;
    if extended && !c.eat(b'-') {
        return None;
    }
    let day = c.digits(2)?;
    NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)
}

/// Returns the time and 1 if it was `24:00` (midnight of the next day).
fn parse_time(c: &mut Cursor<'_>) -> Option<(NaiveTime, u32)> {
    let hour = c.digits(2)?;
    let mut minute = 0;
    let mut second = 0;
    let mut micro = 0;
    let extended = c.eat(b':');
    if let Some(m) = c.digits(2) {
        minute = m;
        let has_seconds = if extended {
            c.eat(b':')
        } else {
            c.peek().is_some_and(|b| b.is_ascii_digit())
        };
        if has_seconds {
            second = c.digits(2)?;
            if c.eat(b'.') || c.eat(b',') {
                micro = fraction_micros(c)?;
            }
        }
    } else if extended {
        return None;
    }
    if hour == 24 && minute == 0 && second == 0 && micro == 0 {
        return Some((NaiveTime::MIN, 1));
    }
    // A leap second (:60) is not representable in Python either.
    Some((
        NaiveTime::from_hms_micro_opt(hour, minute, second, micro)?,
        0,
    ))
}

/// Reads one or more fraction digits, keeping the first six (microseconds).
fn fraction_micros(c: &mut Cursor<'_>) -> Option<u32> {
    let start = c.at;
    let mut micro = 0u32;
    let mut n = 0;
    while let Some(d) = c.peek().filter(u8::is_ascii_digit) {
        if n < 6 {
            micro = micro * 10 + u32::from(d - b'0');
        }
        n += 1;
        c.at += 1;
    }
    if c.at == start {
        return None;
    }
    for _ in n..6 {
        micro *= 10;
    }
    Some(micro)
}

/// Reads an offset, returning seconds east of UTC (0 when absent: naive).
fn parse_offset(c: &mut Cursor<'_>) -> Option<i32> {
    let sign = match c.peek() {
        None => return Some(0),
        Some(b'Z' | b'z') => {
            c.at += 1;
            return Some(0);
        }
        Some(b'+') => 1,
        Some(b'-') => -1,
        Some(_) => return None,
    };
    c.at += 1;
    let hours = c.digits(2)?;
    let minutes = if c.done() {
        0
    } else {
        c.eat(b':');
        c.digits(2)?
    };
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some(sign * i32::try_from(hours * 3600 + minutes * 60).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, us: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap() + Duration::microseconds(i64::from(us))
    }

    #[test]
    fn python_forms() {
        let t = utc(2026, 1, 2, 3, 4, 5, 0);
        for s in [
            "2026-01-02T03:04:05+00:00",
            "2026-01-02T03:04:05Z",
            "2026-01-02T03:04:05z",
            "2026-01-02 03:04:05+00:00",
            "2026-01-02T03:04:05",
            "2026-01-02t03:04:05.000000000Z",
            "2026-01-02T04:04:05+01:00",
            "2026-01-02T04:04:05+0100",
            "2026-01-02T04:04:05+01",
            "2026-01-01T22:04:05-05:00",
            "20260102T030405Z",
            "  2026-01-02T03:04:05Z  ",
        ] {
            assert_eq!(parse(s).unwrap(), t, "{s}");
        }
        assert_eq!(
            parse("2026-11-23T11:13:01.331223123+00:00").unwrap(),
            utc(2026, 11, 23, 11, 13, 1, 331_223)
        );
        assert_eq!(
            parse("2026-11-23T11:13:01,5").unwrap(),
            utc(2026, 11, 23, 11, 13, 1, 500_000)
        );
        assert_eq!(
            parse("2026-11-23T11:13").unwrap(),
            utc(2026, 11, 23, 11, 13, 0, 0)
        );
        assert_eq!(
            parse("2026-11-23T11").unwrap(),
            utc(2026, 11, 23, 11, 0, 0, 0)
        );
        assert_eq!(parse("2026-11-23").unwrap(), utc(2026, 11, 23, 0, 0, 0, 0));
        assert_eq!(
            parse("2026-12-31T24:00:00Z").unwrap(),
            utc(2027, 1, 1, 0, 0, 0, 0)
        );
    }

    #[test]
    fn garbage_is_refused() {
        for s in [
            "",
            "not a date",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-01-02T25:00:00Z",
            "2026-01-02T03:04:05+25:00",
            "2026-01-02T03:04:05 +00:00",
            "2026-01-02T03:04:05.Z",
            "2026-01-02X03:04:05",
            "2026-01-02T03:04:05Zjunk",
            "2026-01-02T24:00:01Z",
        ] {
            let e = parse(s).unwrap_err();
            assert!(e.to_string().contains("invalid ISO-8601 time"), "{e}");
        }
    }

    #[test]
    fn format_is_celery_form() {
        assert_eq!(
            format(utc(2026, 11, 23, 11, 1, 56, 630_562)),
            "2026-11-23T11:01:56.630562+00:00"
        );
        assert_eq!(
            format(utc(2026, 1, 2, 3, 4, 5, 0)),
            "2026-01-02T03:04:05.000000+00:00"
        );
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = parse(&s);
        }

        #[test]
        fn format_round_trips(secs in 0i64..4_000_000_000, us in 0u32..1_000_000) {
            let t = DateTime::from_timestamp(secs, us * 1000).unwrap();
            prop_assert_eq!(parse(&format(t)).unwrap(), t);
        }
    }
}
