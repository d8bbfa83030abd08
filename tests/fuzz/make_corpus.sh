#!/bin/bash
# make_corpus.sh EXTRAFS DIR: seeds the index fuzzer with real indexes made by `extrafs index`
# from a small store holding a file, a directory, a symlink, a hard link, xattrs and a whiteout.
set -euo pipefail
extrafs=$1 out=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
d=$tmp/store/overlay2/$(printf '%064d' 1)/diff
mkdir -p "$d/dir/sub" "$tmp/store/image"
printf 'hello' > "$d/dir/file"
ln "$d/dir/file" "$d/hard"
ln -s dir/file "$d/link"
mknod "$d/gone" c 0 0
setfattr -n user.x -v 1 "$d/dir"
setfattr -n trusted.overlay.opaque -v y "$d/dir/sub"
head -c 5000 /dev/urandom > "$d/dir/sub/big"
: > "$d/empty"
echo '{}' > "$tmp/store/image/repositories.json"
"$extrafs" index "$tmp/store" >/dev/null
cp "$tmp"/store/extrafs/layers/*.index "$tmp"/store/extrafs/image-*.index "$out/"
