"""Prometheus text for node_exporter's textfile collector, and the metrics script apply
installs (``PROM_SCRIPT``, templates/monitor-metrics.sh.j2) that writes a subset of the
same metrics on the host itself, under the same names.
"""

from __future__ import annotations

import re
from pathlib import Path

from provisioner.datadir import data_dir
from provisioner.facts.check import Check
from provisioner.facts.sample import Sample
from provisioner.monitor.probe import rates

# name -> (type, help); the metrics script (PROM_SCRIPT) writes a subset under the same names.
METRICS: dict[str, tuple[str, str]] = {
    "provision_gpu_temperature_celsius": ("gauge", "GPU core temperature (nvidia-smi temperature.gpu)."),
    "provision_gpu_power_watts": ("gauge", "GPU board power draw (nvidia-smi power.draw)."),
    "provision_gpu_power_limit_watts": ("gauge", "GPU software power limit (nvidia-smi power.limit)."),
    "provision_gpu_sm_clock_hertz": ("gauge", "GPU SM clock (nvidia-smi clocks.sm)."),
    "provision_gpu_clock_event_reasons": ("gauge", "Active clock event (throttle) reasons bitmask, NVML bits."),
    "provision_gpu_memory_used_bytes": ("gauge", "GPU memory used (nvidia-smi memory.used)."),
    "provision_gpu_memory_total_bytes": ("gauge", "GPU memory total (nvidia-smi memory.total)."),
    "provision_gpu_utilization_ratio": ("gauge", "Fraction of time a kernel ran (nvidia-smi utilization.gpu)."),
    "provision_gpu_pcie_link_generation": ("gauge", "Current PCIe link generation."),
    "provision_gpu_pcie_link_width": ("gauge", "Current PCIe link width (lanes)."),
    "provision_gpu_pcie_rx_bytes_per_second": ("gauge", "PCIe bytes received by the GPU per second (dmon rxpci)."),
    "provision_gpu_pcie_tx_bytes_per_second": ("gauge", "PCIe bytes sent by the GPU per second (dmon txpci)."),
    "provision_swap_in_bytes_per_second": ("gauge", "Bytes swapped in per second (/proc/vmstat pswpin)."),
    "provision_swap_out_bytes_per_second": ("gauge", "Bytes swapped out per second (/proc/vmstat pswpout)."),
    "provision_major_faults_per_second": ("gauge", "Major page faults per second (the server's, else the host's)."),
    "provision_memory_pressure_some_avg10": ("gauge", "PSI memory some avg10, percent of time."),
    "provision_memory_pressure_full_avg10": ("gauge", "PSI memory full avg10, percent of time."),
    "provision_io_pressure_some_avg10": ("gauge", "PSI io some avg10, percent of time."),
    "provision_io_pressure_full_avg10": ("gauge", "PSI io full avg10, percent of time."),
    "provision_cpu_pressure_some_avg10": ("gauge", "PSI cpu some avg10, percent of time."),
    "provision_memory_total_bytes": ("gauge", "MemTotal of /proc/meminfo."),
    "provision_memory_available_bytes": ("gauge", "MemAvailable of /proc/meminfo."),
    "provision_page_cache_bytes": ("gauge", "Cached of /proc/meminfo."),
    "provision_server_rss_bytes": ("gauge", "Model server resident set size (VmRSS)."),
    "provision_server_locked_bytes": ("gauge", "Model server locked memory (VmLck)."),
    "provision_server_swap_bytes": ("gauge", "Model server memory in swap (VmSwap)."),
    "provision_check_status": ("gauge", "provision monitor check: 0 pass, 1 warn, 2 fail (skipped checks absent)."),
}
STATUS_VALUE: dict[str, int] = {"pass": 0, "warn": 1, "fail": 2}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


