//! The exact market-spread check, with the run's audit log.
//!
//! Without the log, a two-stream verifier can only ask whether *some*
//! interleaving of quotes and orders explains each decision, and a decision
//! that depends on the clock cannot be checked at all. The log says which
//! batch each shard applied when and with which clock reading, so this check
//! rebuilds, with its own model of the rule, the exact sequence of records
//! each shard applied, and demands of every decision:
//!
//! * the quote its note names is the newest quote of the symbol applied on
//!   that shard before the order, with that quote's arrival time;
//! * the decision (and its reason) is the rule's for that quote and the
//!   recorded clock reading (`--max-quote-age-ms`);
//! * the output line says the same, once per order;
//! * with the rule, the stale-quote timers fire as the rule's own model of
//!   them says (one per symbol, due the first microsecond its quote would
//!   be too old, set anew on a newer quote): each `timers-fired` unit fires
//!   exactly the timers due by its clock reading, and reports stale exactly
//!   the quotes that are by then, once each, as the output's `STALE` lines.
//!
//! Routing is recomputed from each record's key (`shard_for` over the key's
//! route hash, the engine's public rule), and each batch's records from the
//! channel sequence numbers in the log.

use crate::oracle::rejecting;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use verity_apps::market_spread::{parse_event, stale_at, DecisionNote, Event, Reason, StaleNote};
use verity_audit::record::{Id, InputChunk};
use verity_audit::Record;
use verity_core::{Either, Key};

/// Examples of anomalies kept word for word.
const EXAMPLES_MAX: usize = 20;

#[derive(Debug, Clone, Default)]
pub struct AuditedReport {
    pub decisions: u64,
    /// Stale-quote alerts checked.
    pub alerts: u64,
    pub anomalies: u64,
    pub examples: Vec<String>,
}

impl AuditedReport {
    pub fn is_ok(&self) -> bool {
        self.anomalies == 0
    }

    fn anomaly(&mut self, what: String) {
        self.anomalies += 1;
        if self.examples.len() < EXAMPLES_MAX {
            self.examples.push(what);
        }
    }
}

impl fmt::Display for AuditedReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ok() {
            write!(
                f,
                "OK (with the audit log): {} decisions, each on the newest quote applied before it, by the rule \
                 and the recorded clock",
                self.decisions
            )?;
            if self.alerts > 0 {
                write!(
                    f,
                    "; {} stale-quote alerts, each fired as the rule's timers say",
                    self.alerts
                )?;
            }
            return Ok(());
        }
        writeln!(
            f,
            "FAILED (with the audit log): {} anomalies in {} decisions",
            self.anomalies, self.decisions
        )?;
        for example in &self.examples {
            writeln!(f, "  {example}")?;
        }
        Ok(())
    }
}

/// The quote in force for a symbol on its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InForce {
    id: Id,
    bid: u64,
    ask: u64,
    at_us: u64,
}

/// What the rule decides for an order.
#[derive(Debug, Clone, Copy)]
struct Expected {
    order_line: Id,
    quote: Option<InForce>,
    reason: Reason,
    now_us: u64,
}

/// One shard's stale-quote timers as the rule says they stand: per
/// symbol, whether one is set, and the due ones by (due, symbol).
#[derive(Default)]
struct StaleTimers {
    due: BTreeSet<(u64, Vec<u8>)>,
    set: HashSet<Vec<u8>>,
    /// Quotes reported stale.
    reported: HashSet<Id>,
    /// The timer unit whose notes come next.
    unit: Option<TimerUnit>,
}

/// A shard's timer unit as the rule has it: its clock reading, and the
/// quotes it must report stale (by id), each with its symbol.
struct TimerUnit {
    now_us: u64,
    stale: HashMap<Id, (Vec<u8>, InForce)>,
}

impl StaleTimers {
    fn on_quote(&mut self, symbol: &[u8], at_us: u64, max_us: u64) {
        if self.set.insert(symbol.to_vec()) {
            self.due.insert((stale_at(at_us, max_us), symbol.to_vec()));
        }
    }

