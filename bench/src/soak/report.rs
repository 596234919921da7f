//! The end of a run: every acknowledged message accounted for, the logs,
//! the resource samples and the probes judged, and the Markdown report on
//! stdout.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::accounting::{Accounting, account};
use crate::chat::ChatFigures;
use crate::cluster::{Generation, Node};
use crate::faults::{Injected, Kind};
use crate::inbox::Observed;
use crate::logs::{LogLine, Scan};
use crate::monitor::{Probes, Sample};
use crate::traffic::{Sent, failure_reasons};

/// The growth check 3 allows, in percent.
const GROWTH_LIMIT: f64 = 10.0;
/// A process is compared from this long after its start at the earliest.
const WARM_UP: f64 = 20.0;
/// Examples listed per kind of problem.
const LIST: usize = 20;

/// Everything a run produced.
pub struct Run<'a> {
    /// The command line.
    pub invocation: String,
    /// The seed.
    pub seed: u64,
    /// Minutes asked for.
    pub minutes: f64,
    /// Wall clock of the traffic's start.
    pub started_wall: String,
    /// Run seconds when traffic started and ended.
    pub traffic: (f64, f64),
    /// Set when the run was interrupted, with when.
    pub interrupted: Option<f64>,
    /// Every node, the hub first.
    pub nodes: &'a [&'a Node],
    /// Every message sent.
    pub sent: Vec<Sent>,
    /// What each device was seen to receive (index as in `nodes[1..]`).
    pub observed: Vec<Observed>,
    /// The logs.
    pub scan: Scan,
    /// RSS and fd samples.
    pub samples: Vec<Sample>,
    /// Control-socket probes per node.
    pub probes: Vec<Probes>,
    /// Exits nobody asked for.
    pub crashes: Vec<String>,
    /// The faults.
    pub faults: Vec<Injected>,
    /// Chat figures.
    pub chat: ChatFigures,
    /// Problems stopping the processes at the end.
    pub shutdown: Vec<String>,
    /// How the mesh settled after the last fault.
    pub settled: String,
    /// Follow streams that ended while their meshd ran.
    pub follow_restarts: usize,
}

