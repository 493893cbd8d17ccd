//! HTML uplift report (filled in below).
pub fn write_report(dir: &std::path::Path, _r: &super::UpliftResult) -> anyhow::Result<std::path::PathBuf> {
    Ok(dir.join("index.html"))
}
