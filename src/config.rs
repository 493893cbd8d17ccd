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
use crate::event::{DEFAULT_MAX_EVENT_BYTES, DEFAULT_MAX_FUTURE};
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
    /// Events stamped more than this after the present (the earlier of the wall clock and the
    /// message's timestamp) are dead-lettered as `bad_timestamp`: one event from a wrong device
    /// clock would otherwise move event time, and every user's clock, years ahead.
    pub max_future: Span,
    /// A partition with no message for this long stops holding the clock back; when every
    /// partition is idle, wall-clock time advances event time.
    pub idle_timeout: Span,
    /// Rebuild a newly assigned partition's state by re-reading it from the beginning up to the
    /// committed offset (outputs suppressed). Needs topic retention >= the state horizon.
    pub restore_on_assign: bool,
    /// `"trust"` (the default): the input is keyed by user id. `"repartition"`: it is not, so
    /// every valid event is first re-keyed by its `user_id` through the internal topic
    /// `<group_id>-repartition`, and scored from there.
    pub keys: KeyMode,
}

/// `source.keys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KeyMode {
    #[default]
    Trust,
    Repartition,
}

impl SourceConfig {
    /// The internal topic of `keys = "repartition"`.
    pub fn repartition_topic(&self) -> String {
        format!("{}-repartition", self.group_id)
    }
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            topics: vec!["activity".into()],
            group_id: "churnguard".into(),
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            max_future: DEFAULT_MAX_FUTURE,
            idle_timeout: Span(30_000),
            restore_on_assign: true,
            keys: KeyMode::Trust,
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
    /// How often acknowledged offsets are committed (with exactly once: how often a partition's
    /// transaction commits).
    pub commit_interval: Span,
    /// `"at_least_once"` (the default) or `"exactly_once"`: transactional outputs, changelog and
    /// offsets, one transaction per partition per `commit_interval` (docs/KAFKA.md).
    pub processing_guarantee: Guarantee,
}

/// `sink.processing_guarantee`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    #[default]
    AtLeastOnce,
    ExactlyOnce,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            interventions_topic: "churn-interventions".into(),
            control_topic: "churn-control".into(),
            dead_letter_topic: "churn-dead-letter".into(),
            max_in_flight: 50_000,
            commit_interval: Span(1_000),
            processing_guarantee: Guarantee::AtLeastOnce,
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
    pub uplift: UpliftConfig,
    pub state: StateConfig,
}

/// `[state]`: durable per-partition state (docs/KAFKA.md, "State and restore").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Write each partition's state to a compacted changelog topic,
    /// `<source.group_id>-<input topic>-changelog` (created if missing), and restore from it on
    /// assignment. Off: state is rebuilt by re-reading the input (`source.restore_on_assign`).
    pub changelog: bool,
    /// Replication factor of a changelog topic this service creates (-1: the broker's default).
    pub changelog_replication_factor: i32,
    /// At least once: how often a partition writes its changed users to the changelog. A busy
    /// user is one record per flush, so a longer interval writes less; the group's committed
    /// offset trails by up to this much (more input is read again after a crash). With exactly
    /// once, every transaction (`sink.commit_interval`) carries a flush instead.
    pub flush_interval: Span,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig { changelog: true, changelog_replication_factor: -1, flush_interval: Span(5_000) }
    }
}

/// `[uplift]`: live outcomes of interventions and control records (docs/INTERVENTIONS.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpliftConfig {
    /// A decision's outcome is `retained` if the user has an event within this much event time
    /// after it, `churned` otherwise; decided when the watermark passes the horizon's end.
    pub horizon: Span,
}

impl Default for UpliftConfig {
    fn default() -> Self {
        UpliftConfig { horizon: Span::days(30) }
    }
}

