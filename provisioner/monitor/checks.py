"""`provision monitor`, part 2: thresholds and the pure monitor.* checks of a sample."""

from __future__ import annotations

from collections.abc import Callable

from provisioner.facts.check import ORDER, Check, Status, worst
from provisioner.facts.gpu import BAD_CLOCK_REASONS, XID_LINE, Gpu, load_xid_table
from provisioner.facts.sample import Sample
from provisioner.monitor.probe import Rates, rates
from provisioner.profile.thresholds import Thresholds


def _skip(check_id: str, why: str, expected: str | None = None) -> Check:
    return Check(check_id, "skip", None, expected, why)


def mbs(bps: float) -> str:
    return f"{bps / 1e6:.1f} MB/s"


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def _level(value: float, warn: float, fail: float) -> Status:
    return "fail" if value >= fail else "warn" if value >= warn else "pass"


def evaluate(prev: Sample | None, cur: Sample, thresholds: Thresholds, model_bytes: int) -> list[Check]:
    """The monitor.* checks of one sample (rates against the previous sample of the same host).

    ``model_bytes``: the weights served from RAM (mapped from the model file), 0 for none/unknown."""
    t = thresholds
    r = rates(prev, cur)
    checks = [_swap(cur, r, t), _faults(r, t), *_pressure(cur, t), _page_cache(cur, model_bytes),
              *_server(cur, t), _governor(cur, t)]
    checks += _gpu_checks(cur, t)
    checks.append(_xid(prev, cur, t))
    checks.append(_nvlink(cur))
    return checks


def _nvlink(cur: Sample) -> Check:
    """NVLink, where present: every link up (a down link halves tensor-parallel bandwidth or worse)."""
    if not cur.nvlink:
        return _skip("monitor.nvlink", "no NVLink reported (none fitted, or nvidia-smi is missing)")
    down = [f"GPU{gpu} link {link}" for gpu, link, speed in cur.nvlink if speed is None]
    total = sum(speed or 0.0 for _, _, speed in cur.nvlink)
    observed = f"{len(cur.nvlink) - len(down)}/{len(cur.nvlink)} links up, {total:g} GB/s in all"
    if down:
        return Check("monitor.nvlink", "warn", observed + f"; down: {', '.join(down[:4])}", "every link up",
                     "a bridge or NVSwitch link is down: reseat the bridge or check the fabric manager")
    return Check("monitor.nvlink", "pass", observed, "every link up")


def _xid(prev: Sample | None, cur: Sample, t: Thresholds) -> Check:
    """Xid events that appeared since the previous sample, with their meaning."""
    if cur.xid_readable is None:
        return _skip("monitor.xid", "the kernel log was not gathered")
    if not cur.xid_readable:
        return _skip("monitor.xid", "the kernel log is not readable: run as root (--become)")
    if prev is None:
        return _skip("monitor.xid", "new events need two samples of the same host")
    seen = set(prev.xid_lines)
    new = [line for line in cur.xid_lines if line not in seen]
    if not new:
        return Check("monitor.xid", "pass", "no new Xid events", "no new Xid events")
    table = load_xid_table()
    described = []
    for line in new[-3:]:
        match = XID_LINE.search(line)
        number = int(match.group(2)) if match else None
        meaning = table.get(number, {}).get("meaning", "see NVIDIA's Xid catalog") if number is not None else ""
        described.append(f"Xid {number} on {match.group(1) if match else '?'}: {meaning}")
    return Check("monitor.xid", "fail", f"{len(new)} new: " + "; ".join(described), "no new Xid events",
                 "the GPU reported an error while serving: check `dmesg | grep Xid` and the meaning above")


def _swap(cur: Sample, r: Rates, t: Thresholds) -> Check:
    want = f"< {t.swap_warn_mbs:g} MB/s swap in+out"
    if r.swap_in_bps is None or r.swap_out_bps is None:
        if cur.pswpin is None:
            return _skip("monitor.swap", "/proc/vmstat has no pswpin/pswpout", want)
        return _skip("monitor.swap", "a rate needs two samples of the same host", want)
    total = r.swap_in_bps + r.swap_out_bps
    observed = f"in {mbs(r.swap_in_bps)}, out {mbs(r.swap_out_bps)} over {r.interval_s:.1f} s"
    if cur.swap_total_kb == 0 and total == 0:
        observed += " (no swap configured)"
    status = _level(total / 1e6, t.swap_warn_mbs, t.swap_fail_mbs)
    hint = None
    if status != "pass":
        hint = (f"swapping {total / 1e6:.0f} MB/s while serving: the KV cache outgrew RAM; shorten the context or "
                "quantise the KV cache (and lock the weights: os.memlock unlimited)")
    return Check("monitor.swap", status, observed, want, hint)


def _faults(r: Rates, t: Thresholds) -> Check:
    want = f"< {t.major_faults_warn_per_s:g} major faults/s"
    if r.major_faults_per_s is None:
        return _skip("monitor.major_faults", "a rate needs two samples (and the fault counters)", want)
    status = _level(r.major_faults_per_s, t.major_faults_warn_per_s, t.major_faults_fail_per_s)
    observed = f"{r.major_faults_per_s:.1f}/s ({r.major_faults_of})"
    hint = None if status == "pass" else (
        "pages are read back from disk while serving: the mapped model or swapped memory is evicted; "
        "lock the weights (memlock), free RAM, or keep more layers on the GPU")
    return Check("monitor.major_faults", status, observed, want, hint)


