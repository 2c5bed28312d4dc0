#!/usr/bin/env bash
# Install a built image folder into deskd's data directory, where the daemon finds it:
#
#   images/install.sh IMAGE_DIR [DATA_DIR]      (DATA_DIR defaults to /var/lib/deskd)
#
# The image lands in DATA_DIR/images/<name>/<version>/ (system/desktop@1.0.0:
# DATA_DIR/images/system/desktop/1.0.0/, where the daemon looks for it)
# with kernel, initrd, rootfs and manifest.json. The swap is atomic for readers: a new folder is
# filled next to the old one and renamed over it. Computers already created keep their own disks.
set -euo pipefail

src=${1:?usage: images/install.sh IMAGE_DIR [DATA_DIR]}
data_dir=${2:-/var/lib/deskd}
for f in kernel initrd rootfs manifest.json; do
    [ -f "$src/$f" ] || { echo "images/install.sh: $src/$f is missing: is $src a built image folder?" >&2; exit 1; }
done
read -r name version key < <(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(m["name"], m["version"], m["key"])' "$src/manifest.json")
case "$name" in
    */*) ;;
    *) echo "images/install.sh: image name '$name' is not namespace/name" >&2; exit 1 ;;
esac
case "$version" in
    ''|*/*|.*) echo "images/install.sh: image version '$version' is not a plain version" >&2; exit 1 ;;
esac
dest="$data_dir/images/$name/$version"
if [ -f "$dest/manifest.json" ] &&
    [ "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["key"])' "$dest/manifest.json")" = "$key" ]; then
    echo "$name@$version (key $key) is already installed in $dest"
    exit 0
fi
mkdir -p "$(dirname "$dest")"
tmp="$dest.installing.$$"
old="$dest.old.$$"
trap 'rm -rf "$tmp" "$old"' EXIT
mkdir "$tmp"
# Sparse-aware and reflinked where the filesystem can: the rootfs is mostly holes.
cp --sparse=always --reflink=auto "$src/kernel" "$src/initrd" "$src/rootfs" "$src/manifest.json" "$tmp/"
chmod 0644 "$tmp"/*
if [ -e "$dest" ]; then mv "$dest" "$old"; fi
mv "$tmp" "$dest"
echo "installed $name@$version (key $key) in $dest"
