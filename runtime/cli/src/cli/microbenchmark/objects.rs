//! The object-store benchmarks of `ray microbenchmark`, and rayish's own lines for
//! the gigabytes-per-second targets (copy bandwidth, get, put of non-zero data).

use super::tasks::small_value;
use super::timeit::Timer;
use rayish::{Blob, ObjectRef};
use serde_bytes::ByteBuf;

/// Ray's large array: `np.zeros(100 * 1024 * 1024, dtype=np.int64)`.
const LARGE: usize = 100 * 1024 * 1024 * 8;
/// Ray's `do_put` array: `np.zeros(10 * 1024 * 1024, dtype=np.int64)`.
const MEDIUM: usize = 10 * 1024 * 1024 * 8;
/// Ray counts one large put as 0.8 GB (`8 * 0.1`), whatever its exact size; so do we.
const LARGE_GB: f64 = 8.0 * 0.1;

/// A zero-filled buffer, as `np.zeros` makes one: fresh zeroed pages from the
/// allocator, not touched until read, and (numpy does this for arrays of 4 MiB and
/// more) advised to use transparent huge pages, so that reading it faults once per
/// 2 MiB rather than once per 4 KiB.
fn zeros(len: usize) -> ByteBuf {
    let buf = vec![0u8; len];
    const HUGE_FROM: usize = 4 << 20;
    if len >= HUGE_FROM {
        let page = 4096;
        let start = (buf.as_ptr() as usize).next_multiple_of(page);
        let end = (buf.as_ptr() as usize + len) / page * page;
        if end > start {
            // SAFETY: [start, end) lies inside `buf`'s allocation, which is alive; the
            // advice changes how its pages are backed, never their contents. A
            // failure (no THP in this kernel) leaves ordinary pages, which is fine.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    ByteBuf::from(buf)
}

/// Ray's `do_put_small`: 100 puts of a small value.
#[rayish::remote]
fn do_put_small() -> rayish::Result<()> {
    for _ in 0..100 {
        rayish::put(&0u64)?;
    }
    Ok(())
}

/// Ray's `do_put`: 10 puts of a fresh 80 MiB array.
#[rayish::remote]
fn do_put() -> rayish::Result<()> {
    for _ in 0..10 {
        rayish::put(&zeros(MEDIUM))?;
    }
    Ok(())
}

/// Ray's `create_object_containing_ref`: a list of 10,000 references to puts.
#[rayish::remote]
fn create_object_containing_ref() -> rayish::Result<Vec<ObjectRef<u64>>> {
    (0..10_000).map(|_| rayish::put(&1u64)).collect()
}

/// Runs the object benchmarks that `t` wants, in Ray's order.
pub fn run(t: &mut Timer) -> rayish::Result<()> {
    const MEMCPY: &str = "memcpy gigabytes";
    if t.wants(MEMCPY) {
        // Not a Ray benchmark: this machine's copy bandwidth, the yardstick for the
        // gigabytes-per-second lines.
        let src = vec![1u8; LARGE];
        let mut dst = vec![0u8; LARGE];
        t.time(MEMCPY, LARGE_GB, || -> rayish::Result<()> {
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&dst);
            Ok(())
        })?;
    }

    let value = rayish::put(&0u64)?;
    t.time("single client get calls (Plasma Store)", 1.0, || {
        rayish::get(&value).map(drop)
    })?;
    t.time("single client put calls (Plasma Store)", 1.0, || {
        rayish::put(&0u64).map(drop)
    })?;
    t.time("multi client put calls (Plasma Store)", 1000.0, || {
        let refs: Vec<_> = (0..10).map(|_| do_put_small::remote()).collect();
        rayish::get_all(&refs).map(drop)
    })?;

    const PUT_GB: &str = "single client put gigabytes";
    if t.wants(PUT_GB) {
        let arr = zeros(LARGE);
        t.time(PUT_GB, LARGE_GB, || rayish::put(&arr).map(drop))?;
    }
    const PUT_REAL_GB: &str = "single client put gigabytes (non-zero data)";
    if t.wants(PUT_REAL_GB) {
        // Not a Ray benchmark: np.zeros' pages are never touched, so reading them
        // is faster than reading real memory. The same put of bytes really there.
        let ones = ByteBuf::from(vec![1u8; LARGE]);
        t.time(PUT_REAL_GB, LARGE_GB, || rayish::put(&ones).map(drop))?;
    }
    const GET_GB: &str = "single client get gigabytes";
    if t.wants(GET_GB) {
        // Not in ray_perf.py (benches/ray_get_gigabytes.py times Ray's). Ray's get of
        // an array is a view of the store's memory; so is a `Blob`'s.
        let blob: ObjectRef<Blob> = rayish::put(&Blob::from(vec![0u8; LARGE]))?;
        t.time(GET_GB, LARGE_GB, || {
            rayish::get(&blob).map(|v| drop(std::hint::black_box(v)))
        })?;
    }
    const GET_COPIED_GB: &str = "single client get gigabytes (copied)";
    if t.wants(GET_COPIED_GB) {
        // The same value decoded into an owned buffer: a copy into fresh memory.
        let bytes = rayish::put(&zeros(LARGE))?;
        t.time(GET_COPIED_GB, LARGE_GB, || {
            rayish::get(&bytes).map(|v| drop(std::hint::black_box(v)))
        })?;
    }

    t.time("multi client put gigabytes", 10.0 * LARGE_GB, || {
        let refs: Vec<_> = (0..10).map(|_| do_put::remote()).collect();
        rayish::get_all(&refs).map(drop)
    })?;

    const CONTAINING: &str = "single client get object containing 10k refs";
    if t.wants(CONTAINING) {
        let containing = create_object_containing_ref::remote();
        t.time(CONTAINING, 1.0, || rayish::get(&containing).map(drop))?;
    }

    t.time(
        "single client wait 1k refs",
        1.0,
        || -> rayish::Result<()> {
            let mut not_ready: Vec<_> = (0..1000).map(|_| small_value::remote()).collect();
            for _ in 0..1000 {
                (_, not_ready) = rayish::wait(&not_ready, 1, None)?;
            }
            Ok(())
        },
    )
}
