//! Cron schedules as CronJobs write them: the standard five fields
//! (minute, hour, day of month, month, day of week) with `*`, `?`, lists,
//! ranges, steps and month/day names, plus the `@yearly` … `@hourly`
//! descriptors. Shared by the API server (which refuses a schedule that
//! does not parse, naming `spec.schedule`) and the CronJob controller
//! (which asks for the times between two instants, in a time zone).
//!
//! Day of month and day of week combine as cron always has: when both are
//! restricted a day matching either runs; when one is `*` the other decides.

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// A schedule that does not parse; the text is what the API server shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// A parsed five-field schedule: one bit per allowed value of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u32,
    dom: u32,
    months: u16,
    dow: u8,
    /// Day of month or day of week began with `*` / `?`: the two then
    /// combine with AND instead of OR.
    dom_star: bool,
    dow_star: bool,
}

const MONTHS: &[&str] = &[
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// How far ahead a schedule is searched: a schedule with no time in eight
/// years (`0 0 30 2 *`) has none at all.
const HORIZON_DAYS: i32 = 366 * 8;

fn field(
    text: &str,
    min: u32,
    max: u32,
    names: &[&str],
    name_base: u32,
) -> Result<u64, ParseError> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| ParseError(format!("failed to parse int from {s}")))?;
                if step == 0 {
                    return Err(ParseError(format!(
                        "step of range should be a positive number: {part}"
                    )));
                }
                (r, Some(step))
            }
            None => (part, None),
        };
        let value = |s: &str| -> Result<u32, ParseError> {
            if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
                return Ok(i as u32 + name_base);
            }
            s.parse::<u32>()
                .map_err(|_| ParseError(format!("failed to parse int from {s}")))
        };
        let (lo, hi) = if range == "*" || range == "?" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            // "5/10" runs from 5 to the end, as in cron.
            (v, if step.is_some() { max } else { v })
        };
        if lo < min {
            return Err(ParseError(format!(
                "beginning of range ({lo}) below minimum ({min}): {part}"
            )));
        }
        if hi > max {
            return Err(ParseError(format!(
                "end of range ({hi}) above maximum ({max}): {part}"
            )));
        }
        if lo > hi {
            return Err(ParseError(format!(
                "beginning of range ({lo}) beyond end of range ({hi}): {part}"
            )));
        }
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

impl Schedule {
    /// Parses a schedule (`*/5 * * * *`, `0 3 * * mon-fri`, `@daily`).
    pub fn parse(spec: &str) -> Result<Schedule, ParseError> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(ParseError("empty spec string".into()));
        }
        let expanded = match spec.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *".to_string(),
            "@monthly" => "0 0 1 * *".to_string(),
            "@weekly" => "0 0 * * 0".to_string(),
            "@daily" | "@midnight" => "0 0 * * *".to_string(),
            "@hourly" => "0 * * * *".to_string(),
            s if s.starts_with('@') => {
                return Err(ParseError(format!("unrecognized descriptor: {spec}")));
            }
            _ => spec.to_string(),
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(ParseError(format!(
                "expected exactly 5 fields, found {}: [{}]",
                fields.len(),
                fields.join(" ")
            )));
        }
        let star = |f: &str| f.starts_with('*') || f.starts_with('?');
        let mut dow = field(fields[4], 0, 7, DAYS, 0)?;
        // 7 is Sunday too.
        if dow & (1 << 7) != 0 {
            dow = (dow | 1) & 0x7f;
        }
        Ok(Schedule {
            minutes: field(fields[0], 0, 59, &[], 0)?,
            hours: field(fields[1], 0, 23, &[], 0)? as u32,
            dom: field(fields[2], 1, 31, &[], 0)? as u32,
            months: field(fields[3], 1, 12, MONTHS, 1)? as u16,
            dow: dow as u8,
            dom_star: star(fields[2]),
            dow_star: star(fields[4]),
        })
    }

    fn day_matches(&self, d: Date) -> bool {
        if self.months & (1 << d.month()) == 0 {
            return false;
        }
        let dom = self.dom & (1 << d.day()) != 0;
        let dow = self.dow & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first scheduled time strictly after `after`, in `tz`'s wall
    /// clock (a time skipped by a DST jump runs at the instant after it);
    /// None if the schedule never fires.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = tz.to_datetime(after);
        let mut day = start.date();
        for _ in 0..HORIZON_DAYS {
            if self.day_matches(day) {
                for h in 0..24i8 {
                    if self.hours & (1 << h) == 0 {
                        continue;
                    }
                    for m in 0..60i8 {
                        if self.minutes & (1 << m) == 0 {
                            continue;
                        }
                        let dt = DateTime::from_parts(day, jiff::civil::time(h, m, 0, 0));
                        if day == start.date() && (h, m) < (start.hour(), start.minute()) {
                            continue;
                        }
                        if let Ok(ts) = tz.to_ambiguous_timestamp(dt).compatible()
                            && ts > after
                        {
                            return Some(ts);
                        }
                    }
                }
            }
            day = day.checked_add(1.day()).ok()?;
        }
        None
    }

    /// Every scheduled time in `(after, until]`, oldest first, at most
    /// `limit` of them (the caller treats more as "too many missed").
    pub fn times_between(
        &self,
        after: Timestamp,
        until: Timestamp,
        tz: &TimeZone,
        limit: usize,
    ) -> Vec<Timestamp> {
        let mut out = Vec::new();
        let mut t = after;
        while out.len() < limit {
            match self.next_after(t, tz) {
                Some(n) if n <= until => {
                    out.push(n);
                    t = n;
                }
                _ => break,
            }
        }
        out
    }
}

