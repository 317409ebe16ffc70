//! Object-store and actor microbenchmarks, defined as Ray's `ray microbenchmark`
//! defines them (python/ray/_private/ray_perf.py): the same names, the same work per
//! operation, the same timing (1 s warm-up, then 4 trials of 2 s, mean ± sd of the
//! rate), printed in Ray's format `<name> per second <mean> +- <sd>`.
//!
//!     cargo bench --bench core                      # everything, local mode
//!     TESTS_TO_RUN="actor" cargo bench --bench core # names containing "actor"
//!     cargo bench --bench core -- --quick           # short trials, for a smoke run
//!
//! Runs in local mode (head and node in this process, workers as child processes), as
//! `ray microbenchmark` runs on a fresh local Ray. A `memcpy gigabytes` line gives the
//! machine's copy bandwidth for the gigabytes-per-second targets.

use rayish::{ActorOptions, Blob, ObjectRef};
use serde_bytes::ByteBuf;
use std::time::{Duration, Instant};

/// Ray's `Actor` (num_cpus=0): small values back.
#[derive(Default)]
pub struct Echo;

#[rayish::actor]
impl Echo {
    pub fn new() -> Self {
        Echo
    }

    pub fn small_value(&self) -> Vec<u8> {
        b"ok".to_vec()
    }

    pub fn small_value_arg(&self, _x: u64) -> Vec<u8> {
        b"ok".to_vec()
    }
}

/// Ray's `Client`: an actor calling other actors.
pub struct Client {
    servers: Vec<EchoHandle>,
}

#[rayish::actor]
impl Client {
    pub fn new(servers: Vec<EchoHandle>) -> Self {
        Client { servers }
    }

    pub fn small_value_batch(&self, n: u64) -> rayish::Result<()> {
        let mut refs = Vec::new();
        for s in &self.servers {
            refs.extend((0..n).map(|_| s.small_value()));
        }
        rayish::get_all(&refs).map(|_| ())
    }

    pub fn small_value_batch_arg(&self, n: u64) -> rayish::Result<()> {
        let x = rayish::put(&0u64)?;
        let mut refs = Vec::new();
        for s in &self.servers {
            refs.extend((0..n).map(|_| s.small_value_arg(&x)));
        }
        rayish::get_all(&refs).map(|_| ())
    }
}

#[rayish::remote]
fn do_put_small() -> rayish::Result<()> {
    for _ in 0..100 {
        rayish::put(&0u64)?;
    }
    Ok(())
}

#[rayish::remote]
fn do_put_large() -> rayish::Result<()> {
    // Ray: ten puts of np.zeros(10M, int64), 80 MB each.
    let block = ByteBuf::from(vec![0u8; 80_000_000]);
    for _ in 0..10 {
        rayish::put(&block)?;
    }
    Ok(())
}

#[rayish::remote]
fn create_object_containing_ref() -> rayish::Result<Vec<ObjectRef<u64>>> {
    (0..10_000).map(|_| rayish::put(&1u64)).collect()
}

#[rayish::remote]
fn work(actors: Vec<EchoHandle>, n: u64) -> rayish::Result<()> {
    let k = actors.len() as u64;
    let refs: Vec<_> = (0..n)
        .map(|i| actors[(i % k) as usize].small_value())
        .collect();
    rayish::get_all(&refs).map(|_| ())
}

struct Bench {
    filter: Option<String>,
    warmup: Duration,
    trial: Duration,
    json: bool,
    results: Vec<serde_json::Value>,
}

impl Bench {
    /// Ray's `timeit`: warm up, then 4 trials; one call of `f` is `multiplier` operations.
    fn timeit(
        &mut self,
        name: &str,
        multiplier: f64,
        mut f: impl FnMut() -> rayish::Result<()>,
    ) -> rayish::Result<()> {
        if let Some(filter) = &self.filter {
            if !name.contains(filter.as_str()) {
                return Ok(());
            }
        }
        let start = Instant::now();
        let mut count = 0u64;
        while start.elapsed() < self.warmup {
            f()?;
            count += 1;
        }
        let step = count / 10 + 1;
        let mut rates = Vec::new();
        for _ in 0..4 {
            let start = Instant::now();
            let mut count = 0u64;
            while start.elapsed() < self.trial {
                for _ in 0..step {
                    f()?;
                }
                count += step;
            }
            rates.push(multiplier * count as f64 / start.elapsed().as_secs_f64());
        }
        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
        let sd =
            (rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rates.len() as f64).sqrt();
        println!("{name} per second {mean:.2} +- {sd:.2}");
        self.results
            .push(serde_json::json!({"name": name, "mean": mean, "sd": sd}));
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    rayish::serve_if_worker();
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return Ok(());
    }
    let quick = args.iter().any(|a| a == "--quick");
    let mut b = Bench {
        filter: std::env::var("TESTS_TO_RUN").ok().filter(|s| !s.is_empty()),
        warmup: Duration::from_millis(if quick { 200 } else { 1000 }),
        trial: Duration::from_millis(if quick { 500 } else { 2000 }),
        json: args.iter().any(|a| a == "--json"),
        results: Vec::new(),
    };
    rayish::init(rayish::Config::default())?;
    let n_cpu = (std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        / 2)
    .max(1);

