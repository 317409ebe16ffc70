//! rayish's hello world: tasks, put/get/wait and nested tasks.
//!
//! Local mode (a cluster inside this process):  cargo run --release --example hello
//! Against a started cluster:                  RAYISH_TOKEN=TOKEN cargo run --release --example hello -- --address HEAD:PORT

use clap::Parser;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    /// The head, HOST:PORT; omit for local mode.
    #[arg(long)]
    address: Option<String>,
    /// The cluster token (or RAYISH_TOKEN).
    #[arg(long)]
    token: Option<String>,
}

/// A plain remote function.
#[rayish::remote]
fn square(x: u64) -> u64 {
    x * x
}

/// Takes a list that arrives by reference, resolved on the node that runs it.
#[rayish::remote]
fn sum(values: Vec<u64>) -> u64 {
    values.iter().sum()
}

/// Submits tasks of its own and waits for them: a task blocked in `get` gives its CPU
/// back, so this cannot deadlock however many run at once.
#[rayish::remote]
fn sum_of_squares(n: u64) -> rayish::Result<u64> {
    let refs: Vec<_> = (0..n).map(square::remote).collect();
    Ok(rayish::get_all(&refs)?.into_iter().sum())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    rayish::init(
        rayish::Config::default()
            .address(args.address.clone())
            .token(args.token),
    )?;
    let mode = args.address.as_deref().unwrap_or("local mode");

    let squares: Vec<_> = (0..10).map(square::remote).collect();
    let values = rayish::get_all(&squares)?;
    println!("squares of 0..10: {values:?}");

    let list = rayish::put(&(1..=100).collect::<Vec<u64>>())?;
    println!(
        "sum of 1..=100 via put + reference argument: {}",
        rayish::get(&sum::remote(&list))?
    );

    let (ready, not_ready) = rayish::wait(&squares, 5, Some(Duration::from_secs(10)))?;
    println!("wait: {} ready, {} not yet", ready.len(), not_ready.len());

    let nested: Vec<_> = (1..=4).map(|n| sum_of_squares::remote(n * 5)).collect();
    println!("nested sums of squares: {:?}", rayish::get_all(&nested)?);
    println!("hello from rayish ({mode})");
    Ok(())
}