impl Run<'_> {
    fn devices(&self) -> &[&Node] {
        &self.nodes[1..]
    }

    fn account(&self) -> Accounting {
        let devices = self.devices();
        let names: Vec<&str> = devices.iter().map(|node| node.name.as_str()).collect();
        let generations: Vec<Vec<Generation>> =
            devices.iter().map(|node| node.generations()).collect();
        account(
            &names,
            &generations,
            &self.sent,
            &self.observed,
            &self.scan.stored,
        )
    }

    /// Prints the report; returns whether every check held.
    pub fn report(&self) -> bool {
        let account = self.account();
        let mut out = String::new();
        let duration = self.traffic.1 - self.traffic.0;
        let _ = writeln!(out, "# meshd soak\n");
        let _ = writeln!(
            out,
            "`{}`: seed {} (replay with `--seed {}`), {} devices and a hub, started {}.",
            self.invocation,
            self.seed,
            self.seed,
            self.devices().len(),
            self.started_wall
        );
        if let Some(at) = self.interrupted {
            let _ = writeln!(
                out,
                "\n**Interrupted** at +{at:.1}s: the figures cover the run until then."
            );
        }
        let _ = writeln!(out);

        // Check 1.
        let check1 = account.missing.is_empty()
            && account.duplicated.is_empty()
            && account.wrong_device.is_empty()
            && account.unknown.is_empty()
            && account.wrong_sender.is_empty()
            && account.garbage.is_empty()
            && account.acked > 0;
        // Check 2.
        let fault_problems: Vec<String> = self
            .faults
            .iter()
            .filter_map(|fault| {
                fault
                    .problem
                    .as_ref()
                    .map(|p| format!("+{:.1}s {}: {p}", fault.at, fault.what))
            })
            .collect();
        let check2 = self.scan.errors.is_empty()
            && self.scan.panics.is_empty()
            && self.scan.other.is_empty()
            && self.scan.unreadable.is_empty()
            && self.crashes.is_empty()
            && fault_problems.is_empty()
            && self.shutdown.is_empty();
        // Check 3.
        let growth = self.growth();
        let compared: Vec<&Growth> = growth.iter().filter(|g| g.compared.is_some()).collect();
        let check3 = !compared.is_empty()
            && compared.iter().all(|g| {
                g.compared
                    .as_ref()
                    .is_some_and(|c| c.rss_growth() < GROWTH_LIMIT && c.fd_growth() < GROWTH_LIMIT)
            });
        let worst_growth = compared
            .iter()
            .filter_map(|g| g.compared.as_ref().map(|c| (g.node.as_str(), c)))
            .max_by(|a, b| a.1.rss_growth().total_cmp(&b.1.rss_growth()));
        let worst_fds = compared
            .iter()
            .filter_map(|g| g.compared.as_ref().map(|c| (g.node.as_str(), c)))
            .max_by(|a, b| a.1.fd_growth().total_cmp(&b.1.fd_growth()));
        // Check 4.
        let probes: u64 = self.probes.iter().map(|p| p.count).sum();
        let late: usize = self.probes.iter().map(|p| p.late.len()).sum();
        let (worst_node, worst_ms) = self
            .probes
            .iter()
            .zip(self.nodes)
            .map(|(p, node)| (node.name.as_str(), p.worst_ms))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or(("-", 0.0));
        let check4 = probes > 0 && late == 0;

        let verdict = |ok: bool| if ok { "**pass**" } else { "**FAIL**" };
        let _ = writeln!(out, "## Checks\n");
        let _ = writeln!(out, "| # | check | result | figures |");
        let _ = writeln!(out, "| --- | --- | --- | --- |");
        let _ = writeln!(
            out,
            "| 1 | every acknowledged message received exactly once | {} | {} acknowledged, {} received, {} missing, {} duplicated |",
            verdict(check1),
            account.acked,
            account.received,
            account.missing.len(),
            account.duplicated.len()
        );
        let _ = writeln!(
            out,
            "| 2 | no panic, crash or error-level log line that no injected fault explains | {} | {} error lines, {} panic lines, {} other stderr lines, {} crashes, {} fault or shutdown problems, in {} log lines |",
            verdict(check2),
            self.scan.errors.len(),
            self.scan.panics.len(),
            self.scan.other.len(),
            self.crashes.len(),
            fault_problems.len() + self.shutdown.len(),
            self.scan.lines
        );
        let window_text = if duration >= 600.0 {
            "from minute 5 of each process's time in the run to the end (a restarted process's time starts at its \
             restart; the middle of it if shorter than 10 minutes)"
                .to_owned()
        } else {
            "from the middle of each process's time in the run to the end (the run is shorter than 10 minutes; a \
             restarted process's time starts at its restart)"
                .to_owned()
        };
        let _ = writeln!(
            out,
            "| 3 | RSS and open fds of every meshd grow less than {GROWTH_LIMIT:.0}%, {window_text} | {} | {} of {} processes compared; largest RSS growth {}, largest fd growth {} |",
            verdict(check3),
            compared.len(),
            growth.len(),
            worst_growth.map_or("-".to_owned(), |(n, c)| format!(
                "{:+.1}% ({n})",
                c.rss_growth()
            )),
            worst_fds.map_or("-".to_owned(), |(n, c)| format!(
                "{:+.1}% ({n})",
                c.fd_growth()
            )),
        );
        let _ = writeln!(
            out,
            "| 4 | every running, non-stopped meshd answers `status` on its control socket within 1 s | {} | {probes} probes, {late} late or unanswered, slowest {worst_ms:.1} ms ({worst_node}) |",
            verdict(check4)
        );
        let _ = writeln!(out);

        // The run.
        let _ = writeln!(out, "## Run\n");
        let _ = writeln!(out, "| figure | value |");
        let _ = writeln!(out, "| --- | --- |");
        let _ = writeln!(
            out,
            "| traffic and faults | {:.1} s ({:.1} min asked) |",
            duration, self.minutes
        );
        let _ = writeln!(out, "| seed | {} |", self.seed);
        let mut kinds: BTreeMap<&str, usize> = Kind::labels().iter().map(|l| (*l, 0)).collect();
        for fault in &self.faults {
            *kinds.entry(fault.label).or_insert(0) += 1;
        }
        for label in Kind::labels() {
            let _ = writeln!(
                out,
                "| faults: {label} | {} |",
                kinds.get(label).copied().unwrap_or(0)
            );
        }
        for (label, count) in kinds.iter().filter(|(l, _)| !Kind::labels().contains(l)) {
            let _ = writeln!(out, "| {label} | {count} |");
        }
        let _ = writeln!(out, "| messages sent | {} |", self.sent.len());
        let _ = writeln!(out, "| messages acknowledged | {} |", account.acked);
        let _ = writeln!(out, "| acknowledged and received | {} |", account.received);
        let _ = writeln!(
            out,
            "| acknowledged and missing | {} |",
            account.missing.len()
        );
        let _ = writeln!(
            out,
            "| acknowledged and duplicated | {} |",
            account.duplicated.len()
        );
        let _ = writeln!(
            out,
            "| received, counted from the log of a receiver killed before a stream showed it | {} |",
            account.from_killed_log
        );
        let _ = writeln!(
            out,
            "| stored again by the restarted receiver after a kill -9 (allowed) | {} |",
            account.again_after_restart
        );
        let _ = writeln!(
            out,
            "| not acknowledged (send failed) / of them received anyway | {} / {} |",
            account.unacked, account.unacked_received
        );
        let _ = writeln!(
            out,
            "| follow streams that ended while their meshd ran | {} |",
            self.follow_restarts
        );
        let chat = &self.chat;
        let _ = writeln!(out, "| chat logins ok | {} |", chat.logins_ok);
        let _ = writeln!(
            out,
            "| chat logins failed (wrong password, refused as they should be) | {} |",
            chat.logins_refused
        );
        let _ = writeln!(
            out,
            "| chat: wrong password accepted / right password refused | {} / {} |",
            chat.wrong_password_accepted, chat.right_password_refused
        );
        let _ = writeln!(out, "| chat lines sent | {} |", chat.lines_sent);
        let _ = writeln!(
            out,
            "| chat: stalling sessions / cut off as slow / longest stall | {} / {} / {:.1} s |",
            chat.stalls, chat.stalls_cut_off, chat.longest_stall
        );
        let _ = writeln!(
            out,
            "| chat: lines a stalled client should have got / got | {} / {} |",
            chat.stall_expected, chat.stall_received
        );
        let _ = writeln!(
            out,
            "| chat sessions cut short by a hub restart | {} |",
            chat.interrupted_by_restart
        );
        let _ = writeln!(out, "| chat errors | {} |", chat.errors.len());
        let _ = writeln!(
            out,
            "| control-socket probes / slowest | {probes} / {worst_ms:.1} ms ({worst_node}) |"
        );
        let _ = writeln!(out, "| mesh after the last fault | {} |", self.settled);
        let _ = writeln!(out);

        // Processes.
        let _ = writeln!(out, "## Processes ({window_text})\n");
        let _ = writeln!(
            out,
            "| process | generations | compared from | RSS then | RSS at the end | RSS growth | of it anonymous (then, end) | fds then | fds at the end | fd growth | slowest `status` |"
        );
        let _ = writeln!(
            out,
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for (index, g) in growth.iter().enumerate() {
            let slowest = self.probes.get(index).map_or(0.0, |p| p.worst_ms);
            match &g.compared {
                Some(c) => {
                    let _ = writeln!(
                        out,
                        "| {} | {} | +{:.0}s (generation {}) | {:.1} MiB | {:.1} MiB | {:+.1}% | {:.1}, {:.1} MiB | {:.0} | {:.0} | {:+.1}% | {slowest:.1} ms |",
                        g.node,
                        g.generations,
                        c.from,
                        c.generation,
                        c.rss.0 / 1024.0,
                        c.rss.1 / 1024.0,
                        c.rss_growth(),
                        c.anon.0 / 1024.0,
                        c.anon.1 / 1024.0,
                        c.fds.0,
                        c.fds.1,
                        c.fd_growth()
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "| {} | {} | not compared: {} | | | | | | | | {slowest:.1} ms |",
                        g.node, g.generations, g.why
                    );
                }
            }
        }
        let _ = writeln!(out);

        // Faults.
        let _ = writeln!(out, "## Faults\n");
        if self.faults.is_empty() {
            let _ = writeln!(out, "None injected.\n");
        } else {
            let _ = writeln!(out, "| time | fault | what followed |");
            let _ = writeln!(out, "| --- | --- | --- |");
            for fault in &self.faults {
                let _ = writeln!(
                    out,
                    "| {} (+{:.1}s) | {} | {}{} |",
                    fault.wall,
                    fault.at,
                    fault.what,
                    fault.outcome,
                    fault
                        .problem
                        .as_ref()
                        .map(|p| format!("; **problem**: {p}"))
                        .unwrap_or_default()
                );
            }
            let _ = writeln!(out);
        }

        // Problems.
        let _ = writeln!(out, "## Unexplained error lines and other problems\n");
        let mut problems = 0;
        problems += list(
            &mut out,
            "Error-level log lines",
            &self.scan.errors.iter().map(show).collect::<Vec<_>>(),
        );
        problems += list(
            &mut out,
            "Panics",
            &self.scan.panics.iter().map(show).collect::<Vec<_>>(),
        );
        problems += list(
            &mut out,
            "Other stderr lines of meshd",
            &self.scan.other.iter().map(show).collect::<Vec<_>>(),
        );
        problems += list(&mut out, "Unreadable logs", &self.scan.unreadable);
        problems += list(&mut out, "Exits nobody asked for", &self.crashes);
        problems += list(&mut out, "Faults that went wrong", &fault_problems);
        problems += list(
            &mut out,
            "Problems stopping meshd at the end",
            &self.shutdown,
        );
        problems += list(&mut out, "Acknowledged messages missing", &account.missing);
        problems += list(
            &mut out,
            "Acknowledged messages duplicated",
            &account.duplicated,
        );
        problems += list(
            &mut out,
            "Messages shown by the wrong device",
            &account.wrong_device,
        );
        problems += list(&mut out, "Unknown texts shown", &account.unknown);
        problems += list(
            &mut out,
            "Messages from another sender than their text names",
            &account.wrong_sender,
        );
        problems += list(&mut out, "Unreadable meshctl output", &account.garbage);
        let late: Vec<String> = self
            .probes
            .iter()
            .zip(self.nodes)
            .flat_map(|(p, node)| p.late.iter().map(move |l| format!("{}: {l}", node.name)))
            .collect();
        problems += list(&mut out, "Late or unanswered `status` probes", &late);
        problems += list(
            &mut out,
            "Chat errors (not part of the exit status)",
            &chat.errors,
        );
        if problems == 0 {
            let _ = writeln!(out, "None.\n");
        }

        // Warnings, for the record.
        if !self.scan.warnings.is_empty() {
            let _ = writeln!(out, "## Warnings logged (for the record; not checked)\n");
            let _ = writeln!(out, "| count | message |");
            let _ = writeln!(out, "| --- | --- |");
            for (message, count) in &self.scan.warnings {
                let _ = writeln!(out, "| {count} | {message} |");
            }
            let _ = writeln!(out);
        }
        let reasons = failure_reasons(&self.sent);
        if !reasons.is_empty() {
            let _ = writeln!(
                out,
                "## Sends that were not acknowledged (for the record; faults cause them)\n"
            );
            let _ = writeln!(out, "| count | meshctl said |");
            let _ = writeln!(out, "| --- | --- |");
            for (reason, count) in &reasons {
                let _ = writeln!(out, "| {count} | {} |", reason.replace('|', "\\|"));
            }
            let _ = writeln!(out);
        }
        let all = check1 && check2 && check3 && check4 && self.interrupted.is_none();
        let _ = writeln!(
            out,
            "Result: **{}**",
            if all {
                "all checks hold"
            } else {
                "a check failed"
            }
        );
        print!("{out}");
        all
    }

    /// Check 3 per node: its last generation, from minute 5 of its time in
    /// the run (from the traffic's start, or from its restart), or from the
    /// middle of that time when it is shorter than 10 minutes.
    fn growth(&self) -> Vec<Growth> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(index, node)| {
                let generations = node.generations();
                let ends: Vec<String> = generations
                    .iter()
                    .filter_map(|g| {
                        g.ended
                            .as_ref()
                            .filter(|(at, _)| *at <= self.traffic.1)
                            .map(|(at, end)| {
                                format!("{} at +{:.0}s", end.describe(), at - self.traffic.0)
                            })
                    })
                    .collect();
                let mut growth = Growth {
                    node: node.name.clone(),
                    generations: if ends.is_empty() {
                        generations.len().to_string()
                    } else {
                        format!("{} ({})", generations.len(), ends.join("; "))
                    },
                    compared: None,
                    why: String::new(),
                };
                let Some(last) = generations.last() else {
                    growth.why = "never started".to_owned();
                    return growth;
                };
                let origin = last.started.max(self.traffic.0);
                let time = self.traffic.1 - origin;
                let from = (origin + if time >= 600.0 { 300.0 } else { time / 2.0 })
                    .max(last.started + WARM_UP);
                let samples: Vec<&Sample> = self
                    .samples
                    .iter()
                    .filter(|s| s.node == index && s.generation == last.number && s.at >= from)
                    .collect();
                if samples.len() < 4 {
                    growth.why = format!(
                        "{} samples of generation {} from +{:.0}s, 4 needed",
                        samples.len(),
                        last.number,
                        from - self.traffic.0
                    );
                    return growth;
                }
                let n = (samples.len() / 2).min(3);
                let first = &samples[..n];
                let end = &samples[samples.len() - n..];
                // The floor of each set: a leak raises it, a passing peak (a
                // connection being set up, a relay standing by) does not.
                let pick = |set: &[&Sample], f: fn(&Sample) -> u64| {
                    set.iter().map(|s| f(s)).min().unwrap_or(0) as f64
                };
                growth.compared = Some(Compared {
                    generation: last.number,
                    from: first[0].at - self.traffic.0,
                    rss: (pick(first, |s| s.rss_kib), pick(end, |s| s.rss_kib)),
                    anon: (pick(first, |s| s.anon_kib), pick(end, |s| s.anon_kib)),
                    fds: (pick(first, |s| s.fds), pick(end, |s| s.fds)),
                });
                growth
            })
            .collect()
    }
}

