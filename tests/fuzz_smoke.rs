//! A short run of every fuzz target (`tests/support/fuzz.rs`) in the normal suite:
//! the seeds (`fuzz/seeds/<target>/`), every input that once crashed a target
//! (`fuzz/regressions/<target>/`), and mutations of them from a fixed seed. The long,
//! coverage-guided runs are `cargo fuzz` (see README, "Fuzzing").

use rayish_suite::fuzz::TARGETS;
use std::path::Path;

/// Inputs of one kind under `fuzz/<kind>/<target>/`.
fn saved(kind: &str, target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    files.iter().filter_map(|f| std::fs::read(f).ok()).collect()
}

/// xorshift64*: the same inputs on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// `seed` with a few bytes flipped, inserted, removed or set to edge values.
    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..1 + self.below(8) {
            let at = self.below(v.len() + 1);
            match self.below(6) {
                0 if at < v.len() => v[at] ^= 1 << self.below(8),
                1 => v.insert(at, self.next() as u8),
                2 if at < v.len() => {
                    v.remove(at);
                }
                3 if at < v.len() => v[at] = [0, 0xff, 0x7f, 0x80, 0xfb, 0xfc][self.below(6)],
                4 => v.truncate(at),
                _ => v.extend((0..self.below(16)).map(|_| self.next() as u8)),
            }
        }
        v
    }
}

#[test]
fn every_fuzz_target_survives_its_seeds_its_old_crashes_and_mutations() {
    for (name, target) in TARGETS {
        let regressions = saved("regressions", name);
        let mut seeds = saved("seeds", name);
        seeds.extend(regressions.iter().cloned());
        seeds.push(Vec::new());
        for input in &seeds {
            target(input);
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
        let rounds = if name == "images" { 2_000 } else { 20_000 };
        for _ in 0..rounds {
            let seed = &seeds[rng.below(seeds.len())];
            target(&rng.mutate(seed));
        }
        eprintln!(
            "{name}: {} saved inputs ({} old crashes), {rounds} mutations",
            seeds.len() - 1,
            regressions.len()
        );
    }
}

/// Writes the seed corpus under `fuzz/seeds/` from real encodings (run once, by
/// hand: `cargo test --release --test fuzz_smoke -- --ignored`).
#[test]
#[ignore]
fn write_seed_corpus() {
    use rayish::__private::encode_value;
    use rayish_core::protocol::{
        encode_frame, FromHead, Hello, PeerRole, StreamOpen, ToHead, TransferRequest,
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("seeds");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        std::fs::write(dir.join(name), bytes).expect("seed");
    };
    let hello = StreamOpen::Control(Hello {
        role: PeerRole::Client,
        software_version: "0.1.0".into(),
    });
    let mut frames: Vec<(&str, u8, Vec<u8>)> = Vec::new();
    let mut push = |name, family: u8, buf: Vec<u8>| frames.push((name, family, buf));
    let mut b = Vec::new();
    encode_frame(&ToHead::StatusRequest, &mut b).unwrap();
    encode_frame(&ToHead::Sync(7), &mut b).unwrap();
    push("to-head", 0, b);
    let mut b = Vec::new();
    encode_frame(&FromHead::Synced(7), &mut b).unwrap();
    encode_frame(&FromHead::Warning("w".into()), &mut b).unwrap();
    push("from-head", 1, b);
    let mut b = Vec::new();
    encode_frame(&hello, &mut b).unwrap();
    push("stream-open", 2, b);
    let mut b = Vec::new();
    encode_frame(&TransferRequest::PullObject(rayish::ObjectId(9)), &mut b).unwrap();
    push("transfer", 3, b);
    for (name, family, buf) in &frames {
        let mut seed = vec![*family];
        seed.extend_from_slice(buf);
        write("frames", name, &seed);
        // The payload alone, after the 10-byte header.
        write("messages", name, &buf[10..]);
    }
    write("values", "u64", &encode_value(&12345u64).unwrap());
    write(
        "values",
        "pair",
        &encode_value(&(vec![1u64, 2, 3], "x".to_string())).unwrap(),
    );
    write(
        "values",
        "map",
        &encode_value(&std::collections::BTreeMap::from([(
            "k".to_string(),
            vec![vec![1u8]],
        )]))
        .unwrap(),
    );
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cluster");
    for e in std::fs::read_dir(fixtures).expect("fixtures").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        write(
            "cluster_yaml",
            &name,
            &std::fs::read(e.path()).expect("yaml"),
        );
    }
    let img = image::RgbImage::from_fn(16, 12, |x, y| image::Rgb([x as u8 * 16, y as u8 * 20, 99]));
    for (name, format) in [
        ("tiny.png", image::ImageOutputFormat::Png),
        ("tiny.jpg", image::ImageOutputFormat::Jpeg(80)),
    ] {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, format).expect("encode");
        write("images", name, out.get_ref());
    }
}
