//! Command-line interface: argument definitions and the commands behind them.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::engine::{Engine, EngineConfig};
use crate::event::DEFAULT_MAX_EVENT_BYTES;
use crate::features::FeatureSpec;
use crate::model::dataset::{self, EventLog, ExplicitLabels, LabelSource, Labelling};
use crate::model::metrics;
use crate::model::report::{self, ReportInput};
use crate::model::train::{self, TrainContext, TrainOptions};
use crate::model::ModelArtifact;
use crate::pipeline::replay::{self, ReplaySink};
use crate::policy::PolicyConfig;
use crate::sim::{self, SimConfig};
use crate::term::LogFormat;
use crate::time::{format_rfc3339_ms, parse_timestamp, Millis, Span, DAY_MS};

#[derive(Parser, Debug)]
#[command(
    name = "churnguard",
    version,
    about = "Real-time churn prediction on activity event streams",
    after_help = "Examples:\n  churnguard demo --duration 30s\n  churnguard run --config churnguard.toml\n\nExit status: 0 success, 1 error, 2 usage error (bad flag or value)."
)]
pub struct Cli {
    /// Log lines on stderr: text (coloured only on a terminal, not with NO_COLOR) or json (one
    /// object per line).
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "FORMAT",
        default_value_t = LogFormat::Text,
        hide_possible_values = true,
        display_order = 900
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write a synthetic activity log with user lifecycles (and its ground truth).
    #[command(
        after_help = "Example:\n  churnguard simulate --users 10000 --days 180 --seed 7 --out events.jsonl --truth truth.csv"
    )]
    Simulate(SimulateArgs),
    /// Train a churn model on an event log, with features computed exactly as served.
    #[command(
        after_help = "Example:\n  churnguard train --events events.jsonl --cutoff 2026-05-01 --horizon 30d --cutoffs 3 --every 14d --out models/model.json --report report/"
    )]
    Train(TrainArgs),
    /// Evaluate a model on an event log at a cutoff, or its lead times against a truth file (--truth).
    #[command(
        after_help = "Example:\n  churnguard evaluate --model models/default.json --events events.jsonl --cutoff 2026-05-15 --horizon 30d --json"
    )]
    Evaluate(EvaluateArgs),
    /// Write the exact rows `train` fits (user, cutoff, every feature, label) as CSV.
    #[command(
        after_help = "Takes train's flags for events, spec, cutoffs and labels; the rows are the ones train would fit.\n\nExample:\n  churnguard dataset --events events.jsonl --cutoff 2026-05-01 --horizon 30d --cutoffs 3 --every 14d --out rows.csv"
    )]
    Dataset(DatasetArgs),
    /// Write each user's P(churn), tier, stage and top reasons at given times as CSV.
    #[command(
        after_help = "Example:\n  churnguard score --model models/default.json --events events.jsonl --at 2026-05-01 --every 1d --until 2026-05-31 --out scores.csv"
    )]
    Score(ScoreArgs),
    /// Replay an event log through the full scoring path; write interventions as JSON lines.
    #[command(
        after_help = "Example:\n  churnguard replay --model models/default.json --events events.jsonl --out interventions.jsonl"
    )]
    Replay(ReplayArgs),
    /// Measure what interventions changed: treated vs control retention, uplift, cost-benefit.
    #[command(
        after_help = "Example:\n  churnguard replay --model models/default.json --events events.jsonl --out interventions.jsonl --control-out control.jsonl\n  churnguard uplift --events events.jsonl --interventions interventions.jsonl --control control.jsonl --horizon 30d --costs costs.toml --report uplift/"
    )]
    Uplift(UpliftArgs),
    /// Run the streaming service: Kafka in, interventions out (stops on SIGTERM/SIGINT).
    #[command(
        after_help = "Example:\n  churnguard run --config churnguard.toml\n  churnguard run --config churnguard.toml --log-format json\n  CHURNGUARD__KAFKA__BOOTSTRAP_SERVERS=broker:9092 churnguard run --config churnguard.toml"
    )]
    Run(RunArgs),
    /// Everything in one process: in-process broker, simulator, service, live interventions.
    #[command(after_help = "Example:\n  churnguard demo --duration 30s")]
    Demo(DemoArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Benchmarks behind docs/PERFORMANCE.md.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Replay throughput, peak memory, state bytes per user, and training time on ~1M rows.
    #[command(after_help = "Example:\n  churnguard bench replay --users 100000 --days 180")]
    Replay {
        /// Simulated users.
        #[arg(long, value_name = "N", default_value_t = 100_000)]
        users: u64,
        /// Simulated days of activity.
        #[arg(long, value_name = "N", default_value_t = 180)]
        days: u32,
        /// Simulator seed.
        #[arg(long, value_name = "N", default_value_t = 7)]
        seed: u64,
        /// Model file (JSON) to score with.
        #[arg(long, value_name = "FILE", default_value = "models/default.json")]
        model: PathBuf,
        /// Where the simulated event file is written.
        #[arg(long, value_name = "DIR", default_value = "target/bench")]
        workdir: PathBuf,
        /// Rows of the training-time measurement (0: skip it).
        #[arg(long, value_name = "N", default_value_t = 1_000_000)]
        train_rows: usize,
        /// Rounds of the replay measurements (each mode once per round; min and median reported).
        #[arg(long, value_name = "N", default_value_t = 1)]
        repeat: usize,
        /// Engines (threads) of the multi-threaded full-engine row, as `replay --threads N`.
        #[arg(long, value_name = "N", default_value_t = 2)]
        threads: usize,
    },
    /// The engine against a hand-written single-purpose loop on the same events, in one run.
    #[command(after_help = "Example:\n  churnguard bench baseline --users 100000 --days 180 --repeat 3")]
    Baseline {
        /// Simulated users.
        #[arg(long, value_name = "N", default_value_t = 100_000)]
        users: u64,
        /// Simulated days of activity.
        #[arg(long, value_name = "N", default_value_t = 180)]
        days: u32,
        /// Simulator seed.
        #[arg(long, value_name = "N", default_value_t = 7)]
        seed: u64,
        /// Model file (JSON) the engine scores with.
        #[arg(long, value_name = "FILE", default_value = "models/default.json")]
        model: PathBuf,
        /// Where the simulated event file is written (reused when present).
        #[arg(long, value_name = "DIR", default_value = "target/bench")]
        workdir: PathBuf,
        /// Interleaved rounds (each: the loop, the engine per event, the full engine).
        #[arg(long, value_name = "N", default_value_t = 3)]
        repeat: usize,
    },
    /// Service throughput through a real broker vs a bare consumer, and latency at a fixed rate.
    #[command(
        after_help = "Example:\n  bash scripts/kafka.sh start && eval \"$(bash scripts/kafka.sh env)\"\n  churnguard bench kafka --brokers $CHURNGUARD_KAFKA_BROKERS"
    )]
    Kafka {
        /// Kafka bootstrap servers, comma-separated host:port.
        #[arg(long, value_name = "ADDRS", env = "CHURNGUARD_KAFKA_BROKERS")]
        brokers: String,
        /// Simulated users.
        #[arg(long, value_name = "N", default_value_t = 40_000)]
        users: u64,
        /// Simulated days of activity.
        #[arg(long, value_name = "N", default_value_t = 120)]
        days: u32,
        /// Partitions of the benchmark's event topic.
        #[arg(long, value_name = "N", default_value_t = 4)]
        partitions: i32,
        /// Model file (JSON) to score with.
        #[arg(long, value_name = "FILE", default_value = "models/default.json")]
        model: PathBuf,
        /// Load of the latency run as a share of the maximum rate (the lowest of the rate with
        /// the stream produced live, the fastest service run and the bare consumer).
        #[arg(long, value_name = "FRACTION", default_value_t = 0.5)]
        latency_load: f64,
        /// Length of the latency run in seconds.
        #[arg(long, value_name = "N", default_value_t = 20)]
        latency_seconds: u64,
        /// Worker counts to measure the service at (comma-separated).
        #[arg(long, value_name = "N", value_delimiter = ',', default_value = "1,2")]
        workers: Vec<usize>,
        /// Rounds; every figure is reported as min and median.
        #[arg(long, value_name = "N", default_value_t = 3)]
        repeat: usize,
        /// A librdkafka setting for every client of the bench (the service, the bare consumer and
        /// the load generator), as in [kafka] (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        kafka: Vec<(String, String)>,
        /// Processing guarantees to run the service with, side by side in each round
        /// (comma-separated: at_least_once, exactly_once).
        #[arg(long, value_name = "TYPE", value_delimiter = ',', default_value = "at_least_once", value_parser = parse_guarantee)]
        guarantees: Vec<crate::config::Guarantee>,
        /// The service's sink.commit_interval (commits, changelog flushes, transactions).
        #[arg(long, value_name = "DUR", default_value = "20ms")]
        commit_interval: crate::time::Span,
        /// Run the service without its changelog ([state] changelog = false), to measure what
        /// durable state costs.
        #[arg(long)]
        no_changelog: bool,
        /// The service's state.flush_interval (how often each partition writes its changed users
        /// to the changelog).
        #[arg(long, value_name = "DUR", default_value = "5s")]
        flush_interval: crate::time::Span,
    },
    /// Durable state: changelog restore speed (in process and via a broker), bytes per user,
    /// changelog bytes per user; with --idle, RSS and eviction with most users going silent.
    #[command(
        after_help = "Examples:\n  churnguard bench state --users 1000000\n  churnguard bench state --brokers $CHURNGUARD_KAFKA_BROKERS --partitions 4\n  churnguard bench state --partitions 2 --parallel\n  churnguard bench state --idle"
    )]
    State {
        /// Users (with --idle: users arriving over the run).
        #[arg(long, value_name = "N", default_value_t = 1_000_000)]
        users: u64,
        /// Events per user (with --idle: the burst each user has before going silent).
        #[arg(long, value_name = "N", default_value_t = 3)]
        events_per_user: u32,
        /// Rounds of the restore measurements; reported as min and median.
        #[arg(long, value_name = "N", default_value_t = 3)]
        repeat: usize,
        /// Model file (JSON) whose feature layout the state has.
        #[arg(long, value_name = "FILE", default_value = "models/default.json")]
        model: PathBuf,
        /// Also restore through this broker (host:port) with the service's changelog reader.
        #[arg(long, value_name = "ADDRS")]
        brokers: Option<String>,
        /// Changelog partitions; users are split across them by index, an engine per partition.
        #[arg(long, value_name = "N", default_value_t = 1)]
        partitions: i32,
        /// Restore the partitions at once, a thread each (as the service restores its assigned
        /// partitions), instead of one after another.
        #[arg(long)]
        parallel: bool,
        /// The broker's log.dirs, to report the changelog topic's size on disk.
        #[arg(long, value_name = "DIR")]
        broker_data_dir: Option<PathBuf>,
        /// Measure memory with most users going idle and TTL eviction under way instead.
        #[arg(long)]
        idle: bool,
        /// --idle: days of event time.
        #[arg(long, value_name = "N", default_value_t = 40)]
        days: u32,
        /// --idle: engine.state_ttl in days.
        #[arg(long, value_name = "N", default_value_t = 10)]
        ttl_days: u32,
        /// --idle: share of users who, after their burst, come back every 1-4 days for a TTL.
        #[arg(long, value_name = "FRACTION", default_value_t = 0.1)]
        active_share: f64,
        /// --idle: event time between changelog flushes (e.g. 1h).
        #[arg(long, value_name = "DUR", default_value = "1h")]
        flush_every: Span,
        /// --idle: event time between RSS samples (e.g. 2d).
        #[arg(long, value_name = "DUR", default_value = "2d")]
        sample_every: Span,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate a config file and print the resolved values (secrets redacted).
    #[command(after_help = "Example:\n  churnguard config check deploy/churnguard.toml")]
    Check {
        /// The config file (TOML) to check.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Config file (TOML); CHURNGUARD__SECTION__KEY environment variables override its values.
    #[arg(long, value_name = "FILE", default_value = "churnguard.toml")]
    pub config: PathBuf,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Stop after this long and print a summary (e.g. 30s); without it, run until Ctrl-C.
    #[arg(long, value_name = "DUR")]
    pub duration: Option<Span>,
    /// Simulated users.
    #[arg(long, value_name = "N", default_value_t = 4000)]
    pub users: u64,
    /// Simulated days of activity; the first 90 (the warm-up) are played at full speed.
    #[arg(long, value_name = "N", default_value_t = 180)]
    pub days: u32,
    /// Simulator seed: the same seed gives the same users and events.
    #[arg(long, value_name = "N", default_value_t = 7)]
    pub seed: u64,
    /// Wall-clock seconds per simulated day.
    #[arg(long, value_name = "SECS", default_value_t = 0.25)]
    pub day_seconds: f64,
    /// Partitions of the in-process event topic.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub partitions: i32,
    /// Model file (JSON) the service scores with.
    #[arg(long, value_name = "FILE", default_value = "models/default.json")]
    pub model: PathBuf,
    /// Address of the /metrics, /healthz and /readyz endpoint (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    pub http: String,
    /// Print at most this many interventions per second.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub print_per_second: u32,
    /// Directory for the uplift step's files: events, interventions, control records and the
    /// HTML uplift report.
    #[arg(long, value_name = "DIR", default_value = "target/demo")]
    pub out: PathBuf,
    /// Users of the uplift step (a closed-loop simulation with known effects, measured against
    /// its control group after the live part); 0 skips it.
    #[arg(long, value_name = "N", default_value_t = 5000)]
    pub uplift_users: u64,
}

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// Simulated users.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub users: u64,
    /// Days of activity to simulate.
    #[arg(long, value_name = "N", default_value_t = 180)]
    pub days: u32,
    /// Simulator seed: the same seed gives the same users and events.
    #[arg(long, value_name = "N", default_value_t = 42)]
    pub seed: u64,
    /// First day of the log (RFC3339, YYYY-MM-DD or epoch ms).
    #[arg(long, value_name = "TIME", default_value = "2026-01-01", value_parser = parse_time)]
    pub start: Millis,
    /// Event log to write (JSON lines).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Ground truth CSV: user_id,signup_ts,churn_ts,reactivated_ts,segment.
    #[arg(long, value_name = "FILE")]
    pub truth: Option<PathBuf>,
    /// Treatment effect of an action (repeatable; `*` for every other action): closes the loop,
    /// running the engine on the events as they are generated; a treated user's churn is reduced
    /// (docs/INTERVENTIONS.md#simulated-treatment-effects). Without it the output is unchanged.
    #[arg(long = "effect", value_name = "ACTION=EFFECT", value_parser = crate::sim::treatment::Effects::parse_pair)]
    pub effects: Vec<(String, f64)>,
    /// How long a treated active user's churn hazard stays reduced.
    #[arg(long, value_name = "DUR", default_value = "30d", requires = "effects")]
    pub effect_duration: Span,
    /// Model the closed loop scores with (with --effect).
    #[arg(long, value_name = "FILE", default_value = "models/default.json", requires = "effects")]
    pub model: PathBuf,
    /// Config TOML whose [engine] and [policy] the closed loop uses (with --effect); use the same
    /// for `replay`.
    #[arg(long, value_name = "FILE", requires = "effects")]
    pub config: Option<PathBuf>,
}

