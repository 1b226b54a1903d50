//! Response bodies of the proxy: a buffered body (cache hits, stored misses) or an upstream body
//! streamed through, possibly after a prefix that was read while deciding whether to store it.
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::upstream::Lease;

pub struct ProxyBody {
    prefix: Option<Bytes>,
    rest: Option<Incoming>,
    /// Held until the body ends so least-conn counts streaming responses as busy.
    _lease: Option<Lease>,
}

impl ProxyBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        Self {
            prefix: (!b.is_empty()).then_some(b),
            rest: None,
            _lease: None,
        }
    }

    pub fn empty() -> Self {
        Self {
            prefix: None,
            rest: None,
            _lease: None,
        }
    }

    pub fn stream(prefix: Bytes, rest: Incoming, lease: Option<Lease>) -> Self {
        Self {
            prefix: (!prefix.is_empty()).then_some(prefix),
            rest: Some(rest),
            _lease: lease,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let p = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        match &self.rest {
            None => SizeHint::with_exact(p),
            Some(r) => {
                let h = r.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(h.lower() + p);
                if let Some(u) = h.upper() {
                    out.set_upper(u + p);
                }
                out
            }
        }
    }
}
