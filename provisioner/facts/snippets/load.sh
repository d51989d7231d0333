# --- provision fit: memory other processes hold, hugepages, GPU peer access (lines "@fit ") ---
# parser: provisioner/facts/host_load.py; FIT_UNIT: the model server's unit, whose processes are not "others"
fit_unit=${FIT_UNIT:?the model server unit}
if command -v nvidia-smi >/dev/null 2>&1; then
    fit_apps=$(nvidia-smi --query-compute-apps=gpu_bus_id,pid,used_memory --format=csv,noheader,nounits 2>&1)
    printf '@fit apps-rc %s\n' "$?"
    printf '%s\n' "$fit_apps" | sed 's/^/@fit app |/'
    nvidia-smi topo -p2p r 2>&1 | sed 's/^/@fit p2p |/'
    fit_apps=
fi
grep -E '^(HugePages_Total|Hugepagesize|Hugetlb):' /proc/meminfo 2>/dev/null | sed 's/^/@fit meminfo /'
fit_main=0
if command -v systemctl >/dev/null 2>&1; then
    fit_main=$(systemctl show -p MainPID --value "$fit_unit" 2>/dev/null) || fit_main=0
fi
printf '@fit mainpid %s\n' "${fit_main:-0}"
ps -e -o pid= -o ppid= 2>/dev/null | sed 's/^ */@fit ps /'