fn parse_time(s: &str) -> Result<Millis, crate::time::TimeError> {
    parse_timestamp(s)
}

/// How rows are labelled; shared by train and evaluate so both label the same way.
#[derive(Args, Debug, Clone)]
pub struct LabelArgs {
    /// Score users as of this time (RFC3339, YYYY-MM-DD or epoch ms).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub cutoff: Millis,
    /// Churned = no event in (cutoff, cutoff + horizon]. E.g. 30d. Required unless --labels is
    /// given (explicit labels need no horizon).
    #[arg(long, value_name = "DUR")]
    pub horizon: Option<Span>,
    /// The data covers event time up to here, for the censoring check (cutoff + horizon must not
    /// pass it). Default: the end of the UTC day of the last event.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub data_end: Option<Millis>,
    /// Only users with an event in (cutoff - DUR, cutoff].
    #[arg(long, value_name = "DUR")]
    pub active_within: Option<Span>,
    /// Churned = an event of this type in (cutoff, cutoff + horizon] (e.g. cancel).
    #[arg(long, value_name = "TYPE", conflicts_with = "labels")]
    pub churn_event: Option<String>,
    /// Explicit labels CSV: user_id,churned[,cutoff].
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// With --labels, refuse when fewer than this share of population members have a label.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.5)]
    pub min_label_match: f64,
}

