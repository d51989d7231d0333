# --- provision: GPU and driver (lines prefixed "@gpu ") ---
# Field names: nvidia-smi --help-query-gpu (sources in provisioner/facts/gpu.py); parser: facts/gpu_probe.py
gpu_lines() { sed "s/^/@gpu line $1 |/"; }
gpu_csv() {
    gpu_out=$(nvidia-smi --query-gpu="$2" --format=csv,noheader,nounits 2>&1)
    gpu_rc=$?
    printf '@gpu rc %s %s\n' "$1" "$gpu_rc"
    printf '@gpu fields %s %s\n' "$1" "$2"
    printf '%s\n' "$gpu_out" | gpu_lines "$1"
    return "$gpu_rc"
}
if command -v nvidia-smi >/dev/null 2>&1; then
    echo '@gpu smi present'
    gpu_csv csv-core 'pci.bus_id,name,pci.device_id,driver_version,persistence_mode,power.limit,power.default_limit,power.max_limit,pcie.link.gen.current,pcie.link.gen.max,pcie.link.width.current,pcie.link.width.max,ecc.errors.uncorrected.volatile.total,retired_pages.sbe,retired_pages.dbe,retired_pages.pending'
    if nvidia-smi --query-gpu=clocks_event_reasons.active --format=csv,noheader >/dev/null 2>&1; then
        gpu_csv csv-clocks pci.bus_id,clocks_event_reasons.active
    else
        gpu_csv csv-clocks pci.bus_id,clocks_throttle_reasons.active
    fi
    gpu_csv csv-remap 'pci.bus_id,remapped_rows.correctable,remapped_rows.uncorrectable,remapped_rows.pending,remapped_rows.failure'
    nvidia-smi -q 2>&1 | gpu_lines smi-q
else
    echo '@gpu smi missing'
fi
if [ -r /proc/driver/nvidia/version ]; then gpu_lines proc-version < /proc/driver/nvidia/version; fi
uname -r | gpu_lines uname
if command -v modinfo >/dev/null 2>&1; then
    echo '@gpu modinfo present'
    modinfo -F vermagic nvidia 2>/dev/null | gpu_lines vermagic
    modinfo -F version nvidia 2>/dev/null | gpu_lines modversion
    modinfo -F license nvidia 2>/dev/null | gpu_lines license
else
    echo '@gpu modinfo missing'
fi
if [ -r /sys/module/nvidia/version ]; then gpu_lines loaded < /sys/module/nvidia/version; fi
if command -v dkms >/dev/null 2>&1; then dkms status 2>&1 | grep -i nvidia | gpu_lines dkms; fi
if [ -e /var/run/reboot-required ]; then
    echo '@gpu reboot yes'
    if [ -r /var/run/reboot-required.pkgs ]; then gpu_lines reboot-pkgs < /var/run/reboot-required.pkgs; fi
else
    echo '@gpu reboot no'
fi
if gpu_log=$(dmesg 2>/dev/null) && [ -n "$gpu_log" ]; then
    echo '@gpu log dmesg'
    printf '%s\n' "$gpu_log" | grep 'NVRM: Xid' | tail -n 50 | gpu_lines xid
elif command -v journalctl >/dev/null 2>&1 && gpu_log=$(journalctl -k -b --no-pager -q 2>&1) \
        && ! printf '%s\n' "$gpu_log" | grep -q 'insufficient permissions'; then
    echo '@gpu log journalctl'
    printf '%s\n' "$gpu_log" | grep 'NVRM: Xid' | tail -n 50 | gpu_lines xid
else
    echo '@gpu log unreadable'
fi
gpu_log=
