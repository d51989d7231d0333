# --- provision: the gather script (its @fact, @path and @state lines: facts/gather.py) ---
# Inputs, set before this text: GATHER_ROOT (the tree managed as /, "" for the host's /),
# GATHER_STATE (provision's state dir), GATHER_SERVICE (the model server's unit, "" for none),
# GATHER_PATHS (the paths to read, blank-separated: provision refuses blanks and quotes in them),
# GATHER_ROOT_B64 (GATHER_ROOT in base64: the @fact root line), GATHER_EXPECT (DIGEST:PATH
# of the files provision is about to write, blank-separated: their bytes are not sent).
# The snippets of the probes that ride along follow this text, then the end mark "@done".
set -u
LC_ALL=C
export LC_ALL
root=$GATHER_ROOT
state=$GATHER_STATE
server_unit=$GATHER_SERVICE
fact() { printf '@fact %s %s\n' "$1" "$2"; }
b64() { printf '%s' "$1" | base64 | tr -d '\n'; }
# Facts are read with shell builtins where a file holds them: every fork and exec of a
# helper costs the host about a millisecond of CPU, and a fleet's hosts share their cores
# with sshd. Each value is the one the usual tool prints (named beside it).
gather_newline='
'
mem_total_kb=
while read -r gather_key gather_value gather_rest; do  # awk '/^MemTotal:/' /proc/meminfo
    if [ "$gather_key" = MemTotal: ]; then mem_total_kb=$gather_value; break; fi
