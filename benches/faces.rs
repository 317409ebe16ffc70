//! The faces pipeline's speed: a plain loop against the rayish runtime at the same
//! CPU count, 1 CPU against 2, and where the time goes (decode, detect, landmarks,
//! encode).
//!
//!     cargo bench --bench faces                 # 504 photos, upsample 1
//!     cargo bench --bench faces -- --images 200 --rounds 2
//!     cargo bench --bench faces -- --images 200 --derive-only   # print the list file
//!
//! The photos are derived from the 7 face_recognition sample photos (scales, crops,
//! horizontal flips, brightness), written once as JPEGs under
//! target/faces-bench/photos. Each configuration runs the real `rayish-faces` binary
//! in its own process (`--plain N` for the loop, `--cpus N` for an embedded local
//! cluster), in the order plain-1, runtime-1, plain-2, runtime-2, runtime-2 with one
//! task per stage (`--task-per-stage`, unfused), repeated `--rounds`
//! times; the figure is the median. Process start and model loading are in every
//! configuration alike, and the time is the whole process's. Needs `scripts/setup-faces.sh` and
//! `cargo build --release -p rayish-faces` first.

use anyhow::{bail, Context};
use image::imageops::FilterType;
use rayish_faces::{Chain, FaceJob, Settings};
use rayish_suite::target_dir;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// `$RAYISH_SAMPLE_PHOTOS`, else where scripts/setup-faces.sh puts the sample photos.
fn sample_dir() -> PathBuf {
    std::env::var_os("RAYISH_SAMPLE_PHOTOS")
        .map(PathBuf::from)
        .unwrap_or_else(|| rayish_faces::models::data_dir().join("sample_photos"))
}

/// Writes `count` distinct photos derived from the samples into `dir` (kept if there).
fn derive_photos(dir: &Path, count: usize) -> anyhow::Result<Vec<String>> {
    let mut samples: Vec<PathBuf> = std::fs::read_dir(sample_dir())
        .context("sample photos missing: run scripts/setup-faces.sh")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    samples.sort();
    if samples.is_empty() {
        bail!("no sample photos: run scripts/setup-faces.sh");
    }
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    let mut i = 0usize;
    'outer: for scale in [0.25f32, 0.3, 0.35, 0.4] {
        for flip in [false, true] {
            for brightness in [-20i32, 0, 20] {
                for crop in 0..3u32 {
                    for sample in &samples {
                        if out.len() == count {
                            break 'outer;
                        }
                        let path = dir.join(format!("{i:04}.jpg"));
                        i += 1;
                        if !path.exists() {
                            let img = image::open(sample)?.to_rgb8();
                            let (w, h) = img.dimensions();
                            // Crops keep the face: trim 8% from the top-left or the bottom-right.
                            let (x0, y0, cw, ch) = match crop {
                                0 => (0, 0, w, h),
                                1 => (w / 12, h / 12, w - w / 12, h - h / 12),
                                _ => (0, 0, w - w / 12, h - h / 12),
                            };
                            let cropped =
                                image::imageops::crop_imm(&img, x0, y0, cw, ch).to_image();
                            let sw = ((cw as f32) * scale) as u32;
                            let sh = ((ch as f32) * scale) as u32;
                            let mut small =
                                image::imageops::resize(&cropped, sw, sh, FilterType::Triangle);
                            if flip {
                                small = image::imageops::flip_horizontal(&small);
                            }
                            let small = image::imageops::colorops::brighten(&small, brightness);
                            let tmp = path.with_extension("part");
                            small.save_with_format(&tmp, image::ImageFormat::Jpeg)?;
                            std::fs::rename(&tmp, &path)?;
                        }
                        out.push(path.to_string_lossy().into_owned());
                    }
                }
            }
        }
    }
    if out.len() < count {
        bail!(
            "can derive at most {} photos from {} samples",
            out.len(),
            samples.len()
        );
    }
    Ok(out)
}

/// Runs `rayish-faces encode` once; returns (seconds from process start to exit,
/// faces). Whole-process time, so the runtime's start-up (local cluster, worker
/// processes, hashing the binary) counts against it.
fn run_cli(list: &Path, out: &Path, args: &[&str], upsample: u32) -> anyhow::Result<(f64, u64)> {
    let bin = target_dir().join("rayish-faces");
    // A fresh output each time: a journal left by the last run would be resumed.
    let _ = std::fs::remove_dir_all(out);
    let start = Instant::now();
    let res = Command::new(&bin)
        .arg("encode")
        .arg(list)
        .arg("--out")
        .arg(out)
        .args(["--quiet", "--upsample", &upsample.to_string()])
        .args(args)
        .output()
        .with_context(|| {
            format!(
                "running {} (build it: cargo build --release -p rayish-faces)",
                bin.display()
            )
        })?;
    let seconds = start.elapsed().as_secs_f64();
    if !res.status.success() {
        bail!(
            "rayish-faces {args:?} failed: {}",
            String::from_utf8_lossy(&res.stderr)
        );
    }
    let avg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("average.json"))?)?;
    let faces = avg["face_count"].as_u64().context("face_count")?;
    Ok((seconds, faces))
}

