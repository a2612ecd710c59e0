//! Schedule specs and their fire instants.
//!
//! The `cron` crate is not used: it rejects 5-field lines, numbers Sunday 1
//! (so `1-5` would be Sunday..Thursday) and ANDs a restricted day-of-month
//! with a restricted day-of-week where crontab ORs them. This module parses
//! crontab's own meaning (Vixie cron) and adds a seconds field:
//!
//! - 5 fields: `min hour dom month dow`, fired at second 0;
//! - 6 fields: `sec min hour dom month dow`;
//! - day of week 0-7 (0 and 7 are Sunday), names `SUN`-`SAT`, `JAN`-`DEC`;
//! - `*`, `a`, `a-b`, `*/n`, `a-b/n`, `a/n` (= `a-max/n`), comma lists;
//! - when both day-of-month and day-of-week are restricted (neither starts
//!   with `*`), a day matching either fires (Vixie cron's rule, including its
//!   quirk that `*/2` counts as unrestricted);
//! - `@yearly @annually @monthly @weekly @daily @midnight @hourly`;
//! - `@every 5s`, `@every 2m30s`, `@every 1h`: every N real seconds, aligned to
//!   multiples of N since the Unix epoch (so `next` is reproducible and a
//!   restart keeps the cadence); DST does not affect it.
//!
//! DST policy (times are wall-clock times in the job's zone):
//! - a *fixed-time* spec (its hour field is restricted, e.g. `30 2 * * *`):
//!   a time inside a spring-forward gap fires once at the first instant after
//!   the gap; a time that occurs twice in a fall-back fold fires only the
//!   first time. So it runs exactly once that day.
//! - a spec whose hour field is `*` (runs every hour or more often) follows
//!   real time, as Vixie cron does for wildcard jobs: wall-clock times that
//!   do not exist are skipped (no burst at the end of the gap), and both
//!   passes through a fold fire (no hour-long pause).

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, Offset, TimeZone,
    Timelike, Utc,
};
use chrono_tz::Tz;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    sec: u64,
    min: u64,
    hour: u32,
    /// bits 1..=31
    dom: u32,
    /// bits 1..=12
    month: u16,
    /// bits 0..=6, Sunday = 0
    dow: u8,
    dom_star: bool,
    dow_star: bool,
    hour_star: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Cron(Cron),
    Every(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    text: String,
    kind: Kind,
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

struct FieldDef {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// first value the names map to
    names_base: u32,
}

const SEC: FieldDef = FieldDef {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
    names_base: 0,
};
const MIN: FieldDef = FieldDef {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
    names_base: 0,
};
const HOUR: FieldDef = FieldDef {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
    names_base: 0,
};
const DOM: FieldDef = FieldDef {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
    names_base: 0,
};
const MONTH: FieldDef = FieldDef {
    name: "month",
    min: 1,
    max: 12,
    names: &MONTHS,
    names_base: 1,
};
const DOW: FieldDef = FieldDef {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &DAYS,
    names_base: 0,
};

fn parse_value(s: &str, d: &FieldDef) -> Result<u32, String> {
    if let Some(i) = d.names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        return Ok(i as u32 + d.names_base);
    }
    let v: u32 = s.parse().map_err(|_| {
        if d.names.is_empty() {
            format!("{} field: {s:?} is not a number", d.name)
        } else {
            format!(
                "{} field: {s:?} is not a number or a name ({}..{})",
                d.name,
                d.names[0],
                d.names[d.names.len() - 1]
            )
        }
    })?;
    if v < d.min || v > d.max {
        return Err(format!(
            "{} field: {v} is out of range {}-{}",
            d.name, d.min, d.max
        ));
    }
    Ok(v)
}