    // The machine's copy bandwidth, for the GB/s targets.
    let src = vec![1u8; 800_000_000];
    let mut dst = vec![0u8; 800_000_000];
    b.timeit("memcpy gigabytes", 0.8, || {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&dst);
        Ok(())
    })?;
    drop((src, dst));

    let value = rayish::put(&0u64)?;
    b.timeit("single client get calls (Plasma Store)", 1.0, || {
        rayish::get(&value).map(|_| ())
    })?;
    b.timeit("single client put calls (Plasma Store)", 1.0, || {
        rayish::put(&0u64).map(|_| ())
    })?;
    b.timeit("multi client put calls (Plasma Store)", 1000.0, || {
        let refs: Vec<_> = (0..10).map(|_| do_put_small::remote()).collect();
        rayish::get_all(&refs).map(|_| ())
    })?;
    // Ray: np.zeros(100M, int64), 800 MB.
    let large = ByteBuf::from(vec![0u8; 800_000_000]);
    b.timeit("single client put gigabytes", 0.8, || {
        rayish::put(&large).map(|_| ())
    })?;
    let stored = rayish::put(&large)?;
    drop(large);
    // Not a Ray benchmark: Ray's array (np.zeros) is untouched zero pages, which read
    // faster than real data; the same put with bytes that are really in memory.
    let ones = ByteBuf::from(vec![1u8; 800_000_000]);
    b.timeit("single client put gigabytes (non-zero data)", 0.8, || {
        rayish::put(&ones).map(|_| ())
    })?;
    drop(ones);
    // Not in ray_perf.py; benches/ray_get_gigabytes.py times Ray's. A `Blob` comes
    // back as a view of the store's memory, as Ray's numpy array does.
    let as_blob: ObjectRef<Blob> = rayish::put(&Blob::from(vec![0u8; 800_000_000]))?;
    b.timeit("single client get gigabytes", 0.8, || {
        rayish::get(&as_blob).map(|v| drop(std::hint::black_box(v)))
    })?;
    drop(as_blob);
    b.timeit("single client get gigabytes (copied)", 0.8, || {
        rayish::get(&stored).map(|v| drop(std::hint::black_box(v)))
    })?;
    drop(stored);
    b.timeit("multi client put gigabytes", 8.0, || {
        let refs: Vec<_> = (0..10).map(|_| do_put_large::remote()).collect();
        rayish::get_all(&refs).map(|_| ())
    })?;
    let containing = create_object_containing_ref::remote();
    rayish::get(&containing)?;
    b.timeit("single client get object containing 10k refs", 1.0, || {
        rayish::get(&containing).map(|_| ())
    })?;
    drop(containing);

    let a = Echo::remote();
    rayish::get(&a.ready())?;
    b.timeit("1:1 actor calls sync", 1.0, || {
        rayish::get(&a.small_value()).map(|_| ())
    })?;
    b.timeit("1:1 actor calls async", 1000.0, || {
        let refs: Vec<_> = (0..1000).map(|_| a.small_value()).collect();
        rayish::get_all(&refs).map(|_| ())
    })?;
    let servers: Vec<EchoHandle> = (0..n_cpu).map(|_| Echo::remote()).collect();
    let client = Client::remote(servers.clone());
    let n = 5000;
    b.timeit(
        "1:n actor calls async",
        (n * servers.len() as u64) as f64,
        || rayish::get(&client.small_value_batch(n)),
    )?;
    let m = 4;
    b.timeit("n:n actor calls async", (m * n) as f64, || {
        let refs: Vec<_> = (0..m).map(|_| work::remote(servers.clone(), n)).collect();
        rayish::get_all(&refs).map(|_| ())
    })?;
    let n = 1000;
    let clients: Vec<ClientHandle> = (0..n_cpu)
        .map(|_| Client::remote_with(ActorOptions::new(), vec![Echo::remote()]))
        .collect();
    b.timeit(
        "n:n actor calls with arg async",
        (n * clients.len() as u64) as f64,
        || {
            let refs: Vec<_> = clients.iter().map(|c| c.small_value_batch_arg(n)).collect();
            rayish::get_all(&refs).map(|_| ())
        },
    )?;
    if b.json {
        println!("{}", serde_json::Value::Array(b.results));
    }
    Ok(())
}
