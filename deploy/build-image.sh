#!/usr/bin/env bash
# Builds overlay-node and overlay as static executables and packs them into the image
# overlay:latest, FROM scratch: no base image, no registry.
#
#   deploy/build-image.sh            # build binaries and image
#   IMAGE=overlay:dev deploy/build-image.sh
#   OVERLAY_IMAGE=overlay:dev deploy/build-image.sh   # the name compose.yaml and the scripts read
set -euo pipefail
cd "$(dirname "$0")/.."
image=${IMAGE:-${OVERLAY_IMAGE:-overlay:latest}}
target=x86_64-unknown-linux-gnu
# A target dir of its own: static builds do not share artefacts with ordinary ones.
export CARGO_TARGET_DIR=${STATIC_TARGET_DIR:-target/static}
echo "building static binaries (first build: several minutes)" >&2
RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --locked --target "$target" -p overlay-node -p overlay-cli
out="$CARGO_TARGET_DIR/$target/release"
for bin in overlay-node overlay; do
    if ldd "$out/$bin" 2>&1 | grep -q '=>'; then
        echo "build-image: $out/$bin is dynamically linked" >&2
        exit 1
    fi
done
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/bin" "$context/data"
cp "$out/overlay-node" "$out/overlay" "$context/bin/"
strip "$context/bin/"* 2>/dev/null || true
cp deploy/Dockerfile "$context/Dockerfile"
# The classic builder: buildx may be missing, and BuildKit would try to pull a frontend.
DOCKER_BUILDKIT=0 docker build --quiet -t "$image" "$context" >/dev/null
echo "built $image ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.1f MB", $1/1e6}'))" >&2