    /// The timers due at `now_us` fire: returns how many.
    fn fire(&mut self, now_us: u64, max_us: u64, in_force: &HashMap<Vec<u8>, InForce>) -> u64 {
        let mut fired = 0;
        let mut stale = HashMap::new();
        while self.due.first().is_some_and(|(at, _)| *at <= now_us) {
            let (_, symbol) = self.due.pop_first().expect("first exists");
            fired += 1;
            self.set.remove(&symbol);
            let Some(quote) = in_force.get(&symbol).copied() else {
                continue;
            };
            if now_us.saturating_sub(quote.at_us) <= max_us {
                self.on_quote(&symbol, quote.at_us, max_us);
            } else if self.reported.insert(quote.id) {
                stale.insert(quote.id, (symbol, quote));
            }
        }
        self.unit = Some(TimerUnit { now_us, stale });
        fired
    }
}

/// Checks a market-spread `output` against its `inputs` (one mixed stream,
/// or quotes then orders) and the run's audit log (its newest life).
pub fn verify_market_spread_with_audit(
    inputs: &[&[u8]],
    output: &[u8],
    life: &[&Record],
    max_quote_age_ms: Option<u64>,
) -> Result<AuditedReport, String> {
    let Some(start) = life.iter().find_map(|r| match r {
        Record::RunStart(s) if s.process == 0 => Some(s),
        _ => None,
    }) else {
        return Err("the log has no run start of process 0".into());
    };
    let covered: u32 = life
        .iter()
        .filter_map(|r| match r {
            Record::RunStart(s) => Some(s.shards),
            _ => None,
        })
        .sum();
    if covered != start.shards_total {
        return Err(format!(
            "the log holds {covered} of the run's {} shards: every process of a cluster must keep its audit log \
             in the same directory (`verity worker --audit DIR`)",
            start.shards_total
        ));
    }
    if !(1..=verity_core::cluster::CLUSTER_SHARDS_MAX).contains(&start.shards_total) {
        return Err(format!(
            "the recorded run start names {} shards: no run has that many",
            start.shards_total
        ));
    }
    if let Some(checkpoint) = life.iter().find_map(|r| match r {
        Record::Recovery(r) => Some(r.checkpoint),
        _ => None,
    }) {
        // Its shards began from a snapshot this model did not build.
        return Err(format!(
            "the newest life recovered from checkpoint {checkpoint}: the exact check follows a run from its \
             start; check this one without --audit (the interleaving check), and its decisions with \
             `verity audit replay`"
        ));
    }
    let shards = start.shards_total;
    let mut chunks: Vec<Vec<InputChunk>> = vec![Vec::new(); inputs.len()];
    for record in life {
        if let Record::InputChunk(c) = record {
            let list = chunks.get_mut(c.source as usize).ok_or_else(|| {
                format!(
                    "the log names source {}, but {} inputs were given",
                    c.source,
                    inputs.len()
                )
            })?;
            list.push(*c);
        }
    }
    // Every record, where the engine's routing sends it: own chunks' records
    // by (source, shard, chunk), the others by channel (source, from, to)
    // in channel sequence order.
    let mut local: HashMap<(u32, u32, u64), Vec<(Id, Event)>> = HashMap::new();
    let mut channels: HashMap<(u32, u32, u32), Vec<(Id, Event)>> = HashMap::new();
    let mut order_symbol: HashMap<u64, Vec<u8>> = HashMap::new();
    for (source, input) in inputs.iter().enumerate() {
        let mut line = 0u64;
        let mut chunk_at = 0usize;
        let list = &chunks[source];
        let mut routed = Ok(());
        verity_core::line::for_each_line(input, |range| {
            line += 1;
            while chunk_at < list.len() && line >= list[chunk_at].end_line() {
                chunk_at += 1;
            }
            let Some(chunk) = list.get(chunk_at) else {
                routed = Err(format!("input {source} line {line} is in no chunk the run read"));
                return;
            };
            let Ok(event) = parse_event(&input[range]) else {
                return;
            };
            let split_stream_mismatch =
                inputs.len() == 2 && matches!((&event, source), (Either::Right(_), 0) | (Either::Left(_), 1));
            if split_stream_mismatch {
                return;
            }
            let symbol = match &event {
                Either::Left(q) => q.symbol,
                Either::Right(o) => {
                    order_symbol.insert(o.id, o.symbol.as_bytes().to_vec());
                    o.symbol
                }
            };
            let to = verity_core::key::shard_for(symbol.route_hash(), shards as usize) as u32;
            let from = (chunk.chunk % shards as u64) as u32;
            let id = Id {
                producer: source as u32,
                part: 0,
                seq: line,
            };
            if from == to {
                local
                    .entry((source as u32, to, chunk.chunk))
                    .or_default()
                    .push((id, event));
            } else {
                channels
                    .entry((source as u32, from, to))
                    .or_default()
                    .push((id, event));
            }
        });
        routed?;
    }
    let mut report = AuditedReport::default();
    let age_max_us = max_quote_age_ms.map(|ms| ms.saturating_mul(1000));
    let mut in_force: Vec<HashMap<Vec<u8>, InForce>> = vec![HashMap::new(); shards as usize];
    // Per shard: the orders of the batch just applied, until its notes.
    let mut decided: Vec<HashMap<Id, (u64, Expected)>> = vec![HashMap::new(); shards as usize];
    let mut expected_by_order: HashMap<u64, Expected> = HashMap::new();
    let mut timers: Vec<StaleTimers> = (0..shards).map(|_| StaleTimers::default()).collect();
    // The output lines the alerts must show: symbol, bid, ask.
    let mut expected_alerts: HashMap<(Vec<u8>, u64, u64), u64> = HashMap::new();
    for record in life {
        match record {
            Record::TimersFired(t) => {
                let Some(shard_timers) = timers.get_mut(t.shard as usize) else {
                    report.anomaly(format!(
                        "timers fired on shard {}, which the run did not have",
                        t.shard
                    ));
                    continue;
                };
                end_unit(&mut report, &mut decided[t.shard as usize], shard_timers, t.shard);
                let Some(max_us) = age_max_us else {
                    report.anomaly(format!(
                        "shard {} fired timers, but without the stale-quote rule market-spread sets none",
                        t.shard
                    ));
                    continue;
                };
                let fired = shard_timers.fire(t.utc_us, max_us, &in_force[t.shard as usize]);
                if fired != t.fired {
                    report.anomaly(format!(
                        "shard {} fired {} timers at {}; the rule has {fired} due then",
                        t.shard,
                        t.fired,
                        verity_audit::query::format_utc_us(t.utc_us)
                    ));
                }
            }
            Record::Applied(a) => {
                let shard = a.shard as usize;
                if shard >= timers.len() {
                    report.anomaly(format!(
                        "shard {} applied a batch, which the run did not have",
                        a.shard
                    ));
                    continue;
                }
                end_unit(&mut report, &mut decided[shard], &mut timers[shard], a.shard);
                let records: &[(Id, Event)] = if a.from == a.shard {
                    local
                        .get(&(a.source, a.shard, a.chunk))
                        .map_or(&[], Vec::as_slice)
                } else {
                    let channel = channels
                        .get(&(a.source, a.from, a.shard))
                        .map_or(&[][..], Vec::as_slice);
                    let first = (a.first_seq as usize).saturating_sub(1);
                    usize::try_from(a.records)
                        .ok()
                        .and_then(|records| channel.get(first..first.checked_add(records)?))
                        .unwrap_or(&[])
                };
                if records.len() as u64 != a.records {
                    report.anomaly(format!(
                        "shard {} applied {} records of source {} chunk {} from shard {}; routing the input gives {}",
                        a.shard,
                        a.records,
                        a.source,
                        a.chunk,
                        a.from,
                        records.len()
                    ));
                    continue;
                }
                let clock = a.clock_us.unwrap_or(0);
                for (id, event) in records {
                    match event {
                        Either::Left(q) => {
                            if let Some(max_us) = age_max_us {
                                timers[shard].on_quote(q.symbol.as_bytes(), clock, max_us);
                            }
                            in_force[shard].insert(
                                q.symbol.as_bytes().to_vec(),
                                InForce {
                                    id: *id,
                                    bid: q.bid_units,
                                    ask: q.ask_units,
                                    at_us: clock,
                                },
                            );
                        }
                        Either::Right(o) => {
                            let quote = in_force[shard].get(o.symbol.as_bytes()).copied();
                            let reason = match quote {
                                None => Reason::NoQuote,
                                Some(q) if rejecting(q.bid, q.ask) => Reason::WideSpread,
                                Some(q)
                                    if age_max_us.is_some_and(|max| clock.saturating_sub(q.at_us) > max) =>
                                {
                                    Reason::StaleQuote
                                }
                                Some(_) => Reason::Accepted,
                            };
                            let expected = Expected {
                                order_line: *id,
                                quote,
                                reason,
                                now_us: clock,
                            };
                            decided[shard].insert(*id, (o.id, expected));
                            if expected_by_order.insert(o.id, expected).is_some() {
                                report.anomaly(format!("order {} is in the input twice", o.id));
                            }
                        }
                    }
                }
            }
            Record::Notes(n) => {
                let Some(shard) = decided.get_mut(n.shard as usize) else {
                    continue;
                };
                for (id, bytes) in &n.notes {
                    if let Ok(note) = StaleNote::decode(bytes) {
                        let unit = timers.get_mut(n.shard as usize).and_then(|t| t.unit.as_mut());
                        if let Some(alert) = check_alert(&mut report, n.shard, *id, &note, unit) {
                            *expected_alerts.entry(alert).or_default() += 1;
                        }
                        continue;
                    }
                    let Some((order, expected)) = shard.remove(id) else {
                        report.anomaly(format!(
                            "shard {} noted input {id}, which no batch it applied holds",
                            n.shard
                        ));
                        continue;
                    };
                    report.decisions += 1;
                    check_note(&mut report, order, &expected, bytes);
                }
            }
            _ => {}
        }
    }
    for (shard, (decided, timers)) in decided.iter_mut().zip(&mut timers).enumerate() {
        end_unit(&mut report, decided, timers, shard as u32);
    }
    check_output(&mut report, output, &expected_by_order, expected_alerts);
    Ok(report)
}

