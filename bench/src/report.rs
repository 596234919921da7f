//! The Markdown tables: one column per server, absolute figures, and the
//! ratios of meshd to each of the others. A cell whose run failed says so,
//! and the error is listed under the tables.

use std::fmt::Write;

use crate::latency::Latency;
use crate::memory::Memory;
use crate::slow_consumer::{self, SlowConsumer};
use crate::throughput::Throughput;

/// A scenario's result, or why it has none.
pub type Outcome<T> = Result<T, String>;

/// Repeated runs of one scenario; the tables show their median.
#[derive(Debug, Clone)]
pub struct Runs<T>(pub Vec<T>);

impl<T> Runs<T> {
    /// The median of `pick` over the runs (the mean of the middle two for
    /// an even count); NaN without runs.
    pub fn median(&self, pick: impl Fn(&T) -> f64) -> f64 {
        let mut values: Vec<f64> = self.0.iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        match values.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => values[n / 2],
            n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        }
    }

    /// The smallest and largest of `pick` over the runs.
    pub fn range(&self, pick: impl Fn(&T) -> f64) -> (f64, f64) {
        self.0
            .iter()
            .map(pick)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            })
    }
}

/// Everything measured against one server.
#[derive(Debug, Default)]
pub struct TargetResults {
    /// `meshd`, `nats` or `redis`.
    pub name: &'static str,
    /// One per subscriber count.
    pub throughput: Vec<Outcome<Runs<Throughput>>>,
    /// The latency runs.
    pub latency: Option<Outcome<Runs<Latency>>>,
    /// The slow-consumer run.
    pub slow: Option<Outcome<SlowConsumer>>,
    /// The idle-clients run.
    pub memory: Option<Outcome<Memory>>,
    /// The burst runs, each with its own outcome.
    pub burst: Vec<Outcome<Throughput>>,
}

/// One table cell: the figure ratios are taken of, and its text.
struct Cell {
    value: Option<f64>,
    text: String,
}

impl Cell {
    fn of<T>(result: Option<&Outcome<T>>, figure: impl FnOnce(&T) -> (f64, String)) -> Cell {
        match result {
            Some(Ok(result)) => {
                let (value, text) = figure(result);
                Cell {
                    value: Some(value),
                    text,
                }
            }
            Some(Err(_)) => Cell {
                value: None,
                text: "failed".to_owned(),
            },
            None => Cell {
                value: None,
                text: "-".to_owned(),
            },
        }
    }
}