impl LabelArgs {
    /// The horizon, checked: more than zero, and required unless labels are explicit (then
    /// `None` when not given).
    fn horizon(&self) -> Result<Option<Span>> {
        match self.horizon {
            Some(h) if h.ms() <= 0 => bail!("--horizon must be longer than 0 (got {h})"),
            Some(h) => Ok(Some(h)),
            None if self.labels.is_some() => Ok(None),
            None => bail!("--horizon is required (unless labels come from --labels)"),
        }
    }

    fn build_options(&self) -> Result<dataset::BuildOptions> {
        if !(0.0..=1.0).contains(&self.min_label_match) {
            bail!("--min-label-match must be a share between 0 and 1 (got {})", self.min_label_match);
        }
        Ok(dataset::BuildOptions { data_end: self.data_end, min_label_match: self.min_label_match })
    }

    /// The horizon as recorded in a model ("none" with explicit labels and no --horizon).
    fn horizon_text(&self) -> String {
        self.horizon.map_or_else(|| "none (explicit labels)".to_string(), |h| h.to_string())
    }
}

/// Which rows training fits: the events, the feature spec, the cutoffs and the labelling.
/// Shared by `train` and `dataset`, so that both produce the very same rows.
#[derive(Args, Debug, Clone)]
pub struct RowArgs {
    /// Event log to train on (JSON lines, as written by `simulate` or exported from Kafka).
    #[arg(long, value_name = "FILE")]
    pub events: PathBuf,
    #[command(flatten)]
    pub label: LabelArgs,
    /// Feature spec TOML; default: derived from the event types in the data.
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,
    /// Train on N cutoffs: --cutoff and the N-1 earlier ones --every apart.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cutoffs: usize,
    /// Spacing of the cutoffs when --cutoffs is more than 1.
    #[arg(long, value_name = "DUR", default_value = "14d")]
    pub every: Span,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub rows: RowArgs,
    /// Where to write the model (JSON).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Seed of the train/validation split and of the L2 search's row sample.
    #[arg(long, value_name = "N", default_value_t = 42)]
    pub seed: u64,
    /// Write an HTML report (ROC, PR, calibration, histograms, coefficients) to this directory.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DatasetArgs {
    #[command(flatten)]
    pub rows: RowArgs,
    /// Where to write the rows: .csv, or .parquet in a build with the parquet feature.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// Model file (JSON) to score with.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// Event log (JSON lines); each score uses the events up to and including its time.
    #[arg(long, value_name = "FILE")]
    pub events: PathBuf,
    /// Score at this time (RFC3339, YYYY-MM-DD or epoch ms).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub at: Millis,
    /// Also score every DUR after --at, up to --until.
    #[arg(long, value_name = "DUR", requires = "until")]
    pub every: Option<Span>,
    /// Last time to score at with --every (inclusive).
    #[arg(long, value_name = "TIME", value_parser = parse_time, requires = "every")]
    pub until: Option<Millis>,
    /// Reasons (features by contribution to the score) per row.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub top_reasons: usize,
    /// Where to write the scores: .csv, or .parquet in a build with the parquet feature.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
#[command(mut_arg("cutoff", |a| a.required(false).required_unless_present("truth")))]
pub struct EvaluateArgs {
    /// Model file (JSON) to evaluate.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// Event log (JSON lines) to label and score.
    #[arg(long, value_name = "FILE")]
    pub events: PathBuf,
    /// The labelling (required unless --truth is given).
    #[command(flatten)]
    pub label: Option<LabelArgs>,
    /// Lead-time evaluation instead of a cutoff: ground truth CSV with a header, `user_id` and
    /// the churn time (`churn_ts` as `simulate --truth` writes it, or a second column; empty =
    /// did not churn). Every user is scored daily at 00:00 UTC over --from..--until.
    #[arg(long, value_name = "FILE")]
    pub truth: Option<PathBuf>,
    /// With --truth: first time scored. Default: the first 00:00 UTC after the first event plus
    /// the model's longest feature window (so windows are full).
    #[arg(long, value_name = "TIME", value_parser = parse_time, requires = "truth")]
    pub from: Option<Millis>,
    /// With --truth: last time scored. Default: 00:00 UTC of the last event's day.
    #[arg(long, value_name = "TIME", value_parser = parse_time, requires = "truth")]
    pub until: Option<Millis>,
    /// With --truth: take the flags from an engine's decisions (`replay --out` JSON lines, and
    /// the control records too if you want all of them) instead of scoring daily.
    #[arg(long, value_name = "FILE", requires = "truth")]
    pub decisions: Vec<PathBuf>,
    /// With --truth: the lead a churner must be flagged by.
    #[arg(long, value_name = "DUR", default_value = "7d", requires = "truth")]
    pub min_lead: Span,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Write an HTML report of this evaluation to this directory.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// Model file (JSON) to score with.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// Event log (JSON lines) to replay, in file order.
    #[arg(long, value_name = "FILE")]
    pub events: PathBuf,
    /// Where to write the interventions (JSON lines).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Also write the control group's records here.
    #[arg(long, value_name = "FILE")]
    pub control_out: Option<PathBuf>,
    /// Config TOML; its [engine] and [policy] sections apply.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Engines to spread users over, one thread each (0: one per core). The output is the same
    /// for any number.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub threads: usize,
}

#[derive(Args, Debug)]
pub struct UpliftArgs {
    /// Event log (JSON lines) that the records' outcomes are read from.
    #[arg(long, value_name = "FILE")]
    pub events: PathBuf,
    /// Treated intervention records (JSON lines, `replay --out`).
    #[arg(long, value_name = "FILE")]
    pub interventions: PathBuf,
    /// Control records (JSON lines, `replay --control-out`).
    #[arg(long, value_name = "FILE")]
    pub control: PathBuf,
    /// Retained = any event in (t, t + horizon] after the record's event time t.
    #[arg(long, value_name = "DUR", default_value = "30d")]
    pub horizon: Span,
    /// Costs TOML: cost per action, value per retained user (docs/INTERVENTIONS.md).
    #[arg(long, value_name = "FILE")]
    pub costs: Option<PathBuf>,
    /// Write an HTML report (retention by group, uplift per action, cost-benefit) to this directory.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Simulate(a) => simulate(a),
        Command::Train(a) => train_cmd(a),
        Command::Evaluate(a) => evaluate_cmd(a),
        Command::Dataset(a) => dataset_cmd(a),
        Command::Score(a) => score_cmd(a),
        Command::Replay(a) => replay_cmd(a),
        Command::Uplift(a) => crate::uplift::run_cli(&a),
        Command::Run(a) => run_cmd(a, cli.log_format),
        Command::Demo(a) => demo_cmd(a),
        Command::Bench(BenchCommand::Replay { users, days, seed, model, workdir, train_rows, repeat, threads }) => {
            let report = crate::bench::replay_bench(&crate::bench::ReplayBenchOptions {
                users,
                days,
                seed,
                model,
                workdir,
                train_rows,
                repeat,
                threads,
            })?;
            crate::term::stdout_str(&report);
            Ok(())
        }
        Command::Bench(BenchCommand::Baseline { users, days, seed, model, workdir, repeat }) => {
            let report = crate::bench::baseline::baseline_bench(&crate::bench::baseline::BaselineOptions {
                users,
                days,
                seed,
                model,
                workdir,
                repeat,
            })?;
            crate::term::stdout_str(&report);
            Ok(())
        }
        Command::Bench(BenchCommand::Kafka {
            brokers,
            users,
            days,
            partitions,
            model,
            latency_load,
            latency_seconds,
            workers,
            repeat,
            kafka,
            guarantees,
            commit_interval,
            no_changelog,
            flush_interval,
        }) => {
            let o = crate::bench::KafkaBenchOptions {
                brokers,
                users,
                days,
                partitions,
                model,
                latency_load,
                latency_seconds,
                workers,
                repeat,
                kafka,
                guarantees,
                commit_interval,
                changelog: !no_changelog,
                flush_interval,
            };
            let report = runtime()?.block_on(crate::bench::kafka_bench(&o))?;
            crate::term::stdout_str(&report);
            Ok(())
        }
        Command::Bench(BenchCommand::State {
            users,
            events_per_user,
            repeat,
            model,
            brokers,
            partitions,
            parallel,
            broker_data_dir,
            idle,
            days,
            ttl_days,
            active_share,
            flush_every,
            sample_every,
        }) => {
            let idle = idle.then_some(crate::bench::state::IdleOptions {
                days,
                ttl_days,
                active_share,
                flush_every,
                sample_every,
            });
            let report = crate::bench::state::state_bench(&crate::bench::state::StateBenchOptions {
                users,
                events_per_user,
                repeat,
                model,
                brokers,
                partitions,
                parallel,
                broker_data_dir,
                idle,
            })?;
            crate::term::stdout_str(&report);
            Ok(())
        }
        Command::Config(ConfigCommand::Check { file }) => {
            let cfg = crate::config::Config::load(&file)?;
            crate::term::stdout_str(&cfg.redacted_toml());
            crate::errln!("{}: ok", file.display());
            Ok(())
        }
    }
}

