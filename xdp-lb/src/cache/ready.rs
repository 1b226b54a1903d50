//! A fresh hit's answer head, prepared once per stored entry and content coding: the stored
//! headers with `X-Cache: HIT`, `Vary`, `Content-Encoding`, `Content-Length` and the weakened
//! `ETag` of a compressed variant already in place, and a slot for `Age`. A hot-tier hit
//! then costs one clone of that map and one value written, instead of a clone that grows, two
//! inserts and the per-coding rewriting (`Proxy::serve_entry` builds the same head each time).
//!
//! Only plain requests use it: conditional ones (304), ranges and other labels than `HIT` take
//! the general path, which answers every case.
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use http::header::{HeaderValue, AGE};
use http::{HeaderMap, StatusCode};

use super::compress::Coding;

/// The prepared heads of one entry, by coding; each is made on its first use. A copy starts
/// empty: a copied entry is made to be changed (revalidation merges new headers into it).
#[derive(Default)]
pub struct Ready {
    /// Identity, gzip, brotli.
    heads: [OnceLock<Head>; 3],
}

impl Clone for Ready {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let made = self.heads.iter().filter(|h| h.get().is_some()).count();
        write!(f, "Ready({made} heads)")
    }
}

fn slot(coding: Option<Coding>) -> usize {
    match coding {
        None => 0,
        Some(Coding::Gzip) => 1,
        Some(Coding::Brotli) => 2,
    }
}

pub struct Head {
    pub status: StatusCode,
    /// Includes `Age` (its value the one of the last answer made from it).
    headers: HeaderMap,
    pub body: Bytes,
    /// The last `Age` value made, by its seconds: within a second every hit reuses it (a
    /// reference count) instead of formatting and allocating a new one.
    age: Mutex<(u64, HeaderValue)>,
}

impl Head {
    /// `headers` is the full answer head but for `Age`.
    pub fn new(status: StatusCode, mut headers: HeaderMap, body: Bytes) -> Self {
        let age = HeaderValue::from_static("0");
        // Present from the start, so each answer's insert replaces it in place rather than
        // growing the cloned map.
        headers.insert(AGE, age.clone());
        Self {
            status,
            headers,
            body,
            age: Mutex::new((0, age)),
        }
    }

    /// The answer's headers with `Age: age_s`.
    pub fn headers(&self, age_s: u64) -> HeaderMap {
        // Never waits: another thread formatting the same second's value is rare, and then
        // this answer formats its own.
        let age = match self.age.try_lock() {
            Ok(mut last) => {
                if last.0 != age_s {
                    *last = (age_s, HeaderValue::from(age_s));
                }
                last.1.clone()
            }
            Err(_) => HeaderValue::from(age_s),
        };
        let mut headers = self.headers.clone();
        headers.insert(AGE, age);
        headers
    }
}

impl Ready {
    /// The head for `coding`, made by `make` the first time.
    pub fn head(&self, coding: Option<Coding>, make: impl FnOnce() -> Head) -> &Head {
        self.heads[slot(coding)].get_or_init(make)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_is_written_per_answer_and_copies_start_empty() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert(AGE, HeaderValue::from_static("7"));
        let ready = Ready::default();
        let head = ready.head(None, || Head::new(StatusCode::OK, h, Bytes::new()));
        for (age, want) in [(3, "3"), (3, "3"), (4, "4"), (0, "0")] {
            let out = head.headers(age);
            assert_eq!(out.get_all(AGE).iter().count(), 1);
            assert_eq!(out[AGE], want);
            assert_eq!(out["x-a"], "1");
        }
        // Made once per coding.
        let again = ready.head(None, || panic!("made twice"));
        assert!(std::ptr::eq(head, again));
        assert!(ready.clone().heads.iter().all(|h| h.get().is_none()));
    }
}
