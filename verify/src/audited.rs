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
//! * the output line says the same, once per order.
//!
//! Routing is recomputed from each record's key (`shard_for` over the key's
//! route hash, the engine's public rule), and each batch's records from the
//! channel sequence numbers in the log.

use crate::oracle::rejecting;
use std::collections::HashMap;
use std::fmt;
use verity_apps::market_spread::{parse_event, DecisionNote, Event, Reason};
use verity_audit::record::{Id, InputChunk};
use verity_audit::Record;
use verity_core::{Either, Key};

/// Examples of anomalies kept word for word.
const EXAMPLES_MAX: usize = 20;

#[derive(Debug, Clone, Default)]
pub struct AuditedReport {
    pub decisions: u64,
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
            return write!(
                f,
                "OK (with the audit log): {} decisions, each on the newest quote applied before it, by the rule \
                 and the recorded clock",
                self.decisions
            );
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
    for record in life {
        match record {
            Record::Applied(a) => {
                let shard = a.shard as usize;
                for (id, leftover) in decided[shard].drain() {
                    report.anomaly(format!(
                        "order {} (input {}): decided without a note",
                        leftover.0, id
                    ));
                }
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
    for (id, (order, _)) in decided.iter().flat_map(|d| d.iter()) {
        report.anomaly(format!("order {order} (input {id}): decided without a note"));
    }
    check_output(&mut report, output, &expected_by_order);
    Ok(report)
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

fn check_output(report: &mut AuditedReport, output: &[u8], expected: &HashMap<u64, Expected>) {
    let mut seen: HashMap<u64, u64> = HashMap::new();
    for (number, line) in output
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let fields: Vec<&[u8]> = line.split(|b| *b == b',').collect();
        let text = String::from_utf8_lossy(line);
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
        let prices = |units: u64| {
            let mut out = Vec::new();
            verity_apps::format::write_price(&mut out, units);
            out
        };
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
}