done < /proc/meminfo
fact mem_total_kb "$mem_total_kb"
# getconf _NPROCESSORS_ONLN: glibc counts the ranges of this file ("0-3,8-11")
cpus=0
if IFS= read -r gather_online < /sys/devices/system/cpu/online 2>/dev/null; then
    gather_online="$gather_online,"
    while [ -n "$gather_online" ]; do
        gather_range=${gather_online%%,*}
        gather_online=${gather_online#*,}
        case $gather_range in
            *-*) cpus=$((cpus + ${gather_range#*-} - ${gather_range%-*} + 1)) ;;
            ?*) cpus=$((cpus + 1)) ;;
        esac
    done
else
    cpus=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 0)
fi
fact cpus "$cpus"
# shellcheck disable=SC2046 # uname prints two words: the release and the machine
set -- $(uname -rm) "" ""
fact kernel "$1"
fact arch "$2"
if [ -r /etc/os-release ]; then
    # ID and VERSION_ID as sourcing the file gives them: their values hold no blanks,
    # quotes or escapes (os-release(5)), so removing the quotes is all sh would do
    gather_id=unknown
    gather_version=
    while IFS='=' read -r gather_key gather_value; do
        gather_value=${gather_value#[\"\']}
        gather_value=${gather_value%[\"\']}
        case $gather_key in
            ID) gather_id=$gather_value ;;
            VERSION_ID) gather_version=$gather_value ;;
        esac
    done < /etc/os-release
    fact distro "${gather_id:-unknown} $gather_version"
fi
if command -v systemctl >/dev/null 2>&1; then
    # the first line of systemctl --version, e.g. "systemd 252 (252.38-1~deb12u1)" (Debian 12)
    gather_systemd=$(systemctl --version 2>/dev/null)
    gather_systemd=${gather_systemd%%"$gather_newline"*}
    gather_systemd=${gather_systemd#systemd }
    fact systemd "${gather_systemd%% *}"
fi
if [ -d /run/systemd/system ]; then fact init systemd; else fact init other; fi
if command -v getenforce >/dev/null 2>&1; then fact selinux "$(getenforce 2>/dev/null)"; else fact selinux absent; fi
if [ -r /proc/driver/nvidia/version ]; then
    # e.g. "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  565.57.01  Release Build ..."
    # (tests/cases/gpu has recorded ones of both module flavours)
    gather_driver=
    gather_module=proprietary
    while IFS= read -r gather_line; do
        case $gather_line in *'Open Kernel Module'*) gather_module=open ;; esac
        case $gather_line in
            *'Kernel Module'*)
                if [ -z "$gather_driver" ]; then
                    gather_rest=${gather_line#*Kernel Module}
                    gather_rest=${gather_rest#"${gather_rest%%[0-9]*}"}
                    gather_driver=${gather_rest%%[!0-9.]*}
                fi ;;
        esac
    done < /proc/driver/nvidia/version
    fact nvidia_driver "$gather_driver"
    fact nvidia_module "$gather_module"
else
    fact nvidia_driver none
fi
# NVSwitches: NVIDIA PCI functions (vendor 0x10de) of class 0x0680xx, "other bridge device"
# (PCI class 06, subclass 80); lspci shows them as "Bridge: NVIDIA Corporation ... NVSwitch".
# A board with them needs nvidia-fabricmanager (install/fabricmanager.py). This is the host's
# bus even under a root: provision decides what it means for an image tree.
gather_nvswitches=0
for gather_dev in /sys/bus/pci/devices/*; do
    { IFS= read -r gather_vendor < "$gather_dev/vendor"; } 2>/dev/null || continue
    [ "$gather_vendor" = 0x10de ] || continue
    { IFS= read -r gather_class < "$gather_dev/class"; } 2>/dev/null || continue
    case $gather_class in 0x0680*) gather_nvswitches=$((gather_nvswitches + 1)) ;; esac
done
fact nvswitches "$gather_nvswitches"
fact root "$GATHER_ROOT_B64"
# guard() (defined before this snippet): a symlinked folder or state file under the root is reported
for f in "$state" "$state/generations" "$state/last" "$state/lock" "$state/lock.pid" "$state/last.new" \
        "$state/pending-handlers" "$state/pending.new"; do
    guard "$f" state
done
files=""
emitted=" "
emit() {
    # Classify one path. Regular files are only collected here and read below in
    # one stat, one sha256sum and one cat for all of them: forks are the cost.
    p=$1
    # a managed file is also named by the last generation's list: read it once
    case $emitted in *" $p "*) return 0 ;; esac
    emitted="$emitted$p "
    guard "$p"
    for t in "${p%/*}"/.*.provision-new-*; do
        if [ -e "$t" ] || [ -L "$t" ]; then printf '@temp %s\n' "$t"; fi
    done
    if [ -L "$p" ]; then
        printf '@path symlink %s %s\n' "$(b64 "$(readlink "$p")")" "$p"
    elif [ -f "$p" ]; then
        files="$files $p"
    elif [ -d "$p" ]; then
        printf '@path dir - %s\n' "$p"
    elif [ -e "$p" ]; then
        printf '@path other - %s\n' "$p"
    else
        printf '@path missing - %s\n' "$p"
    fi
}
# shellcheck disable=SC2086 # the paths hold no blanks (provision checks them)
for p in $GATHER_PATHS; do
    emit "$p"
done
if [ -r "$state/last" ]; then
    last=
    IFS= read -r last < "$state/last" || true  # written by a rename: one line, maybe no newline
    printf '@state last %s\n' "$last"
    gen="$state/generations/$last"
    case $last in
        '' | *[!0-9]*) ;;  # not a number: the parser says so
        *)
            if [ -r "$gen/manifest.json" ]; then
                # read with the managed files below (one stat, sha256sum and base64 for all)
                printf '@state manifest-file %s\n' "$gen/manifest.json"
                files="$files $gen/manifest.json"
            fi ;;
    esac
    if [ -r "$gen/paths" ]; then
        # the files the last generation installed: a profile that dropped one deletes it
        while IFS= read -r rel; do
            if [ -n "$rel" ]; then emit "$root$rel"; fi
        done < "$gen/paths"
    fi
    if [ -d "$gen" ] && [ ! -e "$gen/complete" ]; then
        # killed after it was recorded: the deletions it owed may not have happened
        echo '@state incomplete'
        if [ -r "$gen/deletes" ]; then
            while IFS= read -r rel; do
                if [ -n "$rel" ]; then printf '@state delete %s\n' "$rel"; emit "$root$rel"; fi
            done < "$gen/deletes"
        fi
    fi
else
    echo '@state last 0'
fi
if [ -r "$state/pending-handlers" ]; then
    gather_pending=
    while IFS= read -r gather_line || [ -n "$gather_line" ]; do
        gather_pending="$gather_pending$gather_line "
    done < "$state/pending-handlers"
    printf '@state pending %s\n' "$gather_pending"
fi
if [ -n "$files" ]; then
    # shellcheck disable=SC2086 # the paths hold no blanks (provision checks them)
    set -- $files
    stat -c '@stat %a %U %G %s %n' "$@"
    gather_sums=$(sha256sum "$@")
    printf '@sums\n%s\n@sums-end\n' "$gather_sums"
    # A file whose digest is the one provision expects (GATHER_EXPECT: "DIGEST:PATH ...",
    # what it is about to write) is not sent: provision has those bytes already.
    gather_send=
    while read -r gather_sum gather_path; do
        [ -n "$gather_path" ] || continue  # no sums at all: one empty line
        case " $GATHER_EXPECT " in
            *" $gather_sum:$gather_path "*) ;;
            *) gather_send="$gather_send $gather_path"; printf '@send %s\n' "$gather_path" ;;
        esac
    done <<GATHER_SUMS
$gather_sums
GATHER_SUMS
    echo '@blob'
    if [ -n "$gather_send" ]; then
        # shellcheck disable=SC2086 # the paths hold no blanks (provision checks them)
        cat $gather_send | base64
    fi
    echo '@blob-end'
fi
if [ -z "$root" ] && [ -n "$server_unit" ] && [ -d /run/systemd/system ]; then
    if systemctl is-active --quiet "$server_unit.service"; then fact server_active yes; else fact server_active no; fi
    if systemctl is-enabled --quiet "$server_unit.service"; then fact server_enabled yes; else fact server_enabled no; fi
else
    fact server_active no
fi
