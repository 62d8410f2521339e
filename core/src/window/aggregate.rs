//! Incremental aggregation of a window's records: the `Aggregate` trait and
//! the provided ones (count, sum, min, max, average, top-N). Users add their
//! own by implementing the trait.

use crate::wire::{Wire, WireError};

/// How a window folds its records into an accumulator, merges two (session
/// windows that grow together) and what it emits when it closes. The
/// accumulator is keyed state: checkpointed with the rest (`Wire`).
pub trait Aggregate<V>: Send + Sync + 'static {
    /// The per-window running value; `Default` is an empty window's.
    type Acc: Default + Wire + Send + 'static;
    /// What a closed window emits (zero or more of them).
    type Out: 'static;
    /// Folds one record in (a hopping window's record is added to each
    /// window it falls in, hence by reference).
    fn add(&self, acc: &mut Self::Acc, value: &V);
    /// Folds `from` into `into` (session windows that merge).
    fn merge(&self, into: &mut Self::Acc, from: Self::Acc);
    /// The window closed: emit its results.
    fn finish(&self, acc: Self::Acc, emit: &mut dyn FnMut(Self::Out));
}

/// The number of records in the window.
#[derive(Debug, Clone, Copy, Default)]
pub struct Count;

impl<V> Aggregate<V> for Count {
    type Acc = u64;
    type Out = u64;
    fn add(&self, acc: &mut u64, _: &V) {
        *acc += 1;
    }
    fn merge(&self, into: &mut u64, from: u64) {
        *into += from;
    }
    fn finish(&self, acc: u64, emit: &mut dyn FnMut(u64)) {
        emit(acc)
    }
}

/// The sum of `value(record)` over the window (saturating at the `i64` range).
#[derive(Debug, Clone, Copy)]
pub struct Sum<F>(pub F);

impl<V, F: Fn(&V) -> i64 + Send + Sync + 'static> Aggregate<V> for Sum<F> {
    type Acc = i64;
    type Out = i64;
    fn add(&self, acc: &mut i64, value: &V) {
        *acc = acc.saturating_add((self.0)(value));
    }
    fn merge(&self, into: &mut i64, from: i64) {
        *into = into.saturating_add(from);
    }
    fn finish(&self, acc: i64, emit: &mut dyn FnMut(i64)) {
        emit(acc)
    }
}

/// The least `value(record)` in the window.
#[derive(Debug, Clone, Copy)]
pub struct Min<F>(pub F);

impl<V, F: Fn(&V) -> i64 + Send + Sync + 'static> Aggregate<V> for Min<F> {
    type Acc = Option<i64>;
    type Out = i64;
    fn add(&self, acc: &mut Option<i64>, value: &V) {
        let value = (self.0)(value);
        *acc = Some(acc.map_or(value, |least| least.min(value)));
    }
    fn merge(&self, into: &mut Option<i64>, from: Option<i64>) {
        *into = match (*into, from) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    fn finish(&self, acc: Option<i64>, emit: &mut dyn FnMut(i64)) {
        if let Some(least) = acc {
            emit(least)
        }
    }
}

/// The greatest `value(record)` in the window.
#[derive(Debug, Clone, Copy)]
pub struct Max<F>(pub F);

impl<V, F: Fn(&V) -> i64 + Send + Sync + 'static> Aggregate<V> for Max<F> {
    type Acc = Option<i64>;
    type Out = i64;
    fn add(&self, acc: &mut Option<i64>, value: &V) {
        let value = (self.0)(value);
        *acc = Some(acc.map_or(value, |most| most.max(value)));
    }
    fn merge(&self, into: &mut Option<i64>, from: Option<i64>) {
        *into = (*into).max(from);
    }
    fn finish(&self, acc: Option<i64>, emit: &mut dyn FnMut(i64)) {
        if let Some(most) = acc {
            emit(most)
        }
    }
}

/// The mean of `value(record)` over the window, as (sum, count): the
/// caller divides as it likes (an integer mean, or `Mean::as_f64`), so the
/// result is exact and the same on every machine.
#[derive(Debug, Clone, Copy)]
pub struct Average<F>(pub F);

/// An average's parts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mean {
    pub sum: i64,
    pub count: u64,
}

impl Mean {
    pub fn as_f64(&self) -> f64 {
        self.sum as f64 / self.count.max(1) as f64
    }
}

impl Wire for Mean {
    fn encode(&self, out: &mut Vec<u8>) {
        self.sum.encode(out);
        self.count.encode(out);
    }
    fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(Mean {
            sum: i64::decode(input)?,
            count: u64::decode(input)?,
        })
    }
}

