//! The `rayish` command: start, join, inspect and stop cluster nodes, as `ray` does.

mod cli;

fn main() {
    // `rayish microbenchmark` is a driver whose workers are copies of this binary.
    rayish::serve_if_worker();
    if let Err(e) = cli::run() {
        eprintln!("rayish: {e:#}");
        std::process::exit(1);
    }
}