def prometheus_text(samples: dict[str, Sample], checks: dict[str, list[Check]],
                    previous: dict[str, Sample] | None = None) -> str:
    """node_exporter textfile-collector text: # HELP / # TYPE, then the samples of each metric.

    ``previous`` (the host's earlier sample) gives the rates; without it they are left out."""
    series: dict[str, list[tuple[dict[str, str], float]]] = {name: [] for name in METRICS}

    def put(name: str, labels: dict[str, str], value: float | None) -> None:
        if value is not None:
            series[name].append((labels, value))

    for host, s in sorted(samples.items()):
        h = {"host": host}
        for g in s.gpus:
            gl = {**h, "gpu": str(g.index)}
            put("provision_gpu_temperature_celsius", gl, g.temperature_c)
            put("provision_gpu_power_watts", gl, g.power_w)
            put("provision_gpu_power_limit_watts", gl, g.power_limit_w)
            put("provision_gpu_sm_clock_hertz", gl, None if g.sm_clock_mhz is None else g.sm_clock_mhz * 1e6)
            put("provision_gpu_clock_event_reasons", gl, g.clock_mask)
            put("provision_gpu_memory_used_bytes", gl, None if g.memory_used_mib is None else g.memory_used_mib * 2**20)
            put("provision_gpu_memory_total_bytes", gl,
                None if g.memory_total_mib is None else g.memory_total_mib * 2**20)
            put("provision_gpu_utilization_ratio", gl, None if g.utilization_pct is None else g.utilization_pct / 100)
            put("provision_gpu_pcie_link_generation", gl, g.pcie_gen_current)
            put("provision_gpu_pcie_link_width", gl, g.pcie_width_current)
            put("provision_gpu_pcie_rx_bytes_per_second", gl, None if g.pcie_rx_mbs is None else g.pcie_rx_mbs * 1e6)
            put("provision_gpu_pcie_tx_bytes_per_second", gl, None if g.pcie_tx_mbs is None else g.pcie_tx_mbs * 1e6)
        r = rates((previous or {}).get(host), s)
        put("provision_swap_in_bytes_per_second", h, r.swap_in_bps)
        put("provision_swap_out_bytes_per_second", h, r.swap_out_bps)
        put("provision_major_faults_per_second", h, r.major_faults_per_s)
        for resource, kind in (("memory", "some"), ("memory", "full"), ("io", "some"), ("io", "full"),
                               ("cpu", "some")):
            p = s.pressure(resource, kind)
            put(f"provision_{resource}_pressure_{kind}_avg10", h, None if p is None else p.avg10)
        kb = {"provision_memory_total_bytes": s.mem_total_kb, "provision_memory_available_bytes": s.mem_available_kb,
              "provision_page_cache_bytes": s.cached_kb}
        for name, value in kb.items():
            put(name, h, None if value is None else value * 1024)
        if s.server_pid is not None:
            sl = {**h, "service": s.service or ""}
            for name, value in (("provision_server_rss_bytes", s.server_rss_kb),
                                ("provision_server_locked_bytes", s.server_locked_kb),
                                ("provision_server_swap_bytes", s.server_swap_kb)):
                put(name, sl, None if value is None else value * 1024)
        for check in checks.get(host, []):
            if check.status in STATUS_VALUE:
                put("provision_check_status", {**h, "check": check.id}, STATUS_VALUE[check.status])
    lines: list[str] = []
    for name, (kind, help_text) in METRICS.items():
        if not series[name]:
            continue
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for labels, number in series[name]:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{text}}} {_value(number)}")
    return "\n".join(lines) + ("\n" if lines else "")


def prom_script_path() -> Path:
    return data_dir("templates") / "monitor-metrics.sh.j2"


def _prom_script() -> str:
    """templates/monitor-metrics.sh.j2 with its one templated line replaced by an
    environment default (the template is the single source of the script)."""
    text = prom_script_path().read_text(encoding="utf-8")
    text = text.replace("{% raw %}", "").replace("{% endraw %}\n", "")
    text = re.sub(r"^# Managed by provision.*\n", "", text, flags=re.M)
    return re.sub(r"^service=.*$", "service=${PROVISION_SERVICE:-llm-server}", text, count=1, flags=re.M)


def __getattr__(name: str) -> str:
    """``PROM_SCRIPT``: the metrics script apply installs as /opt/provision/bin/<service>-metrics.sh,
    read lazily from its template (a POSIX sh script; no Python on the target)."""
    if name == "PROM_SCRIPT":
        return _prom_script()
    raise AttributeError(name)