fn parse_guarantee(s: &str) -> Result<crate::config::Guarantee, String> {
    match s.trim() {
        "at_least_once" => Ok(crate::config::Guarantee::AtLeastOnce),
        "exactly_once" => Ok(crate::config::Guarantee::ExactlyOnce),
        other => Err(format!("{other:?}: expected at_least_once or exactly_once")),
    }
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("expected KEY=VALUE, e.g. fetch.queue.backoff.ms=10 (got {} bytes without '=')", s.len())),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// The service's runtime: `runtime.workers` threads run the partition workers.
fn service_runtime(cfg: &crate::config::Config) -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.runtime.worker_threads())
        .thread_name("churnguard-worker")
        .enable_all()
        .build()?)
}

fn run_cmd(a: RunArgs, log_format: LogFormat) -> Result<()> {
    let cfg = crate::config::Config::load(&a.config)?;
    let metrics = std::sync::Arc::new(crate::telemetry::Metrics::new());
    let rt = service_runtime(&cfg)?;
    let summary = rt.block_on(crate::service::run(cfg, metrics, crate::service::shutdown_signal(), |addr| {
        tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    }));
    // A blocking call still running (a restore's broker request) must not hold the exit: the
    // service has already drained and committed within shutdown.timeout.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    let summary = summary?;
    if log_format == LogFormat::Json {
        tracing::info!(
            consumed = summary.consumed,
            valid = summary.valid,
            dead_lettered = summary.dead_lettered,
            interventions = summary.interventions,
            control = summary.control,
            "stopped"
        );
    } else {
        crate::errln!(
            "stopped: consumed {}, valid {}, dead-lettered {}, interventions {}, control {}",
            summary.consumed,
            summary.valid,
            summary.dead_lettered,
            summary.interventions,
            summary.control
        );
    }
    Ok(())
}

