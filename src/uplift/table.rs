//! The per-action uplift table of the value rule, read back from `churnguard uplift --json`
//! (`[policy.value] uplift_from`, docs/INTERVENTIONS.md#value-aware-decisions).
//!
//! The rule takes each action row's point estimate of the absolute uplift. Its interval is not
//! used to decide, only to warn: an estimate whose interval covers zero may be noise, and the
//! operator should know before the rule spends money on it (or stops an action) because of it.
//!
//! Errors name the file and, for a bad row, its index in `groups`, never a value or a name read
//! from the file: a path pointed at the wrong file (an event log, a credentials file) must not
//! end up in a log.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum UpliftFileError {
    #[error(
        "cannot read {path} ({source}); write it with `churnguard uplift ... --json > {path}` or fix the path (a relative path starts at the working directory)"
    )]
    Read { path: String, source: std::io::Error },
    #[error(
        "{path} is not JSON (line {line}, column {column}); expected what `churnguard uplift --json` prints (the text tables of `uplift` without --json do not load)"
    )]
    Syntax { path: String, line: usize, column: usize },
    #[error(
        "{path} is JSON but not `churnguard uplift --json` output (line {line}, column {column}): expected an object whose `groups` list holds rows with `dimension`, `group` and `uplift`; regenerate it with `churnguard uplift --json`"
    )]
    Shape { path: String, line: usize, column: usize },
    #[error(
        "{path} has no action row with an uplift estimate (`groups` entries with dimension \"action\" and records in both arms): rerun `churnguard uplift --json` on records that include the control group (`replay --control-out`, policy.control_fraction above 0), or list the uplifts inline under [policy.value.uplift] instead"
    )]
    NoActions { path: String },
    #[error(
        "{path}: groups[{index}] (an action row) has an uplift estimate outside -1..=1, which `churnguard uplift` never writes; regenerate the file"
    )]
    OutOfRange { path: String, index: usize },
    #[error("{path}: groups[{index}] repeats the action of an earlier row, which `churnguard uplift` never writes; regenerate the file")]
    Duplicate { path: String, index: usize },
}

/// The part of [`super::UpliftResult`] this reads; other fields are ignored, so the file may grow.
#[derive(Deserialize)]
struct UpliftJson {
    groups: Vec<GroupJson>,
}

#[derive(Deserialize)]
struct GroupJson {
    dimension: String,
    group: String,
    uplift: Option<DifferenceJson>,
}

#[derive(Deserialize)]
struct DifferenceJson {
    estimate: f64,
    lower: f64,
    upper: f64,
}

/// One action row: absolute uplift in retention (0.06 = 6 points) with its 95% interval.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionUplift {
    pub action: String,
    pub estimate: f64,
    pub lower: f64,
    pub upper: f64,
}

/// What an uplift file says per action.
#[derive(Debug, Clone, PartialEq)]
pub struct UpliftTable {
    /// In file order (`uplift` writes actions by name).
    pub rows: Vec<ActionUplift>,
    /// Action rows without an estimate (an arm without records): the rule gives them no uplift.
    pub without_estimate: Vec<String>,
}

impl UpliftTable {
    /// The point estimates, as `[policy.value.uplift]` takes them.
    pub fn uplift(&self) -> BTreeMap<String, f64> {
        self.rows.iter().map(|r| (r.action.clone(), r.estimate)).collect()
    }

    /// One line for the start-up log: what was read.
    pub fn summary(&self, path: &Path) -> String {
        let rows: Vec<String> = self.rows.iter().map(|r| format!("{} {}", r.action, super::pp(r.estimate))).collect();
        format!(
            "policy.value.uplift_from: {} action uplift(s) from {} (point estimates, points of retention): {}",
            self.rows.len(),
            path.display(),
            rows.join(", ")
        )
    }