/// A shard's unit ended (another began, or the log did): every order it
/// decided had its note, and every quote its timers found stale its alert.
fn end_unit(
    report: &mut AuditedReport,
    decided: &mut HashMap<Id, (u64, Expected)>,
    timers: &mut StaleTimers,
    shard: u32,
) {
    for (id, leftover) in decided.drain() {
        report.anomaly(format!(
            "order {} (input {}): decided without a note",
            leftover.0, id
        ));
    }
    if let Some(TimerUnit { now_us, stale }) = timers.unit.take() {
        for (id, (symbol, _)) in stale {
            report.anomaly(format!(
                "shard {shard}'s timers at {} found quote {id} of {} stale, but it reported no alert",
                verity_audit::query::format_utc_us(now_us),
                String::from_utf8_lossy(&symbol)
            ));
        }
    }
}

/// A stale-quote alert's note, noted for input `id` by `shard` in the
/// timer unit `unit`: the rule must have found that quote stale there.
/// Returns the output line it stands for.
fn check_alert(
    report: &mut AuditedReport,
    shard: u32,
    id: Id,
    note: &StaleNote,
    unit: Option<&mut TimerUnit>,
) -> Option<(Vec<u8>, u64, u64)> {
    report.alerts += 1;
    let symbol = String::from_utf8_lossy(note.symbol.as_bytes()).into_owned();
    let Some(TimerUnit { now_us, stale }) = unit else {
        report.anomaly(format!(
            "shard {shard} reported {symbol}'s quote {id} stale outside a timer unit"
        ));
        return None;
    };
    let Some((_, quote)) = stale.remove(&id) else {
        report.anomaly(format!(
            "shard {shard} reported {symbol}'s quote {id} stale at {}; by the rule its timers find no such quote stale then",
            verity_audit::query::format_utc_us(*now_us)
        ));
        return None;
    };
    let q = note.quote;
    let recorded = (Id::from(q.id), q.bid_units, q.ask_units, q.age_us);
    let expected = (quote.id, quote.bid, quote.ask, now_us.saturating_sub(quote.at_us));
    if recorded != expected {
        report.anomaly(format!(
            "shard {shard}'s alert for {symbol} names quote {} ({}/{} units, {} µs old); the rule's is {} ({}/{} units, {} µs old)",
            recorded.0, recorded.1, recorded.2, recorded.3, expected.0, expected.1, expected.2, expected.3
        ));
    }
    Some((note.symbol.as_bytes().to_vec(), quote.bid, quote.ask))
}