/// Renders every table; meshd, if present, is compared to the others.
pub fn render(targets: &[TargetResults], subscriber_counts: &[usize]) -> String {
    let mut out = String::new();
    let compared: Vec<&TargetResults> = if targets.iter().any(|t| t.name == "meshd") {
        targets.iter().filter(|t| t.name != "meshd").collect()
    } else {
        Vec::new()
    };

    if targets.iter().any(|t| !t.throughput.is_empty()) {
        let repeats = targets
            .iter()
            .flat_map(|t| &t.throughput)
            .find_map(|runs| runs.as_ref().ok().map(|runs| runs.0.len()))
            .unwrap_or(0);
        let _ = write!(
            out,
            "\n### Delivered messages per second (one publisher, 64-byte messages; median of {repeats} runs, range in brackets)\n\n"
        );
        header(&mut out, "subscribers", targets, &compared);
        for (row, n) in subscriber_counts.iter().enumerate() {
            let cells: Vec<Cell> = targets
                .iter()
                .map(|t| {
                    Cell::of(t.throughput.get(row), |runs| {
                        let median = runs.median(|r| r.per_second);
                        let (lo, hi) = runs.range(|r| r.per_second);
                        let mut text = if runs.0.len() > 1 {
                            format!("{} ({:.2}-{:.2})", rate(median), lo / 1e6, hi / 1e6)
                        } else {
                            rate(median)
                        };
                        // A subscriber cut off would make the rate a lie.
                        let cut: usize = runs.0.iter().map(|r| r.cut).sum();
                        if cut > 0 {
                            let _ = write!(text, ", {cut} subscribers cut");
                        }
                        (median, text)
                    })
                })
                .collect();
            line(
                &mut out,
                &n.to_string(),
                targets,
                &cells,
                &compared,
                Better::Higher,
            );
        }
    }

    if targets.iter().any(|t| t.latency.is_some()) {
        let first = targets
            .iter()
            .find_map(|t| t.latency.as_ref()?.as_ref().ok()?.0.first());
        let (offered, n) = first.map_or((0, 0), |l| (l.offered, l.subscribers));
        let repeats = targets
            .iter()
            .find_map(|t| Some(t.latency.as_ref()?.as_ref().ok()?.0.len()))
            .unwrap_or(0);
        let _ = write!(
            out,
            "\n### Latency at {} msgs/s offered, {n} subscribers (µs, lower is better; median of {repeats} runs)\n\n",
            group_digits(offered)
        );
        header(&mut out, "", targets, &compared);
        type Pick = fn(&Latency) -> f64;
        let rows: [(&str, Pick); 3] = [
            ("p50", |l| l.p50_us),
            ("p99", |l| l.p99_us),
            ("p99.9", |l| l.p999_us),
        ];
        for (label, pick) in rows {
            let cells: Vec<Cell> = targets
                .iter()
                .map(|t| {
                    Cell::of(t.latency.as_ref(), |runs| {
                        let median = runs.median(pick);
                        (median, micros(median))
                    })
                })
                .collect();
            line(&mut out, label, targets, &cells, &compared, Better::Lower);
        }
        let achieved: Vec<Cell> = targets
            .iter()
            .map(|t| {
                Cell::of(t.latency.as_ref(), |runs| {
                    let median = runs.median(|l| l.achieved);
                    (median, rate(median))
                })
            })
            .collect();
        line(
            &mut out,
            "publisher's rate",
            targets,
            &achieved,
            &compared,
            Better::NotCompared,
        );
        let samples: Vec<Cell> = targets
            .iter()
            .map(|t| {
                Cell::of(t.latency.as_ref(), |runs| {
                    let median = runs.median(|l| l.samples as f64);
                    (median, group_digits(median as u64))
                })
            })
            .collect();
        line(
            &mut out,
            "samples per run",
            targets,
            &samples,
            &compared,
            Better::NotCompared,
        );
    }

    if targets.iter().any(|t| t.slow.is_some()) {
        let n = targets
            .iter()
            .find_map(|t| t.slow.as_ref()?.as_ref().ok().map(|s| s.subscribers))
            .unwrap_or(0);
        let _ = write!(
            out,
            "\n### Slow consumer ({n} subscribers, one stops reading; publisher at full rate)\n\n"
        );
        header(&mut out, "", targets, &[]);
        text_line(&mut out, "stalled client closed after", targets, |t| {
            slow_cell(t, |s| match s.cut_off {
                Some(after) => format!("{:.2} s", after.as_secs_f64()),
                None => format!("never within {} s", slow_consumer::WATCH_LIMIT.as_secs()),
            })
        });
        text_line(&mut out, "others' msgs/s meanwhile", targets, |t| {
            slow_cell(t, |s| rate(s.readers_rate))
        });
        text_line(
            &mut out,
            "others' msgs/s, no stalled client",
            targets,
            |t| slow_cell(t, |s| rate(s.yardstick_rate)),
        );
        text_line(&mut out, "meanwhile / without", targets, |t| {
            slow_cell(t, |s| format!("{:.2}", s.readers_rate / s.yardstick_rate))
        });
    }

    if targets.iter().any(|t| !t.burst.is_empty()) {
        let first = targets
            .iter()
            .find_map(|t| t.burst.iter().find_map(|run| run.as_ref().ok()));
        let (n, messages) = first.map_or((0, 0), |b| (b.subscribers, b.published));
        let _ = write!(
            out,
            "\n### Burst ({} messages written at once to {} subscribers, no window; every run listed)\n\n",
            group_digits(messages),
            group_digits(n as u64)
        );
        header(&mut out, "", targets, &[]);
        let each = |t: &TargetResults, show: &dyn Fn(&Throughput) -> String| {
            if t.burst.is_empty() {
                return "-".to_owned();
            }
            t.burst
                .iter()
                .map(|run| run.as_ref().map_or_else(|_| "failed".to_owned(), show))
                .collect::<Vec<_>>()
                .join(", ")
        };
        text_line(&mut out, "subscribers cut", targets, |t| {
            each(t, &|b| b.cut.to_string())
        });
        text_line(&mut out, "deliveries missing", targets, |t| {
            each(t, &|b| {
                let expected = b.published * b.subscribers as u64;
                group_digits(expected.saturating_sub(b.delivered))
            })
        });
        text_line(&mut out, "first publish to last delivery", targets, |t| {
            each(t, &|b| format!("{:.2} s", b.seconds))
        });
        let failures: Vec<String> = targets
            .iter()
            .flat_map(|t| {
                t.burst.iter().enumerate().filter_map(move |(i, run)| {
                    run.as_ref()
                        .err()
                        .map(|error| format!("- {} run {}: {error}", t.name, i + 1))
                })
            })
            .collect();
        if !failures.is_empty() {
            let _ = write!(out, "\nFailed runs:\n\n{}\n", failures.join("\n"));
        }
    }

    if targets.iter().any(|t| t.memory.is_some()) {
        let k = targets
            .iter()
            .find_map(|t| t.memory.as_ref()?.as_ref().ok().map(|m| m.clients))
            .unwrap_or(0);
        let _ = write!(
            out,
            "\n### Idle clients (K = {}, connected at once)\n\n",
            group_digits(k as u64)
        );
        header(&mut out, "", targets, &[]);
        text_line(&mut out, "server RSS before", targets, |t| {
            memory_cell(t, |m| mebibytes(m.rss_before))
        });
        text_line(&mut out, "server RSS with the first K/2", targets, |t| {
            memory_cell(t, |m| mebibytes(m.rss_half))
        });
        text_line(&mut out, "server RSS with K clients", targets, |t| {
            memory_cell(t, |m| mebibytes(m.rss_after))
        });
        text_line(&mut out, "RSS growth / K", targets, |t| {
            memory_cell(t, |m| kibibytes(m.per_client()))
        });
        text_line(&mut out, "RSS growth / client, second K/2", targets, |t| {
            memory_cell(t, |m| kibibytes(m.marginal_per_client()))
        });
        text_line(
            &mut out,
            "one message reached the other K - 1",
            targets,
            |t| {
                memory_cell(t, |m| {
                    if m.all_received() {
                        "yes".to_owned()
                    } else {
                        format!("no: {} of {}", m.received, m.clients - 1)
                    }
                })
            },
        );
    }

    let mut notes = Vec::new();
    for t in targets {
        notes.extend(target_notes(t, subscriber_counts));
    }
    if !notes.is_empty() {
        out.push_str("\nNotes:\n\n");
        for note in notes {
            let _ = writeln!(out, "- {note}");
        }
    }
    out
}

