"""msi-doorbell: devices' MSI writes through SW_MSI windows and MSI cookies.

On arm64 an MSI is a DMA write of the EventID to a GICv3 ITS doorbell
(GITS_TRANSLATER), so it goes through the SMMU like any DMA: the device's domain
must map the doorbell page. ``iommu_dma_prepare_msi`` does that when the MSI is
set up: a DMA domain gets the page from its IOVA allocator; an UNMANAGED domain
(VFIO, iommufd) needs an MSI cookie, which maps doorbells one page after another
from the base of the SW_MSI window the SMMU driver reserves ([0x8000000, +1M));
an identity domain passes the doorbell through; so does, in Linux 6.12 (which
the scenario's SMMU answers as), any domain without a cookie, whose untranslated
writes then fault; 7.0 refuses such a domain with EOPNOTSUPP.

Cases (``cases``): ``dma-domain`` (each device in its own DMA domain),
``vfio-cookie`` (all devices in one UNMANAGED domain with an MSI cookie),
``two-its`` (the same with devices spread over two ITSes: two doorbell pages),
``no-cookie`` (an UNMANAGED domain without a cookie), ``identity``.

Reports per case: MSI setups refused, interrupts delivered with the right
DeviceID, writes that faulted, doorbell pages mapped and their IOVAs.

Parameters: ``devices``, ``messages`` (MSIs each device sends), ``cases``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..clock import Clock
from ..devices import DmaDevice
from ..dma import MsiCookie, get_msi_cookie, prepare_msi
from ..dma.cookie import DmaCookie
from ..drivers.smmuv3 import ArmSmmuDevice, SmmuV3Config, SmmuV3Hw
from ..errors import DmaFault, NotSupported
from ..iommu import MSI_IOVA_BASE, IommuCore
from ..irqchip import GicV3Its
from ..mem import PhysMem
from .base import Param, Plot, RunContext, Scenario, ScenarioResult, Table

CASES = ("dma-domain", "vfio-cookie", "two-its", "no-cookie", "identity")
_SECOND_ITS = 0x080A_0000  # lab: a second ITS right after QEMU virt's (0x08080000)
_FIRST_SID, _SID_STEP = 0x10, 8
#: devices whose StreamIDs fit the default SMMU's stream table
_MAX_DEVICES = ((1 << SmmuV3Config().sid_bits) - 1 - _FIRST_SID) // _SID_STEP + 1

PARAMS = (
    Param("devices", "int", 4, "devices, one group each", quick=2, minimum=1,
          maximum=_MAX_DEVICES, why="StreamIDs 0x10, 0x18, ... must fit the SMMU's "
          f"{1 << SmmuV3Config().sid_bits}-entry stream table (IDR1.SIDSIZE)"),
    Param("messages", "int", 16, "MSIs each device sends", quick=4, minimum=1,
          maximum=2048, why="one EventID per vector: PCI MSI-X has at most 2048 vectors"),
    Param("cases", "str", CASES, "domain set-ups", many=True, choices=CASES),
)


@dataclass
class MsiCaseResult:
    case: str
    refused: int = 0  # prepare_msi errors (the driver gets no interrupt)
    sent: int = 0
    delivered: int = 0  # reached the ITS with the sender's DeviceID
    wrong_id: int = 0
    faults: int = 0
    fault_events: int = 0
    doorbell_iovas: list[int] = field(default_factory=list)
    pages_mapped: int = 0  # doorbell pages mapped over all domains
    #: saved states of the paging domains (doorbell pages mapped), when asked for
    states: dict[str, dict[str, Any]] = field(default_factory=dict)


def run_case(case: str, devices: int, messages: int, save_state: bool = False
             ) -> MsiCaseResult:
    """One set-up of :data:`CASES`; everything is released before it returns."""
    mem = PhysMem("4G")
    hw = SmmuV3Hw(mem, SmmuV3Config())
    smmu = ArmSmmuDevice(hw)
    core = IommuCore(smmu, clock=Clock(hz=250), strict=True)
    its = [GicV3Its(mem)]
    if case == "two-its":
        its.append(GicV3Its(mem, base=_SECOND_ITS))
    devs = [DmaDevice(f"dev{i}", mem, hw, _FIRST_SID + _SID_STEP * i) for i in range(devices)]
    for dev in devs:
        core.probe_device(dev)
    shared = None
    if case in ("vfio-cookie", "two-its", "no-cookie"):
        assert devs[0].dev_iommu is not None
        shared = smmu.domain_alloc_paging_flags(devs[0].dev_iommu.priv)
        if case != "no-cookie":
            get_msi_cookie(shared, MSI_IOVA_BASE)
    out = MsiCaseResult(case)
    try:
        for dev in devs:
            assert dev.group is not None
            if shared is not None:
                core.set_group_domain(dev.group, shared)
            elif case == "identity":
                core.set_group_domain(dev.group, smmu.identity_domain)
        for i, dev in enumerate(devs):
            doorbell = its[i % len(its)].doorbell
            try:
                addr = prepare_msi(dev, doorbell)
            except NotSupported:
                out.refused += 1
                addr = doorbell  # what an untranslated write would target
            else:
                if addr not in out.doorbell_iovas:
                    out.doorbell_iovas.append(addr)
            for event in range(messages):
                out.sent += 1
                try:
                    dev.msi_write(addr, event)
                except DmaFault:
                    out.faults += 1
        for i, dev in enumerate(devs):
            got = [e for sid, e in its[i % len(its)].interrupts if sid == dev.sid]
            out.delivered += len(got)
        out.wrong_id = sum(len(x.interrupts) for x in its) - out.delivered
        out.fault_events = len(smmu.handle_events())
        domains = {id(d): d for d in (shared, *(dev.group.default_domain for dev in devs
                                                if dev.group is not None)) if d is not None}
        out.pages_mapped = sum(len(d.cookie.msi_pages) for d in domains.values()
                               if isinstance(d.cookie, (MsiCookie, DmaCookie)))
        if save_state:
            from ..inspect import save_domain
            for dev in devs:
                d, group = dev.group.domain if dev.group else None, dev.group
                if d is not None and group is not None and d.pgtbl is not None:
                    key = "shared" if d is shared else dev.name
                    out.states.setdefault(key, save_domain(d, name=f"{case} {key}",
                                                           resv=group.resv_regions()))
    finally:
        for dev in devs:
            if shared is not None and dev.group is not None and dev.group.default_domain:
                core.set_group_domain(dev.group, dev.group.default_domain)
            core.release_device(dev)
        if shared is not None:
            shared.free()
        smmu.remove()
    return out


def run(ctx: RunContext) -> ScenarioResult:
    p = ctx.params
    res = SCENARIO.result(ctx, f"MSI doorbells through the SMMUv3: {p['devices']} devices, "
                               f"{p['messages']} MSIs each")
    results = []
    for n, case in enumerate(p["cases"]):
        ctx.progress(n, len(p["cases"]), case)
        results.append(run_case(case, p["devices"], p["messages"], ctx.save_states))
        res.states.update({f"{case}.{k}": v for k, v in results[-1].states.items()})
    ctx.progress(len(results), len(results))
    res.tables.append(Table("MSI writes by domain set-up", [
        "case", "setup refused", "sent", "delivered", "wrong DeviceID", "faulted",
        "fault events", "doorbell pages", "doorbell IOVAs"],
        [[r.case, r.refused, r.sent, r.delivered, r.wrong_id, r.faults, r.fault_events,
          r.pages_mapped, ", ".join(f"{a:#x}" for a in r.doorbell_iovas) or "-"]
         for r in results], "lrrrrrrrl"))
    for r in results:
        for key in ("refused", "sent", "delivered", "wrong_id", "faults", "pages_mapped"):
            res.headline[f"{r.case}.{key}"] = getattr(r, key)
    res.plots.append(Plot("MSIs delivered and faulted", "MSIs", [r.case for r in results], {
        "delivered": [float(r.delivered) for r in results],
        "faulted": [float(r.faults) for r in results]}))
    res.notes.append("no-cookie: Linux 6.12's iommu_dma_prepare_msi passes the doorbell "
                     "through untranslated, so every write faults (7.0 returns EOPNOTSUPP and "
                     "the driver gets no MSI at all).")
    return res


SCENARIO = Scenario("msi-doorbell", __doc__ or "", PARAMS, ("arm64-smmuv3",), run)
