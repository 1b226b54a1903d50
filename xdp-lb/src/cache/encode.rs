//! On-the-fly compression of responses that are not stored (bypassed, uncacheable or too large
//! to store), as nginx's `gzip on` does for every response: the body is compressed frame by
//! frame as it streams through. Stored responses get their variants made once instead (see
//! `compress`).
use std::io::Write;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH};
use http::HeaderMap;

use super::compress::{Coding, CompressionConfig, Variants};

/// brotli's window (log2 bytes); 22 is its default and what ngx_brotli uses.
const BROTLI_LGWIN: u32 = 22;
/// brotli's internal buffer between the encoder and our output vector.
const BROTLI_BUFFER: usize = 4096;

enum Kind {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
}

/// A streaming encoder whose output is taken after every step. Writes go into a `Vec`, which
/// cannot fail, so the io errors below are theoretical.
pub struct Encoder {
    kind: Option<Kind>,
    /// Input was written since the last flush, so the encoder may hold some of it back (output
    /// appearing after a write does not mean all input so far was emitted).
    unflushed: bool,
}

impl Encoder {
    pub fn new(coding: Coding, cfg: &CompressionConfig) -> Self {
        let kind = match coding {
            Coding::Gzip => Kind::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(cfg.gzip_level),
            )),
            Coding::Brotli => Kind::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                BROTLI_BUFFER,
                cfg.brotli_level,
                BROTLI_LGWIN,
            ))),
        };
        Self {
            kind: Some(kind),
            unflushed: false,
        }
    }

    fn out(&mut self) -> Bytes {
        let v = match &mut self.kind {
            Some(Kind::Gzip(e)) => std::mem::take(e.get_mut()),
            Some(Kind::Brotli(e)) => std::mem::take(e.get_mut()),
            None => Vec::new(),
        };
        Bytes::from(v)
    }

    /// Feeds input; returns whatever compressed output is ready (often nothing).
    pub fn write(&mut self, data: &[u8]) -> std::io::Result<Bytes> {
        match &mut self.kind {
            Some(Kind::Gzip(e)) => e.write_all(data)?,
            Some(Kind::Brotli(e)) => e.write_all(data)?,
            None => return Ok(Bytes::new()),
        }
        self.unflushed |= !data.is_empty();
        Ok(self.out())
    }

    /// Pushes out everything written so far (a sync flush), so nothing waits in the encoder
    /// while the upstream is idle. Empty when nothing was written since the last output.
    pub fn flush(&mut self) -> std::io::Result<Bytes> {
        if !self.unflushed {
            return Ok(Bytes::new());
        }
        match &mut self.kind {
            Some(Kind::Gzip(e)) => e.flush()?,
            Some(Kind::Brotli(e)) => e.flush()?,
            None => {}
        }
        self.unflushed = false;
        Ok(self.out())
    }

    /// Ends the stream: the remaining output and the coding's trailer.
    pub fn finish(&mut self) -> std::io::Result<Bytes> {
        let v = match self.kind.take() {
            Some(Kind::Gzip(e)) => e.finish()?,
            // into_inner writes brotli's last block.
            Some(Kind::Brotli(e)) => e.into_inner(),
            None => Vec::new(),
        };
        Ok(Bytes::from(v))
    }
}

/// For a response that will not be stored: whether it is compressible (then it varies on
/// `Accept-Encoding`) and, if the client accepts a coding, which one to compress it with.
/// nginx's rules: a listed type, a `Content-Length` of at least `min_length` when one is
/// declared, not already encoded, no `no-transform`.
pub fn decide(
    cfg: &CompressionConfig,
    status: http::StatusCode,
    req: &HeaderMap,
    res: &HeaderMap,
) -> Option<Option<Coding>> {
    let declared = res
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    // Without a declared length the size is unknown, and nginx compresses.
    if !cfg.qualifies(status, res, declared.unwrap_or(usize::MAX)) {
        return None;
    }
    let both = Variants {
        gzip: Some(Bytes::new()),
        brotli: Some(Bytes::new()),
    };
    Some(super::compress::choose(req, &both))
}