    /// Start-up warnings: estimates that may be noise, and actions the file has no estimate for.
    pub fn warnings(&self, path: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let unsure: Vec<String> = self
            .rows
            .iter()
            .filter(|r| r.lower <= 0.0 && 0.0 <= r.upper)
            .map(|r| format!("{} {} [{}, {}]", r.action, super::pp(r.estimate), super::pp(r.lower), super::pp(r.upper)))
            .collect();
        if !unsure.is_empty() {
            out.push(format!(
                "policy.value.uplift_from: in {}, the 95% interval of {} action(s) covers zero: {}; the value rule uses their point estimates anyway (to drop one, list the table inline under [policy.value.uplift] instead)",
                path.display(),
                unsure.len(),
                unsure.join(", ")
            ));
        }
        if !self.without_estimate.is_empty() {
            out.push(format!(
                "policy.value.uplift_from: {} has no uplift estimate for {} (no treated or no control records): the value rule never sends it",
                path.display(),
                self.without_estimate.join(", ")
            ));
        }
        out
    }
}

/// Reads `churnguard uplift --json` output.
pub fn read(path: &Path) -> Result<UpliftTable, UpliftFileError> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| UpliftFileError::Read { path: shown.clone(), source })?;
    parse(std::io::BufReader::new(file), &shown)
}

