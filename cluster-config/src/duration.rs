//! The duration syntax of the cluster file: a whole number followed by a unit, `100ms`, `2s`,
//! `1m`.
//!
//! Deliberately small and strict: no fractions, no spaces, no signs, no compound forms such as
//! `1m30s`, and a bare number is refused because `heartbeat: 100` could mean 100 ms or 100 s.

use std::time::Duration;

/// Parses `text` as `<digits><unit>` with unit `ms`, `s` or `m`.
///
/// The error is a lower-case sentence naming the text.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let digits_end = text
        .find(|character: char| !character.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!(
            "{text:?} is not a duration; write a whole number and a unit, e.g. 100ms, 2s or 1m"
        ));
    }
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "" => {
            return Err(format!(
                "{text:?} has no unit; write e.g. {digits}ms or {digits}s"
            ));
        }
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit {unit:?}; use ms, s or m with a whole number"
            ));
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|count| count.checked_mul(millis_per_unit))
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long a duration"))
}

/// Formats a duration the way the cluster file writes it, in the largest exact unit.
pub(crate) fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis != 0 && millis % 60_000 == 0 {
        format!("{}m", millis / 60_000)
    } else if millis != 0 && millis % 1_000 == 0 {
        format!("{}s", millis / 1_000)
    } else {
        format!("{millis}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms() {
        let table: &[(&str, u64)] = &[
            ("0ms", 0),
            ("1ms", 1),
            ("100ms", 100),
            ("250ms", 250),
            ("1500ms", 1_500),
            ("0s", 0),
            ("2s", 2_000),
            ("007s", 7_000),
            ("1m", 60_000),
            ("90m", 5_400_000),
        ];
        for (text, millis) in table {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(*millis)),
                "{text}"
            );
        }
    }

    #[test]
    fn refused_forms() {
        let table: &[(&str, &str)] = &[
            ("", "is not a duration"),
            ("ms", "is not a duration"),
            ("-1s", "is not a duration"),
            ("+1s", "is not a duration"),
            (" 1s", "is not a duration"),
            ("100", "has no unit; write e.g. 100ms or 100s"),
            ("1.5s", "unknown unit \".5s\""),
            ("1 s", "unknown unit \" s\""),
            ("1s ", "unknown unit \"s \""),
            ("2S", "unknown unit \"S\""),
            ("1h", "unknown unit \"h\""),
            ("1us", "unknown unit \"us\""),
            ("1m30s", "unknown unit \"m30s\""),
            ("1sec", "unknown unit \"sec\""),
            ("99999999999999999999ms", "is too long a duration"),
            ("18446744073709551615m", "is too long a duration"),
        ];
        for (text, expected) in table {
            let error = parse_duration(text).expect_err(text);
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn formatting_round_trips() {
        for text in ["0ms", "100ms", "1500ms", "2s", "1m", "61s"] {
            let duration = parse_duration(text).unwrap();
            assert_eq!(format_duration(duration), text);
        }
    }
}
