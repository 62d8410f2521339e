//! The windowed two-stream join as an `Aggregate`: a window keeps both
//! sides' records and pairs them when it closes.

use super::Aggregate;
use crate::flow::Either;
use crate::wire::{Wire, WireError};
use std::marker::PhantomData;
use std::sync::Arc;

/// Makes one output of a left and a right record.
pub type PairFn<A, B, O> = dyn Fn(&A, &B) -> O + Send + Sync;

/// Pairs the records of both sides that share a key and a window.
pub struct Join<A, B, O> {
    pair: Arc<PairFn<A, B, O>>,
    _sides: PhantomData<fn(A, B)>,
}

impl<A, B, O> Join<A, B, O> {
    pub fn new(pair: impl Fn(&A, &B) -> O + Send + Sync + 'static) -> Self {
        Join {
            pair: Arc::new(pair),
            _sides: PhantomData,
        }
    }
}

/// A join window's records, each side in input order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sides<A, B> {
    pub left: Vec<A>,
    pub right: Vec<B>,
}

impl<A, B> Default for Sides<A, B> {
    fn default() -> Self {
        Sides {
            left: Vec::new(),
            right: Vec::new(),
        }
    }
}

impl<A: Wire, B: Wire> Wire for Sides<A, B> {
    fn encode(&self, out: &mut Vec<u8>) {
        self.left.encode(out);
        self.right.encode(out);
    }
    fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(Sides {
            left: Vec::decode(input)?,
            right: Vec::decode(input)?,
        })
    }
}

impl<A, B, O> Aggregate<Either<A, B>> for Join<A, B, O>
where
    A: Wire + Clone + Send + 'static,
    B: Wire + Clone + Send + 'static,
    O: 'static,
{
    type Acc = Sides<A, B>;
    type Out = O;
    fn add(&self, acc: &mut Sides<A, B>, value: &Either<A, B>) {
        match value {
            Either::Left(a) => acc.left.push(a.clone()),
            Either::Right(b) => acc.right.push(b.clone()),
        }
    }
    fn merge(&self, into: &mut Sides<A, B>, from: Sides<A, B>) {
        into.left.extend(from.left);
        into.right.extend(from.right);
    }
    fn finish(&self, acc: Sides<A, B>, emit: &mut dyn FnMut(O)) {
        for a in &acc.left {
            for b in &acc.right {
                emit((self.pair)(a, b));
            }
        }
    }
}
