//! Service configuration: a TOML file with defaults, environment overrides, and validation that
//! fails at start-up naming the key and the fix.
//!
//! Environment overrides: `CHURNGUARD__<SECTION>__<KEY>=value`, e.g.
//! `CHURNGUARD__SOURCE__GROUP_ID=churn-eu` or `CHURNGUARD__POLICY__CONTROL_FRACTION=0.2`. For the
//! `[kafka]` pass-through map, `_` in the key becomes `.`:
//! `CHURNGUARD__KAFKA__BOOTSTRAP_SERVERS=broker:9092` sets `bootstrap.servers`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::EngineConfig;
use crate::event::DEFAULT_MAX_EVENT_BYTES;
use crate::policy::PolicyConfig;
use crate::time::Span;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}")]
    Read { path: String, source: std::io::Error },
    #[error("config {path}: {msg}")]
    Parse { path: String, msg: String },
    #[error("config key `{key}`: {msg}")]
    Invalid { key: String, msg: String },
}

fn invalid(key: &str, msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.to_string(), msg: msg.into() }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// Topics of activity events (key = user id, value = event JSON).
    pub topics: Vec<String>,
    pub group_id: String,
    /// Larger payloads go to the dead-letter topic as `too_large`.
    pub max_event_bytes: usize,
    /// A partition with no message for this long stops holding the clock back; when every
    /// partition is idle, wall-clock time advances event time.
    pub idle_timeout: Span,
    /// Rebuild a newly assigned partition's state by re-reading it from the beginning up to the
    /// committed offset (outputs suppressed). Needs topic retention >= the state horizon.
    pub restore_on_assign: bool,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            topics: vec!["activity".into()],
            group_id: "churnguard".into(),
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            idle_timeout: Span(30_000),
            restore_on_assign: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    pub interventions_topic: String,
    pub control_topic: String,
    pub dead_letter_topic: String,
    /// Outputs awaiting broker acknowledgement before consumption pauses.
    pub max_in_flight: usize,
    /// How often acknowledged offsets are committed.
    pub commit_interval: Span,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            interventions_topic: "churn-interventions".into(),
            control_topic: "churn-control".into(),
            dead_letter_topic: "churn-dead-letter".into(),
            max_in_flight: 50_000,
            commit_interval: Span(1_000),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub path: PathBuf,
    /// Optional shadow model: scores the same users on the same vectors, publishes nothing, and
    /// exports its score distribution and its agreement with the live model. Must use the same
    /// feature spec.
    pub shadow_path: Option<PathBuf>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig { path: PathBuf::from("models/default.json"), shadow_path: None }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of /metrics, /healthz and /readyz.
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: "127.0.0.1:9464".into() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// On SIGTERM/SIGINT: finish in-flight work, flush and commit within this bound.
    pub timeout: Span,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { timeout: Span(30_000) }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Threads that process partitions (each assigned partition is a task on them). 0 = one per
    /// core. Restores run on separate blocking threads; the consumer group is polled on its own.
    pub workers: usize,
}

impl RuntimeConfig {
    /// The configured count, or the machine's cores for 0.
    pub fn worker_threads(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Passed through to librdkafka for the consumer and the producer (TLS, SASL, ...).
    pub kafka: BTreeMap<String, String>,
    pub source: SourceConfig,
    pub sink: SinkConfig,
    pub model: ModelConfig,
    pub engine: EngineConfig,
    pub policy: PolicyConfig,
    pub http: HttpConfig,
    pub shutdown: ShutdownConfig,
    pub runtime: RuntimeConfig,
}

/// librdkafka settings churnguard owns; setting them in [kafka] would break at-least-once.
const RESERVED_KAFKA_KEYS: [&str; 4] =
    ["enable.auto.commit", "enable.auto.offset.store", "group.id", "enable.partition.eof"];

impl Config {
    /// Read a TOML file, apply environment overrides, validate.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::from_toml_with_env(&text, &path.display().to_string(), std::env::vars())
    }

