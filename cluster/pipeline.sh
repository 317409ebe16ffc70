#!/usr/bin/env bash
# The deployment pipeline, step for step what buildspec.yml runs on AWS CodeBuild:
#   1. build the runtime image (cluster/build-image.sh);
#   2. tag it with the commit: $REGISTRY/$IMAGE_REPO_NAME:<sha>;
#   3. push it (PUSH=1);
#   4. `helm upgrade -i` the release with image.tag=<sha> (DEPLOY=1).
# Run here without PUSH/DEPLOY (the default), steps 3 and 4 are printed and skipped,
# and the chart is rendered with the new tag into target/pipeline/ and validated
# against the Kubernetes schemas instead (with the tools of
# scripts/setup-cluster-tests.sh).
#
#   bash cluster/pipeline.sh                                     # local
#   REGISTRY=123.dkr.ecr.eu-west-1.amazonaws.com PUSH=1 DEPLOY=1 bash cluster/pipeline.sh
set -euo pipefail
cd "$(dirname "$0")/.."
sha=$(git rev-parse --short=12 HEAD)
repo=${IMAGE_REPO_NAME:-rayish}
registry=${REGISTRY:-}
release=${HELM_RELEASE:-rayish}
namespace=${HELM_NAMESPACE:-rayish}
tools=${RAYISH_DATA_DIR:-$HOME/.cache/rayish}/k8s-tools/bin
helm=${HELM:-$(command -v helm || echo "$tools/helm")}
repository=${registry:+$registry/}$repo
target=$repository:$sha

echo "pipeline: build $repo at $sha"
built=$(bash cluster/build-image.sh "$repo")
echo "pipeline: built $built"
docker tag "$built" "$target"
echo "pipeline: tagged $target"

if [ "${PUSH:-0}" = 1 ]; then
    docker push "$target"
    echo "pipeline: pushed $target"
else
    echo "pipeline: skipped: docker push $target"
fi

set_values=(--set "image.repository=$repository" --set "image.tag=$sha")
if [ "${DEPLOY:-0}" = 1 ]; then
    "$helm" upgrade -i "$release" cluster/helm/rayish --namespace "$namespace" \
        --create-namespace "${set_values[@]}" --wait --timeout 10m
    echo "pipeline: release $release upgraded to $sha"
else
    echo "pipeline: skipped: helm upgrade -i $release cluster/helm/rayish --namespace $namespace ${set_values[*]}"
    mkdir -p target/pipeline
    out=target/pipeline/$release-$sha.yaml
    "$helm" template "$release" cluster/helm/rayish --namespace "$namespace" "${set_values[@]}" >"$out"
    if [ -x "$tools/kubernetes-validate" ]; then
        "$tools/kubernetes-validate" --strict --quiet --kubernetes-version 1.37.0 "$out"
    fi
    echo "pipeline: rendered $out"
fi
