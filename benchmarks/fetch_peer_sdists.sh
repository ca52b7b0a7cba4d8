#!/usr/bin/env bash
# Fetches, where pip reaches PyPI, what the GPU benchmarks need on the GPU machine,
# which has no network, into benchmarks/.carry/ (git-ignored; the device tool takes it
# along with carry=["benchmarks/.carry"]):
#
#   torchlpc-0.7.2.tar.gz, philtorch-0.7.0.tar.gz   the peers' sdists, which
#                               benchmarks/gpu_peers.sh compiles there with nvcc
#   build-wheels/*.whl          pure-Python build requirements of philtorch that the
#                               GPU image lacks (setuptools_scm and what it needs) or may
#                               have too old (setuptools >= 77.0.3)
#   SHA256SUMS                  checked by gpu_peers.sh before it builds
#   REVISION                    the checkout's git revision, for the report (the GPU
#                               machine gets the working tree without .git)
#
# Usage: benchmarks/fetch_peer_sdists.sh [DIR]   (default benchmarks/.carry)
# Environment: PYTHON (default python3; it needs torch, which torchlpc 0.7.2's setup.py
# imports even to tell its metadata). Files already in DIR are kept.
#
# Why not a plain `pip download`: pip prepares the metadata of every sdist it downloads.
# With build isolation that needs torch in a fresh build environment (a download of a
# torch other than the one installed), and without it philtorch's version comes from
# setuptools_scm, which must then be importable, or pip rejects the sdist as version
# 0.0.0. So the sdists are fetched by a pip in a scratch virtual environment that sees
# this interpreter's torch (--system-site-packages) and has the build wheels installed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="${1:-$here/.carry}"
python="${PYTHON:-python3}"
mkdir -p "$dest/build-wheels"
dest="$(cd "$dest" && pwd)"

# Versions that built both peers in benchmarks/.peers-venv (setuptools_scm 10 needs
# vcs-versioning, which needs packaging >= 26.2).
build_requirements=(setuptools==84.2.1 setuptools_scm==10.3.4 vcs-versioning==2.6.0 packaging==26.3)
sdists=(torchlpc==0.7.2 philtorch==0.7.0)

pip_quiet=(--disable-pip-version-check --quiet)

echo "== build wheels into $dest/build-wheels"
"$python" -m pip download "${pip_quiet[@]}" --no-deps --only-binary=:all: \
    -d "$dest/build-wheels" "${build_requirements[@]}"

want=()
for requirement in "${sdists[@]}"; do
    file="${requirement/==/-}.tar.gz"
    if [ -s "$dest/$file" ]; then
        echo "== $file: already there"
    else
        want+=("$requirement")
    fi
done

if [ "${#want[@]}" -gt 0 ]; then
    scratch="$(mktemp -d)"
    trap 'rm -rf "$scratch"' EXIT
    echo "== scratch environment with this interpreter's torch and the build wheels"
    "$python" -m venv --system-site-packages "$scratch/venv"
    "$scratch/venv/bin/python" -m pip install "${pip_quiet[@]}" --no-index --no-deps \
        "$dest"/build-wheels/*.whl
    echo "== sdists: ${want[*]}"
    "$scratch/venv/bin/python" -m pip download "${pip_quiet[@]}" --no-deps \
        --no-binary :all: --no-build-isolation -d "$dest" "${want[@]}"
fi

for requirement in "${sdists[@]}"; do
    file="${requirement/==/-}.tar.gz"
    [ -s "$dest/$file" ] || { echo "$file was not fetched" >&2; exit 1; }
done
(cd "$dest" && sha256sum ./*.tar.gz build-wheels/*.whl >SHA256SUMS)
# The GPU machine gets a copy of the checkout without .git: the revision goes along.
if head="$(git -C "$here/.." rev-parse --short HEAD 2>/dev/null)"; then
    if [ -n "$(git -C "$here/.." status --porcelain -- torchlpc)" ]; then
        head+=" with uncommitted changes to torchlpc/"
    fi
    echo "$head" >"$dest/REVISION"
    echo "== revision: $head (run this script again after committing, to refresh it)"
fi
echo "== in $dest ($(du -sh "$dest" | cut -f1)):"
sed 's/^/   /' "$dest/SHA256SUMS"
