//! Renders the libraries' `log` records on stderr the way verity has always
//! printed its diagnostics: `verity: <message>`, warnings as
//! `verity: warning: <message>`.

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLogger;

static LOGGER: StderrLogger = StderrLogger;

/// Debug and trace records are for tests that capture them, not for users.
const SHOWN_LEVEL: LevelFilter = LevelFilter::Info;

pub fn install() {
    // Fails only if a logger is already set, and then that one renders.
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(SHOWN_LEVEL);
    }
}

/// One record as the user sees it.
pub fn render(level: Level, message: &std::fmt::Arguments<'_>) -> String {
    match level {
        Level::Warn => format!("verity: warning: {message}"),
        _ => format!("verity: {message}"),
    }
}

/// One line to stderr in one write: processes of a local cluster share
/// stderr, and `eprintln!` writes the text and its newline separately, so
/// lines of two processes could run together.
pub fn write_line(text: &str) {
    use std::io::Write;
    let line = format!("{text}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// librdkafka's own log (target `librdkafka`: every connection attempt and
/// broker state change, several lines a second while a broker is down) and
/// the rdkafka crate's echo of its global errors (targets `rdkafka::…`) would
/// bury the Kafka connector's one-line errors; this variable shows them.
pub const LIBRDKAFKA_LOG_VAR: &str = "VERITY_LIBRDKAFKA_LOG";

fn librdkafka_log_shown() -> bool {
    static SHOWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SHOWN.get_or_init(|| std::env::var_os(LIBRDKAFKA_LOG_VAR).is_some())
}

fn is_kafka_client_log(target: &str) -> bool {
    target.starts_with("librdkafka") || target.starts_with("rdkafka")
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= SHOWN_LEVEL && (!is_kafka_client_log(metadata.target()) || librdkafka_log_shown())
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            write_line(&render(record.level(), record.args()));
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_render_as_before() {
        assert_eq!(
            render(
                Level::Warn,
                &format_args!("cannot pin worker threads to cores; running unpinned")
            ),
            "verity: warning: cannot pin worker threads to cores; running unpinned"
        );
        assert_eq!(
            render(Level::Error, &format_args!("source input failed: x")),
            "verity: source input failed: x"
        );
        assert_eq!(
            render(
                Level::Info,
                &format_args!("source input listening on 127.0.0.1:1")
            ),
            "verity: source input listening on 127.0.0.1:1"
        );
    }
}
