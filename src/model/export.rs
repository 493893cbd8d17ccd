//! Per-user output for analysis outside churnguard: the exact training rows (`dataset`) and each
//! user's score at given times (`score`), as CSV.
//!
//! Both go through the code that trains and serves: the rows are [`super::dataset::build`]'s,
//! and scores come from the feature store and [`Scorer`] exactly as the engine computes them.

use std::io::Write;

use super::dataset::{Dataset, EventLog, StoreIndex};
use super::score::{Reason, Scorer};
use super::ModelArtifact;
use crate::features::{FeatureSpec, FeatureStore, Layout};
use crate::policy::{LifecycleConfig, Stage};
use crate::time::{format_rfc3339_ms, Millis};

/// A CSV field: quoted (with inner quotes doubled) when it holds a comma, quote or line break.
pub fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

/// Write the rows `train` fits: `user_id,cutoff,<every feature by name>,churned`. Feature
/// values are raw (before the model's per-feature transform and standardisation), printed so
/// that they parse back to the same `f64`.
pub fn write_dataset_csv(
    out: &mut dyn Write,
    log: &EventLog,
    spec: &FeatureSpec,
    data: &Dataset,
) -> std::io::Result<()> {
    let mut header = String::from("user_id,cutoff");
    for name in spec.feature_names() {
        header.push(',');
        header.push_str(&csv_field(&name));
    }
    header.push_str(",churned\n");
    out.write_all(header.as_bytes())?;
    let mut line = String::new();
    for i in 0..data.rows() {
        line.clear();
        line.push_str(&csv_field(log.user_id(data.user[i])));
        line.push(',');
        line.push_str(&format_rfc3339_ms(data.cutoff[i]));
        for v in data.row(i) {
            line.push(',');
            line.push_str(&v.to_string());
        }
        line.push_str(if data.y[i] { ",1\n" } else { ",0\n" });
        out.write_all(line.as_bytes())?;
    }
    Ok(())
}

/// One user's score at one time.
#[derive(Debug, Clone, PartialEq)]
pub struct UserScore {
    pub user_id: String,
    pub at: Millis,
    pub score: f64,
    /// The highest of the model's tiers the score reaches, if any.
    pub tier: Option<String>,
    pub stage: Stage,
    pub reasons: Vec<Reason>,
}

/// Score every user seen by each of `times` (sorted or not) on the events up to and including
/// that time, as the engine's feature store and scorer compute it. Users are given in order of
/// first appearance; `f` is called time by time.
pub fn score_at(
    log: &EventLog,
    art: &ModelArtifact,
    lifecycle: &LifecycleConfig,
    top_reasons: usize,
    times: &[Millis],
    mut f: impl FnMut(UserScore),
) {
    let mut times = times.to_vec();
    times.sort_unstable();
    times.dedup();
    let layout = Layout::new(&art.spec, lifecycle.churned_after.ms());
    let n = layout.n_features();
    let mut store = FeatureStore::new(layout);
    let scorer = Scorer::new(art);
    let mut tiers = art.thresholds.tiers.clone();
    tiers.sort_by(|a, b| b.min_score.total_cmp(&a.min_score));
    // Store index of each user, in order of first appearance.
    let mut order: Vec<u32> = Vec::new();
    let mut buf = vec![0.0; n];
    let mut snapshot = |at: Millis, store: &FeatureStore, order: &[u32]| {
        for &idx in order {
            store.vector_at(idx, at, &mut buf);
            let score = scorer.score(&buf);
            let tier = tiers.iter().find(|t| score >= t.min_score).map(|t| t.name.clone());
            f(UserScore {
                user_id: store.user_id(idx).to_string(),
                at,
                score,
                tier,
                stage: lifecycle.stage(store.user(idx), at),
                reasons: scorer.explain(&buf, top_reasons),
            });
        }
    };
    let mut index = StoreIndex::new(log);
    let mut next = 0;
    for (user, ty, ts, amount) in log.events() {
        while next < times.len() && ts > times[next] {
            snapshot(times[next], &store, &order);
            next += 1;
        }
        let (idx, created) = index.get_or_insert(&mut store, log, user, ts);
        if created {
            order.push(idx);
        }
        let type_idx = store.layout().spec().type_index(ty);
        store.apply(idx, ts, type_idx, amount);
    }
    while next < times.len() {
        snapshot(times[next], &store, &order);
        next += 1;
    }
}

/// CSV header of [`write_score_row`] with `top` reasons.
pub fn score_header(top: usize) -> String {
    let mut h = String::from("user_id,at,p_churn,tier,stage");
    for i in 1..=top {
        h.push_str(&format!(",reason_{i},contribution_{i}"));
    }
    h.push('\n');
    h
}

/// One CSV line: `user_id,at,p_churn,tier,stage` and `top` (feature, contribution) pairs, empty
/// where a score has fewer non-zero contributions.
pub fn write_score_row(out: &mut dyn Write, s: &UserScore, top: usize) -> std::io::Result<()> {
    let mut line = format!(
        "{},{},{},{},{}",
        csv_field(&s.user_id),
        format_rfc3339_ms(s.at),
        s.score,
        s.tier.as_deref().unwrap_or(""),
        s.stage.as_str()
    );
    for i in 0..top {
        match s.reasons.get(i) {
            Some(r) => line.push_str(&format!(",{},{}", csv_field(&r.feature), r.contribution)),
            None => line.push_str(",,"),
        }
    }
    line.push('\n');
    out.write_all(line.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("u1"), "u1");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}

