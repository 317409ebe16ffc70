"""The Python pipeline rayish-faces replaces: face_recognition 1.3.0 encodings of
each image as Ray remote tasks, then the mean of all encodings.

    python faces_ray.py LIST_FILE OUT_DIR [--cpus N] [--upsample N]

LIST_FILE has one image path a line. Writes OUT_DIR/encodings.jsonl (one record an
image: path, status, boxes as face_recognition's (top, right, bottom, left), encodings)
and prints one JSON line: images, faces, failed, seconds (from ray.init to the mean),
init_seconds. Settings are face_recognition's defaults: HOG detector, 5-point
("small") landmarks, one jitter.
"""

import argparse
import json
import os
import time

import numpy as np
import ray


@ray.remote
def encode(path, upsample):
    import face_recognition

    try:
        image = face_recognition.load_image_file(path)
        boxes = face_recognition.face_locations(image, upsample, model="hog")
        encodings = face_recognition.face_encodings(image, boxes, 1, model="small")
        return {
            "path": path,
            "status": "ok",
            "boxes": [list(b) for b in boxes],
            "encodings": [e.tolist() for e in encodings],
        }
    except Exception as e:  # a bad image fails that image, not the run
        return {"path": path, "status": f"failed: {e}", "boxes": [], "encodings": []}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("list_file")
    parser.add_argument("out_dir")
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--upsample", type=int, default=1)
    args = parser.parse_args()
    with open(args.list_file) as f:
        paths = [line.strip() for line in f if line.strip()]
    start = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR")
    ready = time.perf_counter()
    records = ray.get([encode.remote(p, args.upsample) for p in paths])
    encodings = [e for r in records for e in r["encodings"]]
    average = np.mean(np.array(encodings), axis=0) if encodings else None
    seconds = time.perf_counter() - start
    ray.shutdown()
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "encodings.jsonl"), "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    with open(os.path.join(args.out_dir, "average.json"), "w") as f:
        json.dump({"face_count": len(encodings),
                   "average": None if average is None else average.tolist()}, f)
    print(json.dumps({
        "images": len(paths),
        "faces": len(encodings),
        "failed": sum(1 for r in records if r["status"] != "ok"),
        "seconds": seconds,
        "init_seconds": ready - start,
    }))


if __name__ == "__main__":
    main()
