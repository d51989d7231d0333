#!/bin/sh
# Build an image tree (the root folder of a VM/container image, a chroot, a PXE root)
# from a profile, then prove the tree is exactly what the profile renders.
#
#   examples/image-build.sh PROFILE DIR
#   examples/image-build.sh examples/quickstart.yaml ./image-root
#
# Nothing outside DIR is touched: every command runs with --root DIR, and the system
# handlers (daemon-reload, sysctl, initramfs, ...) are reported as pending; they run
# when the image boots. Re-running is safe: the second apply has nothing to do.
# Exit codes: 0 the tree matches the profile; 2 drift after the build (a bug or a
# concurrent writer); 1 an error (bad profile, unwritable DIR).
# PROVISION names the provision executable (default: `provision` on PATH).
set -eu

if [ "$#" -ne 2 ]; then
    echo "usage: $0 PROFILE DIR" >&2
    exit 1
fi
profile=$1
root=$2
provision=${PROVISION:-provision}

mkdir -p "$root"
# 1. converge the tree (creates files with their modes, records generation N)
"$provision" apply "$profile" --root "$root" --yes
# 2. check it: every managed file as rendered (the model and endpoint checks need the
#    model files and a running server, which an image build does not have)
"$provision" verify "$profile" --root "$root" --only drift
# 3. and the plan against the tree is empty: exit 0, or 2 (set -e stops here) on drift
"$provision" plan "$profile" --root "$root"
echo "image tree $root matches $profile" >&2