/// Check 3 for one node.
struct Growth {
    node: String,
    generations: String,
    compared: Option<Compared>,
    why: String,
}

/// The readings compared: the lowest of the first three samples of the
/// window against the lowest of the last three.
struct Compared {
    generation: u32,
    from: f64,
    rss: (f64, f64),
    anon: (f64, f64),
    fds: (f64, f64),
}

impl Compared {
    fn rss_growth(&self) -> f64 {
        percent(self.rss)
    }

    fn fd_growth(&self) -> f64 {
        percent(self.fds)
    }
}

fn percent((then, now): (f64, f64)) -> f64 {
    if then <= 0.0 {
        return 0.0;
    }
    (now - then) / then * 100.0
}

fn show(line: &LogLine) -> String {
    format!(
        "{} (generation {}): `{}`",
        line.node,
        line.generation,
        line.line.replace('`', "'")
    )
}

/// A titled list of at most [`LIST`] items; returns how many there were.
fn list(out: &mut String, title: &str, items: &[String]) -> usize {
    if items.is_empty() {
        return 0;
    }
    let _ = writeln!(out, "{title} ({}):\n", items.len());
    for item in items.iter().take(LIST) {
        let _ = writeln!(out, "- {item}");
    }
    if items.len() > LIST {
        let _ = writeln!(out, "- ... and {} more", items.len() - LIST);
    }
    let _ = writeln!(out);
    items.len()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::cluster::End;
    use crate::inbox::Counts;
    use crate::inbox::Session;
    use crate::traffic::Outcome;

    fn generation(number: u32, killed_: bool) -> Generation {
        Generation {
            number,
            started: 0.0,
            ready: Some(0.1),
            ended: killed_.then_some((10.0, End::Killed)),
            log: std::path::PathBuf::new(),
        }
    }

    fn acked(text: &str, receiver: usize) -> Sent {
        Sent {
            sender: 0,
            receiver,
            text: text.to_owned(),
            at: 1.0,
            outcome: Outcome::Acked { at: 1.1 },
        }
    }

    fn session(generation: u32, texts: &[&str]) -> Session {
        let mut counts = Counts::new();
        for text in texts {
            *counts.entry((*text).to_owned()).or_insert(0) += 1;
        }
        Session {
            generation,
            counts,
            ..Session::default()
        }
    }

    /// d1 sends; d2 receives, with `generations` and `sessions`, and logged
    /// `logged` (generation, text).
    fn run(
        sent: &[Sent],
        generations: Vec<Generation>,
        sessions: Vec<Session>,
        logged: &[(u32, &str)],
    ) -> Accounting {
        let observed = vec![
            Observed::default(),
            Observed {
                sessions,
                ..Observed::default()
            },
        ];
        let mut stored: HashMap<(String, u32), Counts> = HashMap::new();
        for (generation, text) in logged {
            *stored
                .entry(("d2".to_owned(), *generation))
                .or_default()
                .entry((*text).to_owned())
                .or_insert(0) += 1;
        }
        account(
            &["d1", "d2"],
            &[vec![generation(1, false)], generations],
            sent,
            &observed,
            &stored,
        )
    }

    const A: &str = "soak s=d1 n=1";
    const B: &str = "soak s=d1 n=2";

    #[test]
    fn shown_once_is_received() {
        let out = run(
            &[acked(A, 1)],
            vec![generation(1, false)],
            vec![session(1, &[A])],
            &[(1, A)],
        );
        assert_eq!((out.acked, out.received), (1, 1));
        assert!(out.missing.is_empty() && out.duplicated.is_empty());
    }

    #[test]
    fn a_second_stream_of_one_process_is_no_duplicate() {
        let out = run(
            &[acked(A, 1)],
            vec![generation(1, false)],
            vec![session(1, &[A]), session(1, &[A])],
            &[(1, A)],
        );
        assert!(out.duplicated.is_empty());
    }

    #[test]
    fn shown_twice_by_one_stream_is_a_duplicate() {
        let out = run(
            &[acked(A, 1)],
            vec![generation(1, false)],
            vec![session(1, &[A, A])],
            &[],
        );
        assert_eq!(out.duplicated.len(), 1);
    }

    #[test]
    fn logged_twice_is_a_duplicate() {
        let out = run(
            &[acked(A, 1)],
            vec![generation(1, false)],
            vec![session(1, &[A])],
            &[(1, A), (1, A)],
        );
        assert_eq!(out.duplicated.len(), 1);
    }

    #[test]
    fn the_log_of_a_killed_receiver_counts() {
        let out = run(
            &[acked(A, 1)],
            vec![generation(1, true), generation(2, false)],
            vec![session(1, &[]), session(2, &[])],
            &[(1, A)],
        );
        assert_eq!((out.received, out.from_killed_log), (1, 1));
        assert!(out.missing.is_empty());
    }

    #[test]
    fn the_log_of_a_live_receiver_does_not() {
        let out = run(
            &[acked(A, 1)],
            vec![generation(1, false)],
            vec![session(1, &[])],
            &[(1, A)],
        );
        assert_eq!(out.missing.len(), 1);
        let out = run(
            &[acked(B, 1)],
            vec![generation(1, false)],
            vec![session(1, &[A])],
            &[],
        );
        assert_eq!(out.missing.len(), 1);
        assert_eq!(out.unknown.len(), 1, "A was never sent");
    }

    #[test]
    fn stored_again_after_a_kill_is_allowed_but_not_otherwise() {
        let out = run(
            &[acked(A, 1)],
            vec![generation(1, true), generation(2, false)],
            vec![session(1, &[A]), session(2, &[A])],
            &[(1, A), (2, A)],
        );
        assert_eq!(out.again_after_restart, 1);
        assert!(out.duplicated.is_empty());
        let mut stopped = generation(1, false);
        stopped.ended = Some((10.0, End::TermTimeout));
        let out = run(
            &[acked(A, 1)],
            vec![stopped, generation(2, false)],
            vec![session(1, &[A]), session(2, &[A])],
            &[],
        );
        assert_eq!(out.duplicated.len(), 1);
    }

    #[test]
    fn shown_by_the_wrong_device() {
        let out = run(
            &[acked(A, 0)],
            vec![generation(1, false)],
            vec![session(1, &[A])],
            &[],
        );
        assert_eq!(out.wrong_device.len(), 1);
        assert_eq!(out.missing.len(), 1);
    }

    #[test]
    fn unacknowledged_messages_are_not_checked() {
        let mut failed = acked(A, 1);
        failed.outcome = Outcome::Failed {
            reason: "timeout".to_owned(),
        };
        let out = run(
            &[failed],
            vec![generation(1, false)],
            vec![session(1, &[A])],
            &[],
        );
        assert_eq!((out.acked, out.unacked, out.unacked_received), (0, 1, 1));
    }
}
