//! `kafka://HOST:PORT[,HOST:PORT]/TOPIC[?start=…&until=end&group=NAME]`:
//! what a Kafka source or sink argument says, checked before anything
//! connects.

use std::fmt;

/// Where a partition starts when the run has no checkpoint position for it
/// (a recovery always resumes where its checkpoint says: the restored state
/// holds exactly what came before).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest record the broker still has.
    Earliest,
    /// What arrives after the run starts.
    Latest,
    /// The checkpoint's position if the run recovers, else the earliest
    /// (the default).
    Checkpoint,
}

/// A parsed `kafka://` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaUrl {
    /// `HOST:PORT[,HOST:PORT]`, as librdkafka's `bootstrap.servers` takes it.
    pub brokers: String,
    pub topic: String,
    pub start: StartAt,
    /// Stop at the end offsets seen when the partition opened (a bounded run).
    pub until_end: bool,
    /// Commit offsets to this consumer group after each checkpoint (for
    /// monitoring; verity's checkpoint stays the source of truth).
    pub group: Option<String>,
}

/// Kafka's own limit on topic names.
const TOPIC_NAME_MAX_BYTES: usize = 249;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{arg}`: {reason} (expected kafka://HOST:PORT[,HOST:PORT]/TOPIC[?start=earliest|latest|checkpoint&until=end&group=NAME])")]
pub struct UrlError {
    pub arg: String,
    pub reason: String,
}

impl KafkaUrl {
    pub fn parse(arg: &str) -> Result<KafkaUrl, UrlError> {
        let bad = |reason: String| UrlError {
            arg: arg.to_string(),
            reason,
        };
        let rest = arg
            .strip_prefix("kafka://")
            .ok_or_else(|| bad("not a kafka:// URL".into()))?;
        let (address, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (brokers, topic) = address
            .split_once('/')
            .ok_or_else(|| bad("no /TOPIC after the brokers".into()))?;
        for broker in brokers.split(',') {
            check_broker(broker).map_err(&bad)?;
        }
        check_topic(topic).map_err(&bad)?;
        let mut url = KafkaUrl {
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            start: StartAt::Checkpoint,
            until_end: false,
            group: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("option `{pair}` has no `=VALUE`")))?;
            match (name, value) {
                ("start", "earliest") => url.start = StartAt::Earliest,
                ("start", "latest") => url.start = StartAt::Latest,
                ("start", "checkpoint") => url.start = StartAt::Checkpoint,
                ("until", "end") => url.until_end = true,
                ("group", name) if !name.is_empty() => url.group = Some(name.to_string()),
                _ => return Err(bad(format!("unknown option or value `{pair}`"))),
            }
        }
        Ok(url)
    }
}

fn check_broker(broker: &str) -> Result<(), String> {
    let (host, port) = broker
        .rsplit_once(':')
        .ok_or_else(|| format!("broker `{broker}` has no :PORT"))?;
    if host.is_empty() {
        return Err(format!("broker `{broker}` has no host"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("broker `{broker}`: `{port}` is not a port number"))?;
    Ok(())
}

fn check_topic(topic: &str) -> Result<(), String> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if topic.is_empty() || topic.len() > TOPIC_NAME_MAX_BYTES || !topic.chars().all(legal) {
        return Err(format!(
            "`{topic}` is not a topic name (1-{TOPIC_NAME_MAX_BYTES} of [A-Za-z0-9._-])"
        ));
    }
    Ok(())
}

impl fmt::Display for KafkaUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kafka://{}/{}", self.brokers, self.topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_url_parses() {
        let url = KafkaUrl::parse("kafka://a:9092,b:9093/in.put?start=latest&until=end&group=g1").unwrap();
        assert_eq!(url.brokers, "a:9092,b:9093");
        assert_eq!(url.topic, "in.put");
        assert_eq!(url.start, StartAt::Latest);
        assert!(url.until_end);
        assert_eq!(url.group.as_deref(), Some("g1"));
        assert_eq!(url.to_string(), "kafka://a:9092,b:9093/in.put");
        let plain = KafkaUrl::parse("kafka://127.0.0.1:9092/t").unwrap();
        assert_eq!(
            (plain.start, plain.until_end, plain.group),
            (StartAt::Checkpoint, false, None)
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (arg, what) in [
            ("kafka://h:9092", "no /TOPIC"),
            ("kafka://h/t", "no :PORT"),
            ("kafka://h:x/t", "not a port"),
            ("kafka://h:1/", "not a topic name"),
            ("kafka://h:1/a b", "not a topic name"),
            ("kafka://h:1/t?start=middle", "start=middle"),
            ("kafka://h:1/t?until", "no `=VALUE`"),
            ("kafka://:1/t", "no host"),
        ] {
            let e = KafkaUrl::parse(arg).unwrap_err().to_string();
            assert!(e.contains(what) && e.contains(arg), "{arg}: {e}");
        }
    }
}