impl<V, F: Fn(&V) -> i64 + Send + Sync + 'static> Aggregate<V> for Average<F> {
    type Acc = Mean;
    type Out = Mean;
    fn add(&self, acc: &mut Mean, value: &V) {
        acc.sum = acc.sum.saturating_add((self.0)(value));
        acc.count += 1;
    }
    fn merge(&self, into: &mut Mean, from: Mean) {
        into.sum = into.sum.saturating_add(from.sum);
        into.count += from.count;
    }
    fn finish(&self, acc: Mean, emit: &mut dyn FnMut(Mean)) {
        if acc.count > 0 {
            emit(acc)
        }
    }
}

/// The `n` greatest `rank(record)`s of the window, greatest first: each a
/// (score, tie-break) pair, so that equal scores order the same way on
/// every run. Keeps at most `n` per window.
#[derive(Debug, Clone, Copy)]
pub struct TopN<F> {
    pub n: usize,
    pub rank: F,
}

impl<V, F: Fn(&V) -> (i64, u64) + Send + Sync + 'static> Aggregate<V> for TopN<F> {
    type Acc = Vec<(i64, u64)>;
    type Out = Vec<(i64, u64)>;
    fn add(&self, acc: &mut Vec<(i64, u64)>, value: &V) {
        insert_top(acc, (self.rank)(value), self.n);
    }
    fn merge(&self, into: &mut Vec<(i64, u64)>, from: Vec<(i64, u64)>) {
        for ranked in from {
            insert_top(into, ranked, self.n);
        }
    }
    fn finish(&self, acc: Vec<(i64, u64)>, emit: &mut dyn FnMut(Vec<(i64, u64)>)) {
        emit(acc)
    }
}

/// Inserts `ranked` into `top` (greatest first) and keeps the first `n`.
fn insert_top(top: &mut Vec<(i64, u64)>, ranked: (i64, u64), n: usize) {
    let at = top.partition_point(|kept| *kept >= ranked);
    if at < n {
        top.insert(at, ranked);
        top.truncate(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<A: Aggregate<i64>>(agg: &A, values: &[i64]) -> Vec<A::Out> {
        let mut acc = A::Acc::default();
        for v in values {
            agg.add(&mut acc, v);
        }
        let mut out = Vec::new();
        agg.finish(acc, &mut |o| out.push(o));
        out
    }

    fn merged<A: Aggregate<i64>>(agg: &A, left: &[i64], right: &[i64]) -> Vec<A::Out> {
        let (mut a, mut b) = (A::Acc::default(), A::Acc::default());
        left.iter().for_each(|v| agg.add(&mut a, v));
        right.iter().for_each(|v| agg.add(&mut b, v));
        agg.merge(&mut a, b);
        let mut out = Vec::new();
        agg.finish(a, &mut |o| out.push(o));
        out
    }

    #[test]
    fn the_provided_aggregates_fold_and_merge_alike() {
        let values = [5, -3, 9, 9, 1];
        let value = |v: &i64| *v;
        assert_eq!(run(&Count, &values), vec![5]);
        assert_eq!(run(&Sum(value), &values), vec![21]);
        assert_eq!(run(&Min(value), &values), vec![-3]);
        assert_eq!(run(&Max(value), &values), vec![9]);
        assert_eq!(run(&Average(value), &values), vec![Mean { sum: 21, count: 5 }]);
        let top = TopN {
            n: 3,
            rank: |v: &i64| (*v, 0),
        };
        assert_eq!(run(&top, &values), vec![vec![(9, 0), (9, 0), (5, 0)]]);
        assert!(run(&Min(value), &[]).is_empty(), "an empty window has no min");
        let (left, right) = values.split_at(2);
        assert_eq!(merged(&Count, left, right), run(&Count, &values));
        assert_eq!(merged(&Sum(value), left, right), run(&Sum(value), &values));
        assert_eq!(merged(&Min(value), left, right), run(&Min(value), &values));
        assert_eq!(merged(&Min(value), &[], right), run(&Min(value), right));
        assert_eq!(merged(&Max(value), left, right), run(&Max(value), &values));
        assert_eq!(merged(&Max(value), left, &[]), run(&Max(value), left));
        assert_eq!(
            merged(&Average(value), left, right),
            run(&Average(value), &values)
        );
        assert_eq!(merged(&top, left, right), run(&top, &values));
    }
}