fn demo_cmd(a: DemoArgs) -> Result<()> {
    let opts = crate::demo::DemoOptions {
        duration: a.duration.map(|d| std::time::Duration::from_millis(d.ms().max(0) as u64)),
        users: a.users,
        days: a.days,
        seed: a.seed,
        day_seconds: a.day_seconds,
        partitions: a.partitions,
        model: a.model,
        http: a.http,
        print_per_second: a.print_per_second,
        out: a.out,
        uplift_users: a.uplift_users,
    };
    let rt = runtime()?;
    let done = rt.block_on(crate::demo::run(opts));
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    done
}

fn create(path: &Path) -> Result<BufWriter<File>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    Ok(BufWriter::with_capacity(1 << 20, f))
}

fn simulate(a: SimulateArgs) -> Result<()> {
    if !a.effects.is_empty() {
        return crate::sim::treatment::simulate_cli(&a);
    }
    let cfg = SimConfig { users: a.users, days: a.days, seed: a.seed, start_ms: a.start };
    let started = std::time::Instant::now();
    let mut out = create(&a.out)?;
    let mut truth = a.truth.as_deref().map(create).transpose()?;
    let spin = crate::progress::spinner(&format!("simulating {} users over {} days", cfg.users, cfg.days));
    let s = sim::simulate(&cfg, &mut out, truth.as_mut())?;
    spin.finish_and_clear();
    out.flush()?;
    if let Some(t) = truth.as_mut() {
        t.flush()?;
    }
    crate::errln!(
        "simulated {} events for {} users ({} churned, {} reactivated) from {} to {} in {:.1}s -> {}",
        s.events,
        s.users,
        s.churned_users,
        s.reactivated_users,
        format_rfc3339_ms(s.first_ts),
        format_rfc3339_ms(s.last_ts),
        started.elapsed().as_secs_f64(),
        a.out.display()
    );
    let latest = chrono::Utc::now().timestamp_millis().saturating_add(crate::event::DEFAULT_MAX_FUTURE.ms());
    if s.last_ts > latest {
        crate::errln!(
            "note: events after {} lie in the future; replay, train and the other commands reject them as bad_timestamp (an event cannot come from the future). Use an earlier --start or fewer --days to keep them.",
            format_rfc3339_ms(latest)
        );
    }
    Ok(())
}

fn labelling(l: &LabelArgs, cutoffs: Vec<Millis>) -> Result<Labelling> {
    // Explicit labels ignore the horizon; 0 stands for "none" there.
    let horizon = l.horizon()?.unwrap_or(Span(0));
    let source = match (&l.churn_event, &l.labels) {
        (Some(t), _) => LabelSource::ChurnEvent(t.clone()),
        (None, Some(p)) => LabelSource::Explicit(ExplicitLabels::load(p)?),
        (None, None) => LabelSource::Silence,
    };
    Ok(Labelling { cutoffs, horizon, active_within: l.active_within, source })
}

/// What a built dataset says about its labels, on stderr: the end of data the censoring check
/// used, and with explicit labels, who had none and which labels matched no one.
fn report_labels(lab: &Labelling, data: &dataset::Dataset) {
    if let LabelSource::Explicit(l) = &lab.source {
        crate::errln!(
            "labels {}: {} of {} population members labelled, {} without a label (left out); {} of {} label row(s) matched no one",
            l.path,
            data.rows(),
            data.population,
            data.unlabelled,
            data.labels_unmatched,
            l.len()
        );
    } else {
        crate::errln!("labels complete up to {} ({})", format_rfc3339_ms(data.data_end.0), data.data_end.1);
    }
}

fn load_log(path: &Path) -> Result<EventLog> {
    let log = EventLog::load(path)?;
    let report = log.rejected.report();
    if !report.is_empty() {
        crate::errln!("{}: {report}", path.display());
    }
    warn_if_seconds(path, log.last_ts());
    Ok(log)
}

/// Every event before 1973-03-03 (epoch 1e11 ms) is valid, but it is what epoch seconds sent as
/// milliseconds look like, so say so.
fn warn_if_seconds(path: &Path, last_ts: Millis) {
    if last_ts < 100_000_000_000 {
        crate::term::warn(&format!(
            "{}: every event is before 1973-03-03 (the last at {}); if `ts` holds epoch seconds, multiply by 1000",
            path.display(),
            format_rfc3339_ms(last_ts)
        ));
    }
}

/// The rows `train` fits, built from the command's flags; `dataset` writes exactly these.
pub struct TrainingSet {
    pub log: EventLog,
    pub spec: FeatureSpec,
    pub labelling: Labelling,
    pub cutoffs: Vec<Millis>,
    pub data: dataset::Dataset,
    /// Reading and parsing the event log.
    pub load_seconds: f64,
    /// Replaying it to the cutoffs and labelling the rows.
    pub build_seconds: f64,
}

/// Load the events, choose the spec, label and build the rows: the one code path of `train` and
/// `dataset`.
pub fn training_set(a: &RowArgs) -> Result<TrainingSet> {
    if a.cutoffs == 0 {
        bail!("--cutoffs must be at least 1");
    }
    if a.every.ms() <= 0 {
        bail!("--every must be longer than 0 (got {}): cutoffs would coincide", a.every);
    }
    let opts = a.label.build_options()?;
    let cutoff = a.label.cutoff;
    let cutoffs: Vec<Millis> = (0..a.cutoffs as i64).map(|i| cutoff - i * a.every.ms()).collect();
    let lab = labelling(&a.label, cutoffs.clone())?;
    let t = std::time::Instant::now();
    let log = load_log(&a.events)?;
    let load_seconds = t.elapsed().as_secs_f64();
    let spec = match &a.spec {
        Some(p) => FeatureSpec::from_file(p)?,
        None => FeatureSpec::derive_from_counts(&log.type_counts(), 0.0005, 16),
    };
    spec.validate()?;
    let t = std::time::Instant::now();
    let data = dataset::build_with(&log, &spec, &lab, &opts)?;
    let build_seconds = t.elapsed().as_secs_f64();
    report_labels(&lab, &data);
    Ok(TrainingSet { log, spec, labelling: lab, cutoffs, data, load_seconds, build_seconds })
}

