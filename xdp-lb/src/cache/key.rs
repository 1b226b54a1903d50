//! Cache keys: rendered from the operator's template, long keys shortened with a hash.
use http::request::Parts;
use sha2::{Digest, Sha256};

use super::request::normalize_host;

/// Keys longer than this keep their first `KEEP` bytes and get a hash of the whole key, so
/// they stay bounded while prefix purges still match their beginning.
const MAX_KEY: usize = 200;
const KEEP: usize = 128;

/// One piece of a key template.
#[derive(Clone, Debug, PartialEq)]
enum Piece {
    Text(String),
    Method,
    Scheme,
    Host,
    Path,
    /// Includes its `?` when there is a query.
    Query,
}

/// A key template split into its pieces once, at start: every request renders it, hot hits
/// included, and scanning the text for placeholders each time cost as much as the rest of the key.
#[derive(Clone, Debug)]
pub struct Template(Vec<Piece>);

impl Template {
    /// Splits `{method}`, `{scheme}`, `{host}`, `{path}` and `{query}` out of the text; any
    /// other brace is text.
    pub fn parse(template: &str) -> Self {
        const NAMED: [(&str, Piece); 5] = [
            ("{method}", Piece::Method),
            ("{scheme}", Piece::Scheme),
            ("{host}", Piece::Host),
            ("{path}", Piece::Path),
            ("{query}", Piece::Query),
        ];
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            text.push_str(&rest[..open]);
            let after = &rest[open..];
            match NAMED.iter().find(|(p, _)| after.starts_with(p)) {
                Some((p, piece)) => {
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(piece.clone());
                    rest = &after[p.len()..];
                }
                None => {
                    text.push('{');
                    rest = &after[1..];
                }
            }
        }
        text.push_str(rest);
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Self(pieces)
    }

    /// Renders the key of a request. HEAD shares the GET entry (a HEAD is answered from it).
    /// The host is normalised (lowercase, default port dropped, see [`normalize_host`]) so
    /// instances reached as `Example.org:80` and `example.org` share entries; `normalized` is
    /// that host when the caller has it already (from `request::target_host`), so a hit does
    /// not normalise it twice.
    pub fn render(&self, req: &Parts, normalized: Option<&str>) -> String {
        self.render_after("", req, normalized)
    }

    /// `prefix` followed by [`Template::render`]'s key, built in one string: a hot hit needs
    /// only the Redis key (`Store::entry_prefix` then the key), not the key alone.
    pub fn render_after(&self, prefix: &str, req: &Parts, normalized: Option<&str>) -> String {
        let method = if req.method == http::Method::HEAD {
            "GET"
        } else {
            req.method.as_str()
        };
        let owned;
        let host = match normalized {
            Some(h) => h,
            None => {
                let raw = req
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .or_else(|| req.uri.authority().map(|a| a.as_str()))
                    .unwrap_or("");
                // Requests with a host that does not normalise were refused before; keep the text.
                owned = normalize_host(raw)
                    .unwrap_or_else(|| std::borrow::Cow::Owned(raw.to_ascii_lowercase()));
                &owned
            }
        };
        let mut key = String::with_capacity(prefix.len() + 64 + host.len() + req.uri.path().len());
        key.push_str(prefix);
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => key.push_str(t),
                Piece::Method => key.push_str(method),
                Piece::Scheme => key.push_str("http"),
                Piece::Host => key.push_str(host),
                Piece::Path => key.push_str(req.uri.path()),
                Piece::Query => {
                    if let Some(q) = req.uri.query() {
                        key.push('?');
                        key.push_str(q);
                    }
                }
            }
        }
        if key.len() - prefix.len() <= MAX_KEY {
            return key;
        }
        let short = shorten(key.split_off(prefix.len()));
        key.push_str(&short);
        key
    }
}

pub fn shorten(key: String) -> String {
    if key.len() <= MAX_KEY {
        return key;
    }
    let mut cut = KEEP;
    while !key.is_char_boundary(cut) {
        cut -= 1;
    }
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}#h:{hex}", &key[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(template: &str, req: &Parts) -> String {
        Template::parse(template).render(req, None)
    }

    fn parts(method: &str, uri: &str, host: &str) -> Parts {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .header("host", host)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[test]
    fn default_template_and_head_shares_get() {
        let t = "{scheme}://{host}{path}{query}";
        assert_eq!(
            render(t, &parts("GET", "/a?b=1", "Example")),
            "http://example/a?b=1"
        );
        assert_eq!(
            render(t, &parts("GET", "/a", "Example:80")),
            render(t, &parts("GET", "/a", "example"))
        );
        assert_eq!(
            render(
                "{method}|{host}|{path}{query}|{x}{",
                &parts("POST", "/p?q", "h:8080")
            ),
            "POST|h:8080|/p?q|{x}{"
        );
        assert_eq!(render("{path}{query}", &parts("GET", "/p", "h")), "/p");
        assert_eq!(
            render("{method} {path}", &parts("HEAD", "/a", "x")),
            "GET /a"
        );
    }

    #[test]
    fn rendered_after_a_prefix_as_alone() {
        let t = Template::parse("{scheme}://{host}{path}{query}");
        for path in ["/a?b=1".to_string(), format!("/{}", "x".repeat(500))] {
            let req = parts("GET", &path, "Example");
            assert_eq!(
                t.render_after("xlc:e:", &req, None),
                format!("xlc:e:{}", t.render(&req, None))
            );
        }
    }

    #[test]
    fn long_keys_are_hashed_but_keep_prefix() {
        let long = format!("http://h/{}", "x".repeat(500));
        let k = shorten(long.clone());
        assert!(k.len() < 210 && k.starts_with("http://h/xxx"));
        assert_ne!(k, shorten(format!("{long}y")));
    }
}
