# --- provision init: host name, CPU cores, NUMA nodes, DIMMs (lines prefixed "@init ") ---
# parser: provisioner/facts/host.py
printf '@init hostname %s\n' "$(uname -n 2>/dev/null)"
init_cores=$(awk -F: '/^physical id/ {p=$2} /^core id/ {print p ":" $2}' /proc/cpuinfo 2>/dev/null | sort -u | wc -l)
printf '@init cores %s\n' "$init_cores"
init_model=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo 2>/dev/null | head -n 1)
printf '@init cpu_model %s\n' "$init_model"
init_numa=0
for init_node in /sys/devices/system/node/node[0-9]*; do
    if [ -d "$init_node" ]; then init_numa=$((init_numa + 1)); fi
done
printf '@init numa_nodes %s\n' "$init_numa"
if command -v dmidecode >/dev/null 2>&1 && init_dmi=$(dmidecode -t 17 2>/dev/null) && [ -n "$init_dmi" ]; then
    printf '%s\n' "$init_dmi" | grep -E '^[[:space:]]*(Size|Type|Speed|Configured Memory Speed):' \
        | sed 's/^[[:space:]]*/@init dimm /'
else
    echo '@init dimm unreadable'
fi
# what a GPU the catalog lacks is described with (hardware.gpus[].spec); compute_cap is a
# query field since driver 510, an older one prints nothing here
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=pci.bus_id,memory.total,compute_cap --format=csv,noheader,nounits 2>/dev/null \
        | sed 's/^/@init gpu /'
fi
