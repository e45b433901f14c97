//! What `keyhole owner check` found: one line per check, `ok` or `FAIL` and why, then the
//! latency percentiles. It names references by their path and never holds a released body, a
//! refusal's body or the token.

use std::fmt;
use std::time::Duration;

/// The checks, by the name the report prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// A reference's answer is the decision its fixture expects, as keyhole classifies it.
    Answer,
    /// A released answer carries a `Content-Type`, the expected one if the fixture names it.
    ContentType,
    /// A refusal (401, 403, 404, 410, 451) carries no data.
    RefusalBody,
    /// A reference the owner cannot know answers 404.
    UnknownReference,
    /// A request without the token answers 401.
    WithoutToken,
    /// A reference asked for another handler version gets a decision, not a failure.
    OtherVersion,
    /// A `Retry-After` on 408, 429 or 5xx is delta-seconds or an HTTP-date.
    RetryAfter,
    /// The released references stay released over the latency rounds.
    Repeat,
    /// A batch answer is readable, and gives each reference the decision it got alone.
    BatchAnswer,
    /// A batch without the token answers 401 as a whole.
    BatchWithoutToken,
}

impl Check {
    /// The name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Check::Answer => "answer",
            Check::ContentType => "content-type",
            Check::RefusalBody => "refusal-body",
            Check::UnknownReference => "unknown-reference",
            Check::WithoutToken => "without-token",
            Check::OtherVersion => "other-version",
            Check::RetryAfter => "retry-after",
            Check::Repeat => "repeat",
            Check::BatchAnswer => "batch-answer",
            Check::BatchWithoutToken => "batch-without-token",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// Which check.
    pub check: Check,
    /// Whether the owner passed it.
    pub passed: bool,
    /// What was asked and answered; for a failure, what was expected and what was received.
    pub text: String,
}

/// Latency percentiles over the answers of the rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latency {
    /// How many requests were timed.
    pub requests: usize,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// The slowest.
    pub max: Duration,
}

impl Latency {
    /// Nearest-rank percentiles of `samples`; None when there are none.
    pub fn of(samples: &[Duration]) -> Option<Latency> {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let rank = |percent: usize| {
            // The smallest sample with at least `percent`% of all samples at or below it.
            let index = (sorted.len() * percent).div_ceil(100).saturating_sub(1);
            sorted.get(index).copied()
        };
        Some(Latency {
            requests: sorted.len(),
            p50: rank(50)?,
            p90: rank(90)?,
            p99: rank(99)?,
            max: *sorted.last()?,
        })
    }
}

/// The whole report.
#[derive(Clone, Debug)]
pub struct Report {
    /// What was checked: the base URL and who asked.
    pub title: String,
    /// The checks' lines, in the order they ran.
    pub lines: Vec<Line>,
    /// How many rounds of how many released references were timed.
    pub rounds: (u32, usize),
    /// The percentiles, when any answer was timed.
    pub latency: Option<Latency>,
}

impl Report {
    /// How many lines failed.
    pub fn violations(&self) -> usize {
        self.lines.iter().filter(|line| !line.passed).count()
    }

    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.violations() == 0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.title)?;
        writeln!(f)?;
        for line in &self.lines {
            let verdict = if line.passed { "ok" } else { "FAIL" };
            writeln!(f, "{verdict:<5} {:<19} {}", line.check.name(), line.text)?;
        }
        let (rounds, references) = self.rounds;
        match &self.latency {
            Some(latency) => writeln!(
                f,
                "latency  {} requests ({rounds} rounds of {references} released reference{}): p50 {}, p90 {}, p99 \
                 {}, max {}",
                latency.requests,
                if references == 1 { "" } else { "s" },
                millis(latency.p50),
                millis(latency.p90),
                millis(latency.p99),
                millis(latency.max),
            )?,
            None if references == 0 => {
                writeln!(f, "latency  not measured: no reference is expected to be released")?
            }
            None if rounds == 0 => writeln!(f, "latency  not measured (--repeat 0)")?,
            None => writeln!(f, "latency  not measured: no request of the rounds was answered")?,
        }
        writeln!(f)?;
        match self.violations() {
            0 => writeln!(f, "passed: every check"),
            1 => writeln!(f, "FAILED: 1 violation"),
            n => writeln!(f, "FAILED: {n} violations"),
        }
    }
}

fn millis(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::{Check, Latency, Line, Report};
    use std::time::Duration;

    fn ms(values: impl IntoIterator<Item = u64>) -> Vec<Duration> {
        values.into_iter().map(Duration::from_millis).collect()
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let latency = Latency::of(&ms((1..=100).rev())).unwrap();
        assert_eq!(latency.requests, 100);
        assert_eq!(latency.p50, Duration::from_millis(50));
        assert_eq!(latency.p90, Duration::from_millis(90));
        assert_eq!(latency.p99, Duration::from_millis(99));
        assert_eq!(latency.max, Duration::from_millis(100));

        let few = Latency::of(&ms([30, 10, 20])).unwrap();
        assert_eq!(
            (few.p50, few.p90, few.p99, few.max),
            (
                Duration::from_millis(20),
                Duration::from_millis(30),
                Duration::from_millis(30),
                Duration::from_millis(30)
            )
        );
        let one = Latency::of(&ms([7])).unwrap();
        assert_eq!((one.p50, one.max), (Duration::from_millis(7), Duration::from_millis(7)));
        assert_eq!(Latency::of(&[]), None);
    }

    #[test]
    fn the_report_says_ok_or_fail_per_line_and_counts_violations() {
        let report = Report {
            title: "keyhole owner check".into(),
            lines: vec![
                Line {
                    check: Check::Answer,
                    passed: true,
                    text: "customers/42: released as expected".into(),
                },
                Line { check: Check::WithoutToken, passed: false, text: "customers/42: expected 401".into() },
            ],
            rounds: (2, 1),
            latency: Latency::of(&ms([1, 2])),
        };
        let shown = report.to_string();
        assert!(
            shown.contains("\nok    answer              customers/42: released as expected\n"),
            "{shown}"
        );
        assert!(shown.contains("\nFAIL  without-token       customers/42: expected 401\n"), "{shown}");
        assert!(
            shown.contains("latency  2 requests (2 rounds of 1 released reference): p50 1.0 ms, p90 2.0 ms"),
            "{shown}"
        );
        assert!(shown.ends_with("FAILED: 1 violation\n"), "{shown}");
        assert_eq!(report.violations(), 1);
    }
}