fn check_note(report: &mut AuditedReport, order: u64, expected: &Expected, bytes: &[u8]) {
    let note = match DecisionNote::decode(bytes) {
        Ok(note) => note,
        Err(e) => return report.anomaly(format!("order {order}: its note does not decode ({e})")),
    };
    let recorded_quote = note
        .quote
        .map(|q| (verity_audit::Id::from(q.id), q.bid_units, q.ask_units, q.age_us));
    let newest = expected
        .quote
        .map(|q| (q.id, q.bid, q.ask, expected.now_us.saturating_sub(q.at_us)));
    if recorded_quote != newest {
        let show = |q: Option<(Id, u64, u64, u64)>| {
            q.map_or("no quote".to_string(), |(id, bid, ask, age)| {
                format!("quote {id} ({bid}/{ask} units, {age} µs old)")
            })
        };
        return report.anomaly(format!(
            "order {order} (input {}): decided on {}, but the newest quote applied before it was {}",
            expected.order_line,
            show(recorded_quote),
            show(newest)
        ));
    }
    if note.order_id != order || note.reason != expected.reason {
        report.anomaly(format!(
            "order {order}: recorded {}; the rule gives {} at the recorded clock {}",
            note.reason.name(),
            expected.reason.name(),
            verity_audit::query::format_utc_us(expected.now_us)
        ));
    }
}

