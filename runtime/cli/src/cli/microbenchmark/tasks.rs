//! The task benchmarks of `ray microbenchmark`: no-op tasks from the driver, and
//! from actors submitting tasks of their own.

use super::timeit::Timer;

/// Ray's `small_value`: a task returning two bytes.
#[rayish::remote]
pub fn small_value() -> Vec<u8> {
    b"ok".to_vec()
}

/// Ray's `Actor` of the "multi client tasks async" benchmark (`num_cpus=0`): a
/// client submitting batches of tasks.
#[derive(Default)]
pub struct TaskSubmitter;

#[rayish::actor]
impl TaskSubmitter {
    /// The actor holds nothing.
    pub fn new() -> Self {
        TaskSubmitter
    }

    /// Submits `n` `small_value` tasks and waits for them all.
    pub fn small_value_batch(&self, n: u64) -> rayish::Result<()> {
        let refs: Vec<_> = (0..n).map(|_| small_value::remote()).collect();
        rayish::get_all(&refs).map(drop)
    }
}

/// Runs the task benchmarks that `t` wants, in Ray's order.
pub fn run(t: &mut Timer) -> rayish::Result<()> {
    t.time("single client tasks and get batch", 1.0, || {
        let refs: Vec<_> = (0..1000).map(|_| small_value::remote()).collect();
        rayish::get_all(&refs).map(drop)
    })?;
    t.time("single client tasks sync", 1.0, || {
        rayish::get(&small_value::remote()).map(drop)
    })?;
    t.time("single client tasks async", 1000.0, || {
        let refs: Vec<_> = (0..1000).map(|_| small_value::remote()).collect();
        rayish::get_all(&refs).map(drop)
    })?;
    const MULTI: &str = "multi client tasks async";
    if t.wants(MULTI) {
        let (n, m) = (10_000u64, 4);
        let actors: Vec<_> = (0..m).map(|_| TaskSubmitter::remote()).collect();
        t.time(MULTI, (n * m) as f64, || {
            let refs: Vec<_> = actors.iter().map(|a| a.small_value_batch(n)).collect();
            rayish::get_all(&refs).map(drop)
        })?;
    }
    Ok(())
}