impl UpliftConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.horizon.ms() <= 0 {
            return Err(invalid("uplift.horizon", "must be positive"));
        }
        Ok(())
    }
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
        let mut table: toml::Table = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: origin.to_string(), msg: syntax_error_message(&e, text) })?;
        apply_env(&mut table, env)?;
        // Values of secret-looking keys (from the file or the environment) never appear in an
        // error, whatever produced it.
        let secrets = secret_values(&table);
        Self::from_table(table, origin).map_err(|e| scrub(e, &secrets))
    }

    fn from_table(mut table: toml::Table, origin: &str) -> Result<Config, ConfigError> {
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
            let msg = if is_secret(&key) {
                // serde quotes the offending value ("invalid type: string \"...\""): say only
                // what was expected.
                "has a value of the wrong type or format (not shown: the key looks like a secret)".to_string()
            } else {
                e.into_inner().message().to_string()
            };
            if key.is_empty() || key == "." {
                ConfigError::Parse { path: origin.to_string(), msg }
            } else {
                ConfigError::Invalid { key, msg }
            }
        })?;
        let mut cfg = cfg;
        cfg.policy.resolve_uplift_from().map_err(|e| invalid(&format!("policy.{}", e.key), e.msg))?;
        cfg.validate()?;
        cfg.uplift.validate()?;
        // The engine judges outcomes; it takes the horizon from here.
        cfg.engine.outcome_horizon = cfg.uplift.horizon;
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
        if self.source.max_future.ms() < crate::time::SECOND_MS {
            return Err(invalid(
                "source.max_future",
                "must be at least 1s: clocks differ by that much; \"15m\" is the default",
            ));
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
        if self.state.flush_interval.ms() <= 0 {
            return Err(invalid("state.flush_interval", "must be positive (e.g. \"5s\")"));
        }
        self.http
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| invalid("http.listen", format!("{:?} is not host:port ({e})", self.http.listen)))?;
        self.policy.validate().map_err(|e| invalid(&format!("policy.{}", e.key), e.msg))?;
        self.engine.validate(&self.policy).map_err(|e| invalid(&format!("engine.{}", e.key), e.msg))?;
        Ok(())
    }

    /// `msg` with the value of every secret-looking `[kafka]` key replaced by `<redacted>`. For
    /// errors that quote configured values, such as rdkafka's client-config error, whose
    /// `Display` ends with the property's value (`No such configuration property: "sasl.passwd"
    /// sasl.passwd <value>`).
    pub fn redact_secrets(&self, msg: &str) -> String {
        let mut secrets: Vec<&str> = self
            .kafka
            .iter()
            .filter(|(k, v)| is_secret(k) && v.chars().count() >= 3)
            .map(|(_, v)| v.as_str())
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let mut out = msg.to_string();
        for s in secrets {
            out = out.replace(s, "<redacted>");
        }
        out
    }

    /// The config as TOML with secrets redacted, for `config check` and the start-up log.
    pub fn redacted_toml(&self) -> String {
        let mut c = self.clone();
        for (k, v) in c.kafka.iter_mut() {
            if is_secret(k) {
                *v = "<redacted>".into();
            }
        }
        // The table read from uplift_from is on the start-up log's line before; printed here
        // too, the output would set both keys and fail to load again.
        if let Some(v) = c.policy.value.as_mut().filter(|v| v.uplift_from.is_some()) {
            v.uplift.clear();
        }
        toml::to_string_pretty(&c).unwrap_or_default()
    }
}

/// Keys whose values may be credentials: librdkafka's (`sasl.password`, `ssl.key.password`,
/// `ssl.key.pem`, `sasl.oauthbearer.config`, ...) and anything that looks like one, misspellings
/// included (`sasl.passwd`, `ssl.keystore.pasword`, `api_secret`, `access.key`). It over-redacts
/// on purpose: a key file's *location* (`ssl.key.location`) is not a secret, but hiding it is
/// harmless, while printing a mistyped password is not.
pub fn is_secret(key: &str) -> bool {
    const WORDS: [&str; 11] = [
        "pass",
        "pasw",
        "pwd",
        "secret",
        "token",
        "credential",
        "jaas",
        "private",
        "signature",
        "oauthbearer.config",
        "oauthbearer.extensions",
    ];
    let k = key.to_ascii_lowercase();
    WORDS.iter().any(|w| k.contains(w))
        // `key` as (part of) a dotted, underscored or dashed segment: `ssl.key.pem`, `access.key`,
        // `api_key`, `apikey`, `ssl.keystore.password`.
        || k.split(|c: char| !c.is_ascii_alphanumeric()).any(|seg| seg.contains("key"))
}

