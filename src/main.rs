use clap::Parser;

/// Exit status: 0 success, 1 error, 2 usage error (clap's own status for a bad flag or value).
fn main() -> std::process::ExitCode {
    let cli = churnguard::cli::Cli::parse();
    churnguard::term::init_logging(cli.log_format);
    match churnguard::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            churnguard::errln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
