//! From a command-line argument to a connector: the built-in forms (`-`,
//! `null`, `tcp:HOST:PORT`, `file://PATH`, a plain path) and URL schemes
//! registered by other crates (`kafka://…` from a future `verity-kafka`).

use super::SourceConnector;
use crate::sink::SinkSpec;
use crate::source::SourceSpec;
use std::fmt;
use std::sync::Arc;

/// Builds a source connector from its whole argument (`scheme://…`).
pub type SourceFactory = Arc<dyn Fn(&str) -> Result<Box<dyn SourceConnector>, ConnectorError> + Send + Sync>;
/// Builds a sink from its whole argument (`scheme://…`); usually a
/// `SinkSpec::Custom`.
pub type SinkFactory = Arc<dyn Fn(&str) -> Result<SinkSpec, ConnectorError> + Send + Sync>;

/// Schemes the built-in connectors answer to.
const BUILT_IN_SCHEMES: [&str; 3] = ["tcp", "file", "dir"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectorError {
    #[error("`{arg}`: no connector for the scheme `{scheme}://` (known: {known})")]
    UnknownScheme {
        arg: String,
        scheme: String,
        known: String,
    },
    /// A registered connector refused its argument.
    #[error("`{arg}`: {reason}")]
    Invalid { arg: String, reason: String },
}

/// The connectors a program knows: the built-in ones plus the schemes it
/// registered. Registered schemes are looked up first, so a crate may also
/// replace a built-in one.
#[derive(Clone, Default)]
pub struct Connectors {
    sources: Vec<(String, SourceFactory)>,
    sinks: Vec<(String, SinkFactory)>,
}

impl fmt::Debug for Connectors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sources: Vec<&str> = self.sources.iter().map(|(s, _)| s.as_str()).collect();
        let sinks: Vec<&str> = self.sinks.iter().map(|(s, _)| s.as_str()).collect();
        f.debug_struct("Connectors")
            .field("sources", &sources)
            .field("sinks", &sinks)
            .finish()
    }
}

/// `scheme` of `scheme://rest`, if `arg` has that form.
fn scheme_of(arg: &str) -> Option<&str> {
    let (scheme, _) = arg.split_once("://")?;
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (first_ok && rest_ok).then_some(scheme)
}

/// `tcp:HOST:PORT` or `tcp://HOST:PORT` → `HOST:PORT`.
pub(crate) fn tcp_address(arg: &str) -> Option<&str> {
    arg.strip_prefix("tcp://").or_else(|| arg.strip_prefix("tcp:"))
}

impl Connectors {
    /// Only the built-in connectors.
    pub fn built_in() -> Self {
        Connectors::default()
    }

    /// Adds (or replaces) the source connector for `scheme://…`.
    pub fn with_source(mut self, scheme: &str, factory: SourceFactory) -> Self {
        self.sources.retain(|(s, _)| s != scheme);
        self.sources.push((scheme.to_string(), factory));
        self
    }

    /// Adds (or replaces) the sink for `scheme://…`.
    pub fn with_sink(mut self, scheme: &str, factory: SinkFactory) -> Self {
        self.sinks.retain(|(s, _)| s != scheme);
        self.sinks.push((scheme.to_string(), factory));
        self
    }

    /// A command-line source: a registered `scheme://…`, `-` (stdin),
    /// `tcp:HOST:PORT` (listen there), `file://PATH`, `dir://PATH` (each
    /// file of the directory a partition), or a file path.
    pub fn source(&self, arg: &str) -> Result<SourceSpec, ConnectorError> {
        if let Some(scheme) = scheme_of(arg) {
            if let Some((_, factory)) = self.sources.iter().find(|(s, _)| s == scheme) {
                return Ok(SourceSpec::from_connector(arg, factory(arg)?));
            }
            if !BUILT_IN_SCHEMES.contains(&scheme) {
                return Err(self.unknown(arg, scheme, &self.sources));
            }
        }
        Ok(if arg == "-" {
            SourceSpec::stdin()
        } else if let Some(address) = tcp_address(arg) {
            SourceSpec::tcp_listen(arg, address)
        } else if let Some(dir) = arg.strip_prefix("dir://") {
            SourceSpec::from_connector(arg, Box::new(super::sources::DirSource::new(dir)))
        } else {
            SourceSpec::file(arg, arg.strip_prefix("file://").unwrap_or(arg))
        })
    }

