//! Copying large byte runs with several threads, as Ray's serializer does for large
//! buffers (`parallel_memcopy`): one core cannot saturate a machine's memory
//! bandwidth, so a put of hundreds of megabytes copies faster split across cores.

use std::io;

/// Runs shorter than this are copied by the calling thread alone: below it, starting
/// threads costs more than it saves.
const PARALLEL_MIN: usize = 16 << 20;

/// Most threads one copy uses.
const MAX_THREADS: usize = 4;

/// Copies `src` into `dst` (of the same length), split across threads when large.
pub fn copy(dst: &mut [u8], src: &[u8]) {
    if src.len() < PARALLEL_MIN {
        dst.copy_from_slice(src);
        return;
    }
    // Asked once: the answer reads the process's affinity and cgroup limits.
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let threads = *THREADS.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_THREADS)
    });
    if threads < 2 {
        dst.copy_from_slice(src);
        return;
    }
    // Chunks on 4 KiB boundaries, so no two threads write one page.
    let chunk = src.len().div_ceil(threads).next_multiple_of(4096);
    std::thread::scope(|scope| {
        let mut pieces = dst.chunks_mut(chunk).zip(src.chunks(chunk));
        let first = pieces.next();
        for (d, s) in pieces {
            scope.spawn(move || d.copy_from_slice(s));
        }
        if let Some((d, s)) = first {
            d.copy_from_slice(s);
        }
    });
}

/// An `io::Write` into a fixed buffer whose large writes use [`copy`]; encoders
/// write a byte string's contents in one `write` call.
pub struct SliceWriter<'a> {
    rest: &'a mut [u8],
}

impl<'a> SliceWriter<'a> {
    /// Writes into `buf` from its start.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { rest: buf }
    }

    /// Bytes of the buffer not written yet.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }
}

impl io::Write for SliceWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.rest.len());
        let (head, tail) = std::mem::take(&mut self.rest).split_at_mut(n);
        copy(head, &buf[..n]);
        self.rest = tail;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn large_and_small_copies_are_exact() {
        for len in [0, 1, 4095, PARALLEL_MIN - 1, PARALLEL_MIN + 12_345] {
            let src: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
            let mut dst = vec![0u8; len];
            copy(&mut dst, &src);
            assert!(dst == src, "length {len}");
        }
    }

    #[test]
    fn the_writer_fills_its_buffer_and_no_more() {
        let mut buf = vec![0u8; 10];
        let mut w = SliceWriter::new(&mut buf);
        w.write_all(b"abcd").unwrap();
        assert_eq!(w.remaining(), 6);
        assert!(w.write_all(b"efghijk").is_err(), "one byte too many");
        assert_eq!(&buf[..4], b"abcd");
    }
}
