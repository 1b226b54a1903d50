//! Response bodies of the proxy: a buffered body (cache hits, stored misses) or an upstream body
//! streamed through, possibly after a prefix that was read while deciding whether to store it,
//! and possibly compressed on the way out (responses that are not stored, see `encode`).
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::encode::Encoder;
use super::upstream::Lease;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where the bytes come from: a prefix held in memory, then the rest of an upstream body.
struct Source {
    prefix: Option<Bytes>,
    rest: Option<Incoming>,
}

impl Source {
    fn poll_frame(
        &mut self,
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
}

pub struct ProxyBody {
    source: Source,
    /// Compresses the source on the way out; `None` once its trailer was sent.
    encoder: Option<Encoder>,
    encoded: bool,
    /// Held until the body ends so least-conn counts streaming responses as busy.
    _lease: Option<Lease>,
}

impl ProxyBody {
    fn new(prefix: Bytes, rest: Option<Incoming>, lease: Option<Lease>) -> Self {
        Self {
            source: Source {
                prefix: (!prefix.is_empty()).then_some(prefix),
                rest,
            },
            encoder: None,
            encoded: false,
            _lease: lease,
        }
    }

    pub fn full(b: impl Into<Bytes>) -> Self {
        Self::new(b.into(), None, None)
    }

    pub fn empty() -> Self {
        Self::new(Bytes::new(), None, None)
    }

    pub fn stream(prefix: Bytes, rest: Incoming, lease: Option<Lease>) -> Self {
        Self::new(prefix, Some(rest), lease)
    }

    /// The same body, compressed by `encoder` as it is sent.
    pub fn encoded(mut self, encoder: Encoder) -> Self {
        self.encoder = Some(encoder);
        self.encoded = true;
        self
    }

    fn poll_encoded(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // Bounded: each turn consumes one frame of the source, which ends or goes pending.
        loop {
            let Some(enc) = self.encoder.as_mut() else {
                return Poll::Ready(None);
            };
            let step = match self.source.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => enc.write(&data),
                    // Trailers cannot follow a body whose framing we changed; dropped.
                    Err(_) => continue,
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => {
                    let out = enc.finish();
                    self.encoder = None;
                    out
                }
                // Nothing more for now: send what was compressed so far instead of holding it.
                Poll::Pending => match enc.flush() {
                    Ok(b) if b.is_empty() => return Poll::Pending,
                    other => other,
                },
            };
            match step {
                Ok(b) if b.is_empty() && self.encoder.is_some() => continue,
                Ok(b) if b.is_empty() => return Poll::Ready(None),
                Ok(b) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.encoded {
            return self.poll_encoded(cx);
        }
        self.source.poll_frame(cx).map_err(BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        if self.encoded {
            return self.encoder.is_none();
        }
        self.source.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.encoded {
            return SizeHint::new();
        }
        let p = self.source.prefix.as_ref().map_or(0, |p| p.len() as u64);
        match &self.source.rest {
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