/// Per-stage time on one thread over `paths` (each handler timed on its own).
fn stage_split(paths: &[String], settings: &Settings) -> anyhow::Result<Vec<(String, f64)>> {
    let chain = Chain::standard(settings);
    let handlers = chain.build()?;
    let mut totals = vec![0f64; handlers.len()];
    // Warm the models first, so that loading is not counted.
    let mut warm = FaceJob::new(0, paths[0].clone());
    handlers
        .iter()
        .for_each(|h| rayish_faces::chain::apply(h.as_ref(), &mut warm));
    for (i, p) in paths.iter().enumerate() {
        let mut job = FaceJob::new(i as u64, p.clone());
        for (k, h) in handlers.iter().enumerate() {
            let t = Instant::now();
            rayish_faces::chain::apply(h.as_ref(), &mut job);
            totals[k] += t.elapsed().as_secs_f64();
        }
    }
    Ok(chain
        .stages
        .iter()
        .map(|s| s.name.clone())
        .zip(totals.into_iter().map(|t| t / paths.len() as f64))
        .collect())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let count = opt("--images", 504);
    let rounds = opt("--rounds", 1).max(1);
    let upsample = opt("--upsample", 1) as u32;
    let work = target_dir()
        .parent()
        .map(|t| t.join("faces-bench"))
        .context("target dir")?;
    let paths = derive_photos(&work.join("photos"), count)?;
    let list = work.join("photos.txt");
    std::fs::write(&list, paths.join("\n") + "\n")?;
    if args.iter().any(|a| a == "--derive-only") {
        // For benches/compare_faces.sh: the photo list, nothing timed.
        println!("{}", list.display());
        return Ok(());
    }
    println!(
        "{} photos derived from the sample photos, upsample {upsample}, {rounds} round(s)",
        paths.len()
    );

    let configs: [(&str, Vec<&str>); 5] = [
        ("plain loop, 1 thread", vec!["--plain", "1"]),
        ("rayish local, 1 CPU", vec!["--cpus", "1"]),
        ("plain loop, 2 threads", vec!["--plain", "2"]),
        ("rayish local, 2 CPUs", vec!["--cpus", "2"]),
        (
            "  same, task per stage",
            vec!["--cpus", "2", "--task-per-stage"],
        ),
    ];
    let mut seconds: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut faces = None;
    for _ in 0..rounds {
        for (k, (label, cfg)) in configs.iter().enumerate() {
            let (s, f) = run_cli(&list, &work.join("out"), cfg, upsample)?;
            println!(
                "  {label:<24} {s:>8.2} s  {:>7.2} images/s  {f} faces",
                paths.len() as f64 / s
            );
            if *faces.get_or_insert(f) != f {
                bail!("{label} found {f} faces, an earlier configuration {faces:?}");
            }
            seconds[k].push(s);
        }
    }
    let m: Vec<f64> = seconds.into_iter().map(median).collect();
    let rate = |s: f64| paths.len() as f64 / s;
    println!("\nmedian over {rounds} round(s), {} images:", paths.len());
    for ((label, _), s) in configs.iter().zip(&m) {
        println!("  {label:<24} {s:>8.2} s  {:>7.2} images/s", rate(*s));
    }
    println!(
        "runtime overhead vs plain loop: 1 CPU {:+.1}%, 2 CPUs {:+.1}%  (target <= 5%)",
        (m[1] / m[0] - 1.0) * 100.0,
        (m[3] / m[2] - 1.0) * 100.0
    );
    println!(
        "runtime 2 CPUs vs 1 CPU: {:.2}x  (target >= 1.9x)",
        m[1] / m[3]
    );

    let sample: Vec<String> = paths
        .iter()
        .step_by((paths.len() / 100).max(1))
        .cloned()
        .collect();
    let settings = Settings {
        upsample,
        ..Settings::default()
    };
    println!(
        "\nper-image time by stage, one thread, {} images:",
        sample.len()
    );
    for (name, s) in stage_split(&sample, &settings)? {
        println!("  {name:<10} {:>8.2} ms", s * 1e3);
    }
    Ok(())
}
