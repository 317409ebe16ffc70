"""Ray's `get` of the array `ray_perf.py` puts, timed like `ray microbenchmark`.

ray_perf.py measures "single client put gigabytes" but no get; this gives Ray's figure
for rayish's two get benchmarks in benches/core.rs, with Ray's own `timeit` helper:
  - single client get gigabytes: `ray.get` of the 800 MB np.zeros array (a read-only
    view of the object store, no copy), against rayish's `get` of a `Blob`;
  - single client get gigabytes (copied): the same, copied into process memory
    (`.copy()`), against rayish's `get` of a `Vec<u8>` (serde_bytes::ByteBuf).
Filtered by TESTS_TO_RUN like Ray's benchmarks. Run by benches/compare_ray.sh.
"""
import numpy as np
import ray
from ray._private.ray_microbenchmark_helpers import timeit

ray.init()
ref = ray.put(np.zeros(100 * 1024 * 1024, dtype=np.int64))
timeit("single client get gigabytes", lambda: ray.get(ref), 8 * 0.1)
timeit("single client get gigabytes (copied)", lambda: ray.get(ref).copy(), 8 * 0.1)
ray.shutdown()