/// Parquet versions of the two outputs (`--features parquet`): the same columns as the CSVs, with
/// times as UTC millisecond timestamps, features and scores as `f64`, `churned` as a boolean and
/// empty values as nulls.
#[cfg(feature = "parquet")]
pub mod parquet_out {
    use std::path::Path;
    use std::sync::Arc;

    use arrow_array::builder::{Float64Builder, StringBuilder};
    use arrow_array::{ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray};
    use arrow_schema::{DataType, Field, Schema, TimeUnit};
    use parquet::arrow::ArrowWriter;

    use super::{Dataset, EventLog, FeatureSpec, UserScore};

    pub type Error = Box<dyn std::error::Error + Send + Sync>;

    fn ts_type() -> DataType {
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
    }

    fn writer(path: &Path, schema: Arc<Schema>) -> Result<ArrowWriter<std::fs::File>, Error> {
        let f = std::fs::File::create(path)?;
        Ok(ArrowWriter::try_new(f, schema, None)?)
    }

    /// The rows `train` fits, as [`super::write_dataset_csv`] writes them.
    pub fn write_dataset(path: &Path, log: &EventLog, spec: &FeatureSpec, data: &Dataset) -> Result<(), Error> {
        let names = spec.feature_names();
        let mut fields = vec![Field::new("user_id", DataType::Utf8, false), Field::new("cutoff", ts_type(), false)];
        fields.extend(names.iter().map(|n| Field::new(n, DataType::Float64, false)));
        fields.push(Field::new("churned", DataType::Boolean, false));
        let schema = Arc::new(Schema::new(fields));
        let mut w = writer(path, schema.clone())?;
        const BATCH: usize = 65_536;
        let mut start = 0;
        while start < data.rows() {
            let end = (start + BATCH).min(data.rows());
            let rows = start..end;
            let mut cols: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from_iter_values(rows.clone().map(|i| log.user_id(data.user[i])))),
                Arc::new(
                    TimestampMillisecondArray::from_iter_values(rows.clone().map(|i| data.cutoff[i]))
                        .with_timezone("UTC"),
                ),
            ];
            for j in 0..data.n_features {
                cols.push(Arc::new(Float64Array::from_iter_values(rows.clone().map(|i| data.row(i)[j]))));
            }
            cols.push(Arc::new(BooleanArray::from_iter(rows.map(|i| Some(data.y[i])))));
            w.write(&RecordBatch::try_new(schema.clone(), cols)?)?;
            start = end;
        }
        w.close()?;
        Ok(())
    }

    /// Scores as [`super::write_score_row`] writes them, collected and written in batches.
    pub struct ScoreWriter {
        w: ArrowWriter<std::fs::File>,
        schema: Arc<Schema>,
        top: usize,
        rows: Vec<UserScore>,
    }

    impl ScoreWriter {
        pub fn create(path: &Path, top: usize) -> Result<ScoreWriter, Error> {
            let mut fields = vec![
                Field::new("user_id", DataType::Utf8, false),
                Field::new("at", ts_type(), false),
                Field::new("p_churn", DataType::Float64, false),
                Field::new("tier", DataType::Utf8, true),
                Field::new("stage", DataType::Utf8, false),
            ];
            for i in 1..=top {
                fields.push(Field::new(format!("reason_{i}"), DataType::Utf8, true));
                fields.push(Field::new(format!("contribution_{i}"), DataType::Float64, true));
            }
            let schema = Arc::new(Schema::new(fields));
            Ok(ScoreWriter { w: writer(path, schema.clone())?, schema, top, rows: Vec::new() })
        }

        pub fn push(&mut self, s: UserScore) -> Result<(), Error> {
            self.rows.push(s);
            if self.rows.len() >= 65_536 {
                self.flush()?;
            }
            Ok(())
        }

        fn flush(&mut self) -> Result<(), Error> {
            if self.rows.is_empty() {
                return Ok(());
            }
            let r = &self.rows;
            let mut cols: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from_iter_values(r.iter().map(|s| s.user_id.as_str()))),
                Arc::new(TimestampMillisecondArray::from_iter_values(r.iter().map(|s| s.at)).with_timezone("UTC")),
                Arc::new(Float64Array::from_iter_values(r.iter().map(|s| s.score))),
                Arc::new(StringArray::from_iter(r.iter().map(|s| s.tier.as_deref()))),
                Arc::new(StringArray::from_iter_values(r.iter().map(|s| s.stage.as_str()))),
            ];
            for i in 0..self.top {
                let (mut names, mut contribs) = (StringBuilder::new(), Float64Builder::new());
                for s in r {
                    names.append_option(s.reasons.get(i).map(|x| x.feature.as_str()));
                    contribs.append_option(s.reasons.get(i).map(|x| x.contribution));
                }
                cols.push(Arc::new(names.finish()));
                cols.push(Arc::new(contribs.finish()));
            }
            self.w.write(&RecordBatch::try_new(self.schema.clone(), cols)?)?;
            self.rows.clear();
            Ok(())
        }

        pub fn finish(mut self) -> Result<(), Error> {
            self.flush()?;
            self.w.close()?;
            Ok(())
        }
    }
}