    pub fn from_toml_with_env(
        text: &str,
        origin: &str,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: origin.to_string(), msg: e.to_string() })?;
        apply_env(&mut table, env)?;
        // librdkafka properties are strings; accept `"linger.ms" = 5` as well as `"5"`.
        if let Some(toml::Value::Table(kafka)) = table.get_mut("kafka") {
            for (_, v) in kafka.iter_mut() {
                if matches!(v, toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)) {
                    let text = v.to_string();
                    *v = toml::Value::String(text);
                }
            }
        }
        // The path of a wrong value ("policy.lifecycle.new_for") goes into the message.
        let cfg: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let msg = e.into_inner().message().to_string();
            if key.is_empty() || key == "." {
                ConfigError::Parse { path: origin.to_string(), msg }
            } else {
                ConfigError::Invalid { key, msg }
            }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.kafka.contains_key("bootstrap.servers") {
            return Err(invalid(
                "kafka.\"bootstrap.servers\"",
                "is required: set it under [kafka] (e.g. \"bootstrap.servers\" = \"localhost:9092\") or CHURNGUARD__KAFKA__BOOTSTRAP_SERVERS",
            ));
        }
        for k in RESERVED_KAFKA_KEYS {
            if self.kafka.contains_key(k) {
                return Err(invalid(&format!("kafka.\"{k}\""), "is managed by churnguard (offsets are committed only after outputs are acknowledged); remove it (group.id goes in [source])"));
            }
        }
        if self.source.topics.is_empty() || self.source.topics.iter().any(|t| t.is_empty()) {
            return Err(invalid("source.topics", "list at least one non-empty topic"));
        }
        if self.source.group_id.is_empty() {
            return Err(invalid("source.group_id", "must not be empty"));
        }
        if self.source.max_event_bytes == 0 {
            return Err(invalid("source.max_event_bytes", "must be positive"));
        }
        let s = &self.sink;
        for (k, v) in [
            ("sink.interventions_topic", &s.interventions_topic),
            ("sink.control_topic", &s.control_topic),
            ("sink.dead_letter_topic", &s.dead_letter_topic),
        ] {
            if v.is_empty() {
                return Err(invalid(k, "must not be empty"));
            }
            if self.source.topics.contains(v) {
                return Err(invalid(k, format!("{v:?} is also a source topic; outputs would be read back as events")));
            }
        }
        if self.runtime.workers > 1024 {
            return Err(invalid("runtime.workers", "at most 1024 (0 = one per core)"));
        }
        if s.max_in_flight == 0 {
            return Err(invalid("sink.max_in_flight", "must be positive"));
        }
        if s.commit_interval.ms() <= 0 {
            return Err(invalid("sink.commit_interval", "must be positive"));
        }
        self.http
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| invalid("http.listen", format!("{:?} is not host:port ({e})", self.http.listen)))?;
        self.policy.validate().map_err(|e| invalid(&format!("policy.{}", e.key), e.msg))?;
        self.engine.validate(&self.policy).map_err(|e| invalid(&format!("engine.{}", e.key), e.msg))?;
        Ok(())
    }

    /// The config as TOML with secrets redacted, for `config check` and the start-up log.
    pub fn redacted_toml(&self) -> String {
        let mut c = self.clone();
        for (k, v) in c.kafka.iter_mut() {
            if is_secret(k) {
                *v = "<redacted>".into();
            }
        }
        toml::to_string_pretty(&c).unwrap_or_default()
    }
}

/// librdkafka keys that carry credentials.
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password")
        || k.contains("secret")
        || k.ends_with(".key.pem")
        || k.contains("token")
        || k.contains("sasl.oauthbearer.config")
}

fn apply_env(table: &mut toml::Table, env: impl Iterator<Item = (String, String)>) -> Result<(), ConfigError> {
    const PREFIX: &str = "CHURNGUARD__";
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let parts: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        let [section, key] = parts.as_slice() else {
            return Err(invalid(&name, "environment overrides look like CHURNGUARD__SECTION__KEY"));
        };
        let entry = table.entry(section.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(sec) = entry else {
            return Err(invalid(section, "is not a table"));
        };
        if section == "kafka" {
            sec.insert(key.replace('_', "."), toml::Value::String(value));
        } else {
            // A TOML literal if it parses as one (numbers, booleans, arrays), else a string.
            let v = toml::from_str::<toml::Table>(&format!("v = {value}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(value));
            sec.insert(key.clone(), v);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "[kafka]\n\"bootstrap.servers\" = \"localhost:9092\"\n";

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(text, "test.toml", env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_fill_everything_but_the_brokers() {
        let c = load(MIN, &[]).unwrap();
        assert_eq!(c.source.topics, vec!["activity"]);
        assert_eq!(c.policy.control_fraction, 0.1);
        let e = load("", &[]).unwrap_err().to_string();
        assert!(e.contains("bootstrap.servers"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = load(&format!("{MIN}[source]\ngroup = \"x\"\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("group"), "{e}");
        let e = load(&format!("{MIN}[policy]\ncontrol_fraction = 1.5\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("policy.control_fraction"), "{e}");
        let e = load(&format!("{MIN}[engine]\nrescore_interval = \"soon\"\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("soon"), "{e}");
        let e = load(&format!("{MIN}\"enable.auto.commit\" = \"true\"\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("enable.auto.commit"), "{e}");
        let e = load(&format!("{MIN}[http]\nlisten = \"nowhere\"\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("http.listen"), "{e}");
    }

    #[test]
    fn wrong_types_name_the_nested_key_and_kafka_numbers_are_accepted() {
        let e = load(&format!("{MIN}[policy.lifecycle]\nnew_for = 14\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("policy.lifecycle.new_for"), "{e}");
        let e = load(&format!("{MIN}[sink]\nmax_in_flight = \"lots\"\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("sink.max_in_flight"), "{e}");
        let c = load(&format!("{MIN}\"linger.ms\" = 5\n\"enable.idempotence\" = true\n"), &[]).unwrap();
        assert_eq!(c.kafka["linger.ms"], "5");
        assert_eq!(c.kafka["enable.idempotence"], "true");
    }

    #[test]
    fn environment_overrides_win() {
        let c = load(
            MIN,
            &[
                ("CHURNGUARD__KAFKA__BOOTSTRAP_SERVERS", "b1:9092,b2:9092"),
                ("CHURNGUARD__SOURCE__GROUP_ID", "eu"),
                ("CHURNGUARD__POLICY__CONTROL_FRACTION", "0.25"),
                ("CHURNGUARD__SOURCE__TOPICS", "[\"a\", \"b\"]"),
                ("UNRELATED", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.kafka["bootstrap.servers"], "b1:9092,b2:9092");
        assert_eq!(c.source.group_id, "eu");
        assert_eq!(c.policy.control_fraction, 0.25);
        assert_eq!(c.source.topics, vec!["a", "b"]);
    }

    #[test]
    fn secrets_are_redacted() {
        let c = load(&format!("{MIN}\"sasl.password\" = \"hunter2\"\n\"ssl.key.password\" = \"k\"\n"), &[]).unwrap();
        let out = c.redacted_toml();
        assert!(!out.contains("hunter2") && out.contains("<redacted>"), "{out}");
    }
}