/// The time zone of a CronJob's `spec.timeZone` (UTC when unset), or Err
/// with the API server's wording when the name is unknown.
pub fn time_zone(name: Option<&str>) -> Result<TimeZone, ParseError> {
    match name {
        None | Some("") | Some("UTC") | Some("Etc/UTC") => Ok(TimeZone::UTC),
        Some(n) if n.eq_ignore_ascii_case("local") => {
            Err(ParseError(format!("unknown time zone {n}")))
        }
        Some(n) => TimeZone::get(n).map_err(|_| ParseError(format!("unknown time zone {n}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn parses_fields_names_steps_and_descriptors() {
        let s = Schedule::parse("*/15 9-17 * jan-mar mon-fri").unwrap();
        assert_eq!(s.minutes, (1 << 0) | (1 << 15) | (1 << 30) | (1 << 45));
        assert_eq!(s.months, 0b1110);
        assert_eq!(s.dow, 0b011_1110);
        assert_eq!(
            Schedule::parse("@hourly").unwrap(),
            Schedule::parse("0 * * * *").unwrap()
        );
        assert_eq!(Schedule::parse("0 0 * * 7").unwrap().dow, 1);
        assert_eq!(
            Schedule::parse("5/20 * * * *").unwrap().minutes,
            (1 << 5) | (1 << 25) | (1 << 45)
        );
        for bad in [
            "",
            "* * * *",
            "61 * * * *",
            "* * * * * *",
            "a * * * *",
            "@fortnightly",
            "5-1 * * * *",
            "*/0 * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad:?} must not parse");
        }
        assert_eq!(
            Schedule::parse("* * *").unwrap_err().0,
            "expected exactly 5 fields, found 3: [* * *]"
        );
    }

    #[test]
    fn next_times_in_utc_and_zones() {
        let utc = TimeZone::UTC;
        let every = Schedule::parse("* * * * *").unwrap();
        assert_eq!(
            every.next_after(ts("2025-01-01T10:00:00Z"), &utc),
            Some(ts("2025-01-01T10:01:00Z"))
        );
        assert_eq!(
            every.next_after(ts("2025-01-01T10:00:30Z"), &utc),
            Some(ts("2025-01-01T10:01:00Z"))
        );
        let daily = Schedule::parse("@daily").unwrap();
        assert_eq!(
            daily.next_after(ts("2025-01-31T23:59:59Z"), &utc),
            Some(ts("2025-02-01T00:00:00Z"))
        );
        // Day of month OR day of week when both are restricted.
        let either = Schedule::parse("0 0 13 * fri").unwrap();
        assert_eq!(
            either.next_after(ts("2025-06-01T00:00:00Z"), &utc),
            Some(ts("2025-06-06T00:00:00Z"))
        );
        assert_eq!(
            either.next_after(ts("2025-06-06T00:00:00Z"), &utc),
            Some(ts("2025-06-13T00:00:00Z"))
        );
        assert_eq!(
            Schedule::parse("0 0 30 2 *")
                .unwrap()
                .next_after(ts("2025-01-01T00:00:00Z"), &utc),
            None
        );
        let berlin = time_zone(Some("Europe/Berlin")).unwrap();
        let nine = Schedule::parse("0 9 * * *").unwrap();
        assert_eq!(
            nine.next_after(ts("2025-01-01T00:00:00Z"), &berlin),
            Some(ts("2025-01-01T08:00:00Z"))
        );
        assert_eq!(
            nine.next_after(ts("2025-07-01T00:00:00Z"), &berlin),
            Some(ts("2025-07-01T07:00:00Z"))
        );
        assert!(time_zone(Some("Mars/Olympus")).is_err());
    }

    #[test]
    fn times_between_lists_missed_runs() {
        let s = Schedule::parse("*/10 * * * *").unwrap();
        let got = s.times_between(
            ts("2025-01-01T10:00:00Z"),
            ts("2025-01-01T10:35:00Z"),
            &TimeZone::UTC,
            100,
        );
        assert_eq!(
            got,
            vec![
                ts("2025-01-01T10:10:00Z"),
                ts("2025-01-01T10:20:00Z"),
                ts("2025-01-01T10:30:00Z")
            ]
        );
        assert_eq!(
            s.times_between(
                ts("2025-01-01T10:00:00Z"),
                ts("2025-01-02T10:00:00Z"),
                &TimeZone::UTC,
                5
            )
            .len(),
            5
        );
    }
}
