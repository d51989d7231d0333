"""`provision monitor`, part 1: the sample probe (POSIX sh), its pure parser and the rates
between two samples. Checks: monitor_checks.py; Prometheus text and the command: monitor.py.

One run of ``SAMPLE_PROBE`` is one sample. Every line it prints starts with ``@mon ``:

    @mon time SECONDS               /proc/uptime (monotonic since boot: rates divide by its deltas)
    @mon pagesize BYTES             getconf PAGESIZE (pswpin/pswpout count pages)
    @mon smi present | missing
    @mon smi-rc CODE                nvidia-smi --query-gpu failed with CODE (its output follows as gpu lines)
    @mon gpu-fields F1,F2,...       the --query-gpu fields, in order
    @mon gpu |ROW                   one CSV row (noheader, nounits)
    @mon dmon |LINE                 `nvidia-smi dmon -s t -c 1`: PCIe RX/TX MB/s per GPU
    @mon vmstat KEY VALUE           pswpin, pswpout, pgmajfault of /proc/vmstat
    @mon psi-memory |LINE           /proc/pressure/memory (also psi-io, psi-cpu)
    @mon meminfo KEY: N kB          MemTotal, MemAvailable, Cached, SwapTotal, SwapFree
    @mon service NAME
    @mon server systemd | no-systemd | root
    @mon pid N                      the service's MainPID, when it runs
    @mon status |LINE               Name, VmRSS, VmLck, VmSwap of /proc/PID/status
    @mon stat |LINE                 /proc/PID/stat (majflt is field 12)
    @mon governor NAME              cpu0's cpufreq scaling governor
    @mon nvlink |LINE               `nvidia-smi nvlink -s`: each GPU's links and their speed
    @mon xid-log readable | unreadable   whether the kernel log could be read (root)
    @mon xid |LINE                  the last NVRM Xid lines of the kernel log

The output has no ``@done``: it is not a gather script (engine.gather), it is run
alone with ``transport.run`` for the least overhead per sample.

Query field names are those of ``nvidia-smi --help-query-gpu`` as recorded for
driver 595.71.05 in
https://github.com/utkuozdemir/nvidia_gpu_exporter/blob/main/internal/captures/linux-x86_64__nvidia-geforce-rtx-4080-super__595.71.05.txt
(``index``, ``temperature.gpu``, ``power.draw``, ``power.limit``, ``clocks.sm``
(alias of ``clocks.current.sm``), ``clocks_event_reasons.active`` "or
clocks_throttle_reasons.active", ``memory.used``, ``memory.total``,
``utilization.gpu``, ``pcie.link.gen.current``, ``pcie.link.width.current``).
Older drivers know only ``clocks_throttle_reasons.*``, so the probe falls back.
``dmon -s t`` prints ``# gpu rxpci txpci`` in MB/s (nvidia-smi(1), "Device Monitoring").
PSI lines: https://www.kernel.org/doc/html/latest/accounting/psi.html
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from provisioner.facts.gpu import CLOCK_BITS

if TYPE_CHECKING:
    pass

GPU_FIELDS = ("index,temperature.gpu,power.draw,power.limit,clocks.sm,clocks_event_reasons.active,memory.used,"
              "memory.total,utilization.gpu,pcie.link.gen.current,pcie.link.width.current")

SAMPLE_PROBE = r"""# --- provision monitor: one sample (lines prefixed "@mon ") ---
mon_service=${MON_SERVICE:-llm-server}
mon_root=${MON_ROOT:-}
mon_lines() { sed "s/^/@mon $1 |/"; }
read -r mon_up _ < /proc/uptime && echo "@mon time $mon_up"
echo "@mon pagesize $(getconf PAGESIZE 2>/dev/null || echo 4096)"
if command -v nvidia-smi >/dev/null 2>&1; then
    echo '@mon smi present'
    mon_fields='@FIELDS@'
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
""".replace("@FIELDS@", GPU_FIELDS)


def sample_script(service: str, root: str = "") -> str:
    """The probe with its two inputs set: the service to find, and --root (a tree runs no server)."""
    return f"MON_SERVICE={shlex.quote(service)}\nMON_ROOT={shlex.quote(root)}\n" + SAMPLE_PROBE


# --------------------------------------------------------------------------- the sample

SmiState = Literal["present", "missing", "failed", "not-gathered"]
ServerState = Literal["systemd", "no-systemd", "root", "not-gathered"]


@dataclass(frozen=True)
class GpuSample:
    index: int
    temperature_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    sm_clock_mhz: float | None = None
    clock_reasons: tuple[str, ...] | None = None  # active, decoded from the bitmask
    clock_mask: int | None = None
    memory_used_mib: float | None = None
    memory_total_mib: float | None = None
    utilization_pct: float | None = None
    pcie_gen: int | None = None
    pcie_width: int | None = None
    pcie_rx_mbs: float | None = None  # dmon, MB/s
    pcie_tx_mbs: float | None = None


@dataclass(frozen=True)
class Pressure:
    """One line of a PSI file: percentages of wall time stalled; total in microseconds."""

    avg10: float
    avg60: float
    avg300: float
    total: int


@dataclass(frozen=True)
class Sample:
    time_s: float | None = None
    page_size: int = 4096
    smi: SmiState = "not-gathered"
    smi_error: str | None = None
    gpus: tuple[GpuSample, ...] = ()
    pswpin: int | None = None  # pages since boot
    pswpout: int | None = None
    pgmajfault: int | None = None
    psi: dict[str, dict[str, Pressure]] = field(default_factory=dict)  # {"memory": {"some": ..., "full": ...}}
    mem_total_kb: int | None = None
    mem_available_kb: int | None = None
    cached_kb: int | None = None
    swap_total_kb: int | None = None
    swap_free_kb: int | None = None
    service: str | None = None
    server: ServerState = "not-gathered"
    server_pid: int | None = None
    server_name: str | None = None
    server_rss_kb: int | None = None
    server_locked_kb: int | None = None
    server_swap_kb: int | None = None
    server_majflt: int | None = None
    governor: str | None = None
    xid_readable: bool | None = None  # None: not gathered
    xid_lines: tuple[str, ...] = ()  # the last NVRM Xid lines of the kernel log (with timestamps)
    nvlink: tuple[tuple[int, int, float | None], ...] = ()  # (gpu, link, GB/s or None when inactive)

    def pressure(self, resource: str, kind: str) -> Pressure | None:
        return self.psi.get(resource, {}).get(kind)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _num(text: str | None) -> float | None:
    value = (text or "").strip()
    if not value or value.startswith(("[", "N/A")) or value in {"-", "Unknown Error", "Not Supported"}:
        return None
    m = re.match(r"-?\d+(\.\d+)?", value)
    return float(m.group()) if m else None


def _whole(text: str | None) -> int | None:
    value = _num(text)
    return None if value is None else int(value)


def _mask(text: str) -> tuple[int | None, tuple[str, ...] | None]:
    m = re.fullmatch(r"0x([0-9a-fA-F]+)", text.strip())
    if not m:
        return None, None
    bits = int(m.group(1), 16)
    return bits, tuple(name for bit, name in CLOCK_BITS.items() if bits & bit)


def _gpu_row(names: list[str], row: str) -> GpuSample | None:
    cells = [c.strip() for c in row.split(", ")]
    if len(cells) != len(names):
        return None
    values = dict(zip(names, cells, strict=True))
    index = _whole(values.get("index"))
    if index is None:
        return None
    mask, reasons = _mask(values.get("clocks_event_reasons.active") or values.get("clocks_throttle_reasons.active")
                          or "")
    return GpuSample(
        index=index, temperature_c=_num(values.get("temperature.gpu")), power_w=_num(values.get("power.draw")),
        power_limit_w=_num(values.get("power.limit")),
        sm_clock_mhz=_num(values.get("clocks.sm") or values.get("clocks.current.sm")),
        clock_reasons=reasons, clock_mask=mask, memory_used_mib=_num(values.get("memory.used")),
        memory_total_mib=_num(values.get("memory.total")), utilization_pct=_num(values.get("utilization.gpu")),
        pcie_gen=_whole(values.get("pcie.link.gen.current")), pcie_width=_whole(values.get("pcie.link.width.current")))


_NVLINK_GPU = re.compile(r"^GPU (\d+):")
_NVLINK_LINK = re.compile(r"^\s*Link (\d+):\s*(.*)$")


def parse_nvlink(lines: Iterable[str]) -> tuple[tuple[int, int, float | None], ...]:
    """`nvidia-smi nvlink -s` -> (gpu, link, GB/s); an inactive link ("<inactive>") has None."""
    out: list[tuple[int, int, float | None]] = []
    gpu: int | None = None
    for line in lines:
        head = _NVLINK_GPU.match(line)
        if head:
            gpu = int(head.group(1))
            continue
        link = _NVLINK_LINK.match(line)
        if link and gpu is not None:
            speed = re.match(r"([0-9.]+)\s*GB/s", link.group(2).strip())
            out.append((gpu, int(link.group(1)), float(speed.group(1)) if speed else None))
    return tuple(out)


def parse_dmon(lines: Iterable[str]) -> dict[int, tuple[float | None, float | None]]:
    """`nvidia-smi dmon -s t` (or any -s with t) -> {gpu index: (rx MB/s, tx MB/s)}; columns by name."""
    columns: list[str] = []
    out: dict[int, tuple[float | None, float | None]] = {}
    for line in lines:
        words = line.split()
        if not words:
            continue
        if words[0] == "#":
            if "gpu" in words[1:]:
                columns = words[1:]
            continue
        if words[0].startswith("#"):  # "#gpu" without a space
            columns = [words[0][1:], *words[1:]] if words[0] != "#" else columns
            continue
        if not columns or "rxpci" not in columns or len(words) != len(columns) or not words[0].isdigit():
            continue
        row = dict(zip(columns, words, strict=True))
        out[int(words[0])] = (_num(row.get("rxpci")), _num(row.get("txpci")))
    return out


def _psi(lines: list[str]) -> dict[str, Pressure]:
    out: dict[str, Pressure] = {}
    for line in lines:
        words = line.split()
        if not words or words[0] not in {"some", "full"}:
            continue
        kv = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        try:
            out[words[0]] = Pressure(float(kv["avg10"]), float(kv["avg60"]), float(kv["avg300"]), int(kv["total"]))
        except (KeyError, ValueError):
            continue
    return out


def _majflt(stat: str) -> int | None:
    """/proc/PID/stat: the comm field may hold spaces and parentheses; count after the last ')'."""
    rest = stat.rsplit(")", 1)[-1].split()
    return int(rest[9]) if len(rest) > 9 and rest[9].isdigit() else None  # field 12 = 3rd after ')' + 9


_MEMINFO = {"MemTotal": "mem_total_kb", "MemAvailable": "mem_available_kb", "Cached": "cached_kb",
            "SwapTotal": "swap_total_kb", "SwapFree": "swap_free_kb"}


def parse_sample(text: str) -> Sample:
    """SAMPLE_PROBE's output -> Sample (pure; other lines are ignored)."""
    values: dict[str, Any] = {}
    blocks: dict[str, list[str]] = {}
    fields_: list[str] = []
    smi_rc: int | None = None
    for raw in text.splitlines():
        if not raw.startswith("@mon "):
            continue
        body = raw[5:]
        key, _, rest = body.partition(" ")
        if rest.startswith("|"):
            blocks.setdefault(key, []).append(rest[1:])
            continue
        rest = rest.strip()
        if key == "time":
            values["time_s"] = _num(rest)
        elif key == "pagesize" and rest.isdigit():
            values["page_size"] = int(rest)
        elif key == "smi":
            values["smi"] = rest if rest in {"present", "missing"} else "not-gathered"
        elif key == "smi-rc":
            smi_rc = _whole(rest)
        elif key == "gpu-fields":
            fields_ = [f.strip() for f in rest.split(",")]
        elif key == "vmstat":
            name, _, number = rest.partition(" ")
            if name in {"pswpin", "pswpout", "pgmajfault"} and number.strip().isdigit():
                values[name] = int(number)
        elif key == "meminfo":
            name, _, number = rest.partition(":")
            if name in _MEMINFO:
                values[_MEMINFO[name]] = _whole(number)
        elif key == "service":
            values["service"] = rest
        elif key == "server" and rest in {"systemd", "no-systemd", "root"}:
            values["server"] = rest
        elif key == "pid" and rest.isdigit():
            values["server_pid"] = int(rest)
        elif key == "governor":
            values["governor"] = rest or None
        elif key == "xid-log":
            values["xid_readable"] = rest == "readable"
    gpus: list[GpuSample] = []
    if values.get("smi") == "present":
        rows = blocks.get("gpu", [])
        parsed = [g for g in (_gpu_row(fields_, r) for r in rows) if g is not None]
        if smi_rc or (rows and not parsed):
            values["smi"] = "failed"
            values["smi_error"] = "; ".join(r.strip() for r in rows if r.strip())[:300] or f"exit code {smi_rc}"
        dmon = parse_dmon(blocks.get("dmon", []))
        gpus = [GpuSample(**{**asdict(g), "pcie_rx_mbs": dmon.get(g.index, (None, None))[0],
                             "pcie_tx_mbs": dmon.get(g.index, (None, None))[1]}) for g in parsed]
    values["gpus"] = tuple(gpus)
    values["psi"] = {r: p for r in ("memory", "io", "cpu") if (p := _psi(blocks.get(f"psi-{r}", [])))}
    for line in blocks.get("status", []):
        name, _, rest = line.partition(":")
        attr = {"VmRSS": "server_rss_kb", "VmLck": "server_locked_kb", "VmSwap": "server_swap_kb"}.get(name)
        if attr:
            values[attr] = _whole(rest)
        elif name == "Name":
            values["server_name"] = rest.strip()
    stat = blocks.get("stat", [])
    if stat:
        values["server_majflt"] = _majflt(stat[0])
    values["xid_lines"] = tuple(blocks.get("xid", []))
    values["nvlink"] = parse_nvlink(blocks.get("nvlink", []))
    return Sample(**values)