def _pressure(cur: Sample, t: Thresholds) -> list[Check]:
    out: list[Check] = []
    some, full = cur.pressure("memory", "some"), cur.pressure("memory", "full")
    want = f"memory some avg10 < {t.psi_memory_some_warn:g}%, full avg10 < {t.psi_memory_full_warn:g}%"
    if some is None:
        out.append(_skip("monitor.memory_pressure", "/proc/pressure/memory not readable (kernel < 4.20 or "
                         "psi=0 on the kernel command line)", want))
    else:
        status = _level(some.avg10, t.psi_memory_some_warn, t.psi_memory_some_fail)
        if full is not None:
            other = _level(full.avg10, t.psi_memory_full_warn, t.psi_memory_full_fail)
            status = min(status, other, key=lambda s: ORDER[s])
        observed = f"some {some.avg10:g}%" + (f", full {full.avg10:g}%" if full else "") + " (avg10)"
        out.append(Check("monitor.memory_pressure", status, observed, want, None if status == "pass" else
                         "tasks stall on memory reclaim: the server's memory (weights + KV cache) and the page cache "
                         "do not fit; reduce context/parallel or stop other memory users"))
    io_full = cur.pressure("io", "full")
    want = f"io full avg10 < {t.psi_io_full_warn:g}%"
    if io_full is None:
        out.append(_skip("monitor.io_pressure", "/proc/pressure/io not readable", want))
    else:
        status = "warn" if io_full.avg10 >= t.psi_io_full_warn else "pass"
        out.append(Check("monitor.io_pressure", status, f"full {io_full.avg10:g}% (avg10)", want,
                         None if status == "pass" else "every task waits on the disk: model pages or swap are "
                         "being read; see monitor.swap and monitor.major_faults"))
    return out


def _page_cache(cur: Sample, model_bytes: int) -> Check:
    want = f">= {gib(model_bytes)} (the weights served from RAM)" if model_bytes else None
    if model_bytes <= 0:
        return _skip("monitor.page_cache", "no weights are served from RAM (or no profile given)")
    if cur.cached_kb is None:
        return _skip("monitor.page_cache", "/proc/meminfo has no Cached", want)
    held = cur.cached_kb * 1024 + (cur.server_locked_kb or 0) * 1024
    observed = f"page cache {gib(cur.cached_kb * 1024)}" + (
        f" + locked {gib((cur.server_locked_kb or 0) * 1024)}" if cur.server_locked_kb else "")
    if held >= model_bytes:
        return Check("monitor.page_cache", "pass", observed, want)
    return Check("monitor.page_cache", "warn", observed, want,
                 f"the page cache is {gib(model_bytes - held)} smaller than the mapped weights: their pages get "
                 "evicted and read again from disk; add RAM, lock them (os.memlock unlimited) or offload less")


def _server(cur: Sample, t: Thresholds) -> list[Check]:
    service = cur.service or "the model server"
    ids = ("monitor.server", "monitor.server_memory")
    unseen = {"root": "--root: a tree runs no model server",
              "no-systemd": f"systemd is not running here: cannot find {service}'s PID",
              "not-gathered": "the server was not looked for"}.get(cur.server)
    if unseen is not None:
        return [_skip(i, unseen) for i in ids]
    if cur.server_pid is None:
        status: Status = "fail" if t.expect_server else "skip"
        return [Check(ids[0], status, f"{service} is not running", f"{service} running",
                      f"systemctl status {service}; journalctl -u {service}"),
                _skip(ids[1], f"{service} is not running")]
    rss = (cur.server_rss_kb or 0) * 1024
    observed = f"pid {cur.server_pid} ({cur.server_name or '?'}), RSS {gib(rss)}"
    first = Check(ids[0], "pass", observed, f"{service} running")
    locked = cur.server_locked_kb
    swapped = cur.server_swap_kb or 0
    mem_obs = f"locked {gib((locked or 0) * 1024)}, swapped out {gib(swapped * 1024)}"
    want = "weights locked (VmLck > 0), nothing swapped out" if t.require_locked else "nothing swapped out"
    if t.require_locked and not locked:
        return [first, Check(ids[1], "fail", mem_obs, want,
                             "memlock was asked but the server holds no locked memory: LimitMEMLOCK too low or mlock "
                             "failed (journalctl -u SERVICE | grep -i mlock); its pages can be swapped out")]
    if swapped:
        return [first, Check(ids[1], "warn", mem_obs, want,
                             "part of the server is in swap: it is read back on use (see monitor.swap)")]
    return [first, Check(ids[1], "pass", mem_obs, want)]


