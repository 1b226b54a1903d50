//! A bounded ring of the last N computed figures (default 300: five minutes at one sample a
//! second), for the dashboard's sparklines and for window reports. Memory stays fixed
//! however long the daemon runs: the oldest entry goes when a new one comes.
use std::collections::VecDeque;

pub const DEFAULT_CAPACITY: usize = 300;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("history capacity must be at least 1 sample")]
pub struct ZeroCapacity;

#[derive(Clone, Debug)]
pub struct History<T> {
    items: VecDeque<T>,
    capacity: usize,
}

impl<T> History<T> {
    pub fn new(capacity: usize) -> Result<Self, ZeroCapacity> {
        if capacity == 0 {
            return Err(ZeroCapacity);
        }
        Ok(Self {
            items: VecDeque::with_capacity(capacity),
            capacity,
        })
    }

    pub fn push(&mut self, item: T) {
        if self.items.len() == self.capacity {
            self.items.pop_front();
        }
        self.items.push_back(item);
    }

    pub fn latest(&self) -> Option<&T> {
        self.items.back()
    }

    /// Oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + ExactSizeIterator {
        self.items.iter()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keeps_only_the_newest_capacity_items() {
        let mut h = History::new(DEFAULT_CAPACITY).unwrap();
        for i in 0..1000 {
            h.push(i);
        }
        assert_eq!(h.len(), 300);
        assert_eq!(h.iter().next(), Some(&700));
        assert_eq!(h.latest(), Some(&999));
        assert!(h.iter().zip(h.iter().skip(1)).all(|(a, b)| b - a == 1));
    }

    #[test]
    fn zero_capacity_is_refused() {
        assert_eq!(History::<u8>::new(0).unwrap_err(), ZeroCapacity);
    }
}
