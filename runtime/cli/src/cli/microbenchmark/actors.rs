//! The actor-call benchmarks of `ray microbenchmark`.

use super::timeit::Timer;

/// Ray's `Actor` (`num_cpus=0`): small values back.
#[derive(Default)]
pub struct Echo;

#[rayish::actor]
impl Echo {
    /// The actor holds nothing.
    pub fn new() -> Self {
        Echo
    }

    /// Two bytes back.
    pub fn small_value(&self) -> Vec<u8> {
        b"ok".to_vec()
    }

    /// Two bytes back, after receiving an argument.
    pub fn small_value_arg(&self, _x: u64) -> Vec<u8> {
        b"ok".to_vec()
    }
}

/// Ray's `Client` (`num_cpus=0`): an actor calling other actors.
pub struct Client {
    servers: Vec<EchoHandle>,
}

#[rayish::actor]
impl Client {
    /// A client of `servers`.
    pub fn new(servers: Vec<EchoHandle>) -> Self {
        Client { servers }
    }

    /// `n` calls to each server, then waits for all.
    pub fn small_value_batch(&self, n: u64) -> rayish::Result<()> {
        let mut refs = Vec::new();
        for s in &self.servers {
            refs.extend((0..n).map(|_| s.small_value()));
        }
        rayish::get_all(&refs).map(drop)
    }

    /// `n` calls to each server passing one put object, then waits for all.
    pub fn small_value_batch_arg(&self, n: u64) -> rayish::Result<()> {
        let x = rayish::put(&0u64)?;
        let mut refs = Vec::new();
        for s in &self.servers {
            refs.extend((0..n).map(|_| s.small_value_arg(&x)));
        }
        rayish::get_all(&refs).map(drop)
    }
}

/// Ray's `work`: `n` calls spread over `actors` in turn, from a task.
#[rayish::remote]
fn work(actors: Vec<EchoHandle>, n: u64) -> rayish::Result<()> {
    let refs: Vec<_> = (0..n as usize)
        .map(|i| actors[i % actors.len()].small_value())
        .collect();
    rayish::get_all(&refs).map(drop)
}

/// Runs the actor benchmarks that `t` wants, in Ray's order; `n_cpu` is Ray's
/// `multiprocessing.cpu_count() // 2` (at least 1).
pub fn run(t: &mut Timer, n_cpu: usize) -> rayish::Result<()> {
    const SYNC: &str = "1:1 actor calls sync";
    if t.wants(SYNC) {
        let a = Echo::remote();
        t.time(SYNC, 1.0, || rayish::get(&a.small_value()).map(drop))?;
    }
    const ASYNC: &str = "1:1 actor calls async";
    if t.wants(ASYNC) {
        let a = Echo::remote();
        t.time(ASYNC, 1000.0, || {
            let refs: Vec<_> = (0..1000).map(|_| a.small_value()).collect();
            rayish::get_all(&refs).map(drop)
        })?;
    }
    // "1:1 actor calls concurrent" needs threaded actors (max_concurrency), which
    // rayish does not have: an actor runs one call at a time.
    let n = 5000u64;
    const ONE_TO_N: &str = "1:n actor calls async";
    if t.wants(ONE_TO_N) {
        let servers: Vec<_> = (0..n_cpu).map(|_| Echo::remote()).collect();
        let client = Client::remote(servers);
        t.time(ONE_TO_N, (n * n_cpu as u64) as f64, || {
            rayish::get(&client.small_value_batch(n))
        })?;
    }
    const N_TO_N: &str = "n:n actor calls async";
    if t.wants(N_TO_N) {
        let m = 4u64;
        let servers: Vec<_> = (0..n_cpu).map(|_| Echo::remote()).collect();
        t.time(N_TO_N, (m * n) as f64, || {
            let refs: Vec<_> = (0..m).map(|_| work::remote(servers.clone(), n)).collect();
            rayish::get_all(&refs).map(drop)
        })?;
    }
    const WITH_ARG: &str = "n:n actor calls with arg async";
    if t.wants(WITH_ARG) {
        let n = 1000u64;
        let clients: Vec<_> = (0..n_cpu)
            .map(|_| Client::remote(vec![Echo::remote()]))
            .collect();
        t.time(WITH_ARG, (n * n_cpu as u64) as f64, || {
            let refs: Vec<_> = clients.iter().map(|c| c.small_value_batch_arg(n)).collect();
            rayish::get_all(&refs).map(drop)
        })?;
    }
    Ok(())
}
