use clap::Parser;

use churnguard::term::LogFormat;

/// Exit status: 0 success, 1 error, 2 usage error (clap's own status for a bad flag or value).
/// A closed stdout ends a command with 0, a closed stderr is ignored (see `churnguard::term`).
fn main() -> std::process::ExitCode {
    let cli = churnguard::cli::Cli::parse();
    let format = cli.log_format;
    churnguard::term::init_logging(format);
    match churnguard::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            match format {
                // A log shipper reads stderr: the error is one more JSON line.
                LogFormat::Json => tracing::error!(error = %format!("{e:#}"), "command failed"),
                LogFormat::Text => churnguard::errln!("error: {e:#}"),
            }
            std::process::ExitCode::from(1)
        }
    }
}