/// A TOML syntax error as `line N, column M: <what the reader expected>`. toml's own `Display`
/// quotes the offending source line, which may hold a password (`"sasl.password" = "hunter2`
/// without its closing quote), so only the position and the reader's description are used, and
/// the description is dropped too when the error is on a line with a secret-looking key or the
/// description repeats any part of a secret-looking value.
/// A TOML syntax error as `line N, column M: <description>`, never quoting the text (a secret's
/// line in particular).
pub fn syntax_error_message(e: &toml::de::Error, text: &str) -> String {
    let desc: String = e.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
    let Some(span) = e.span() else {
        return if leaks_secret_line(&desc, text) { "invalid TOML".to_string() } else { desc };
    };
    let start = floor_char_boundary(text, span.start.min(text.len()));
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_no = text[..start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;
    // The error may be reported at the end of the line it is about, or at the start of the next.
    let this_line = text[line_start..].lines().next().unwrap_or("");
    let prev_line = text[..line_start].trim_end_matches(['\n', '\r']).lines().next_back().unwrap_or("");
    let on_secret_line = secret_value_of_line(this_line).is_some() || secret_value_of_line(prev_line).is_some();
    if on_secret_line || leaks_secret_line(&desc, text) {
        format!(
            "line {line_no}, column {column}: invalid TOML (the line's key looks like a secret, so neither \
             the line nor the reader's description is shown; check its quoting)"
        )
    } else {
        format!("line {line_no}, column {column}: {desc}")
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// For a line that assigns a secret-looking key (`"sasl.password" = "..."`, also inside an inline
/// table), the text after its first `=`; `None` for other lines.
fn secret_value_of_line(line: &str) -> Option<&str> {
    let (keys, _) = line.rsplit_once('=')?;
    let (_, value) = line.split_once('=')?;
    keys.split('=').any(is_secret).then_some(value)
}

/// Does `msg` repeat four or more consecutive characters of the value of any secret-looking key in
/// `text`?
fn leaks_secret_line(msg: &str, text: &str) -> bool {
    text.lines().filter_map(secret_value_of_line).any(|v| {
        let value: Vec<char> = v.trim().trim_matches(['"', '\'']).chars().collect();
        value.windows(4).any(|w| msg.contains(&w.iter().collect::<String>()))
    })
}

/// The values of every secret-looking key in the parsed config (nested tables and arrays
/// included), as they would be printed.
fn secret_values(table: &toml::Table) -> Vec<String> {
    fn collect(v: &toml::Value, secret: bool, out: &mut Vec<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    collect(v, secret || is_secret(k), out);
                }
            }
            toml::Value::Array(a) => a.iter().for_each(|v| collect(v, secret, out)),
            toml::Value::String(s) if secret => out.push(s.clone()),
            other if secret => out.push(other.to_string()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (k, v) in table {
        collect(v, is_secret(k), &mut out);
    }
    // Longest first, so a value that contains another is replaced whole. Values under 3
    // characters would blank out ordinary words and are not credentials anyway.
    out.retain(|s| s.chars().count() >= 3);
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

/// Replace every secret value in an error's message (and key) with `<redacted>`.
fn scrub(e: ConfigError, secrets: &[String]) -> ConfigError {
    let clean = |mut s: String| {
        for secret in secrets {
            if s.contains(secret.as_str()) {
                s = s.replace(secret.as_str(), "<redacted>");
            }
        }
        s
    };
    match e {
        ConfigError::Parse { path, msg } => ConfigError::Parse { path, msg: clean(msg) },
        ConfigError::Invalid { key, msg } => ConfigError::Invalid { key: clean(key), msg: clean(msg) },
        read @ ConfigError::Read { .. } => read,
    }
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
    fn uplift_horizon_defaults_to_30_days_and_reaches_the_engine() {
        let c = load(MIN, &[]).unwrap();
        assert_eq!(c.uplift.horizon, Span::days(30));
        assert_eq!(c.engine.outcome_horizon, Span::days(30));
        let c = load(&format!("{MIN}[uplift]\nhorizon = \"7d\"\n"), &[]).unwrap();
        assert_eq!(c.engine.outcome_horizon, Span::days(7));
        let e = load(&format!("{MIN}[uplift]\nhorizon = \"0d\"\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("uplift.horizon"), "{e}");
    }

    /// The action rows `churnguard uplift --json` writes, trimmed to what uplift_from reads.
    const UPLIFT_JSON: &str = r#"{"groups": [
        {"dimension": "overall", "group": "all records", "uplift": {"estimate": 0.3, "lower": 0.2, "upper": 0.4}},
        {"dimension": "action", "group": "coupon", "uplift": {"estimate": 0.12, "lower": 0.05, "upper": 0.19}},
        {"dimension": "action", "group": "reminder_email", "uplift": {"estimate": -0.02, "lower": -0.05, "upper": 0.01}}
    ]}"#;

    #[test]
    fn uplift_from_fills_the_value_rule_at_load_and_config_check_output_loads_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("uplift.json");
        std::fs::write(&path, UPLIFT_JSON).unwrap();
        let text = format!("{MIN}[policy.value]\nuplift_from = {:?}\n", path.display().to_string());
        let c = load(&text, &[]).unwrap();
        let rule = c.policy.value.as_ref().unwrap();
        let got: Vec<(&str, f64)> = rule.uplift.iter().map(|(a, u)| (a.as_str(), *u)).collect();
        assert_eq!(got, [("coupon", 0.12), ("reminder_email", -0.02)]);
        let printed = c.redacted_toml();
        assert!(printed.contains("uplift_from"), "{printed}");
        let again = load(&printed, &[]).unwrap();
        assert_eq!(again.policy, c.policy, "config check's output must load to the same policy");
    }

    #[test]
    fn uplift_from_errors_name_the_key_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str, body: Option<&str>| {
            let p = dir.path().join(name);
            if let Some(b) = body {
                std::fs::write(&p, b).unwrap();
            }
            format!("{MIN}[policy.value]\nuplift_from = {:?}\n", p.display().to_string())
        };
        let key_of = |e: &ConfigError| match e {
            ConfigError::Invalid { key, .. } => key.clone(),
            other => panic!("{other}"),
        };
        let cases = [
            (at("missing.json", None), "cannot read"),
            (at("text.txt", Some("uplift over 2026-01-01 ..")), "is not JSON"),
            (at("shape.json", Some(r#"{"groups": 3}"#)), "not `churnguard uplift --json` output"),
            (at("none.json", Some(r#"{"groups": []}"#)), "no action row"),
            (format!("{MIN}[policy.value]\nuplift_from = \"\"\n"), "is empty"),
        ];
        for (text, says) in cases {
            let e = load(&text, &[]).unwrap_err();
            assert_eq!(key_of(&e), "policy.value.uplift_from", "{e}");
            assert!(e.to_string().contains(says), "{e}");
        }
        // Both given: neither silently wins.
        let both = format!("{}[policy.value.uplift]\ncoupon = 0.1\n", at("ok.json", Some(UPLIFT_JSON)));
        let e = load(&both, &[]).unwrap_err();
        assert_eq!(key_of(&e), "policy.value.uplift_from");
        assert!(e.to_string().contains("policy.value.uplift is set too; keep one"), "{e}");
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
        let e = load(&format!("{MIN}[source]\nmax_future = \"0s\"\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("source.max_future") && e.contains("15m"), "{e}");
        assert_eq!(load(MIN, &[]).unwrap().source.max_future.to_string(), "15m", "the default");
        let c = load(&format!("{MIN}[source]\nmax_future = \"1d\"\n"), &[]).unwrap();
        assert_eq!(c.source.max_future, Span::days(1));
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

    /// `needle` nowhere in the error's Display or Debug.
    fn assert_hidden(e: &ConfigError, needle: &str) {
        let (shown, debug) = (e.to_string(), format!("{e:?}"));
        assert!(!shown.contains(needle) && !debug.contains(needle), "{needle:?} leaked: {shown}");
    }

    #[test]
    fn syntax_errors_give_the_position_but_never_a_secret_line() {
        let broken = [
            "[kafka]\n\"sasl.password\" = \"hunter2\n",
            "[kafka]\n\"sasl.password\" = \"hunter2",
            "[kafka]\n\"sasl.password\" = hunter2\n",
            "[kafka]\n\"sasl.password\" = 'hunter2\n",
            "[kafka]\n\"sasl.password\" = \"\"\"hunter2\n",
            "[kafka]\n\"sasl.password\" = \"hunter2\" trailing\n",
            "[kafka]\n\"sasl.password\" = \"hun\\qter2\"\n",
            "[kafka]\n\"sasl.passwd\" = \"hunter2\n",
            "[kafka]\nsasl.jaas.config = \"org.apache.kafka.common.security.plain.PlainLoginModule required password=hunter2\n",
            "kafka = { \"sasl.password\" = \"hunter2 }\n",
            "[kafka]\n\"sasl.password\" = \"hunter2\"\n\"sasl.password\" = \"hunter2\"\n",
            "[kafka]\n\"sasl.password\" = \"hunter2\"\nthis line is broken\n",
        ];
        for text in broken {
            let e = load(text, &[]).unwrap_err();
            assert!(matches!(e, ConfigError::Parse { .. }), "{text:?}: {e}");
            for needle in ["hunter2", "hunter", "unter", "qter", "PlainLoginModule"] {
                assert_hidden(&e, needle);
            }
            let shown = e.to_string();
            assert!(shown.contains("line ") && shown.contains(", column "), "{text:?}: {shown}");
        }
        // A line without a secret keeps the reader's description, but not the line itself.
        let e = load(&format!("{MIN}\"client.id\" = \"billing-eu\n"), &[]).unwrap_err().to_string();
        assert!(e.starts_with("config test.toml: line 3, column "), "{e}");
        assert!(!e.contains("billing-eu") && !e.contains("not shown"), "{e}");
        let e = load("[source\n", &[]).unwrap_err().to_string();
        assert!(e.contains("line 1, column ") && !e.contains("[source"), "{e}");
    }

    #[test]
    fn misspelled_and_unusual_secret_keys_are_redacted() {
        let keys = [
            "sasl.password",
            "sasl.passwd",
            "ssl.keystore.pasword",
            "ssl.key.pem",
            "ssl.key.password",
            "sasl.jaas.config",
            "sasl.oauthbearer.config",
            "sasl.oauthbearer.client.secret",
            "api_secret",
            "access.key",
            "apikey",
            "private_key",
            "sasl.credentials",
            "auth.token",
            "db.pwd",
        ];
        let mut text = MIN.to_string();
        for (i, k) in keys.iter().enumerate() {
            assert!(is_secret(k), "{k}");
            text.push_str(&format!("\"{k}\" = \"hunter2-{i:02}\"\n"));
        }
        text.push_str("\"client.id\" = \"churn-eu\"\n\"security.protocol\" = \"SASL_SSL\"\n");
        let out = load(&text, &[]).unwrap().redacted_toml();
        assert!(!out.contains("hunter2"), "{out}");
        assert_eq!(out.matches("<redacted>").count(), keys.len(), "{out}");
        assert!(out.contains("churn-eu") && out.contains("SASL_SSL") && out.contains("localhost:9092"), "{out}");
        for k in
            ["bootstrap.servers", "client.id", "security.protocol", "sasl.mechanisms", "sasl.username", "linger.ms"]
        {
            assert!(!is_secret(k), "{k}");
        }
    }

    #[test]
    fn invalid_value_errors_never_show_a_secret_value() {
        // A secret-looking key with a value of the wrong type: serde would quote the value.
        for bad in ["[\"hunter2\"]", "{ x = \"hunter2\" }", "[1979-05-27T07:32:00Z]"] {
            let e = load(&format!("{MIN}\"sasl.password\" = {bad}\n"), &[]).unwrap_err();
            assert!(matches!(&e, ConfigError::Invalid { key, .. } if key.contains("sasl.password")), "{e}");
            for needle in ["hunter2", "1979-05-27"] {
                assert_hidden(&e, needle);
            }
        }
        // The same through an environment override of the [kafka] map...
        let e = load("", &[("CHURNGUARD__KAFKA__SASL_PASSWORD", "hunter2"), ("CHURNGUARD__HTTP__LISTEN", "hunter2")])
            .unwrap_err();
        assert_hidden(&e, "hunter2");
        // ...and a secret value echoed by another key's check is replaced, wherever it came from.
        let e =
            load(&format!("{MIN}\"ssl.key.password\" = \"hunter2\"\n[http]\nlisten = \"hunter2\"\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("http.listen") && e.to_string().contains("<redacted>"), "{e}");
        assert_hidden(&e, "hunter2");
        let e = load(
            &format!("{MIN}[http]\nlisten = \"hunter2\"\n"),
            &[("CHURNGUARD__KAFKA__SASL_PASSWORD", "hunter2"), ("CHURNGUARD__POLICY__CONTROL_FRACTION", "2")],
        )
        .unwrap_err();
        assert_hidden(&e, "hunter2");
        let e = load(&format!("{MIN}[source]\napi_secret = \"hunter2\"\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("api_secret"), "{e}");
        assert_hidden(&e, "hunter2");
        // A malformed override names the variable, not its value.
        let e = load(MIN, &[("CHURNGUARD__KAFKA__SASL__PASSWORD", "hunter2")]).unwrap_err();
        assert!(e.to_string().contains("CHURNGUARD__KAFKA__SASL__PASSWORD"), "{e}");
        assert_hidden(&e, "hunter2");
        // Values of ordinary keys are still quoted: they are what the reader needs to fix.
        let e = load(&format!("{MIN}[http]\nlisten = \"nowhere\"\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("nowhere"), "{e}");
    }

    #[test]
    fn redact_secrets_cleans_messages_that_quote_kafka_values() {
        let c = load(&format!("{MIN}\"sasl.passwd\" = \"hunter2\"\n\"client.id\" = \"churn-eu\"\n"), &[]).unwrap();
        // The shape of rdkafka's KafkaError::ClientConfig Display for a misspelled property.
        let msg = "Client config error: No such configuration property: \"sasl.passwd\" sasl.passwd hunter2";
        let out = c.redact_secrets(msg);
        assert_eq!(out, "Client config error: No such configuration property: \"sasl.passwd\" sasl.passwd <redacted>");
        assert_eq!(c.redact_secrets("client.id churn-eu"), "client.id churn-eu");
    }

    #[test]
    fn secrets_are_redacted() {
        let c = load(&format!("{MIN}\"sasl.password\" = \"hunter2\"\n\"ssl.key.password\" = \"k\"\n"), &[]).unwrap();
        let out = c.redacted_toml();
        assert!(!out.contains("hunter2") && out.contains("<redacted>"), "{out}");
    }
}