/// Parses `churnguard uplift --json` output; `path` only names the source in errors.
pub fn parse(reader: impl Read, path: &str) -> Result<UpliftTable, UpliftFileError> {
    use serde_json::error::Category;
    let path = path.to_string();
    // A reader, not a whole-file read: a path pointed at a large event log fails at its second
    // line instead of loading gigabytes first.
    let json: UpliftJson = serde_json::from_reader(reader).map_err(|e| {
        let (line, column) = (e.line(), e.column());
        // serde's message quotes what it found; only its position is passed on.
        match e.classify() {
            Category::Io => UpliftFileError::Read { path: path.clone(), source: e.into() },
            Category::Syntax | Category::Eof => UpliftFileError::Syntax { path: path.clone(), line, column },
            Category::Data => UpliftFileError::Shape { path: path.clone(), line, column },
        }
    })?;
    let mut table = UpliftTable { rows: Vec::new(), without_estimate: Vec::new() };
    let mut seen = std::collections::HashSet::new();
    for (index, g) in json.groups.into_iter().enumerate().filter(|(_, g)| g.dimension == "action") {
        if !seen.insert(g.group.clone()) {
            return Err(UpliftFileError::Duplicate { path, index });
        }
        match g.uplift {
            Some(d) => {
                let ok = |x: f64| x.is_finite() && (-1.0..=1.0).contains(&x);
                if !(ok(d.estimate) && ok(d.lower) && ok(d.upper)) {
                    return Err(UpliftFileError::OutOfRange { path, index });
                }
                table.rows.push(ActionUplift { action: g.group, estimate: d.estimate, lower: d.lower, upper: d.upper });
            }
            None => table.without_estimate.push(g.group),
        }
    }
    if table.rows.is_empty() {
        return Err(UpliftFileError::NoActions { path });
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Stage;
    use crate::uplift::outcome::{Outcome, Outcomes, UserEvents};

    fn outcome(user: usize, action: &str, control: bool, retained: bool) -> Outcome {
        Outcome {
            user_id: format!("u{user}"),
            tier: "high".into(),
            action: action.into(),
            stage: Stage::Dormant,
            control,
            event_time: 0,
            retained,
            spend: 0.0,
            trailing_spend: 0.0,
        }
    }

    /// What `churnguard uplift --json` prints for: coupon 30/40 treated vs 10/40 control kept;
    /// email 20/40 vs 20/40; sms treated only.
    fn uplift_json() -> String {
        let mut records = Vec::new();
        for i in 0..40 {
            records.push(outcome(i, "coupon", false, i < 30));
            records.push(outcome(100 + i, "coupon", true, i < 10));
            records.push(outcome(200 + i, "email", false, i < 20));
            records.push(outcome(300 + i, "email", true, i < 20));
        }
        records.push(outcome(400, "sms", false, true));
        let outcomes = Outcomes { records, ..Outcomes::default() };
        let events = UserEvents::from_events([("u0", 0, 0.0)]);
        let result = crate::uplift::build_result(&events, &outcomes, crate::time::Span::days(30), None);
        serde_json::to_string(&result).unwrap()
    }

    fn parse_str(s: &str) -> Result<UpliftTable, UpliftFileError> {
        parse(s.as_bytes(), "u.json")
    }

    #[test]
    fn reads_the_action_rows_of_uplift_json_output() {
        let t = parse_str(&uplift_json()).unwrap();
        let actions: Vec<&str> = t.rows.iter().map(|r| r.action.as_str()).collect();
        assert_eq!(actions, ["coupon", "email"], "tier, stage and overall rows are not actions");
        assert!((t.rows[0].estimate - 0.5).abs() < 1e-12);
        assert!(t.rows[0].lower > 0.0 && t.rows[0].upper < 1.0);
        assert_eq!(t.rows[1].estimate, 0.0);
        assert_eq!(t.without_estimate, ["sms"]);
        let map = t.uplift();
        assert_eq!(map.len(), 2);
        assert!((map["coupon"] - 0.5).abs() < 1e-12);
    }

    #[test]
    fn warns_for_intervals_that_cover_zero_and_actions_without_estimate() {
        let t = parse_str(&uplift_json()).unwrap();
        let w = t.warnings(Path::new("u.json"));
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("covers zero") && w[0].contains("email +0.0") && !w[0].contains("coupon"), "{}", w[0]);
        assert!(w[1].contains("sms") && w[1].contains("never sends it"), "{}", w[1]);
        let s = t.summary(Path::new("u.json"));
        assert!(s.contains("2 action uplift(s) from u.json") && s.contains("coupon +50.0"), "{s}");
    }

    type Is = fn(&UpliftFileError) -> bool;

    #[test]
    fn errors_name_the_problem_and_never_the_files_contents() {
        let secret = "hunter2-SECRET";
        let missing = read(Path::new("/nonexistent/uplift.json")).unwrap_err();
        assert!(matches!(missing, UpliftFileError::Read { .. }), "{missing}");
        assert!(missing.to_string().contains("cannot read /nonexistent/uplift.json"), "{missing}");

        let cases: [(String, Is, &str); 6] = [
            (format!("password = \"{secret}\"\n"), |e| matches!(e, UpliftFileError::Syntax { line: 1, .. }), "is not JSON"),
            (
                format!("{{\"groups\": [{{\"dimension\": \"action\", \"group\": \"coupon\", \"uplift\": {{\"estimate\": \"{secret}\"}}}}]}}"),
                |e| matches!(e, UpliftFileError::Shape { .. }),
                "not `churnguard uplift --json` output",
            ),
            (format!("{{\"token\": \"{secret}\"}}"), |e| matches!(e, UpliftFileError::Shape { .. }), "`groups`"),
            (
                format!("{{\"groups\": [{{\"dimension\": \"tier\", \"group\": \"{secret}\", \"uplift\": null}}]}}"),
                |e| matches!(e, UpliftFileError::NoActions { .. }),
                "no action row",
            ),
            (
                format!("{{\"groups\": [{{\"dimension\": \"action\", \"group\": \"{secret}\", \"uplift\": {{\"estimate\": 1.5, \"lower\": 1.2, \"upper\": 1.8}}}}]}}"),
                |e| matches!(e, UpliftFileError::OutOfRange { index: 0, .. }),
                "groups[0]",
            ),
            (
                format!("{{\"groups\": [{{\"dimension\": \"action\", \"group\": \"{secret}\", \"uplift\": null}}, {{\"dimension\": \"action\", \"group\": \"{secret}\", \"uplift\": null}}]}}"),
                |e| matches!(e, UpliftFileError::Duplicate { index: 1, .. }),
                "groups[1] repeats",
            ),
        ];
        for (text, is, says) in cases {
            let e = parse_str(&text).unwrap_err();
            let msg = e.to_string();
            assert!(is(&e), "{text}: {e:?}");
            assert!(msg.starts_with("u.json") && msg.contains(says), "{text}: {msg}");
            assert!(!msg.contains("hunter2"), "the file's contents leak into {msg}");
        }
        // `uplift` without --json prints tables: the error says so.
        let e = parse_str("uplift over 2026-01-01 .. 2026-06-29").unwrap_err();
        assert!(e.to_string().contains("without --json"), "{e}");
    }
}