/// Which way a ratio is good, or that a row has no ratios.
#[derive(Clone, Copy)]
enum Better {
    Higher,
    Lower,
    NotCompared,
}

fn header(out: &mut String, first: &str, targets: &[TargetResults], compared: &[&TargetResults]) {
    let mut cells = vec![first.to_owned()];
    cells.extend(targets.iter().map(|t| display_name(t.name).to_owned()));
    cells.extend(compared.iter().map(|t| format!("meshd/{}", t.name)));
    let _ = writeln!(out, "| {} |", cells.join(" | "));
    let _ = writeln!(out, "|{}", " --- |".repeat(cells.len()));
}

fn line(
    out: &mut String,
    label: &str,
    targets: &[TargetResults],
    cells: &[Cell],
    compared: &[&TargetResults],
    better: Better,
) {
    let mut row = vec![label.to_owned()];
    row.extend(cells.iter().map(|cell| cell.text.clone()));
    let figure = |name: &str| {
        targets
            .iter()
            .position(|t| t.name == name)
            .and_then(|i| cells[i].value)
    };
    let meshd = figure("meshd");
    for other in compared {
        row.push(match (better, meshd, figure(other.name)) {
            (Better::NotCompared, _, _) => String::new(),
            (_, Some(ours), Some(theirs)) if theirs > 0.0 && ours.is_finite() => {
                let ratio = ours / theirs;
                let good = match better {
                    Better::Lower => ratio <= 1.0,
                    Better::Higher | Better::NotCompared => ratio >= 1.0,
                };
                format!("{ratio:.2}{}", if good { "" } else { " (worse)" })
            }
            _ => "-".to_owned(),
        });
    }
    let _ = writeln!(out, "| {} |", row.join(" | "));
}

fn text_line(
    out: &mut String,
    label: &str,
    targets: &[TargetResults],
    cell: impl Fn(&TargetResults) -> String,
) {
    let mut row = vec![label.to_owned()];
    row.extend(targets.iter().map(cell));
    let _ = writeln!(out, "| {} |", row.join(" | "));
}

/// Every failure and shortfall of one server's runs, one line each.
fn target_notes(t: &TargetResults, subscriber_counts: &[usize]) -> Vec<String> {
    let mut notes = Vec::new();
    for (result, n) in t.throughput.iter().zip(subscriber_counts) {
        match result {
            Ok(runs) => notes.extend(runs.0.iter().filter_map(|run| {
                let note = run.note.as_ref()?;
                Some(format!("{} throughput, {n} subscribers: {note}", t.name))
            })),
            Err(error) => notes.push(format!("{} throughput, {n} subscribers: {error}", t.name)),
        }
    }
    match &t.latency {
        Some(Ok(runs)) => notes.extend(runs.0.iter().filter_map(|run| {
            let note = run.note.as_ref()?;
            Some(format!("{} latency: {note}", t.name))
        })),
        Some(Err(error)) => notes.push(format!("{} latency: {error}", t.name)),
        None => {}
    }
    if let Some(Err(error)) = &t.slow {
        notes.push(format!("{} slow consumer: {error}", t.name));
    }
    if let Some(Err(error)) = &t.memory {
        notes.push(format!("{} idle clients: {error}", t.name));
    }
    notes
}