# --------------------------------------------------------------------------- rates and checks

@dataclass(frozen=True)
class Rates:
    """What two samples of the same host say per second (None: not computable)."""

    interval_s: float | None = None
    swap_in_bps: float | None = None  # bytes/s
    swap_out_bps: float | None = None
    major_faults_per_s: float | None = None  # the server's, else the host's
    major_faults_of: Literal["server", "host"] | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def rates(prev: Sample | None, cur: Sample) -> Rates:
    if prev is None or prev.time_s is None or cur.time_s is None or cur.time_s <= prev.time_s:
        return Rates()
    dt = cur.time_s - prev.time_s

    def per_s(a: int | None, b: int | None, scale: float = 1.0) -> float | None:
        if a is None or b is None or b < a:  # a counter going down: a reboot between samples
            return None
        return (b - a) * scale / dt

    swap_in = per_s(prev.pswpin, cur.pswpin, cur.page_size)
    swap_out = per_s(prev.pswpout, cur.pswpout, cur.page_size)
    if cur.server_pid is not None and prev.server_pid == cur.server_pid \
            and (faults := per_s(prev.server_majflt, cur.server_majflt)) is not None:
        return Rates(dt, swap_in, swap_out, faults, "server")
    host = per_s(prev.pgmajfault, cur.pgmajfault)
    return Rates(dt, swap_in, swap_out, host, "host" if host is not None else None)