/// The headers of a response about to be compressed with `coding` on the way out.
pub fn rewrite_headers(res: &mut HeaderMap, coding: Coding) {
    res.remove(CONTENT_LENGTH);
    res.insert(
        CONTENT_ENCODING,
        http::HeaderValue::from_static(coding.token()),
    );
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn run(coding: Coding, chunks: &[&[u8]]) -> Vec<u8> {
        let mut e = Encoder::new(coding, &CompressionConfig::default());
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            out.extend_from_slice(&e.write(c).unwrap());
            if i % 2 == 0 {
                out.extend_from_slice(&e.flush().unwrap());
            }
        }
        out.extend_from_slice(&e.finish().unwrap());
        out
    }

    #[test]
    fn streamed_output_decodes_to_the_input() {
        let a = "first part of a streamed page ".repeat(200);
        let b = "second part ".repeat(300);
        let chunks: [&[u8]; 4] = [a.as_bytes(), b"", b.as_bytes(), b"end"];
        let whole = [a.as_bytes(), b.as_bytes(), b"end"].concat();

        let mut got = Vec::new();
        flate2::read::GzDecoder::new(&run(Coding::Gzip, &chunks)[..])
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, whole);

        let mut got = Vec::new();
        brotli::Decompressor::new(&run(Coding::Brotli, &chunks)[..], 4096)
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, whole);
    }

    #[test]
    fn a_flush_makes_what_was_written_decodable() {
        let mut e = Encoder::new(Coding::Gzip, &CompressionConfig::default());
        let mut out = e.write(b"hello ").unwrap().to_vec();
        out.extend_from_slice(&e.flush().unwrap());
        assert!(e.flush().unwrap().is_empty(), "nothing new to flush");
        // A sync-flushed prefix inflates to the input so far (raw deflate after the header).
        let mut got = Vec::new();
        let _ = flate2::read::GzDecoder::new(&out[..]).read_to_end(&mut got);
        assert_eq!(got, b"hello ");

        // A write that already produced output may still hold input back; the flush after it
        // must push that out too.
        let big: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i * 7 % 251).to_le_bytes())
            .collect();
        let mut e = Encoder::new(Coding::Gzip, &CompressionConfig::default());
        let mut out = e.write(&big).unwrap().to_vec();
        assert!(!out.is_empty(), "the encoder emitted part of the input");
        out.extend_from_slice(&e.flush().unwrap());
        let mut got = Vec::new();
        let _ = flate2::read::GzDecoder::new(&out[..]).read_to_end(&mut got);
        assert_eq!(got, big);
    }

    #[test]
    fn decides_like_nginx() {
        let cfg = CompressionConfig::default();
        let ok = http::StatusCode::OK;
        let mut req = HeaderMap::new();
        req.insert(http::header::ACCEPT_ENCODING, "gzip".parse().unwrap());
        let mut res = HeaderMap::new();
        res.insert(http::header::CONTENT_TYPE, "text/html".parse().unwrap());
        // Unknown length: compressed.
        assert_eq!(decide(&cfg, ok, &req, &res), Some(Some(Coding::Gzip)));
        assert_eq!(
            decide(&cfg, ok, &HeaderMap::new(), &res),
            Some(None),
            "varies even when this client takes identity"
        );
        res.insert(CONTENT_LENGTH, "999".parse().unwrap());
        assert_eq!(decide(&cfg, ok, &req, &res), None, "below min_length");
        res.insert(CONTENT_LENGTH, "5000".parse().unwrap());
        assert_eq!(decide(&cfg, ok, &req, &res), Some(Some(Coding::Gzip)));
        res.insert(CONTENT_ENCODING, "br".parse().unwrap());
        assert_eq!(decide(&cfg, ok, &req, &res), None, "already encoded");
    }
}
