//! The `rayish` command: start, join, inspect and stop cluster nodes, as `ray` does.

mod cli;

fn main() {
    if let Err(e) = cli::run() {
        eprintln!("rayish: {e:#}");
        std::process::exit(1);
    }
}