fn train_cmd(a: TrainArgs) -> Result<()> {
    let TrainingSet { log, spec, labelling: lab, cutoffs, data, load_seconds, build_seconds } = training_set(&a.rows)?;
    crate::errln!(
        "{} rows ({} users) over {} cutoff(s), churn rate {:.3}, {} features; events loaded in {load_seconds:.1}s, rows built in {build_seconds:.1}s",
        data.rows(),
        data.distinct_users(),
        cutoffs.len(),
        data.churn_rate(),
        data.n_features
    );
    let ctx = TrainContext {
        events_file: a.rows.events.display().to_string(),
        data_from: format_rfc3339_ms(log.first_ts()),
        data_to: format_rfc3339_ms(log.last_ts()),
        cutoffs: cutoffs.iter().map(|c| format_rfc3339_ms(*c)).collect(),
        horizon: a.rows.label.horizon_text(),
        active_within: a.rows.label.active_within.map(|s| s.to_string()),
        label_source: lab.source.describe(),
    };
    // Only the rows are needed from here on; the log is as large as a third of them.
    drop(log);
    let opt = TrainOptions { seed: a.seed, ..TrainOptions::default() };
    let spin = crate::progress::spinner(&format!(
        "fitting: L2 search over {} strengths, then the final fit",
        opt.l2_grid.len()
    ));
    let outcome = train::train(&spec, data, ctx, &opt)?;
    spin.finish_and_clear();
    for w in &outcome.warnings {
        crate::term::warn(w);
    }
    let art = &outcome.artifact;
    art.save(&a.out)?;
    let v = &art.training.validation;
    crate::errln!(
        "model {} -> {}: validation ({} rows, {} users, {} churned) ROC AUC {:.4}, PR AUC {:.4}, log loss {:.4}, Brier {:.4}; l2 {:.0e} (searched {}); tiers {}; {:.1}s",
        art.model_version,
        a.out.display(),
        v.n_rows,
        v.n_users,
        outcome.validation_labels.iter().filter(|y| **y).count(),
        v.roc_auc,
        v.pr_auc,
        v.log_loss,
        v.brier,
        art.training.l2,
        art.training.l2_grid.iter().map(|(l2, _)| format!("{l2:.0e}")).collect::<Vec<_>>().join(" "),
        art.thresholds.tiers.iter().map(|t| format!("{}>={:.3}", t.name, t.min_score)).collect::<Vec<_>>().join(", "),
        art.training.train_seconds
    );
    let t = &outcome.timings;
    crate::errln!(
        "fit time: prepare (split, transform, standardise) {:.1}s, L2 search {:.1}s ({} fits on {} rows), final fit {:.1}s (gradient norm {:.1e}, converged below {:.1e})",
        t.prepare_seconds,
        t.search_seconds,
        t.search_fits,
        t.search_rows,
        t.final_fit_seconds,
        t.final_fit_gradient,
        t.final_fit_tolerance
    );
    if let Some(dir) = &a.report {
        let path = write_report(
            dir,
            art,
            &outcome.validation_scores,
            &outcome.validation_labels,
            art.training.validation.n_users,
            "validation split",
        )?;
        crate::errln!("report: {}", path.display());
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutFormat {
    Csv,
    #[cfg_attr(not(feature = "parquet"), allow(dead_code))]
    Parquet,
}

/// The output format, from the file name: `.csv`, or `.parquet` in a build with the `parquet`
/// feature.
fn out_format(path: &Path) -> Result<OutFormat> {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    if name.ends_with(".csv") {
        Ok(OutFormat::Csv)
    } else if name.ends_with(".parquet") {
        if cfg!(feature = "parquet") {
            Ok(OutFormat::Parquet)
        } else {
            bail!(
                "{}: Parquet output is not available in this build (build with --features parquet); write .csv",
                path.display()
            )
        }
    } else {
        bail!("{}: the output format is chosen by extension; use .csv or .parquet", path.display())
    }
}

#[cfg(feature = "parquet")]
fn parquet_err(path: &Path) -> impl Fn(crate::model::export::parquet_out::Error) -> anyhow::Error + '_ {
    move |e| anyhow::anyhow!("writing {}: {e}", path.display())
}

fn dataset_cmd(a: DatasetArgs) -> Result<()> {
    let format = out_format(&a.out)?;
    let set = training_set(&a.rows)?;
    match format {
        OutFormat::Csv => {
            let mut out = create(&a.out)?;
            crate::model::export::write_dataset_csv(&mut out, &set.log, &set.spec, &set.data)
                .and_then(|_| out.flush())
                .with_context(|| format!("writing {}", a.out.display()))?;
        }
        #[cfg(feature = "parquet")]
        OutFormat::Parquet => {
            drop(create(&a.out)?);
            crate::model::export::parquet_out::write_dataset(&a.out, &set.log, &set.spec, &set.data)
                .map_err(parquet_err(&a.out))?;
        }
        #[cfg(not(feature = "parquet"))]
        OutFormat::Parquet => unreachable!("out_format refuses .parquet without the feature"),
    }
    crate::errln!(
        "{} rows ({} users) over {} cutoff(s), churn rate {:.3}, {} features -> {}",
        set.data.rows(),
        set.data.distinct_users(),
        set.cutoffs.len(),
        set.data.churn_rate(),
        set.data.n_features,
        a.out.display()
    );
    Ok(())
}

fn score_cmd(a: ScoreArgs) -> Result<()> {
    let format = out_format(&a.out)?;
    let mut times = vec![a.at];
    if let (Some(every), Some(until)) = (a.every, a.until) {
        if every.ms() <= 0 {
            bail!("--every must be longer than 0 (got {every})");
        }
        if until < a.at {
            bail!("--until {} is before --at {}", format_rfc3339_ms(until), format_rfc3339_ms(a.at));
        }
        let n = (until - a.at) / every.ms() + 1;
        if n > 10_000 {
            bail!("--at, --every and --until give {n} scoring times; at most 10000");
        }
        times = (0..n).map(|i| a.at + i * every.ms()).collect();
    }
    let art = ModelArtifact::load(&a.model)?;
    let log = load_log(&a.events)?;
    if a.at < log.first_ts() {
        crate::term::warn(&format!(
            "--at {} is before the first event ({}): no user is scored there",
            format_rfc3339_ms(a.at),
            format_rfc3339_ms(log.first_ts())
        ));
    }
    let top = a.top_reasons;
    let lifecycle = PolicyConfig::default().lifecycle;
    let mut rows = 0u64;
    match format {
        OutFormat::Csv => {
            let mut out = create(&a.out)?;
            out.write_all(crate::model::export::score_header(top).as_bytes())?;
            let mut err = None;
            crate::model::export::score_at(&log, &art, &lifecycle, top, &times, |s| {
                if err.is_none() {
                    rows += 1;
                    if let Err(e) = crate::model::export::write_score_row(&mut out, &s, top) {
                        err = Some(e);
                    }
                }
            });
            if let Some(e) = err {
                return Err(e).with_context(|| format!("writing {}", a.out.display()));
            }
            out.flush().with_context(|| format!("writing {}", a.out.display()))?;
        }
        #[cfg(feature = "parquet")]
        OutFormat::Parquet => {
            drop(create(&a.out)?);
            let mut w =
                crate::model::export::parquet_out::ScoreWriter::create(&a.out, top).map_err(parquet_err(&a.out))?;
            let mut err = None;
            crate::model::export::score_at(&log, &art, &lifecycle, top, &times, |s| {
                if err.is_none() {
                    rows += 1;
                    if let Err(e) = w.push(s) {
                        err = Some(e);
                    }
                }
            });
            if let Some(e) = err {
                return Err(parquet_err(&a.out)(e));
            }
            w.finish().map_err(parquet_err(&a.out))?;
        }
        #[cfg(not(feature = "parquet"))]
        OutFormat::Parquet => unreachable!("out_format refuses .parquet without the feature"),
    }
    crate::errln!(
        "{rows} scores by model {} at {} time(s) from {} to {} -> {}",
        art.model_version,
        times.len(),
        format_rfc3339_ms(times[0]),
        format_rfc3339_ms(*times.last().unwrap_or(&a.at)),
        a.out.display()
    );
    Ok(())
}

fn write_report(
    dir: &Path,
    art: &ModelArtifact,
    scores: &[f64],
    labels: &[bool],
    users: usize,
    what: &str,
) -> Result<PathBuf> {
    let mut coefs: Vec<(String, f64)> =
        art.feature_names.iter().cloned().zip(art.coefficients.iter().copied()).collect();
    coefs.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
    let t = &art.training;
    let extra = vec![
        ("model_version".to_string(), art.model_version.clone()),
        ("created_at".to_string(), art.created_at.clone()),
        ("events".to_string(), t.events_file.clone()),
        ("data range".to_string(), format!("{} .. {}", t.data_from, t.data_to)),
        ("cutoffs".to_string(), t.cutoffs.join(", ")),
        ("horizon".to_string(), t.horizon.clone()),
        ("labels".to_string(), t.label_source.clone()),
        ("training rows / users".to_string(), format!("{} / {}", t.rows, t.users)),
        (format!("{what}: rows / users"), format!("{} / {users}", scores.len())),
        ("l2 (per row)".to_string(), format!("{:e}", t.l2)),
        ("features".to_string(), art.feature_names.len().to_string()),
    ];
    let subtitle = format!("{what}: {} rows", scores.len());
    let title = format!("churnguard model {}", art.model_version);
    let input = ReportInput {
        title: &title,
        subtitle: &subtitle,
        scores,
        labels,
        coefficients: &coefs,
        threshold: art.thresholds.decision,
        extra: &extra,
    };
    Ok(report::write_report(dir, &input)?)
}

fn evaluate_cmd(a: EvaluateArgs) -> Result<()> {
    if a.truth.is_some() {
        return lead_time_cmd(a);
    }
    let Some(label) = &a.label else {
        bail!("evaluate needs --cutoff (and --horizon or --labels), or --truth for a lead-time evaluation");
    };
    let art = ModelArtifact::load(&a.model)?;
    let cutoff = label.cutoff;
    let opts = label.build_options()?;
    let lab = labelling(label, vec![cutoff])?;
    if let Some(w) = label.horizon.and_then(|h| horizon_mismatch(&art, h)) {
        crate::term::warn(&w);
    }
    let log = load_log(&a.events)?;
    let data = dataset::build_with(&log, &art.spec, &lab, &opts)?;
    report_labels(&lab, &data);
    let (m, scores) = train::evaluate(&art, &data);
    if data.y.iter().all(|y| *y) || data.y.iter().all(|y| !*y) {
        crate::term::warn(&format!(
            "every one of the {} labelled users is {}: ROC AUC and PR AUC are undefined (NaN)",
            data.rows(),
            if data.y.first() == Some(&true) { "churned" } else { "retained" }
        ));
    }
    if a.json {
        crate::outln!("{}", serde_json::to_string(&m)?);
    } else {
        crate::outln!("model        {}", art.model_version);
        crate::outln!("cutoff       {}  horizon {}", format_rfc3339_ms(cutoff), label.horizon_text());
        crate::outln!("users        {}", m.n_users);
        crate::outln!("churn rate   {:.4}", m.churn_rate);
        crate::outln!("ROC AUC      {:.4}", m.roc_auc);
        crate::outln!("PR AUC       {:.4}", m.pr_auc);
        crate::outln!("log loss     {:.4}", m.log_loss);
        crate::outln!("Brier        {:.4}", m.brier);
        crate::outln!();
        crate::outln!("calibration");
        crate::term::stdout_str(&metrics::format_calibration_table(&metrics::calibration_table(&scores, &data.y, 10)));
    }
    if let Some(dir) = &a.report {
        let path = write_report(
            dir,
            &art,
            &scores,
            &data.y,
            data.distinct_users(),
            &format!("evaluation at {}", format_rfc3339_ms(cutoff)),
        )?;
        crate::errln!("report: {}", path.display());
    }
    Ok(())
}

/// `evaluate --truth`: lead times per tier (crate::model::leadtime), from daily scores through
/// the engine's feature path ([`crate::model::export::score_at`]) or from given decisions.
fn lead_time_cmd(a: EvaluateArgs) -> Result<()> {
    use crate::model::leadtime::{format_table, parse_truth, LeadTimeCounter};
    if a.label.is_some() {
        bail!("--truth is a lead-time evaluation: it takes no --cutoff, --horizon or --labels (the horizon is the model's)");
    }
    if a.report.is_some() {
        bail!("--report is not available with --truth");
    }
    if a.min_lead.ms() < 0 {
        bail!("--min-lead must not be negative (got {})", a.min_lead);
    }
    let art = ModelArtifact::load(&a.model)?;
    let horizon: Span = art.training.horizon.parse().map_err(|_| {
        anyhow::anyhow!(
            "model {} has no horizon ({}): lead times need one to judge first flags",
            art.model_version,
            art.training.horizon
        )
    })?;
    let truth_path = a.truth.as_ref().expect("checked by the caller");
    let text = std::fs::read_to_string(truth_path).with_context(|| format!("reading {}", truth_path.display()))?;
    let truth = parse_truth(&text).map_err(|e| anyhow::anyhow!("{}: {e}", truth_path.display()))?;
    let log = load_log(&a.events)?;
    let day_of = |t: Millis| t.div_euclid(DAY_MS) * DAY_MS;
    let longest = art.spec.windows.iter().copied().max().unwrap_or(Span(0)).ms();
    let from = a.from.unwrap_or_else(|| day_of(log.first_ts() + DAY_MS - 1) + longest);
    let until = a.until.unwrap_or_else(|| day_of(log.last_ts()));
    if until < from {
        bail!(
            "the scored period is empty: --until {} is before --from {}",
            format_rfc3339_ms(until),
            format_rfc3339_ms(from)
        );
    }
    let tiers: Vec<(String, f64)> = art.thresholds.tiers.iter().map(|t| (t.name.clone(), t.min_score)).collect();
    let mut counter = LeadTimeCounter::new(&truth, &tiers, from, until, horizon.ms(), a.min_lead.ms());
    let mut seen = std::collections::HashSet::new();
    if a.decisions.is_empty() {
        let n = (until - from) / DAY_MS + 1;
        let times: Vec<Millis> = (0..n).map(|i| from + i * DAY_MS).collect();
        let lifecycle = PolicyConfig::default().lifecycle;
        crate::model::export::score_at(&log, &art, &lifecycle, 0, &times, |s| {
            if let Some(rank) = counter.rank_of_score(s.score) {
                counter.flag(&s.user_id, s.at, rank);
            }
            seen.insert(s.user_id);
        });
    } else {
        for p in &a.decisions {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let v: serde_json::Value =
                    serde_json::from_str(line).with_context(|| format!("{} line {}", p.display(), i + 1))?;
                let field = |k: &str| v.get(k).and_then(|x| x.as_str());
                let (Some(user), Some(tier), Some(at)) = (field("user_id"), field("tier"), field("event_time")) else {
                    bail!("{} line {}: a decision needs user_id, tier and event_time", p.display(), i + 1);
                };
                let at = parse_timestamp(at).with_context(|| format!("{} line {}", p.display(), i + 1))?;
                let Some(rank) = counter.rank_of_tier(tier) else {
                    bail!("{} line {}: tier {tier:?} is not one of model {}'s", p.display(), i + 1, art.model_version);
                };
                counter.flag(user, at, rank);
            }
        }
        for u in 0..log.users() as u32 {
            seen.insert(log.user_id(u).to_string());
        }
    }
    let unmatched = seen.iter().filter(|u| !truth.contains_key(u.as_str())).count();
    if unmatched > 0 {
        crate::term::warn(&format!(
            "{unmatched} of {} users in the events have no row in {}: they count as never churning",
            seen.len(),
            truth_path.display()
        ));
    }
    let l = counter.finish();
    if a.json {
        crate::outln!("{}", serde_json::to_string(&l)?);
    } else {
        crate::outln!("model         {}", art.model_version);
        crate::outln!(
            "flags         {}",
            if a.decisions.is_empty() {
                "daily scores at 00:00 UTC".to_string()
            } else {
                "engine decisions".to_string()
            }
        );
        crate::term::stdout_str(&format_table(&l));
    }
    Ok(())
}