def _governor(cur: Sample, t: Thresholds) -> Check:
    if cur.governor is None:
        return _skip("monitor.governor", "no cpufreq scaling governor (VM, container or no cpufreq driver)",
                     t.cpu_governor)
    if t.cpu_governor is None or cur.governor == t.cpu_governor:
        return Check("monitor.governor", "pass", cur.governor, t.cpu_governor)
    return Check("monitor.governor", "warn", cur.governor, t.cpu_governor,
                 f"the profile asks for {t.cpu_governor}: something changed it (tuned, power-profiles-daemon?)")


def _gpu_checks(cur: Sample, t: Thresholds) -> list[Check]:
    ids = ("monitor.gpu_temperature", "monitor.gpu_power", "monitor.gpu_clocks", "monitor.gpu_memory",
           "monitor.gpu_pcie")
    if not cur.gpus:
        if cur.smi == "missing":
            why = "nvidia-smi not found: no NVIDIA GPU to watch"
        elif cur.smi == "failed":
            why = f"nvidia-smi failed: {cur.smi_error}"
        else:
            why = "no GPU reported"
        if t.gpus_expected and cur.server == "root":
            why = "--root: the GPUs of a tree are not this machine's; " + why
        elif t.gpus_expected:
            return [Check(ids[0], "fail", why, f"{t.gpus_expected} GPU(s)",
                          "the profile has GPUs but none answers: driver not loaded or fell off the bus "
                          "(dmesg | grep -i xid)"), *[_skip(i, why) for i in ids[1:]]]
        return [_skip(i, why) for i in ids]
    gpus = cur.gpus

    def per_gpu(check_id: str, test: Callable[[Gpu], tuple[Status, str] | None], want: str,
                hint: str) -> Check:
        known = [(g, res) for g in gpus if (res := test(g)) is not None]
        if not known:
            return _skip(check_id, "not reported by nvidia-smi", want)
        status = worst([Check("", s) for _, (s, _o) in known])
        observed = "; ".join(f"GPU{g.index}: {o}" for g, (_s, o) in known)
        return Check(check_id, status, observed, want, None if status == "pass" else hint)

    def temp(g: Gpu) -> tuple[Status, str] | None:
        if g.temperature_c is None:
            return None
        return _level(g.temperature_c, t.gpu_temp_warn_c, t.gpu_temp_fail_c), f"{g.temperature_c:g} C"

    def power(g: Gpu) -> tuple[Status, str] | None:
        if g.power_w is None or not g.power_limit_w:
            return None
        fraction = g.power_w / g.power_limit_w
        return ("warn" if fraction >= t.gpu_power_warn_fraction else "pass",
                f"{g.power_w:g} W of {g.power_limit_w:g} W ({fraction:.0%})")

    def clocks(g: Gpu) -> tuple[Status, str] | None:
        if g.clock_reasons is None:
            return None
        hard = [r for r in g.clock_reasons if r in BAD_CLOCK_REASONS and r.startswith("HW")]
        soft = [r for r in g.clock_reasons if r in BAD_CLOCK_REASONS and not r.startswith("HW")]
        status: Status = "fail" if hard else "warn" if soft else "pass"
        clock = f" at {g.sm_clock_mhz:g} MHz" if g.sm_clock_mhz is not None else ""
        return status, (", ".join(g.clock_reasons) or "none active") + clock

    def memory(g: Gpu) -> tuple[Status, str] | None:
        if g.memory_used_mib is None or not g.memory_total_mib:
            return None
        fraction = g.memory_used_mib / g.memory_total_mib
        return ("warn" if fraction >= t.gpu_memory_warn_fraction else "pass",
                f"{g.memory_used_mib:g} of {g.memory_total_mib:g} MiB ({fraction:.0%})"
                + (f", {g.utilization_pct:g}% busy" if g.utilization_pct is not None else ""))

    def pcie(g: Gpu) -> tuple[Status, str] | None:
        if g.pcie_gen_current is None and g.pcie_rx_mbs is None:
            return None
        link = f"Gen{g.pcie_gen_current} x{g.pcie_width_current}" if g.pcie_gen_current is not None \
            else "link not reported"
        traffic = f", RX {g.pcie_rx_mbs:g} MB/s, TX {g.pcie_tx_mbs:g} MB/s" \
            if g.pcie_rx_mbs is not None and g.pcie_tx_mbs is not None else ""
        return "pass", link + traffic

    return [
        per_gpu(ids[0], temp, f"< {t.gpu_temp_warn_c:g} C",
                "the GPU runs hot and will slow down: check fans, airflow, dust and the case; lower the power limit"),
        per_gpu(ids[1], power, f"< {t.gpu_power_warn_fraction:.0%} of the power limit",
                "at the power limit: clocks are capped by power (raise driver.power_limit_w if the PSU and cooling "
                "allow)"),
        per_gpu(ids[2], clocks, f"none of: {', '.join(BAD_CLOCK_REASONS)}",
                "clocks are held back by heat or by the power supply (HW slowdown halves them): check cooling, "
                "PSU cables and the power limit"),
        per_gpu(ids[3], memory, f"< {t.gpu_memory_warn_fraction:.0%} of VRAM",
                "VRAM is nearly full: a longer context or another sequence will fail or spill to RAM"),
        per_gpu(ids[4], pcie, "link and traffic (information)", ""),
    ]
