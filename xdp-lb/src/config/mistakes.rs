//! Every mistake of a configuration, collected instead of stopping at the first, so
//! an operator fixes a file in one round rather than one error per `check`.
use std::fmt;

use super::ConfigError;

/// One mistake and where it is: a key (`max_services`), a table by its position in
/// the file (`service[1].backend[2]`, counted from 0 as in `[[service]]` order) or
/// the command line. Empty for mistakes of the configuration as a whole.
#[derive(Debug)]
pub struct Mistake {
    pub at: String,
    pub error: ConfigError,
}

impl fmt::Display for Mistake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.at.is_empty() {
            write!(f, "{}: ", self.at)?;
        }
        // The whole chain on one line: a list item has no room for "caused by" blocks.
        write!(f, "{}", self.error)?;
        let mut source = std::error::Error::source(&self.error);
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

/// The list every check of a configuration adds to.
#[derive(Debug, Default)]
pub(super) struct Mistakes(Vec<Mistake>);

impl Mistakes {
    pub fn add(&mut self, at: impl Into<String>, error: ConfigError) {
        self.0.push(Mistake {
            at: at.into(),
            error,
        });
    }

    /// The value of `r`, or `None` with its error recorded at `at`.
    pub fn check<T>(&mut self, at: &str, r: Result<T, ConfigError>) -> Option<T> {
        r.map_err(|e| self.add(at, e)).ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `Ok` when nothing was recorded. A single mistake is returned as it is (its
    /// message already names the service or key); several as one `Invalid` error
    /// listing each with its place.
    pub fn into_result(mut self, origin: &str) -> Result<(), ConfigError> {
        match self.0.len() {
            0 => Ok(()),
            1 => Err(self.0.pop().expect("one mistake").error),
            _ => Err(ConfigError::Invalid {
                origin: origin.to_string(),
                mistakes: self.0,
            }),
        }
    }
}

/// The list under `Invalid`'s headline, one mistake per line.
pub(super) fn render(mistakes: &[Mistake]) -> String {
    mistakes.iter().map(|m| format!("\n  - {m}")).collect()
}

#[cfg(test)]
mod tests {
    use crate::config::{parse_str, ConfigError};

    /// One file with a mistake in nearly every place: all are reported, each where it is.
    #[test]
    fn every_mistake_of_a_file_is_reported_with_its_place() {
        let text = r#"
interfaces = ["eth0", "eth0"]
xdp_mode = "turbo"
max_services = 0

[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
algorithm = "fastest"

[[service.backend]]
addr = "198.18.1.2"
port = 8080
weight = 0

[[service.backend]]
addr = "198.18.1.300"
port = 8080

[[service]]
name = "dns"
vip = "198.18.100.2"
port = 53
proto = "udp"
table_size = 1000

[[service.backend]]
addr = "198.18.1.5"
port = 53

[[service.backend]]
addr = "198.18.1.5"
port = 53

[[service.backend]]
addr = "198.18.100.2"
port = 53
"#;
        let e = parse_str(text).unwrap_err();
        let ConfigError::Invalid { mistakes, .. } = &e else {
            panic!("expected every mistake, got {e:?}");
        };
        let listed: Vec<String> = mistakes.iter().map(ToString::to_string).collect();
        let expected = [
            ("interfaces: ", "listed twice"),
            ("xdp_mode: ", "\"turbo\""),
            ("max_services: ", "must be in 1..="),
            ("service[0]: ", "unknown algorithm \"fastest\""),
            ("service[0].backend[0]: ", "weight 0 out of range"),
            ("service[0].backend[1]: ", "\"198.18.1.300\""),
            ("service[1].backend[1]: ", "198.18.1.5:53 listed twice"),
            ("service[1].backend[2]: ", "VIP's own address"),
            ("service[1]: ", "table_size 1000 is not prime"),
        ];
        for (at, what) in expected {
            assert!(
                listed.iter().any(|l| l.starts_with(at) && l.contains(what)),
                "no {at}...{what} in {listed:#?}"
            );
        }
        assert_eq!(listed.len(), expected.len(), "{listed:#?}");
        let text = e.to_string();
        assert!(
            text.starts_with("the configuration: 9 mistakes; fix each of them:\n  - "),
            "{text}"
        );
    }

    /// A single mistake keeps its own variant and message.
    #[test]
    fn one_mistake_is_reported_as_itself() {
        let e = parse_str(
            "interfaces = [\"eth0\"]\n[[service]]\nvip = \"198.18.100.1\"\nport = 80\n\
             [[service.backend]]\naddr = \"198.18.1.2\"\nport = 8080\nweight = 70000\n",
        )
        .unwrap_err();
        assert!(matches!(e, ConfigError::WeightOutOfRange { .. }), "{e:?}");
    }
}