    /// A command-line sink: a registered `scheme://…`, `-` (stdout), `null`,
    /// `tcp:HOST:PORT` (connect there), `file://PATH`, or a file path.
    pub fn sink(&self, arg: &str) -> Result<SinkSpec, ConnectorError> {
        if let Some(scheme) = scheme_of(arg) {
            if let Some((_, factory)) = self.sinks.iter().find(|(s, _)| s == scheme) {
                return factory(arg);
            }
            if !BUILT_IN_SCHEMES.contains(&scheme) {
                return Err(self.unknown(arg, scheme, &self.sinks));
            }
        }
        if scheme_of(arg) == Some("dir") {
            return Err(ConnectorError::Invalid {
                arg: arg.into(),
                reason: "`dir://` is a source (a directory of partition files), not a sink".into(),
            });
        }
        Ok(if arg == "-" {
            SinkSpec::Stdout
        } else if arg == "null" {
            SinkSpec::Null
        } else if let Some(address) = tcp_address(arg) {
            SinkSpec::Tcp(address.to_string())
        } else {
            SinkSpec::File(arg.strip_prefix("file://").unwrap_or(arg).into())
        })
    }

    fn unknown<F>(&self, arg: &str, scheme: &str, registered: &[(String, F)]) -> ConnectorError {
        let mut known: Vec<&str> = BUILT_IN_SCHEMES.to_vec();
        known.extend(registered.iter().map(|(s, _)| s.as_str()));
        ConnectorError::UnknownScheme {
            arg: arg.into(),
            scheme: scheme.into(),
            known: known
                .iter()
                .map(|s| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::sources::MemorySource;
    use crate::sink::CustomSink;

    #[test]
    fn schemes_are_recognised_only_in_url_form() {
        assert_eq!(scheme_of("kafka://h:9092/t"), Some("kafka"));
        assert_eq!(scheme_of("file:///tmp/x"), Some("file"));
        assert_eq!(scheme_of("in.txt"), None);
        assert_eq!(scheme_of("dir/a://b"), None, "a path that happens to hold ://");
        assert_eq!(scheme_of("://x"), None);
    }

    #[test]
    fn built_in_arguments_map_to_built_in_connectors() {
        let c = Connectors::built_in();
        assert_eq!(c.source("-").unwrap().connector.kind(), "stdin");
        assert_eq!(c.source("tcp:127.0.0.1:9").unwrap().connector.kind(), "tcp");
        assert_eq!(c.source("tcp://127.0.0.1:9").unwrap().connector.kind(), "tcp");
        assert_eq!(c.source("in.txt").unwrap().connector.kind(), "file");
        assert_eq!(c.source("file:///tmp/in.txt").unwrap().name, "file:///tmp/in.txt");
        let dir = c.source("dir:///tmp/parts").unwrap();
        assert_eq!(dir.connector.kind(), "dir");
        assert!(dir.connector.readable_on_every_process());
        assert_eq!(c.sink("-").unwrap(), SinkSpec::Stdout);
        assert_eq!(c.sink("null").unwrap(), SinkSpec::Null);
        assert_eq!(
            c.sink("tcp:127.0.0.1:1").unwrap(),
            SinkSpec::Tcp("127.0.0.1:1".into())
        );
        assert_eq!(c.sink("out.txt").unwrap(), SinkSpec::File("out.txt".into()));
        assert_eq!(c.sink("file:///tmp/o").unwrap(), SinkSpec::File("/tmp/o".into()));
    }

    #[test]
    fn an_unregistered_scheme_is_a_clear_error() {
        let e = Connectors::built_in().source("kafka://h:9092/t").err().unwrap();
        let text = e.to_string();
        assert!(
            text.contains("kafka://") && text.contains("tcp://, file://, dir://"),
            "{text}"
        );
        assert!(Connectors::built_in().sink("kafka://h/t").is_err());
        assert!(Connectors::built_in().sink("dir:///tmp/o").is_err());
    }

    #[test]
    fn registered_schemes_build_their_connectors() {
        let source: SourceFactory = Arc::new(|arg: &str| {
            let topic = arg.rsplit('/').next().unwrap_or_default().to_string();
            if topic.is_empty() {
                return Err(ConnectorError::Invalid {
                    arg: arg.into(),
                    reason: "no topic".into(),
                });
            }
            Ok(Box::new(MemorySource {
                data: topic.into_bytes().into(),
            }) as Box<dyn SourceConnector>)
        });
        let sink: SinkFactory = Arc::new(|arg: &str| {
            Ok(SinkSpec::Custom(CustomSink::new(arg, |_context| {
                Ok(Box::new(crate::connector::sinks::NullSink) as _)
            })))
        });
        let c = Connectors::built_in()
            .with_source("log", source)
            .with_sink("log", sink);
        let spec = c.source("log://broker/topic").unwrap();
        assert_eq!(
            (spec.name.as_str(), spec.connector.kind()),
            ("log://broker/topic", "memory")
        );
        assert!(matches!(
            c.source("log://broker/"),
            Err(ConnectorError::Invalid { .. })
        ));
        assert!(matches!(c.sink("log://b/t").unwrap(), SinkSpec::Custom(_)));
        assert!(c.source("other://x").is_err(), "only what was registered");
        assert_eq!(
            format!("{c:?}"),
            r#"Connectors { sources: ["log"], sinks: ["log"] }"#
        );
    }
}
