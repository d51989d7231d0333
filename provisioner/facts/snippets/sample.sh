# --- provision monitor: one sample (lines prefixed "@mon ") ---
# Field names: nvidia-smi --help-query-gpu (sources in provisioner/facts/gpu.py); parser: facts/sample.py
mon_service=${MON_SERVICE:-llm-server}
mon_root=${MON_ROOT:-}
mon_lines() { sed "s/^/@mon $1 |/"; }
read -r mon_up _ < /proc/uptime && echo "@mon time $mon_up"
echo "@mon pagesize $(getconf PAGESIZE 2>/dev/null || echo 4096)"
if command -v nvidia-smi >/dev/null 2>&1; then
    echo '@mon smi present'
    mon_fields='index,temperature.gpu,power.draw,power.limit,clocks.sm,clocks_event_reasons.active,memory.used,memory.total,utilization.gpu,pcie.link.gen.current,pcie.link.width.current'
    if ! mon_out=$(nvidia-smi --query-gpu="$mon_fields" --format=csv,noheader,nounits 2>&1); then
        mon_fields=$(printf '%s' "$mon_fields" | sed 's/clocks_event_reasons/clocks_throttle_reasons/')
        mon_out=$(nvidia-smi --query-gpu="$mon_fields" --format=csv,noheader,nounits 2>&1) || echo "@mon smi-rc $?"
    fi
    echo "@mon gpu-fields $mon_fields"
    printf '%s\n' "$mon_out" | mon_lines gpu
    if command -v timeout >/dev/null 2>&1; then
        timeout 5 nvidia-smi dmon -s t -c 1 2>&1 | mon_lines dmon
    else
        nvidia-smi dmon -s t -c 1 2>&1 | mon_lines dmon
    fi
    # NVLink, where present: link state and speed (GPUs without NVLink print nothing or an error)
    nvidia-smi nvlink -s 2>/dev/null | mon_lines nvlink
else
    echo '@mon smi missing'
fi
grep -E '^(pswpin|pswpout|pgmajfault) ' /proc/vmstat 2>/dev/null | sed 's/^/@mon vmstat /'
for mon_r in memory io cpu; do
    if [ -r "/proc/pressure/$mon_r" ]; then mon_lines "psi-$mon_r" < "/proc/pressure/$mon_r"; fi
done
grep -E '^(MemTotal|MemAvailable|Cached|SwapTotal|SwapFree):' /proc/meminfo 2>/dev/null | sed 's/^/@mon meminfo /'
echo "@mon service $mon_service"
mon_pid=
if [ -n "$mon_root" ]; then
    echo '@mon server root'
elif [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    echo '@mon server systemd'
    mon_pid=$(systemctl show -p MainPID --value "$mon_service" 2>/dev/null) || mon_pid=
else
    echo '@mon server no-systemd'
fi
if [ -n "$mon_pid" ] && [ "$mon_pid" != 0 ] && [ -r "/proc/$mon_pid/status" ]; then
    echo "@mon pid $mon_pid"
    grep -E '^(Name|VmRSS|VmLck|VmSwap):' "/proc/$mon_pid/status" | mon_lines status
    mon_lines stat < "/proc/$mon_pid/stat"
fi
if [ -r /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor ]; then
    echo "@mon governor $(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor)"
fi
if mon_log=$(dmesg 2>/dev/null); then
    echo '@mon xid-log readable'
    printf '%s\n' "$mon_log" | grep 'NVRM: Xid' | tail -n 50 | mon_lines xid
else
    echo '@mon xid-log unreadable'
fi