/// A warning when a model is evaluated at another horizon than it was trained for: its
/// probabilities are of churn within its own horizon, so calibration figures are off.
pub fn horizon_mismatch(art: &ModelArtifact, horizon: Span) -> Option<String> {
    let trained: Span = art.training.horizon.parse().ok()?;
    (trained != horizon).then(|| {
        format!(
            "evaluating at horizon {horizon}, but model {} was trained at horizon {trained}: its scores are P(churn within {trained}), so calibration (log loss, Brier, the calibration table) is off at {horizon}; ranking (ROC AUC, PR AUC) still applies. Use --horizon {trained} to match.",
            art.model_version
        )
    })
}

/// The [engine] and [policy] sections of a config file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct ReplayConfig {
    engine: EngineConfig,
    policy: PolicyConfig,
}

fn replay_cmd(a: ReplayArgs) -> Result<()> {
    let art = ModelArtifact::load(&a.model)?;
    let cfg: ReplayConfig = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let table: toml::Table = toml::from_str(&text).map_err(|e| {
                anyhow::anyhow!("parsing {}: {}", p.display(), crate::config::syntax_error_message(&e, &text))
            })?;
            // Replay reads a service config's [engine], [policy] and [uplift]. The whole file is
            // read as the service reads it, so a misspelt section or key is refused rather than
            // silently left at its default, and a valid service config is always accepted.
            let all: crate::config::Config =
                toml::Value::Table(table).try_into().with_context(|| format!("reading {}", p.display()))?;
            all.uplift.validate()?;
            let mut engine = all.engine;
            engine.outcome_horizon = all.uplift.horizon;
            ReplayConfig { engine, policy: all.policy }
        }
        None => ReplayConfig::default(),
    };
    let mut cfg = cfg;
    cfg.policy.resolve_uplift_from()?;
    cfg.policy.validate()?;
    cfg.engine.validate(&cfg.policy)?;
    let threads = match a.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut engines: Vec<Engine> =
        (0..threads).map(|_| Engine::new(&art, cfg.policy.clone(), cfg.engine.clone())).collect();
    let mut out = create(&a.out)?;
    let mut control = a.control_out.as_deref().map(create).transpose()?;
    let s = replay::replay_sharded(
        &a.events,
        DEFAULT_MAX_EVENT_BYTES,
        &mut engines,
        ReplaySink { interventions: &mut out, control: control.as_mut().map(|c| c as &mut dyn Write) },
    )?;
    out.flush()?;
    if let Some(c) = control.as_mut() {
        c.flush()?;
    }
    if s.valid == 0 {
        bail!(
            "no valid events in {}: {}; wrote no interventions to {}",
            a.events.display(),
            dataset::no_events_why(&s.rejected),
            a.out.display()
        );
    }
    let report = s.rejected.report();
    if !report.is_empty() {
        crate::errln!("{}: {report}", a.events.display());
    }
    let fmt = |m: &std::collections::BTreeMap<String, u64>| {
        m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
    };
    crate::errln!(
        "replayed {} events ({} valid, {} rejected, {} late) in {:.2}s ({:.0} events/s); {} users tracked, {} evicted; interventions: {} [{}]; control: {} [{}]; rescored while silent: {}; held during warm-up: {} -> {}",
        s.lines,
        s.valid,
        s.rejected.total(),
        s.late,
        s.elapsed.as_secs_f64(),
        s.events_per_second(),
        s.users_tracked,
        s.counters.users_evicted,
        s.counters.interventions,
        fmt(&s.interventions_by_tier),
        s.counters.control,
        fmt(&s.control_by_tier),
        s.counters.scored_on_timer,
        s.counters.held_warm_up,
        a.out.display()
    );
    if s.counters.interventions == 0 && s.counters.control == 0 {
        let why = if s.counters.held_warm_up > 0 {
            format!(
                "{} decision(s) that reached a tier were held during the warm-up (engine.warm_up: the events cover less than it after the first one)",
                s.counters.held_warm_up
            )
        } else {
            format!("no user reached a tier over {} valid events", s.valid)
        };
        crate::errln!("{} is empty: {why}", a.out.display());
    }
    Ok(())
}
