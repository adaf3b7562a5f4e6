//! Cron schedules of routine cycles: when the next one is due, and whether one was missed.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use croner::Cron;

/// Parses a 5-field cron expression.
pub fn parse_cron(text: &str) -> Result<Cron, String> {
    if text.split_whitespace().count() != 5 {
        return Err(format!("{} fields", text.split_whitespace().count()));
    }
    Cron::from_str(text).map_err(|e| e.to_string())
}

/// A set of cron schedules (UTC).
#[derive(Debug, Clone, Default)]
pub struct Schedules {
    crons: Vec<Cron>,
}

impl Schedules {
    /// Schedules from validated expressions (invalid ones, which config validation rejects,
    /// are left out).
    pub fn new(expressions: &[String]) -> Self {
        Self {
            crons: expressions
                .iter()
                .filter_map(|e| parse_cron(e).ok())
                .collect(),
        }
    }

    /// The first time strictly after `after` that any schedule fires.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.crons
            .iter()
            .filter_map(|c| c.find_next_occurrence(&after, false).ok())
            .min()
    }

    /// Whether a schedule fired in `(last, now]`: a run missed while dockgc was stopped.
    pub fn missed(&self, last: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        self.next_after(last).is_some_and(|next| next <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn next_and_missed() {
        let s = Schedules::new(&["0 2 * * *".into(), "30 14 * * 1".into()]);
        assert_eq!(
            s.next_after(at("2026-12-04T01:00:00Z")),
            Some(at("2026-12-04T02:00:00Z"))
        );
        assert_eq!(
            s.next_after(at("2026-12-04T02:00:00Z")),
            Some(at("2026-12-05T02:00:00Z"))
        );
        // 2026-12-07 is a Monday.
        assert_eq!(
            s.next_after(at("2026-12-07T03:00:00Z")),
            Some(at("2026-12-07T14:30:00Z"))
        );
        assert!(s.missed(at("2026-12-03T03:00:00Z"), at("2026-12-04T02:00:01Z")));
        assert!(!s.missed(at("2026-12-04T02:00:00Z"), at("2026-12-04T12:00:00Z")));
    }

    #[test]
    fn only_five_fields() {
        assert!(parse_cron("0 2 * * *").is_ok());
        assert!(parse_cron("0 0 2 * * *").is_err());
        assert!(parse_cron("61 2 * * *").is_err());
    }
}