/// Parse one field into a bit set of allowed values (bit i = value i).
fn parse_field(s: &str, d: &FieldDef) -> Result<u64, String> {
    if s.is_empty() {
        return Err(format!("{} field is empty", d.name));
    }
    let mut bits = 0u64;
    for item in s.split(',') {
        if item.is_empty() {
            return Err(format!("{} field: empty item in list {s:?}", d.name));
        }
        let (range, step) = match item.split_once('/') {
            Some((r, st)) => {
                let step: u32 = st
                    .parse()
                    .map_err(|_| format!("{} field: step {st:?} is not a number", d.name))?;
                if step == 0 {
                    return Err(format!("{} field: a step of 0 never advances", d.name));
                }
                (r, Some(step))
            }
            None => (item, None),
        };
        let (lo, hi) = if range == "*" {
            (d.min, if d.max == 7 { 6 } else { d.max })
        } else if let Some((a, b)) = range.split_once('-') {
            let a = parse_value(a, d)?;
            let b = parse_value(b, d)?;
            if a > b {
                return Err(format!("{} field: range {range:?} runs backwards", d.name));
            }
            (a, b)
        } else {
            let a = parse_value(range, d)?;
            // `a/n` means a..max stepping n
            (a, if step.is_some() { d.max } else { a })
        };
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

fn parse_duration_secs(s: &str) -> Result<u64, String> {
    crate::units::parse_duration(s)
        .map(|d| d.as_secs())
        .and_then(|n| {
            if n == 0 {
                Err("the interval must be at least 1s".into())
            } else {
                Ok(n)
            }
        })
}

/// What a leading `@word` stands for.
enum Shorthand {
    /// No shorthand: cron fields.
    None,
    /// The 6 cron fields it stands for.
    Cron(&'static str),
    /// `@every N`: every N real seconds.
    Every(u64),
}

fn shorthand(text: &str) -> Result<Shorthand, String> {
    Ok(Shorthand::Cron(match text.split_whitespace().next().unwrap_or("") {
        "@yearly" | "@annually" => "0 0 0 1 1 *",
        "@monthly" => "0 0 0 1 * *",
        "@weekly" => "0 0 0 * * 0",
        "@daily" | "@midnight" => "0 0 0 * * *",
        "@hourly" => "0 0 * * * *",
        "@every" => {
            let rest: Vec<&str> = text.split_whitespace().skip(1).collect();
            if rest.len() != 1 {
                return Err("`@every` takes one duration, e.g. `@every 5s` or `@every 2m30s`".into());
            }
            let secs = parse_duration_secs(rest[0]).map_err(|e| format!("@every: {e}"))?;
            return Ok(Shorthand::Every(secs));
        }
        "@reboot" => return Err("`@reboot` is not supported (use `catch_up: true`, or run the job from a boot unit)".into()),
        w if w.starts_with('@') => {
            return Err(format!(
                "unknown shorthand {w:?} (known: @yearly @annually @monthly @weekly @daily @midnight @hourly @every)"
            ));
        }
        _ => return Ok(Shorthand::None),
    }))
}

/// The 6 fields (seconds first) as a [`Cron`]; one that can never fire is
/// refused.
fn cron_of(f: &[&str]) -> Result<Cron, String> {
    let sec = parse_field(f[0], &SEC)?;
    let min = parse_field(f[1], &MIN)?;
    let hour = parse_field(f[2], &HOUR)? as u32;
    let dom = parse_field(f[3], &DOM)? as u32;
    let month = parse_field(f[4], &MONTH)? as u16;
    let mut dow = parse_field(f[5], &DOW)?;
    if dow & (1 << 7) != 0 {
        dow = (dow | 1) & 0x7f;
    }
    let cron = Cron {
        sec,
        min,
        hour,
        dom,
        month,
        dow: dow as u8,
        dom_star: f[3].starts_with('*'),
        dow_star: f[5].starts_with('*'),
        hour_star: f[2].starts_with('*'),
    };
    // A spec such as `0 0 30 2 *` never fires: refuse it at `check`.
    let y2k = NaiveDate::from_ymd_opt(2000, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    if cron.next_naive(y2k).is_none() {
        return Err("this schedule never fires (no such day)".into());
    }
    Ok(cron)
}

impl Schedule {
    pub fn parse(spec: &str) -> Result<Schedule, String> {
        let text = spec.trim();
        if text.is_empty() {
            return Err("the schedule is empty".into());
        }
        let expanded = match shorthand(text)? {
            Shorthand::Every(secs) => {
                return Ok(Schedule {
                    text: text.into(),
                    kind: Kind::Every(secs),
                });
            }
            Shorthand::Cron(e) => e,
            Shorthand::None => "",
        };
        let fields: Vec<&str> = if expanded.is_empty() {
            text.split_whitespace().collect()
        } else {
            if text.split_whitespace().count() != 1 {
                return Err(format!(
                    "{} takes no further fields",
                    text.split_whitespace().next().unwrap()
                ));
            }
            expanded.split_whitespace().collect()
        };
        let f: Vec<&str> = match fields.len() {
            5 => std::iter::once("0").chain(fields.iter().copied()).collect(),
            6 => fields,
            n => {
                return Err(format!(
                    "expected 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first), found {n}"
                ));
            }
        };
        Ok(Schedule {
            text: text.into(),
            kind: Kind::Cron(cron_of(&f)?),
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The first fire instant strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let after_s = after.timestamp();
        match &self.kind {
            Kind::Every(n) => {
                let n = *n as i64;
                let next = (after_s.div_euclid(n) + 1) * n;
                DateTime::from_timestamp(next, 0)
            }
            Kind::Cron(c) => c.next_after(after, tz),
        }
    }

    /// The next `n` fire instants after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, tz: Tz, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut t = after;
        while out.len() < n {
            match self.next_after(t, tz) {
                Some(x) => {
                    out.push(x);
                    t = x;
                }
                None => break,
            }
        }
        out
    }

    /// The latest fire instant in (from, until], if any (for catch-up).
    pub fn fired_between(&self, from: DateTime<Utc>, until: DateTime<Utc>, tz: Tz) -> bool {
        self.next_after(from, tz).is_some_and(|t| t <= until)
    }
}

impl Cron {
    fn day_ok(&self, d: NaiveDate) -> bool {
        let dom = self.dom & (1 << d.day()) != 0;
        let dow = self.dow & (1 << d.weekday().num_days_from_sunday()) != 0;
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// Smallest wall-clock time >= start (whole seconds) that matches.
    fn next_naive(&self, start: NaiveDateTime) -> Option<NaiveDateTime> {
        let mut t = start.with_nanosecond(0)?;
        let limit = t + Duration::days(366 * 30);
        while t <= limit {
            if self.month & (1 << t.month()) == 0 {
                let (y, m) = if t.month() == 12 {
                    (t.year() + 1, 1)
                } else {
                    (t.year(), t.month() + 1)
                };
                t = NaiveDate::from_ymd_opt(y, m, 1)?.and_hms_opt(0, 0, 0)?;
                continue;
            }
            if !self.day_ok(t.date()) {
                t = t.date().succ_opt()?.and_hms_opt(0, 0, 0)?;
                continue;
            }
            if self.hour & (1 << t.hour()) == 0 {
                t = t.date().and_hms_opt(t.hour(), 0, 0)? + Duration::hours(1);
                continue;
            }
            if self.min & (1 << t.minute()) == 0 {
                t = t.date().and_hms_opt(t.hour(), t.minute(), 0)? + Duration::minutes(1);
                continue;
            }
            if self.sec & (1 << t.second()) == 0 {
                t += Duration::seconds(1);
                continue;
            }
            return Some(t);
        }
        None
    }

    fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let a = self.next_after_naive(after, tz)?;
        if !self.hour_star {
            return Some(a);
        }
        // A wildcard-hour spec follows real time: if the wall clock went back
        // (a fold) between `after` and `a`, the repeated times come first.
        let first = DateTime::from_timestamp(after.timestamp() + 1, 0)?;
        let off = |t: DateTime<Utc>| t.with_timezone(&tz).offset().fix().local_minus_utc();
        if off(a) >= off(first) {
            return Some(a);
        }
        // the fold's instant: first t in (first, a] with the later offset
        let (mut lo, mut hi) = (first.timestamp(), a.timestamp());
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if off(DateTime::from_timestamp(mid, 0)?) == off(a) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        let fold = DateTime::from_timestamp(hi, 0)?;
        let n = self.next_naive(fold.with_timezone(&tz).naive_local())?;
        let b = match tz.from_local_datetime(&n) {
            LocalResult::Single(t) => t.with_timezone(&Utc),
            LocalResult::Ambiguous(_, late) => late.with_timezone(&Utc),
            LocalResult::None => return Some(a),
        };
        Some(if b > after && b < a { b } else { a })
    }

    fn next_after_naive(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let fixed = !self.hour_star;
        let first = DateTime::from_timestamp(after.timestamp() + 1, 0)?;
        let mut start = first.with_timezone(&tz).naive_local();
        // Each turn moves `start` forward; the bound only guards against a
        // zone database with pathological transitions.
        for _ in 0..10_000 {
            let n = self.next_naive(start)?;
            match tz.from_local_datetime(&n) {
                LocalResult::Single(t) => {
                    let t = t.with_timezone(&Utc);
                    if t > after {
                        return Some(t);
                    }
                    start = n + Duration::seconds(1);
                }
                LocalResult::Ambiguous(early, late) => {
                    let (early, late) = (early.with_timezone(&Utc), late.with_timezone(&Utc));
                    if early > after {
                        return Some(early);
                    }
                    if !fixed && late > after {
                        return Some(late);
                    }
                    start = n + Duration::seconds(1);
                }
                LocalResult::None => {
                    let end = gap_end(n, tz);
                    if fixed && end > after {
                        return Some(end);
                    }
                    start = end.with_timezone(&tz).naive_local();
                    if start <= n {
                        start = n + Duration::seconds(1);
                    }
                }
            }
        }
        None
    }
}

/// For a wall-clock time inside a DST gap: the first instant after the gap.
fn gap_end(n: NaiveDateTime, tz: Tz) -> DateTime<Utc> {
    let local_of = |u: i64| {
        DateTime::from_timestamp(u, 0)
            .unwrap()
            .with_timezone(&tz)
            .naive_local()
    };
    let base = n.and_utc().timestamp();
    let (mut lo, mut hi) = (base - 27 * 3600, base + 27 * 3600);
    // invariant: local_of(lo) <= n < local_of(hi)
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if local_of(mid) > n {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0).unwrap()
}

/// The zone named by `TZ` or the system's, else UTC.
pub fn system_tz() -> Tz {
    if let Ok(tz) = std::env::var("TZ")
        && let Ok(z) = tz.trim_start_matches(':').parse::<Tz>()
    {
        return z;
    }
    iana_time_zone::get_timezone()
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(Tz::UTC)
}

pub fn parse_tz(s: &str) -> Result<Tz, String> {
    s.parse::<Tz>().map_err(|_| {
        format!("unknown time zone {s:?} (use an IANA name such as Asia/Shanghai or UTC)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::SecondsFormat;

    fn next_n(spec: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
        let s = Schedule::parse(spec).unwrap();
        let tz: Tz = tz.parse().unwrap();
        let from = DateTime::parse_from_rfc3339(from)
            .unwrap()
            .with_timezone(&Utc);
        s.upcoming(from, tz, n)
            .into_iter()
            .map(|t| {
                t.with_timezone(&tz)
                    .to_rfc3339_opts(SecondsFormat::Secs, false)
            })
            .collect()
    }

    #[test]
    fn five_fields_fire_at_second_zero() {
        assert_eq!(
            next_n("*/15 * * * *", "UTC", "2026-01-01T00:00:00Z", 3),
            [
                "2026-01-01T00:15:00+00:00",
                "2026-01-01T00:30:00+00:00",
                "2026-01-01T00:45:00+00:00"
            ]
        );
    }

    #[test]
    fn six_fields_seconds_first() {
        assert_eq!(
            next_n("*/20 * * * * *", "UTC", "2026-01-01T00:00:05Z", 3),
            [
                "2026-01-01T00:00:20+00:00",
                "2026-01-01T00:00:40+00:00",
                "2026-01-01T00:01:00+00:00"
            ]
        );
        // strictly after `from`, also with a fractional second
        let s = Schedule::parse("* * * * * *").unwrap();
        let from = DateTime::parse_from_rfc3339("2026-01-01T00:00:00.5Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            s.next_after(from, Tz::UTC).unwrap().timestamp(),
            from.timestamp() + 1
        );
    }

    #[test]
    fn weekdays_are_monday_to_friday() {
        // 2026-11-23 is a Monday. The cron crate would read 1-5 as Sunday..Thursday.
        assert_eq!(
            next_n("0 2 * * 1-5", "UTC", "2026-11-21T12:00:00Z", 5),
            [
                "2026-11-23T02:00:00+00:00",
                "2026-11-24T02:00:00+00:00",
                "2026-11-25T02:00:00+00:00",
                "2026-11-26T02:00:00+00:00",
                "2026-11-27T02:00:00+00:00"
            ]
        );
        assert_eq!(
            next_n("0 2 * * MON-FRI", "UTC", "2026-11-21T12:00:00Z", 5),
            next_n("0 2 * * 1-5", "UTC", "2026-11-21T12:00:00Z", 5)
        );
    }

    #[test]
    fn sunday_is_0_and_7() {
        let a = next_n("0 0 * * 0", "UTC", "2026-11-24T00:00:00Z", 3);
        assert_eq!(a, next_n("0 0 * * 7", "UTC", "2026-11-24T00:00:00Z", 3));
        assert_eq!(a, next_n("0 0 * * sun", "UTC", "2026-11-24T00:00:00Z", 3));
        assert_eq!(a[0], "2026-11-29T00:00:00+00:00");
        // 5-7 is Friday, Saturday, Sunday
        assert_eq!(
            next_n("0 0 * * 5-7", "UTC", "2026-11-24T00:00:00Z", 4),
            [
                "2026-11-27T00:00:00+00:00",
                "2026-11-28T00:00:00+00:00",
                "2026-11-29T00:00:00+00:00",
                "2026-12-04T00:00:00+00:00"
            ]
        );
    }

    #[test]
    fn dom_and_dow_restricted_means_either() {
        // the 1st and 15th of the month, and every Friday (Vixie cron)
        assert_eq!(
            next_n("0 0 1,15 * 5", "UTC", "2026-11-24T00:00:00Z", 4),
            [
                "2026-11-27T00:00:00+00:00", // Friday
                "2026-12-01T00:00:00+00:00", // 1st, a Tuesday
                "2026-12-04T00:00:00+00:00", // Friday
                "2026-12-11T00:00:00+00:00"  // Friday
            ]
        );
        // only one restricted: plain AND with the star
        assert_eq!(
            next_n("0 0 13 * *", "UTC", "2026-11-24T00:00:00Z", 1),
            ["2026-12-13T00:00:00+00:00"]
        );
        // Vixie's quirk: a field starting with `*` is unrestricted, so AND
        assert_eq!(
            next_n("0 0 */2 * 5", "UTC", "2026-11-24T00:00:00Z", 2),
            ["2026-11-27T00:00:00+00:00", "2026-12-11T00:00:00+00:00"]
        );
    }

    #[test]
    fn ranges_steps_names_macros() {
        assert_eq!(
            next_n("0 9-17/4 * * *", "UTC", "2026-01-01T00:00:00Z", 4),
            [
                "2026-01-01T09:00:00+00:00",
                "2026-01-01T13:00:00+00:00",
                "2026-01-01T17:00:00+00:00",
                "2026-01-02T09:00:00+00:00"
            ]
        );
        assert_eq!(
            next_n("30 5/20 * * * *", "UTC", "2026-01-01T00:00:00Z", 3),
            [
                "2026-01-01T00:05:30+00:00",
                "2026-01-01T00:25:30+00:00",
                "2026-01-01T00:45:30+00:00"
            ]
        );
        assert_eq!(
            next_n("0 0 1 feb,Aug *", "UTC", "2026-01-01T00:00:00Z", 2),
            ["2026-02-01T00:00:00+00:00", "2026-08-01T00:00:00+00:00"]
        );
        assert_eq!(
            next_n("@yearly", "UTC", "2026-03-01T00:00:00Z", 1),
            ["2027-01-01T00:00:00+00:00"]
        );
        assert_eq!(
            next_n("@weekly", "UTC", "2026-11-24T00:00:00Z", 1),
            ["2026-11-29T00:00:00+00:00"]
        );
        assert_eq!(
            next_n("@hourly", "UTC", "2026-11-24T00:00:00Z", 1),
            ["2026-11-24T01:00:00+00:00"]
        );
        assert_eq!(
            next_n("@daily", "Asia/Shanghai", "2026-11-24T00:00:00Z", 1),
            ["2026-11-25T00:00:00+08:00"]
        );
        assert_eq!(
            next_n("0 0 29 2 *", "UTC", "2026-01-01T00:00:00Z", 1),
            ["2028-02-29T00:00:00+00:00"]
        );
    }

    #[test]
    fn every_is_real_seconds_aligned_to_epoch() {
        assert_eq!(
            next_n("@every 2m30s", "UTC", "2026-01-01T00:00:01Z", 3),
            [
                "2026-01-01T00:02:30+00:00",
                "2026-01-01T00:05:00+00:00",
                "2026-01-01T00:07:30+00:00"
            ]
        );
        // across the New York fall-back: every 30 real minutes, no gap, no burst
        assert_eq!(
            next_n(
                "@every 30m",
                "America/New_York",
                "2026-11-01T00:50:00-04:00",
                5
            ),
            [
                "2026-11-01T01:00:00-04:00",
                "2026-11-01T01:30:00-04:00",
                "2026-11-01T01:00:00-05:00",
                "2026-11-01T01:30:00-05:00",
                "2026-11-01T02:00:00-05:00"
            ]
        );
    }

    #[test]
    fn invalid_specs_are_rejected() {
        for (bad, why) in [
            ("61 * * * *", "out of range"),
            ("*/0 * * * *", "step of 0"),
            ("* * * *", "found 4"),
            ("", "empty"),
            ("* * * * * * *", "found 7"),
            ("0 0 30 2 *", "never fires"),
            ("0 0 * * 8", "out of range"),
            ("0 0 0 * *", "out of range"),
            ("0 0 * 13 *", "out of range"),
            ("0 24 * * *", "out of range"),
            ("5-1 * * * *", "backwards"),
            ("a * * * *", "not a number"),
            ("1,,2 * * * *", "empty item"),
            ("@every 0s", "at least"),
            ("@every", "one duration"),
            ("@every 5x", "duration"),
            ("@fortnightly", "unknown shorthand"),
            ("@reboot", "not supported"),
            ("@daily 5", "no further"),
        ] {
            let e = Schedule::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn dst_new_york_spring_forward_fixed_time_runs_once_after_gap() {
        // 2026-03-08 02:00 EST -> 03:00 EDT: 02:30 does not exist.
        assert_eq!(
            next_n(
                "30 2 * * *",
                "America/New_York",
                "2026-03-07T00:00:00-05:00",
                3
            ),
            [
                "2026-03-07T02:30:00-05:00",
                "2026-03-08T03:00:00-04:00",
                "2026-03-09T02:30:00-04:00"
            ]
        );
        // 01:59:59 still exists and 03:00:00 is normal
        assert_eq!(
            next_n(
                "0 3 * * *",
                "America/New_York",
                "2026-03-08T00:00:00-05:00",
                1
            ),
            ["2026-03-08T03:00:00-04:00"]
        );
    }

    #[test]
    fn dst_new_york_fall_back_fixed_time_runs_first_time_only() {
        // 2026-11-01 02:00 EDT -> 01:00 EST: 01:30 occurs twice.
        assert_eq!(
            next_n(
                "30 1 * * *",
                "America/New_York",
                "2026-10-31T12:00:00-04:00",
                3
            ),
            [
                "2026-11-01T01:30:00-04:00",
                "2026-11-02T01:30:00-05:00",
                "2026-11-03T01:30:00-05:00"
            ]
        );
        // asked from inside the second pass: not fired again that day
        assert_eq!(
            next_n(
                "30 1 * * *",
                "America/New_York",
                "2026-11-01T01:10:00-05:00",
                1
            ),
            ["2026-11-02T01:30:00-05:00"]
        );
    }

    #[test]
    fn dst_every_second_cron_keeps_real_time() {
        // spring forward: 01:59:59 EST is followed one real second later by 03:00:00 EDT
        assert_eq!(
            next_n(
                "* * * * * *",
                "America/New_York",
                "2026-03-08T01:59:58-05:00",
                3
            ),
            [
                "2026-03-08T01:59:59-05:00",
                "2026-03-08T03:00:00-04:00",
                "2026-03-08T03:00:01-04:00"
            ]
        );
        // fall back: 01:59:59 EDT then 01:00:00 EST, one real second apart
        assert_eq!(
            next_n(
                "* * * * * *",
                "America/New_York",
                "2026-11-01T01:59:58-04:00",
                3
            ),
            [
                "2026-11-01T01:59:59-04:00",
                "2026-11-01T01:00:00-05:00",
                "2026-11-01T01:00:01-05:00"
            ]
        );
        // every 15 minutes through the fold: both passes run
        assert_eq!(
            next_n(
                "*/30 * * * *",
                "America/New_York",
                "2026-11-01T00:45:00-04:00",
                5
            ),
            [
                "2026-11-01T01:00:00-04:00",
                "2026-11-01T01:30:00-04:00",
                "2026-11-01T01:00:00-05:00",
                "2026-11-01T01:30:00-05:00",
                "2026-11-01T02:00:00-05:00"
            ]
        );
        // an hourly job skips the hour that does not exist (no extra run)
        assert_eq!(
            next_n(
                "30 * * * *",
                "America/New_York",
                "2026-03-08T01:00:00-05:00",
                3
            ),
            [
                "2026-03-08T01:30:00-05:00",
                "2026-03-08T03:30:00-04:00",
                "2026-03-08T04:30:00-04:00"
            ]
        );
    }

    #[test]
    fn dst_london() {
        // 2026-03-29 01:00 GMT -> 02:00 BST; 2026-10-25 02:00 BST -> 01:00 GMT
        assert_eq!(
            next_n("15 1 * * *", "Europe/London", "2026-03-28T12:00:00Z", 3),
            [
                "2026-03-29T02:00:00+01:00",
                "2026-03-30T01:15:00+01:00",
                "2026-03-31T01:15:00+01:00"
            ]
        );
        assert_eq!(
            next_n("15 1 * * *", "Europe/London", "2026-10-24T12:00:00Z", 2),
            ["2026-10-25T01:15:00+01:00", "2026-10-26T01:15:00+00:00"]
        );
        assert_eq!(
            next_n(
                "0 */20 * * * *",
                "Europe/London",
                "2026-10-25T01:30:00+01:00",
                4
            ),
            [
                "2026-10-25T01:40:00+01:00",
                "2026-10-25T01:00:00+00:00",
                "2026-10-25T01:20:00+00:00",
                "2026-10-25T01:40:00+00:00"
            ]
        );
    }
}
