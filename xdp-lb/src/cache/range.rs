//! Single byte ranges (RFC 9110 section 14) answered from a stored complete response.
use http::HeaderMap;

#[derive(Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No usable Range: answer with the whole body.
    Full,
    /// Inclusive byte offsets to send with 206.
    Partial(u64, u64),
    /// 416: the range starts past the end.
    Unsatisfiable,
}

/// Decides how a request's `Range` applies to a body of `len` bytes. Multiple ranges, other
/// units, malformed values and `If-Range` (not evaluated here) fall back to the full body.
pub fn answer(req: &HeaderMap, len: u64) -> RangeAnswer {
    if req.contains_key(http::header::IF_RANGE) {
        return RangeAnswer::Full;
    }
    let mut all = req.get_all(http::header::RANGE).iter();
    let (Some(v), None) = (all.next(), all.next()) else {
        return RangeAnswer::Full;
    };
    let Some(spec) = v
        .to_str()
        .ok()
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return RangeAnswer::Full;
    };
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let num = |s: &str| s.trim().parse::<u64>().ok();
    match (first.trim().is_empty(), num(first), num(last)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(n)) if n > 0 => {
            if len == 0 {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Partial(len.saturating_sub(n), len - 1)
            }
        }
        (false, Some(start), end) if last.trim().is_empty() || end.is_some() => {
            if start >= len {
                return RangeAnswer::Unsatisfiable;
            }
            match end {
                Some(e) if e < start => RangeAnswer::Full,
                Some(e) => RangeAnswer::Partial(start, e.min(len - 1)),
                None => RangeAnswer::Partial(start, len - 1),
            }
        }
        _ => RangeAnswer::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(range: &str, len: u64) -> RangeAnswer {
        let mut h = HeaderMap::new();
        h.insert(http::header::RANGE, range.parse().unwrap());
        answer(&h, len)
    }

    #[test]
    fn single_ranges() {
        assert_eq!(ask("bytes=0-4", 10), RangeAnswer::Partial(0, 4));
        assert_eq!(ask("bytes=5-", 10), RangeAnswer::Partial(5, 9));
        assert_eq!(ask("bytes=-3", 10), RangeAnswer::Partial(7, 9));
        assert_eq!(ask("bytes=-30", 10), RangeAnswer::Partial(0, 9));
        assert_eq!(ask("bytes=8-100", 10), RangeAnswer::Partial(8, 9));
        assert_eq!(ask("bytes=10-", 10), RangeAnswer::Unsatisfiable);
    }

    #[test]
    fn everything_else_is_the_full_body() {
        assert_eq!(ask("bytes=0-1,3-4", 10), RangeAnswer::Full);
        assert_eq!(ask("items=0-1", 10), RangeAnswer::Full);
        assert_eq!(ask("bytes=5-2", 10), RangeAnswer::Full);
        assert_eq!(ask("bytes=x-", 10), RangeAnswer::Full);
        assert_eq!(answer(&HeaderMap::new(), 10), RangeAnswer::Full);
    }
}