fn slow_cell(t: &TargetResults, show: impl Fn(&SlowConsumer) -> String) -> String {
    match &t.slow {
        Some(Ok(slow)) => show(slow),
        Some(Err(_)) => "failed".to_owned(),
        None => "-".to_owned(),
    }
}

fn memory_cell(t: &TargetResults, show: impl Fn(&Memory) -> String) -> String {
    match &t.memory {
        Some(Ok(memory)) => show(memory),
        Some(Err(_)) => "failed".to_owned(),
        None => "-".to_owned(),
    }
}

/// The servers' names as the tables show them.
fn display_name(name: &str) -> &str {
    match name {
        "nats" => "nats-server",
        "redis" => "redis-server",
        "meshd-tls" => "meshd (TLS)",
        "meshd-cluster" => "meshd cluster",
        other => other,
    }
}

/// A rate in M/s or k/s.
pub fn rate(per_second: f64) -> String {
    if per_second >= 1e6 {
        format!("{:.2} M/s", per_second / 1e6)
    } else {
        format!("{:.1} k/s", per_second / 1e3)
    }
}

fn micros(us: f64) -> String {
    if us.is_nan() {
        "-".to_owned()
    } else if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0}")
    }
}

fn kibibytes(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// 10000 as "10,000".
pub fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_figures() {
        assert_eq!(rate(4_912_345.0), "4.91 M/s");
        assert_eq!(rate(12_345.0), "12.3 k/s");
        assert_eq!(micros(123.4), "123");
        assert_eq!(micros(12_345.0), "12.3 ms");
        assert_eq!(group_digits(10_000), "10,000");
        assert_eq!(group_digits(999), "999");
    }

    #[test]
    fn the_burst_table_lists_cut_subscribers_and_missing_deliveries_per_run() {
        let burst = |cut: usize, delivered: u64| Throughput {
            subscribers: 1000,
            published: 20_000,
            delivered,
            seconds: 4.0,
            per_second: delivered as f64 / 4.0,
            window_wait: std::time::Duration::ZERO,
            cut,
            note: None,
        };
        let targets = [
            TargetResults {
                name: "meshd",
                burst: vec![
                    Ok(burst(920, 1_700_000)),
                    Err("the publisher got: ERR slow".to_owned()),
                    Ok(burst(0, 20_000_000)),
                ],
                ..TargetResults::default()
            },
            TargetResults {
                name: "nats",
                burst: vec![Err("refused".to_owned())],
                ..TargetResults::default()
            },
        ];
        let table = render(&targets, &[]);
        assert!(
            table.contains("20,000 messages written at once to 1,000 subscribers"),
            "{table}"
        );
        assert!(
            table.contains("| subscribers cut | 920, failed, 0 | failed |"),
            "{table}"
        );
        assert!(
            table.contains("| deliveries missing | 18,300,000, failed, 0 | failed |"),
            "{table}"
        );
        assert!(
            table.contains("- meshd run 2: the publisher got: ERR slow"),
            "{table}"
        );
        assert!(table.contains("- nats run 1: refused"), "{table}");
    }

    #[test]
    fn a_throughput_cell_says_when_subscribers_were_cut() {
        let run = |cut| Throughput {
            subscribers: 10,
            published: 10,
            delivered: 100,
            seconds: 1.0,
            per_second: 100.0,
            window_wait: std::time::Duration::ZERO,
            cut,
            note: None,
        };
        let targets = [TargetResults {
            name: "nats",
            throughput: vec![Ok(Runs(vec![run(0), run(3)]))],
            ..TargetResults::default()
        }];
        assert!(render(&targets, &[10]).contains("3 subscribers cut"));
    }

    #[test]
    fn compares_meshd_with_the_others() {
        let result = |rates: &[f64]| {
            Ok(Runs(
                rates
                    .iter()
                    .map(|&per_second| Throughput {
                        subscribers: 1,
                        cut: 0,
                        published: 1,
                        delivered: 1,
                        seconds: 1.0,
                        per_second,
                        window_wait: std::time::Duration::ZERO,
                        note: None,
                    })
                    .collect(),
            ))
        };
        let targets = [
            TargetResults {
                name: "meshd",
                throughput: vec![result(&[2e6, 1e6, 3e6])],
                ..TargetResults::default()
            },
            TargetResults {
                name: "redis",
                throughput: vec![result(&[4e6, 4e6, 4e6])],
                ..TargetResults::default()
            },
        ];
        let table = render(&targets, &[10]);
        assert!(
            table.contains("| subscribers | meshd | redis-server | meshd/redis |"),
            "{table}"
        );
        assert!(
            table.contains("| 10 | 2.00 M/s (1.00-3.00) | 4.00 M/s (4.00-4.00) | 0.50 (worse) |"),
            "{table}"
        );
    }
}
