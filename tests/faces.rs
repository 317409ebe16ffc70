//! The faces pipeline end to end: the real `rayish-faces` binary and dlib models on the
//! face_recognition sample photos, compared with Python face_recognition 1.3.0's output
//! (tests/fixtures/face_recognition_test_images.json), in local mode, in a plain loop
//! and on a cluster of separate node processes; bad inputs; crashing workers.
//!
//! Needs `scripts/setup-faces.sh` to have run (tests/run.sh does it).

use rayish_suite::{example_bin, run_for_result, target_dir, TestCluster};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn sample_photos() -> PathBuf {
    let dir = rayish_faces::models::data_dir().join("sample_photos");
    assert!(
        dir.join("obama.jpg").is_file(),
        "{} has no sample photos: run scripts/setup-faces.sh",
        dir.display()
    );
    dir
}

fn reference() -> Value {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/face_recognition_test_images.json"),
    )
    .expect("fixture");
    serde_json::from_str(&text).expect("fixture json")
}

/// face_recognition's run with HOG, this upsample and 5-point landmarks.
fn reference_run(upsample: u64) -> Value {
    reference_run_with(upsample, "small")
}

fn reference_run_with(upsample: u64, landmarks: &str) -> Value {
    reference()["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .find(|r| {
            r["settings"]["number_of_times_to_upsample"] == upsample
                && r["settings"]["landmarks"] == landmarks
                && r["settings"]["detector"] == "hog"
        })
        .cloned()
        .expect("a reference run with these settings")
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rayish-faces-{tag}-{:x}", rayish_suite::rand_u64()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Runs `rayish-faces encode` and returns (encodings.jsonl lines, average.json).
fn encode(input: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> (Vec<Value>, Value) {
    let stdout = encode_stdout(input, out, extra, env);
    assert!(
        stdout.contains("images: ") && stdout.contains("images/s: "),
        "no summary line: {stdout}"
    );
    read_output(out)
}

/// (encodings.jsonl lines, average.json) of a finished run.
fn read_output(out: &Path) -> (Vec<Value>, Value) {
    let lines = std::fs::read_to_string(out.join("encodings.jsonl"))
        .expect("encodings.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("jsonl line"))
        .collect();
    let avg = serde_json::from_str(
        &std::fs::read_to_string(out.join("average.json")).expect("average.json"),
    )
    .expect("average json");
    (lines, avg)
}

fn vec_f64(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn l2(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

fn file_name(line: &Value) -> String {
    line["path"]
        .as_str()
        .expect("path")
        .rsplit('/')
        .next()
        .expect("name")
        .to_string()
}

/// Every image of `lines` that the reference knows: same boxes, encodings within tol.
fn assert_matches_reference(lines: &[Value], avg: &Value, run: &Value, tol: f64) {
    let images = run["images"].as_object().expect("images");
    let mut seen = 0;
    for line in lines {
        let Some(want) = images.get(&file_name(line)) else {
            continue;
        };
        seen += 1;
        assert_eq!(line["status"], "ok", "{line}");
        let faces = want["faces"].as_array().expect("faces");
        let boxes = line["boxes"].as_array().expect("boxes");
        let encs = line["encodings"].as_array().expect("encodings");
        assert_eq!(
            boxes.len(),
            faces.len(),
            "face count of {}",
            file_name(line)
        );
        for ((b, e), f) in boxes.iter().zip(encs).zip(faces) {
            let want_box = serde_json::json!([f["top"], f["right"], f["bottom"], f["left"]]);
            assert_eq!(b, &want_box, "box of {}", file_name(line));
            let d = l2(&vec_f64(e), &vec_f64(&f["encoding"]));
            assert!(
                d < tol,
                "encoding of {} is {d} (L2) from face_recognition's",
                file_name(line)
            );
        }
    }
    assert_eq!(
        seen,
        images.len(),
        "not every reference image was in the output"
    );
    assert_eq!(avg["face_count"], run["face_count"]);
    let d = l2(&vec_f64(&avg["average"]), &vec_f64(&run["average"]));
    assert!(d < tol, "average is {d} (L2) from face_recognition's");
}

/// Encodings of two runs of the same images agree within `tol`, image by image.
fn assert_same_output(a: &(Vec<Value>, Value), b: &(Vec<Value>, Value), tol: f64) {
    assert_eq!(a.0.len(), b.0.len());
    for (x, y) in a.0.iter().zip(&b.0) {
        assert_eq!(x["path"], y["path"]);
        assert_eq!(x["status"], y["status"]);
        assert_eq!(x["boxes"], y["boxes"]);
        for (ex, ey) in x["encodings"]
            .as_array()
            .expect("e")
            .iter()
            .zip(y["encodings"].as_array().expect("e"))
        {
            assert!(
                l2(&vec_f64(ex), &vec_f64(ey)) < tol,
                "{} differs",
                x["path"]
            );
        }
    }
    for key in [
        "face_count",
        "image_count",
        "failed_images",
        "images_without_faces",
    ] {
        assert_eq!(a.1[key], b.1[key], "{key}");
    }
    assert!(l2(&vec_f64(&a.1["average"]), &vec_f64(&b.1["average"])) < tol);
}

#[test]
fn matches_face_recognition_at_upsample_0_and_1() {
    let photos = sample_photos();
    for upsample in [0u64, 1] {
        let out = temp_dir(&format!("ref{upsample}"));
        let up = upsample.to_string();
        let (lines, avg) = encode(&photos, &out, &["--upsample", &up, "--cpus", "2"], &[]);
        assert_eq!(lines.len(), 7);
        assert_matches_reference(&lines, &avg, &reference_run(upsample), 1e-5);
        assert_eq!(avg["settings"]["number_of_times_to_upsample"], upsample);

        // encodings.npy: N x 128 little-endian f64, the same numbers in image order.
        let npy = std::fs::read(out.join("encodings.npy")).expect("npy");
        assert_eq!(&npy[..6], b"\x93NUMPY");
        let header =
            String::from_utf8_lossy(&npy[10..10 + u16::from_le_bytes([npy[8], npy[9]]) as usize])
                .to_string();
        assert!(
            header.contains("'descr': '<f8'") && header.contains("(7, 128)"),
            "{header}"
        );
        let first = f64::from_le_bytes(
            npy[npy.len() - 7 * 128 * 8..][..8]
                .try_into()
                .expect("8 bytes"),
        );
        assert_eq!(first, lines[0]["encodings"][0][0].as_f64().expect("f64"));
        std::fs::remove_dir_all(&out).ok();
    }
}

#[test]
fn plain_loop_and_runtime_agree() {
    let photos = sample_photos();
    let (a, b) = (temp_dir("plain"), temp_dir("rt"));
    let plain = encode(&photos, &a, &["--plain", "2"], &[]);
    let runtime = encode(&photos, &b, &["--cpus", "2", "--batch", "3"], &[]);
    let per_stage = encode(&photos, &b, &["--cpus", "2", "--task-per-stage"], &[]);
    assert_same_output(&runtime, &per_stage, 1e-9);
    assert_matches_reference(&plain.0, &plain.1, &reference_run(1), 1e-5);
    assert_same_output(&plain, &runtime, 1e-9);
}

#[test]
fn cluster_output_equals_local_mode() {
    let photos = sample_photos();
    let local_out = temp_dir("local");
    let local = encode(&photos, &local_out, &["--cpus", "1"], &[]);

    // A head and two more nodes, 1 CPU each: the 7 images' stages spread over them.
    let cluster = TestCluster::start(2, 1, 5000);
    let root = cluster.root.to_string_lossy().to_string();
    for (batch, per_stage) in [("1", false), ("4", true)] {
        let out = temp_dir("cluster");
        let remote = encode(
            &photos,
            &out,
            &[
                "--address",
                &cluster.address,
                "--batch",
                batch,
                if per_stage {
                    "--task-per-stage"
                } else {
                    "--window=16"
                },
            ],
            &[("RAYISH_TEMP_DIR", &root), ("RAYISH_TOKEN", &cluster.token)],
        );
        assert_same_output(&local, &remote, 1e-9);
        assert_matches_reference(&remote.0, &remote.1, &reference_run(1), 1e-5);
        if batch == "1" {
            // 7 one-image chains on three 1-CPU nodes: the head spread them.
            let nodes: std::collections::BTreeSet<String> = remote
                .0
                .iter()
                .map(|l| l["node"].as_str().expect("node").to_string())
                .collect();
            assert!(nodes.len() >= 2, "every image ran on one node: {nodes:?}");
        }
    }
}

/// `jpeg` with its frame header (SOF) patched to claim 60000x60000 pixels.
fn huge_jpeg(jpeg: &[u8]) -> Vec<u8> {
    let mut out = jpeg.to_vec();
    let mut i = 2;
    while i + 9 < out.len() && out[i] == 0xFF {
        let marker = out[i + 1];
        if (0xC0..=0xC2).contains(&marker) {
            out[i + 5..i + 7].copy_from_slice(&60000u16.to_be_bytes());
            out[i + 7..i + 9].copy_from_slice(&60000u16.to_be_bytes());
            return out;
        }
        i += 2 + u16::from_be_bytes([out[i + 2], out[i + 3]]) as usize;
    }
    panic!("no SOF marker found");
}

#[test]
fn bad_inputs_fail_alone_and_good_photos_still_match() {
    let photos = sample_photos();
    let dir = temp_dir("bad");
    for good in [
        "obama.jpg",
        "biden.jpg",
        "32bit.png",
        "obama_partial_face.jpg",
    ] {
        std::fs::copy(photos.join(good), dir.join(good)).expect("copy");
    }
    let obama = std::fs::read(photos.join("obama.jpg")).expect("read");
    std::fs::write(dir.join("a_empty.jpg"), b"").expect("write");
    std::fs::write(dir.join("b_truncated.jpg"), &obama[..obama.len() / 2]).expect("write");
    std::fs::write(dir.join("c_text.jpg"), b"this is not a picture\n").expect("write");
    std::fs::write(dir.join("d_huge.jpg"), huge_jpeg(&obama)).expect("write");
    std::os::unix::fs::symlink(dir.join("no-such-file"), dir.join("e_unreadable.jpg"))
        .expect("symlink");
    // Grey and 16-bit versions of obama.jpg, decoded from the same libjpeg-turbo pixels.
    let rgb = image::load_from_memory(&obama).expect("decode").to_rgb8();
    let grey = image::DynamicImage::ImageRgb8(rgb.clone()).to_luma8();
    grey.save(dir.join("f_grey.png")).expect("grey png");
    let rgb16 =
        image::ImageBuffer::<image::Rgb<u16>, _>::from_fn(rgb.width(), rgb.height(), |x, y| {
            let p = rgb.get_pixel(x, y);
            image::Rgb([p[0] as u16 * 257, p[1] as u16 * 257, p[2] as u16 * 257])
        });
    rgb16.save(dir.join("g_16bit.png")).expect("16-bit png");
    let rgb_png = dir.join("h_rgb8.png");
    rgb.save(&rgb_png).expect("8-bit png");

    let out = temp_dir("bad-out");
    let (lines, avg) = encode(&dir, &out, &["--cpus", "2", "--batch", "3"], &[]);
    let by_name = |n: &str| {
        lines
            .iter()
            .find(|l| file_name(l) == n)
            .unwrap_or_else(|| panic!("{n} missing"))
            .clone()
    };
    for (name, reason) in [
        ("a_empty.jpg", "empty file"),
        ("b_truncated.jpg", "cannot decode JPEG"),
        ("c_text.jpg", "not an image"),
        ("d_huge.jpg", "60000x60000"),
        ("e_unreadable.jpg", "cannot read file"),
    ] {
        let l = by_name(name);
        assert_eq!(l["status"], "error", "{l}");
        let msg = l["error"].as_str().expect("reason");
        assert!(msg.contains(reason), "{name}: {msg:?} lacks {reason:?}");
    }
    // The good photos, alongside the bad ones, still give face_recognition's numbers.
    let want = reference_run(1);
    let faces_of = |n: &str| want["images"][n]["faces"][0]["encoding"].clone();
    for good in [
        "obama.jpg",
        "biden.jpg",
        "32bit.png",
        "obama_partial_face.jpg",
    ] {
        let l = by_name(good);
        assert_eq!(l["status"], "ok");
        assert!(
            l2(&vec_f64(&l["encodings"][0]), &vec_f64(&faces_of(good))) < 1e-5,
            "{good}"
        );
    }
    // 16-bit samples are cut to their high byte, as PIL does: the same pixels as the
    // 8-bit PNG, so the same encoding. Grey finds the same face.
    let e8 = vec_f64(&by_name("h_rgb8.png")["encodings"][0]);
    assert!(l2(&vec_f64(&by_name("g_16bit.png")["encodings"][0]), &e8) < 1e-9);
    let g = by_name("f_grey.png");
    assert_eq!(g["status"], "ok");
    assert_eq!(g["boxes"].as_array().map(Vec::len), Some(1));
    assert_eq!(avg["failed_images"], 5);
    assert_eq!(avg["image_count"], 12);
}

#[test]
fn a_crashing_image_is_retried_then_reported_and_the_rest_completes() {
    let photos = sample_photos();
    let dir = temp_dir("crash");
    std::fs::copy(photos.join("obama.jpg"), dir.join("obama.jpg")).expect("copy");
    std::fs::copy(photos.join("biden.jpg"), dir.join("biden.jpg")).expect("copy");
    std::fs::copy(photos.join("obama.jpg"), dir.join("always_crash.jpg")).expect("copy");
    std::fs::copy(photos.join("biden.jpg"), dir.join("once_crash.jpg")).expect("copy");
    let once = temp_dir("once");
    // Batches of 4: the whole batch dies with the worker, then its images go one by one.
    let run = |marker: &str, once_dir: Option<&Path>| {
        let mut cmd = Command::new(example_bin("faces_custom"));
        cmd.arg(&dir)
            .args(["--abort-on", marker, "--batch", "4", "--min-side", "100"]);
        if let Some(d) = once_dir {
            cmd.arg("--abort-once-dir").arg(d);
        }
        run_for_result(&mut cmd)
    };
    let first = run("once_crash", Some(&once));
    assert_eq!(first["failed"], serde_json::json!([]), "{first}");
    assert!(
        once.join("once_crash.jpg").exists(),
        "the handler never crashed"
    );
    assert_eq!(first["faces"], 4);

    let second = run("always_crash", None);
    let failed = second["failed"].as_array().expect("failed");
    assert_eq!(failed.len(), 1, "{second}");
    assert!(failed[0]
        .as_str()
        .expect("path")
        .ends_with("always_crash.jpg"));
    let img = second["images"]
        .as_array()
        .expect("images")
        .iter()
        .find(|i| file_name(i) == "always_crash.jpg")
        .cloned()
        .expect("row");
    assert!(
        img["error"].as_str().expect("reason").contains("SIGABRT"),
        "{img}"
    );
    assert_eq!(second["faces"], 3);
}

#[test]
fn a_user_handler_joins_the_chain() {
    let photos = sample_photos();
    let r = run_for_result(
        Command::new(example_bin("faces_custom"))
            .arg(&photos)
            .args(["--min-side", "700"]),
    );
    let images = r["images"].as_array().expect("images");
    // obama_partial_face.jpg (491 wide), obama_partial_face2.jpg (551), 32bit.png and
    // obama2.jpg (626) are under 700 pixels on their shorter side.
    let skipped: Vec<String> = images
        .iter()
        .filter(|i| i["status"] == "skipped")
        .map(file_name)
        .collect();
    assert_eq!(
        skipped,
        [
            "32bit.png",
            "obama2.jpg",
            "obama_partial_face.jpg",
            "obama_partial_face2.jpg"
        ]
    );
    assert!(images
        .iter()
        .filter(|i| i["status"] == "skipped")
        .all(|i| i["error"]
            .as_str()
            .unwrap_or("")
            .contains("smaller than 700")));
    assert_eq!(r["faces"], 3);
}

#[test]
fn a_missing_model_names_the_fix() {
    let out = Command::new(target_dir().join("rayish-faces"))
        .arg("encode")
        .arg(sample_photos())
        .args(["--models", "/nonexistent/models", "--quiet"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("dlib_face_recognition_resnet_model_v1.dat")
            && err.contains("scripts/setup-faces.sh"),
        "{err}"
    );
}

fn iou(a: &Value, b: &Value) -> f64 {
    let v = |x: &Value, i: usize| x[i].as_f64().expect("coordinate");
    // (top, right, bottom, left)
    let (t, r, b2, l) = (
        v(a, 0).max(v(b, 0)),
        v(a, 1).min(v(b, 1)),
        v(a, 2).min(v(b, 2)),
        v(a, 3).max(v(b, 3)),
    );
    let inter = (r - l).max(0.0) * (b2 - t).max(0.0);
    let area = |x: &Value| (v(x, 1) - v(x, 3)) * (v(x, 2) - v(x, 0));
    inter / (area(a) + area(b) - inter)
}

#[test]
fn large_landmarks_match_face_recognition_and_the_cnn_detector_agrees_with_hog() {
    let photos = sample_photos();
    // 68-point landmarks: face_recognition's model="large".
    let out = temp_dir("large");
    let (lines, avg) = encode(&photos, &out, &["--model", "large", "--cpus", "2"], &[]);
    assert_eq!(avg["settings"]["landmarks"], "large");
    assert_matches_reference(&lines, &avg, &reference_run_with(1, "large"), 1e-5);
    // (and they are not the 5-point encodings)
    let small = reference_run(1);
    let f = &small["images"][file_name(&lines[0])]["faces"][0];
    assert!(
        l2(
            &vec_f64(&lines[0]["encodings"][0]),
            &vec_f64(&f["encoding"])
        ) > 1e-3
    );

    // The CNN detector (no face_recognition reference here) on two photos: the same
    // faces as HOG, boxes overlapping, encodings near HOG's.
    let want = reference_run(1);
    let dir = temp_dir("cnn-in");
    for p in ["obama.jpg", "obama2.jpg"] {
        std::fs::copy(photos.join(p), dir.join(p)).expect("copy");
    }
    let out = temp_dir("cnn");
    let (lines, _) = encode(
        &dir,
        &out,
        &["--detector", "cnn", "--upsample", "0", "--cpus", "2"],
        &[],
    );
    for l in &lines {
        assert_eq!(l["status"], "ok", "{l}");
        let f = &want["images"][file_name(l)]["faces"][0];
        let hog = serde_json::json!([f["top"], f["right"], f["bottom"], f["left"]]);
        assert_eq!(l["boxes"].as_array().map(Vec::len), Some(1), "{l}");
        assert!(
            iou(&l["boxes"][0], &hog) > 0.4,
            "CNN box {} vs HOG box {hog}",
            l["boxes"][0]
        );
        let d = l2(&vec_f64(&l["encodings"][0]), &vec_f64(&f["encoding"]));
        assert!(
            d < 0.2,
            "{}: CNN-detected encoding is {d} from HOG's",
            file_name(l)
        );
    }
}

#[test]
fn a_node_killed_mid_job_loses_no_image() {
    let photos = sample_photos();
    let dir = temp_dir("kill-in");
    for copy in 0..3 {
        for entry in std::fs::read_dir(&photos).expect("photos") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .to_string();
            std::fs::copy(&path, dir.join(format!("{copy}_{name}"))).expect("copy");
        }
    }
    let local = encode(&dir, &temp_dir("kill-local"), &["--cpus", "2"], &[]);

    // Three 1-CPU nodes, a 2 s heartbeat timeout; the third node is SIGKILLed while it
    // encodes. Its task is re-run elsewhere and the output is unchanged.
    let mut cluster = TestCluster::start(2, 1, 2000);
    let out = temp_dir("kill-out");
    let root = cluster.root.to_string_lossy().into_owned();
    let child = spawn_encode(
        &dir,
        &out,
        &["--address", &cluster.address],
        &[("RAYISH_TOKEN", &cluster.token), ("RAYISH_TEMP_DIR", &root)],
    );
    // Kill it once it has finished a task and is running another.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let busy = cluster.status().is_some_and(|s| {
            s["nodes"].as_array().into_iter().flatten().any(|n| {
                n["address"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("127.0.0.4:"))
                    && n["finished_tasks"].as_u64() >= Some(1)
                    && n["running_tasks"].as_u64() >= Some(1)
            })
        });
        if busy {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the third node never got work"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    cluster.kill_node(2);
    let res = child.wait_with_output().expect("rayish-faces");
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let remote = read_output(&out);
    assert_eq!(remote.1["failed_images"], 0, "{}", remote.1);
    assert_same_output(&local, &remote, 1e-9);
}

/// The "Core: …" lines OpenBLAS prints as it loads (OPENBLAS_VERBOSE=2), in order.
fn openblas_cores(coretype: Option<&str>) -> Vec<String> {
    let mut cmd = Command::new(target_dir().join("rayish-faces"));
    cmd.arg("--version").env("OPENBLAS_VERBOSE", "2");
    match coretype {
        Some(core) => cmd.env(rayish_faces::blas::CORETYPE_VAR, core),
        None => cmd.env_remove(rayish_faces::blas::CORETYPE_VAR),
    };
    let out = cmd.output().expect("run rayish-faces --version");
    assert!(out.status.success(), "{out:?}");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    all.lines()
        .filter_map(|l| l.strip_prefix("Core: "))
        .map(|c| c.trim().to_string())
        .collect()
}

#[test]
fn openblas_fallback_kernels_are_replaced_by_the_cpus_own() {
    let cores = openblas_cores(None);
    let first = cores.first().expect("OpenBLAS named its kernels").clone();
    match rayish_faces::blas::better_core(&first, rayish_faces::blas::CpuFeatures::detect()) {
        // The process started again, once, with the better kernels.
        Some(better) => assert_eq!(cores, [first, better.to_string()]),
        // OpenBLAS's own choice stands, and nothing restarts.
        None => assert_eq!(cores, [first]),
    }
}

#[test]
fn a_chosen_openblas_coretype_is_left_alone() {
    assert_eq!(openblas_cores(Some("Prescott")), ["Prescott"]);
}

/// `count` photos derived from the samples (each scaled and, every other one,
/// mirrored), small so that a run of hundreds takes seconds.
fn derived_photos(count: usize) -> PathBuf {
    let photos = sample_photos();
    let mut samples: Vec<PathBuf> = std::fs::read_dir(&photos)
        .expect("photos")
        .map(|e| e.expect("entry").path())
        .collect();
    samples.sort();
    let decoded: Vec<image::RgbImage> = samples
        .iter()
        .map(|p| image::open(p).expect("decode sample").to_rgb8())
        .collect();
    let dir = temp_dir("derived");
    for i in 0..count {
        let src = &decoded[i % decoded.len()];
        let width = 240 + (i as u32 * 7) % 160;
        let height = (src.height() as u64 * width as u64 / src.width() as u64) as u32;
        let mut img =
            image::imageops::resize(src, width, height, image::imageops::FilterType::Triangle);
        if (i / decoded.len()) % 2 == 1 {
            img = image::imageops::flip_horizontal(&img);
        }
        img.save(dir.join(format!("p{i:04}.jpg"))).expect("save");
    }
    dir
}

/// Lines of `out/journal.jsonl` (the header included).
fn journal_lines(out: &Path) -> usize {
    std::fs::read_to_string(out.join("journal.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// The final files of a run, less what differs between runs by design: the seconds
/// it took and the node that ran each image.
fn output_bytes(out: &Path) -> (String, Value, Vec<u8>) {
    let lines: Vec<String> = std::fs::read_to_string(out.join("encodings.jsonl"))
        .expect("encodings.jsonl")
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).expect("line");
            v.as_object_mut().expect("object").remove("node");
            v.to_string()
        })
        .collect();
    let mut avg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("average.json")).expect("avg"))
            .expect("average json");
    avg.as_object_mut().expect("object").remove("seconds");
    let npy = std::fs::read(out.join("encodings.npy")).expect("npy");
    (lines.join("\n"), avg, npy)
}

/// Starts `rayish-faces encode` without waiting.
fn spawn_encode(
    input: &Path,
    out: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> std::process::Child {
    encode_command(input, out, extra, env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start rayish-faces")
}

/// The `rayish-faces encode` command line every test runs (quiet, into `out`).
fn encode_command(input: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(target_dir().join("rayish-faces"));
    cmd.arg("encode")
        .arg(input)
        .arg("--out")
        .arg(out)
        .arg("--quiet")
        .args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// The stdout of a run that must have succeeded (`what` names it if not).
fn stdout_of_success(res: &std::process::Output, what: &str) -> String {
    assert!(
        res.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
    String::from_utf8_lossy(&res.stdout).into_owned()
}

/// Waits until `out`'s journal has at least `lines` lines, or `child` exits.
fn wait_for_journal(child: &mut std::process::Child, out: &Path, lines: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while journal_lines(out) < lines {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "rayish-faces ended before its journal had {lines} lines"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "journal stuck at {}",
            journal_lines(out)
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Runs `rayish-faces encode` to success and returns its stdout.
fn encode_stdout(input: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> String {
    let res = spawn_encode(input, out, extra, env)
        .wait_with_output()
        .expect("rayish-faces");
    stdout_of_success(&res, &format!("rayish-faces {extra:?}"))
}

/// Runs `rayish-faces encode`, which must fail, and returns its stderr.
fn encode_refused(input: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> String {
    let res = spawn_encode(input, out, extra, env)
        .wait_with_output()
        .expect("rayish-faces");
    assert!(
        !res.status.success(),
        "rayish-faces {extra:?} succeeded:\n{}",
        String::from_utf8_lossy(&res.stdout)
    );
    String::from_utf8_lossy(&res.stderr).into_owned()
}

/// The number in "resumed: N images ..." of a run's stdout (0 without that line).
fn resumed(stdout: &str) -> usize {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("resumed: "))
        .and_then(|rest| rest.split(' ').next())
        .map_or(0, |n| n.parse().expect("a count"))
}

#[test]
fn a_run_killed_midway_with_its_driver_or_its_head_resumes_to_the_same_output() {
    const IMAGES: usize = 200;
    let input = derived_photos(IMAGES);
    let whole = temp_dir("whole");
    encode_stdout(&input, &whole, &["--cpus", "2"], &[]);
    assert_eq!(
        journal_lines(&whole),
        IMAGES + 1,
        "a header and one line an image"
    );
    let reference = output_bytes(&whole);

    // The driver killed with SIGKILL half way: the re-run encodes only the rest.
    let out = temp_dir("driver-killed");
    let mut child = spawn_encode(&input, &out, &["--cpus", "2"], &[]);
    wait_for_journal(&mut child, &out, IMAGES / 2);
    child.kill().expect("kill -9");
    let _ = child.wait();
    let kept = journal_lines(&out) - 1;
    assert!(kept < IMAGES, "killed too late: {kept} images already done");
    assert!(!out.join("encodings.jsonl").exists(), "no final output yet");
    let stdout = encode_stdout(&input, &out, &["--cpus", "2"], &[]);
    assert_eq!(resumed(&stdout), kept, "{stdout}");
    assert_eq!(
        journal_lines(&out),
        IMAGES + 1,
        "each image encoded exactly once over the two runs"
    );
    assert!(
        output_bytes(&out) == reference,
        "the resumed output differs from an uninterrupted run's"
    );
    // A finished job resumes to the same output without computing anything.
    let again = encode_stdout(&input, &out, &[], &[]);
    assert_eq!(resumed(&again), IMAGES);
    assert!(output_bytes(&out) == reference);

    // The head killed with SIGKILL half way: the driver fails once its reconnect
    // timeout passes, the journal keeps what finished, a new cluster resumes.
    let out = temp_dir("head-killed");
    let kept = {
        let mut cluster = TestCluster::start(1, 1, 2000);
        let root = cluster.root.to_string_lossy().into_owned();
        let env = [
            ("RAYISH_TOKEN", cluster.token.as_str()),
            ("RAYISH_HEAD_RECONNECT_TIMEOUT", "3"),
            ("RAYISH_TEMP_DIR", root.as_str()),
        ];
        let mut child = spawn_encode(&input, &out, &["--address", &cluster.address], &env);
        wait_for_journal(&mut child, &out, IMAGES / 3);
        cluster.kill_node(0);
        let res = child.wait_with_output().expect("rayish-faces");
        let stderr = String::from_utf8_lossy(&res.stderr);
        assert!(!res.status.success(), "the driver went on without a head");
        assert!(stderr.contains("journal.jsonl"), "{stderr}");
        journal_lines(&out) - 1
    };
    assert!(kept < IMAGES);
    let cluster = TestCluster::start(1, 2, 2000);
    let root = cluster.root.to_string_lossy().into_owned();
    let stdout = encode_stdout(
        &input,
        &out,
        &["--address", &cluster.address],
        &[("RAYISH_TOKEN", &cluster.token), ("RAYISH_TEMP_DIR", &root)],
    );
    assert_eq!(resumed(&stdout), kept, "{stdout}");
    assert_eq!(journal_lines(&out), IMAGES + 1);
    assert!(
        output_bytes(&out) == reference,
        "the resumed output differs from an uninterrupted run's"
    );
}

#[test]
fn the_faces_job_outlives_its_head_killed_twice_and_restarted_after_2_s_and_30_s() {
    // A head and two nodes; the head is killed with SIGKILL a third of the way in and
    // back on its port and storage 2 s later, then again two thirds of the way in and
    // back 30 s later. The same driver goes on each time, and so do the two nodes:
    // they keep running their tasks while the head is away and come back as
    // themselves, with their work.
    let cluster = TestCluster::start(2, 1, 2000);
    let (_, stderr) = faces_job_through(cluster, |cluster, child, out| {
        for (at, away) in [(FAULT_IMAGES / 3, 2), (FAULT_IMAGES * 2 / 3, 30)] {
            wait_for_journal(child, out, at);
            cluster.restart_head_after(3, std::time::Duration::from_secs(away));
            for ip in ["127.0.0.3", "127.0.0.4"] {
                assert_eq!(
                    lives_at(cluster, ip),
                    vec![(true, 1)],
                    "{ip} did not come back as itself"
                );
            }
        }
    });
    assert_eq!(
        stderr.matches("reconnected to the head").count(),
        2,
        "the driver did not go on across both restarts: {stderr}"
    );
}

/// The nodes listening on `ip` in `rayish status`: (alive, incarnation) each, sorted.
fn lives_at(cluster: &TestCluster, ip: &str) -> Vec<(bool, u64)> {
    let prefix = format!("{ip}:");
    let mut lives: Vec<(bool, u64)> = cluster
        .status()
        .and_then(|s| s["nodes"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|n| {
            n["address"]
                .as_str()
                .is_some_and(|a| a.starts_with(&prefix))
        })
        .map(|n| (n["alive"] == true, n["incarnation"].as_u64().unwrap_or(0)))
        .collect();
    lives.sort();
    lives
}

/// Waits until the node on `ip` has finished a task and runs another.
fn wait_until_busy(cluster: &TestCluster, ip: &str) {
    let prefix = format!("{ip}:");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !cluster.status().is_some_and(|s| {
        s["nodes"].as_array().into_iter().flatten().any(|n| {
            n["address"]
                .as_str()
                .is_some_and(|a| a.starts_with(&prefix))
                && n["alive"] == true
                && n["finished_tasks"].as_u64() >= Some(1)
                && n["running_tasks"].as_u64() >= Some(1)
        })
    }) {
        assert!(std::time::Instant::now() < deadline, "{ip} never got work");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Photos in each chaos test's faces job.
const FAULT_IMAGES: usize = 200;

/// Runs the faces job over `FAULT_IMAGES` derived photos on `cluster`, with `fault`
/// called once it has started (given the cluster, the driver and its output
/// directory), and checks that it succeeded with each image journaled once and an
/// output byte for byte that of an uninterrupted local run. Returns the cluster and
/// the driver's stderr.
fn faces_job_through(
    mut cluster: TestCluster,
    fault: impl FnOnce(&mut TestCluster, &mut std::process::Child, &Path),
) -> (TestCluster, String) {
    let input = derived_photos(FAULT_IMAGES);
    let whole = temp_dir("fault-whole");
    encode_stdout(&input, &whole, &["--cpus", "2"], &[]);
    let reference = output_bytes(&whole);
    let out = temp_dir("fault-out");
    let root = cluster.root.to_string_lossy().into_owned();
    let env = [
        ("RAYISH_TOKEN", cluster.token.as_str()),
        ("RAYISH_TEMP_DIR", root.as_str()),
    ];
    let mut child = spawn_encode(&input, &out, &["--address", &cluster.address], &env);
    fault(&mut cluster, &mut child, &out);
    let res = child.wait_with_output().expect("rayish-faces");
    let stderr = String::from_utf8_lossy(&res.stderr).into_owned();
    assert!(res.status.success(), "{stderr}");
    assert_eq!(
        journal_lines(&out),
        FAULT_IMAGES + 1,
        "each image finished exactly once"
    );
    assert!(
        output_bytes(&out) == reference,
        "the output differs from an uninterrupted run's"
    );
    (cluster, stderr)
}

/// [`faces_job_through`] with `fault` once the node on `victim` is busy; checks that
/// the victim came back as its next incarnation.
fn faces_job_survives(cluster: TestCluster, victim: &str, fault: impl FnOnce(&mut TestCluster)) {
    let (cluster, _) = faces_job_through(cluster, |cluster, child, out| {
        wait_for_journal(child, out, 10);
        wait_until_busy(cluster, victim);
        fault(cluster);
    });
    // Declared dead while away, it learnt so and joined again as a new node.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while lives_at(&cluster, victim) != [(false, 1), (true, 2)] {
        assert!(
            std::time::Instant::now() < deadline,
            "{victim}: {:?}",
            lives_at(&cluster, victim)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn the_faces_job_outlives_a_node_cut_off_from_the_head_for_15_s() {
    // The node runs in a network namespace of its own; its link goes down for 15 s
    // (the node timeout is 2 s) and comes back, the node process alive throughout.
    let host = rayish_suite::NetnsHost::create("part", 77);
    let mut cluster = TestCluster::start_at(&host.outside, 1, 1, 2000, &[]);
    cluster.join_in(&host, 1, &[]);
    let victim = host.inside.clone();
    faces_job_survives(cluster, &victim, |_| {
        host.cut();
        std::thread::sleep(std::time::Duration::from_secs(15));
        host.heal();
    });
}

#[test]
fn the_faces_job_outlives_a_node_stopped_for_15_s() {
    let cluster = TestCluster::start(2, 1, 2000);
    faces_job_survives(cluster, "127.0.0.4", |cluster| {
        let pid = cluster.nodes[2].id() as i32;
        // SAFETY: kill(2) of a node process this test started (still its child).
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        std::thread::sleep(std::time::Duration::from_secs(15));
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
    });
}

/// Mounts a tmpfs with `options` on a new directory (the tests run as root).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(tag: &str, options: &str) -> Tmpfs {
        let dir = temp_dir(tag);
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(&dir)
            .status()
            .expect("mount");
        assert!(
            ok.success(),
            "mount -t tmpfs -o {options} (the tests need root)"
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn out_is_checked_before_any_compute_and_other_settings_are_refused() {
    let photos = sample_photos();
    // A read-only file system: refused before the runtime starts (no session made).
    let ro = Tmpfs::mount("ro-out", "ro,size=1m");
    let sessions = temp_dir("ro-sessions");
    let stderr = encode_refused(
        &photos,
        &ro.0.join("out"),
        &["--cpus", "2"],
        &[("RAYISH_TEMP_DIR", &sessions.to_string_lossy())],
    );
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(&sessions).expect("sessions").count(),
        0,
        "the runtime started before --out was checked"
    );
    // Too little room for the run: refused, naming what it has and needs.
    let small = Tmpfs::mount("small-out", "size=64k");
    let stderr = encode_refused(&photos, &small.0, &["--cpus", "2"], &[]);
    assert!(
        stderr.contains("bytes free; 7 images need about"),
        "{stderr}"
    );

    // --resume with nothing to resume from: refused, naming what is missing.
    let empty = temp_dir("resume-nothing");
    let stderr = encode_refused(&photos, &empty, &["--cpus", "2", "--resume"], &[]);
    assert!(
        stderr.contains("has no journal.jsonl to resume from"),
        "{stderr}"
    );

    // Other settings against a journal: refused by name, unless --restart.
    let out = temp_dir("settings-out");
    encode_stdout(&photos, &out, &["--cpus", "2", "--upsample", "0"], &[]);
    let stderr = encode_refused(&photos, &out, &["--cpus", "2"], &[]);
    assert!(
        stderr.contains("number_of_times_to_upsample: 0 → 1") && stderr.contains("--restart"),
        "{stderr}"
    );
    let stdout = encode_stdout(&photos, &out, &["--cpus", "2", "--restart"], &[]);
    assert_eq!(resumed(&stdout), 0);
    // Now --resume finds the journal and takes every image from it.
    let stdout = encode_stdout(&photos, &out, &["--resume"], &[]);
    assert_eq!(resumed(&stdout), 7);
    let (lines, avg) = read_output(&out);
    assert_matches_reference(&lines, &avg, &reference_run(1), 1e-5);
}

#[test]
fn a_full_disk_during_the_final_write_leaves_the_previous_output_whole() {
    let photos = sample_photos();
    let three = temp_dir("three");
    let two = temp_dir("two");
    for (i, name) in ["biden.jpg", "obama.jpg", "obama2.jpg"].iter().enumerate() {
        std::fs::copy(photos.join(name), three.join(name)).expect("copy");
        if i < 2 {
            std::fs::copy(photos.join(name), two.join(name)).expect("copy");
        }
    }
    // Room for the bytes, but only 8 inodes: the root, the output directory, the
    // journal and the three final files leave two, and a commit stages three files.
    let fs = Tmpfs::mount("enospc", "size=8m,nr_inodes=8");
    let out = fs.0.join("out");
    encode_stdout(&three, &out, &["--cpus", "2"], &[]);
    let before: Vec<Vec<u8>> = ["average.json", "encodings.jsonl", "encodings.npy"]
        .iter()
        .map(|f| std::fs::read(out.join(f)).expect("first output"))
        .collect();
    // The second run has no room for its staged files.
    let stderr = encode_refused(&two, &out, &["--cpus", "2"], &[]);
    assert!(stderr.contains("No space left on device"), "{stderr}");
    let after: Vec<Vec<u8>> = ["average.json", "encodings.jsonl", "encodings.npy"]
        .iter()
        .map(|f| std::fs::read(out.join(f)).expect("output after ENOSPC"))
        .collect();
    assert!(before == after, "the previous output was touched");
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .expect("out")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "average.json",
            "encodings.jsonl",
            "encodings.npy",
            "journal.jsonl"
        ],
        "staged files were left behind"
    );
}

#[test]
fn fifos_devices_sockets_and_oversized_files_fail_alone_with_their_reason() {
    let photos = sample_photos();
    let dir = temp_dir("special");
    let fifo = dir.join("fifo.jpg");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo")
        .success());
    let sock = dir.join("socket.jpg");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("socket");
    let big = dir.join("big.jpg");
    std::fs::write(&big, vec![0u8; 2_000_000]).expect("big");
    let list = dir.join("list.txt");
    std::fs::write(
        &list,
        format!(
            "{}\n{}\n/dev/zero\n{}\n{}\n{}\n",
            photos.join("obama.jpg").display(),
            fifo.display(),
            sock.display(),
            big.display(),
            photos.join("biden.jpg").display(),
        ),
    )
    .expect("list");
    let out = temp_dir("special-out");
    let (lines, avg) = encode(
        &list,
        &out,
        &["--cpus", "2", "--max-file-bytes", "1000000"],
        &[],
    );
    let reasons: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["status"].as_str().expect("status").to_string(),
                l["error"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(reasons[0].0, "ok");
    assert!(
        reasons[1].1.contains("not a regular file (a FIFO)"),
        "{reasons:?}"
    );
    assert!(
        reasons[2]
            .1
            .contains("not a regular file (a character device)"),
        "{reasons:?}"
    );
    assert!(
        reasons[3].1.contains("not a regular file (a socket)"),
        "{reasons:?}"
    );
    assert!(
        reasons[4]
            .1
            .contains("2000000 bytes, over the limit of 1000000"),
        "{reasons:?}"
    );
    assert_eq!(reasons[5].0, "ok");
    assert_eq!(avg["failed_images"], 4);
}

#[test]
fn reading_on_the_nodes_gives_the_driver_read_output() {
    let photos = sample_photos();
    let local = temp_dir("read-local");
    encode_stdout(
        &photos,
        &local,
        &["--cpus", "2", "--read-on", "driver"],
        &[],
    );
    let cluster = TestCluster::start(2, 1, 2000);
    let root = cluster.root.to_string_lossy().into_owned();
    let out = temp_dir("read-on-nodes");
    encode_stdout(
        &photos,
        &out,
        &[
            "--address",
            &cluster.address,
            "--read-on-nodes",
            "--batch",
            "2",
        ],
        &[("RAYISH_TOKEN", &cluster.token), ("RAYISH_TEMP_DIR", &root)],
    );
    assert!(
        output_bytes(&out) == output_bytes(&local),
        "reading on the nodes changed the output"
    );
}

#[test]
fn the_cnn_fallback_finds_a_face_hog_misses_and_says_so() {
    // tests/fixtures/biden_rotated_55.jpg: the sample biden.jpg scaled to 160 px wide
    // and turned 55° (PIL, JPEG quality 92): HOG finds no face in it, dlib's CNN does.
    let photos = sample_photos();
    let dir = temp_dir("fallback");
    std::fs::copy(photos.join("obama.jpg"), dir.join("a_obama.jpg")).expect("copy");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/biden_rotated_55.jpg"),
        dir.join("b_rotated.jpg"),
    )
    .expect("copy fixture");
    let (plain, _) = encode(&dir, &temp_dir("fallback-off"), &["--cpus", "2"], &[]);
    assert_eq!(
        plain[1]["status"], "no_face",
        "HOG alone finds the turned face"
    );
    assert!(
        plain.iter().all(|l| l.get("detectors").is_none()),
        "{plain:?}"
    );

    let out = temp_dir("fallback-on");
    let stdout = encode_stdout(&dir, &out, &["--cpus", "2", "--fallback", "cnn"], &[]);
    assert!(
        stdout.contains("cnn fallback: 1 faces in 1 images where HOG found none"),
        "{stdout}"
    );
    let (lines, avg) = read_output(&out);
    assert_eq!(lines[0]["status"], "ok");
    assert_eq!(lines[0]["detectors"], serde_json::json!(["hog"]));
    assert_eq!(
        lines[0]["encodings"], plain[0]["encodings"],
        "HOG's faces are unchanged"
    );
    assert_eq!(lines[1]["status"], "ok");
    assert_eq!(lines[1]["boxes"].as_array().map(Vec::len), Some(1));
    assert_eq!(lines[1]["detectors"], serde_json::json!(["cnn"]));
    assert_eq!(avg["settings"]["fallback_detector"], "cnn");
    assert_eq!(avg["face_count"], 2);
}

// ---------------------------------------------------------------------------------
// Inputs in an S3-compatible store, and where images are read.

/// A local S3-compatible server (moto's, installed by scripts/setup-cluster-tests.sh)
/// on a free port, stopped on drop.
struct S3Server {
    child: std::process::Child,
    endpoint: String,
    venv: PathBuf,
}

impl S3Server {
    fn start() -> S3Server {
        let venv = rayish_faces::models::data_dir().join("s3-server");
        let server = venv.join("bin/moto_server");
        assert!(
            server.is_file(),
            "{} is missing: run scripts/setup-cluster-tests.sh",
            server.display()
        );
        let port = rayish_suite::free_port("127.0.0.1");
        let child = Command::new(server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start moto_server");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not listen"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            venv,
        }
    }

    /// The environment a client of this server needs (moto takes any credentials).
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "rayish-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "rayish-test-secret".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
        ]
    }

    /// Creates `bucket` and puts each (key, file) in it, through boto3 (AWS's client).
    fn put(&self, bucket: &str, objects: &[(String, PathBuf)]) {
        let script = "import boto3, sys\n\
                      s3 = boto3.client('s3')\n\
                      s3.create_bucket(Bucket=sys.argv[1])\n\
                      for key, path in zip(sys.argv[2::2], sys.argv[3::2]):\n\
                      \x20   s3.upload_file(path, sys.argv[1], key)\n";
        let mut cmd = Command::new(self.venv.join("bin/python"));
        cmd.arg("-c").arg(script).arg(bucket);
        for (key, path) in objects {
            cmd.arg(key).arg(path);
        }
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("boto3");
        assert!(
            out.status.success(),
            "putting objects: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// [`output_bytes`] with each path cut to its file name, to compare runs over the
/// same photos at different places.
fn output_by_name(out: &Path) -> (String, Value, Vec<u8>) {
    let (lines, avg, npy) = output_bytes(out);
    let lines: Vec<String> = lines
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).expect("line");
            let name = file_name(&v);
            v["path"] = Value::String(name);
            v.to_string()
        })
        .collect();
    (lines.join("\n"), avg, npy)
}

/// (images read on the nodes, by the driver) from a run's "read: " line.
fn read_counts(stdout: &str) -> (u64, u64) {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("read: "))
        .unwrap_or_else(|| panic!("no read: line in {stdout}"));
    let numbers: Vec<u64> = line.split(' ').filter_map(|w| w.parse().ok()).collect();
    assert_eq!(numbers.len(), 2, "{line}");
    (numbers[0], numbers[1])
}

fn sample_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(sample_photos())
        .expect("photos")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
}

#[test]
fn s3_inputs_give_the_local_output_wherever_they_are_read_and_resume() {
    let local = temp_dir("s3-local");
    encode_stdout(
        &sample_photos(),
        &local,
        &["--cpus", "2", "--read-on", "driver"],
        &[],
    );

    let s3 = S3Server::start();
    let mut objects: Vec<(String, PathBuf)> = sample_files()
        .into_iter()
        .map(|p| {
            (
                format!("photos/{}", p.file_name().expect("name").to_string_lossy()),
                p,
            )
        })
        .collect();
    let notes = temp_dir("s3-notes").join("notes.txt");
    std::fs::write(&notes, "not a photo").expect("notes");
    // Neither is listed: one is not an image, the other hidden.
    objects.push(("photos/notes.txt".into(), notes));
    objects.push((
        "photos/.thumbs/obama.jpg".into(),
        sample_photos().join("obama.jpg"),
    ));
    s3.put("faces", &objects);
    let env_owned = s3.env();
    let env: Vec<(&str, &str)> = env_owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let input = Path::new("s3://faces/photos");

    for (read_on, on_nodes) in [("nodes", true), ("driver", false), ("auto", true)] {
        let out = temp_dir("s3-out");
        let stdout = encode_stdout(input, &out, &["--cpus", "2", "--read-on", read_on], &env);
        let (nodes, driver) = read_counts(&stdout);
        assert_eq!(nodes + driver, 7, "{read_on}: {stdout}");
        assert_eq!(nodes > 0, on_nodes, "{read_on}: {stdout}");
        assert!(
            output_by_name(&out) == output_by_name(&local),
            "reading from S3 on the {read_on} changed the output"
        );
        let (lines, _) = read_output(&out);
        assert!(lines[0]["path"]
            .as_str()
            .expect("path")
            .starts_with("s3://faces/photos/"));
        if read_on == "auto" {
            // The stamps come with the listing: a re-run resumes every image.
            let again = encode_stdout(input, &out, &["--cpus", "2"], &env);
            assert_eq!(resumed(&again), 7, "{again}");
            assert!(output_by_name(&out) == output_by_name(&local));
        }
    }

    // A list naming objects: a missing one and an oversized one fail alone.
    let dir = temp_dir("s3-list");
    let list = dir.join("list.txt");
    std::fs::write(
        &list,
        "s3://faces/photos/obama.jpg\ns3://faces/photos/none.jpg\ns3://faces/photos/biden.jpg\n",
    )
    .expect("list");
    let out = temp_dir("s3-list-out");
    let biden_size = std::fs::metadata(sample_photos().join("biden.jpg"))
        .expect("biden")
        .len();
    let obama_size = std::fs::metadata(sample_photos().join("obama.jpg"))
        .expect("obama")
        .len();
    let limit = (biden_size.min(obama_size) + biden_size.max(obama_size)) / 2;
    let (lines, avg) = encode(
        &list,
        &out,
        &["--cpus", "2", "--max-file-bytes", &limit.to_string()],
        &env,
    );
    let statuses: Vec<&str> = lines
        .iter()
        .map(|l| l["status"].as_str().expect("status"))
        .collect();
    let small_ok = if obama_size < biden_size {
        [0, 2]
    } else {
        [2, 0]
    };
    assert_eq!(statuses[small_ok[0]], "ok", "{lines:?}");
    assert_eq!(statuses[small_ok[1]], "error", "{lines:?}");
    assert!(
        lines[small_ok[1]]["error"]
            .as_str()
            .expect("error")
            .contains(&format!("over the limit of {limit}")),
        "{lines:?}"
    );
    assert_eq!(statuses[1], "error");
    let missing = lines[1]["error"].as_str().expect("error");
    assert!(
        missing.contains("s3://faces/photos/none.jpg") && missing.contains("cannot read object"),
        "{missing}"
    );
    assert_eq!(avg["failed_images"], 2);
}

#[test]
fn a_stalled_object_store_fails_its_images_after_the_read_timeout() {
    // A server that accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let _held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for s in listener.incoming().flatten() {
            open.push(s);
        }
    });
    let dir = temp_dir("s3-stalled");
    let list = dir.join("list.txt");
    std::fs::write(
        &list,
        format!(
            "{}\ns3://stalled/a.jpg\n",
            sample_photos().join("obama.jpg").display()
        ),
    )
    .expect("list");
    let out = temp_dir("s3-stalled-out");
    let env = [
        ("AWS_ACCESS_KEY_ID", "k"),
        ("AWS_SECRET_ACCESS_KEY", "s"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
    ];
    let started = std::time::Instant::now();
    let (lines, avg) = encode(&list, &out, &["--cpus", "2", "--read-timeout", "2"], &env);
    assert_eq!(lines[0]["status"], "ok");
    assert_eq!(lines[1]["status"], "error");
    assert!(
        lines[1]["error"]
            .as_str()
            .expect("error")
            .starts_with("read did not finish in 2 s"),
        "{lines:?}"
    );
    assert_eq!(avg["failed_images"], 1);
    // Not a wall-clock check of speed: only that the run did not wait out the
    // client's own retries (minutes) on the stalled server.
    assert!(started.elapsed() < std::time::Duration::from_secs(90));
}

/// Runs `rayish-faces encode` in a mount namespace of its own where `dir` is a tmpfs
/// holding copies of `photos` (mtimes kept): the driver sees them at `dir`, the
/// cluster's nodes see whatever `dir` holds outside.
fn encode_in_private_mount(
    dir: &Path,
    photos: &[PathBuf],
    out: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> String {
    let encode = encode_command(dir, out, extra, env);
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "set -e; dir=$1; shift; mount -t tmpfs tmpfs \"$dir\"; \
             while [ \"$1\" != -- ]; do cp -p \"$1\" \"$dir\"/; shift; done; shift; exec \"$@\"",
        )
        .arg("sh")
        .arg(dir)
        .args(photos)
        .arg("--")
        .arg(encode.get_program())
        .args(encode.get_args());
    for (k, v) in encode.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let res = cmd.output().expect("unshare");
    stdout_of_success(&res, "rayish-faces in its own mount namespace")
}

#[test]
fn images_are_read_on_the_nodes_that_see_them_and_by_the_driver_elsewhere() {
    let photos = sample_files();
    let local = temp_dir("where-local");
    encode_stdout(
        &sample_photos(),
        &local,
        &["--cpus", "2", "--read-on", "driver"],
        &[],
    );
    let cluster = TestCluster::start(2, 1, 2000);
    let root = cluster.root.to_string_lossy().into_owned();
    let env = [
        ("RAYISH_TOKEN", cluster.token.as_str()),
        ("RAYISH_TEMP_DIR", root.as_str()),
    ];
    let address = cluster.address.as_str();

    // The nodes see the driver's photos: they read them.
    let out = temp_dir("where-shared");
    let stdout = encode_stdout(
        &sample_photos(),
        &out,
        &["--address", address, "--batch", "2"],
        &env,
    );
    let (nodes, driver) = read_counts(&stdout);
    assert!(nodes > 0 && nodes + driver == 7, "{stdout}");
    assert!(output_by_name(&out) == output_by_name(&local));

    // The nodes see other files at the driver's paths (each name another photo, one
    // missing): they hand every image back and the driver reads them all.
    let dir = temp_dir("where-private");
    for (i, p) in photos.iter().enumerate().skip(1) {
        let name = photos[(i + 1) % photos.len()].file_name().expect("name");
        std::fs::copy(p, dir.join(name)).expect("copy");
    }
    let out = temp_dir("where-private-out");
    let stdout = encode_in_private_mount(
        &dir,
        &photos,
        &out,
        &["--address", address, "--batch", "2"],
        &env,
    );
    assert_eq!(read_counts(&stdout), (0, 7), "{stdout}");
    assert!(
        output_by_name(&out) == output_by_name(&local),
        "images the nodes could not read changed the output"
    );
}
