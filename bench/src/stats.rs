//! Median, minimum and maximum of repeated measurements, rounded so that JSON
//! carries no float noise.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Several runs of one measurement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

/// Rounds to three decimals (microseconds when the unit is ms).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Summary {
    /// `None` for no values. The median of an even count is the mean of the two
    /// middle values.
    pub fn of(values: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Summary {
            median: round3(median),
            min: round3(v[0]),
            max: round3(v[n - 1]),
            runs: n,
        })
    }

    /// Durations in milliseconds.
    pub fn of_durations(d: &[Duration]) -> Option<Summary> {
        let ms: Vec<f64> = d.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        Summary::of(&ms)
    }
}

/// `a / b`, rounded to two decimals; `None` when `b` is not positive.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| (a / b * 100.0).round() / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_and_even_medians() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).expect("values");
        assert_eq!((s.median, s.min, s.max, s.runs), (2.0, 1.0, 3.0, 3));
        let s = Summary::of(&[4.0, 1.0, 2.0, 3.0]).expect("values");
        assert_eq!(s.median, 2.5);
    }

    #[test]
    fn no_values_no_summary_and_nan_is_ignored() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[f64::NAN]), None);
        assert_eq!(Summary::of(&[f64::NAN, 1.0]).map(|s| s.runs), Some(1));
    }

    #[test]
    fn figures_carry_no_float_noise() {
        let s = Summary::of(&[0.993_846_999_999_999_9]).expect("value");
        assert_eq!(serde_json::to_string(&s.median).expect("json"), "0.994");
        assert_eq!(ratio(1.0, 3.0), Some(0.33));
        assert_eq!(ratio(1.0, 0.0), None);
    }

    #[test]
    fn durations_are_milliseconds() {
        let s = Summary::of_durations(&[Duration::from_micros(1500)]).expect("value");
        assert_eq!(s.median, 1.5);
    }
}
