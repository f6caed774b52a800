//! Civil time without a clock: the engine is handed the instant of a call and derives the
//! hour, weekday and RFC 3339 text from it in the operator's fixed UTC offset.

use std::fmt;

/// A UTC offset in minutes, east positive, as the operator configured it (`+02:00`, `UTC`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UtcOffset {
    minutes: i32,
}

impl UtcOffset {
    pub const UTC: Self = Self { minutes: 0 };

    /// Parses `UTC`, `Z`, `+HH:MM` or `-HH:MM`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("utc") || text == "Z" {
            return Ok(Self::UTC);
        }
        let bad = || format!("expected `UTC` or an offset such as `+02:00`, not `{text}`");
        let (sign, rest) = match text.as_bytes().first() {
            Some(b'+') => (1, text.get(1..).unwrap_or_default()),
            Some(b'-') => (-1, text.get(1..).unwrap_or_default()),
            _ => return Err(bad()),
        };
        let (hours, minutes) = rest.split_once(':').ok_or_else(bad)?;
        let hours: i32 = hours.parse().map_err(|_| bad())?;
        let minutes: i32 = minutes.parse().map_err(|_| bad())?;
        if !(0..=14).contains(&hours) || !(0..60).contains(&minutes) {
            return Err(bad());
        }
        Ok(Self {
            minutes: sign * (hours * 60 + minutes),
        })
    }

    pub fn minutes(self) -> i32 {
        self.minutes
    }

    /// The offset of `minutes` east of UTC, within the ±14 hours civil time uses.
    pub fn from_minutes(minutes: i32) -> Result<Self, String> {
        if (-14 * 60..=14 * 60).contains(&minutes) {
            Ok(Self { minutes })
        } else {
            Err(format!("an offset within ±14 hours, not {minutes} minutes"))
        }
    }
}

impl fmt::Display for UtcOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.minutes == 0 {
            return f.write_str("+00:00");
        }
        let sign = if self.minutes < 0 { '-' } else { '+' };
        let m = self.minutes.abs();
        write!(f, "{sign}{:02}:{:02}", m / 60, m % 60)
    }
}

/// One instant seen in the configured offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime {
    /// Seconds since the Unix epoch (UTC).
    pub unix: i64,
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    /// 0 = Monday … 6 = Sunday.
    pub weekday: u32,
    pub offset: UtcOffset,
}

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl LocalTime {
    pub fn at(unix: i64, offset: UtcOffset) -> Self {
        let local = unix + i64::from(offset.minutes) * 60;
        let days = local.div_euclid(86_400);
        let secs = local.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        Self {
            unix,
            year,
            month,
            day,
            hour: (secs / 3600) as u32,
            minute: (secs % 3600 / 60) as u32,
            second: (secs % 60) as u32,
            // 1970-01-01 was a Thursday.
            weekday: (days + 3).rem_euclid(7) as u32,
            offset,
        }
    }

    /// `mon` … `sun`.
    pub fn weekday_name(&self) -> &'static str {
        WEEKDAYS
            .get(self.weekday as usize)
            .copied()
            .unwrap_or("mon")
    }

    /// RFC 3339 with the offset, as Cedar's `datetime` accepts it.
    pub fn rfc3339(&self) -> String {
        let offset = self.offset.to_string();
        let offset = if offset == "+00:00" {
            "Z".to_owned()
        } else {
            offset.replace(':', "")
        };
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{offset}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `unix` as RFC 3339 in UTC, for messages.
pub fn utc_text(unix: i64) -> String {
    LocalTime::at(unix, UtcOffset::UTC).rfc3339()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        let t = LocalTime::at(0, UtcOffset::UTC);
        assert_eq!(t.rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(t.weekday_name(), "thu");
        // 2026-11-27T23:56:15Z is a Friday.
        let t = LocalTime::at(1_795_823_775, UtcOffset::UTC);
        assert_eq!(t.rfc3339(), "2026-11-27T23:56:15Z");
        assert_eq!(t.weekday_name(), "fri");
        let plus2 = UtcOffset::parse("+02:00").unwrap();
        let t = LocalTime::at(1_795_823_775, plus2);
        assert_eq!(t.rfc3339(), "2026-11-28T01:56:15+0200");
        assert_eq!((t.hour, t.weekday_name()), (1, "sat"));
        let t = LocalTime::at(951_782_400, UtcOffset::UTC);
        assert_eq!((t.year, t.month, t.day), (2000, 2, 29));
    }

    #[test]
    fn offsets_parse_strictly() {
        assert_eq!(UtcOffset::parse("UTC").unwrap(), UtcOffset::UTC);
        assert_eq!(UtcOffset::parse("-05:30").unwrap().minutes(), -330);
        for bad in ["", "+2", "02:00", "+25:00", "+01:61", "Europe/Paris"] {
            assert!(UtcOffset::parse(bad).is_err(), "{bad}");
        }
    }
}