fn check_output(
    report: &mut AuditedReport,
    output: &[u8],
    expected: &HashMap<u64, Expected>,
    mut alerts: HashMap<(Vec<u8>, u64, u64), u64>,
) {
    let mut seen: HashMap<u64, u64> = HashMap::new();
    let prices = |units: u64| {
        let mut out = Vec::new();
        verity_apps::format::write_price(&mut out, units);
        out
    };
    let mut alert_lines: HashMap<Vec<u8>, u64> = HashMap::new();
    for ((symbol, bid, ask), count) in alerts.drain() {
        let line = [&b"STALE,"[..], &symbol, b",", &prices(bid), b",", &prices(ask)].concat();
        *alert_lines.entry(line).or_default() += count;
    }
    for (number, line) in output
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let fields: Vec<&[u8]> = line.split(|b| *b == b',').collect();
        let text = String::from_utf8_lossy(line);
        if fields[0] == b"STALE" {
            match alert_lines.get_mut(line) {
                Some(count) if *count > 0 => *count -= 1,
                _ => report.anomaly(format!(
                    "output line {}: {text}: no alert of the log's timers stands for it",
                    number + 1
                )),
            }
            continue;
        }
        let order = fields
            .first()
            .and_then(|f| std::str::from_utf8(f).ok()?.parse::<u64>().ok());
        let Some(order) = order.filter(|_| fields.len() == 5) else {
            report.anomaly(format!("output line {}: not a decision: {text}", number + 1));
            continue;
        };
        *seen.entry(order).or_default() += 1;
        let Some(want) = expected.get(&order) else {
            report.anomaly(format!(
                "output line {}: order {order} was never applied: {text}",
                number + 1
            ));
            continue;
        };
        let accept = want.reason == Reason::Accepted;
        let verdict_ok = fields[1] == if accept { &b"ACCEPT"[..] } else { &b"REJECT"[..] };
        let quote_ok = match want.quote {
            None => fields[3].is_empty() && fields[4].is_empty(),
            Some(q) => fields[3] == prices(q.bid) && fields[4] == prices(q.ask),
        };
        if !verdict_ok || !quote_ok {
            report.anomaly(format!(
                "output line {}: {text}; the rule and the log give {} on {}",
                number + 1,
                want.reason.name(),
                want.quote
                    .map_or("no quote".to_string(), |q| format!("quote {}", q.id))
            ));
        }
    }
    for (order, count) in &seen {
        if *count > 1 {
            report.anomaly(format!("order {order}: {count} decisions in the output"));
        }
    }
    let missing = expected.keys().filter(|o| !seen.contains_key(o)).count();
    if missing > 0 {
        report.anomaly(format!("{missing} applied orders have no decision in the output"));
    }
    let alerts_missing: u64 = alert_lines.values().sum();
    if alerts_missing > 0 {
        report.anomaly(format!(
            "{alerts_missing} stale-quote alerts of the log are not in the output"
        ));
    }
}
