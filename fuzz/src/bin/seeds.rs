//! Check the committed seed corpus (default), or rewrite it (`--write`): see
//! churnguard_fuzz::seeds. Not a fuzz target: a [[bin]] so that `cargo fuzz build` builds it
//! with the targets' flags, and scripts/fuzz.sh runs it (and leaves it out of the targets).

// Linked for the coverage counters' symbols that the fuzz build's flags make every crate use;
// libFuzzer's own main is not pulled in, this file has its own.
extern crate libfuzzer_sys;

fn main() {
    if std::env::args().any(|a| a == "--write") {
        match churnguard_fuzz::seeds::write_all() {
            Ok(n) => println!("wrote {n} seeds"),
            Err(e) => {
                eprintln!("writing the seeds failed: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let problems = churnguard_fuzz::seeds::check_all();
    for p in &problems {
        eprintln!("seeds: {p}");
    }
    if !problems.is_empty() {
        eprintln!("seeds: rewrite them with `bash scripts/fuzz.sh --seeds`");
        std::process::exit(1);
    }
    println!("seeds: all current");
}
