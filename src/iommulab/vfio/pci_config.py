"""vfio-pci's virtualised config space (drivers/vfio/pci/vfio_pci_config.c).

Each byte of config space belongs to the basic header, a capability or to no one
(``pci_config_map``); each capability kind has permission bits saying which bits are
virtual (read from and written to ``vconfig``) and which are writable, and a read or
write handler. Accesses are cut into aligned pieces that stay inside one capability
and one dword (``vfio_config_do_rw``). The model's functions have the basic header and
at most an MSI capability (:mod:`iommulab.pcihw`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import BadAddress, OutOfMemory
from ..pcihw import (
    PCI_BASE_ADDRESS_0,
    PCI_CAP_ID_MSI,
    PCI_CAPABILITY_LIST,
    PCI_CFG_SPACE_SIZE,
    PCI_COMMAND,
    PCI_COMMAND_INTX_DISABLE,
    PCI_COMMAND_IO,
    PCI_COMMAND_MEMORY,
    PCI_DEVICE_ID,
    PCI_INTERRUPT_LINE,
    PCI_INTERRUPT_PIN,
    PCI_MSI_ADDRESS_HI,
    PCI_MSI_ADDRESS_LO,
    PCI_MSI_DATA_32,
    PCI_MSI_DATA_64,
    PCI_MSI_FLAGS,
    PCI_MSI_FLAGS_64BIT,
    PCI_MSI_FLAGS_ENABLE,
    PCI_MSI_FLAGS_MASKBIT,
    PCI_MSI_FLAGS_QMASK,
    PCI_MSI_FLAGS_QSIZE,
    PCI_ROM_ADDRESS,
    PCI_STATUS,
    PCI_STATUS_CAP_LIST,
    PCI_STD_HEADER_SIZEOF,
    PCI_VENDOR_ID,
    PciFunction,
)
from . import uapi as u

if TYPE_CHECKING:
    from ..mem import FailNth
    from .pci_irq import VfioPciIrqs

__all__ = ["VfioPciConfig"]

PCI_CAP_ID_BASIC = 0  # vfio's own id for the header
PCI_CAP_ID_INVALID = 0xFF  # bytes no capability claims: raw access
_BAR_END = PCI_BASE_ADDRESS_0 + 6 * 4
_ALL = 0xFFFF_FFFF


@dataclass
class _Perm:
    """``struct perm_bits``: per-byte virtual and writable masks and the handlers'
    kind (``basic``, ``msi``, ``raw``)."""

    kind: str
    virt: bytearray
    write: bytearray


def _set(perm: _Perm, off: int, size: int, virt: int, write: int) -> None:
    """``p_setb``/``p_setw``/``p_setd``."""
    perm.virt[off:off + size] = (virt & ((1 << 8 * size) - 1)).to_bytes(size, "little")
    perm.write[off:off + size] = (write & ((1 << 8 * size) - 1)).to_bytes(size, "little")


def _basic_perm() -> _Perm:
    """``init_pci_cap_basic_perm``."""
    p = _Perm("basic", bytearray(PCI_STD_HEADER_SIZEOF), bytearray(PCI_STD_HEADER_SIZEOF))
    _set(p, PCI_VENDOR_ID, 2, _ALL, 0)
    _set(p, PCI_DEVICE_ID, 2, _ALL, 0)
    _set(p, PCI_COMMAND, 2, PCI_COMMAND_INTX_DISABLE, _ALL)
    _set(p, PCI_STATUS, 2, PCI_STATUS_CAP_LIST, 0)
    for off in (0x0C, 0x0D, 0x0F):  # cache line size, latency timer, BIST
        _set(p, off, 1, 0, _ALL)
    for off in (*range(PCI_BASE_ADDRESS_0, _BAR_END, 4), PCI_ROM_ADDRESS):
        _set(p, off, 4, _ALL, _ALL)
    _set(p, PCI_CAPABILITY_LIST, 1, _ALL, 0)
    _set(p, PCI_INTERRUPT_LINE, 1, _ALL, _ALL)
    _set(p, PCI_INTERRUPT_PIN, 1, _ALL, 0)
    return p


_BASIC = _basic_perm()
_UNASSIGNED = _Perm("raw", bytearray(), bytearray())


def _msi_perm(length: int, flags: int) -> _Perm:
    """``init_pci_cap_msi_perm``."""
    p = _Perm("msi", bytearray(length), bytearray(length))
    _set(p, 1, 1, _ALL, 0)  # PCI_CAP_LIST_NEXT
    _set(p, PCI_MSI_FLAGS, 1, _ALL, _ALL)  # the control register's upper byte is reserved
    _set(p, PCI_MSI_ADDRESS_LO, 4, _ALL, _ALL)
    if flags & PCI_MSI_FLAGS_64BIT:
        _set(p, PCI_MSI_ADDRESS_HI, 4, _ALL, _ALL)
        _set(p, PCI_MSI_DATA_64, 2, _ALL, _ALL)
        if flags & PCI_MSI_FLAGS_MASKBIT:
            _set(p, 0x10, 4, 0, _ALL)  # PCI_MSI_MASK_64
            _set(p, 0x14, 4, 0, _ALL)  # PCI_MSI_PENDING_64
    else:
        _set(p, PCI_MSI_DATA_32, 2, _ALL, _ALL)
        if flags & PCI_MSI_FLAGS_MASKBIT:
            _set(p, 0x0C, 4, 0, _ALL)  # PCI_MSI_MASK_32
            _set(p, 0x10, 4, 0, _ALL)  # PCI_MSI_PENDING_32
    return p


def _is_bar(offset: int) -> bool:
    return PCI_BASE_ADDRESS_0 <= offset < _BAR_END or \
        PCI_ROM_ADDRESS <= offset < PCI_ROM_ADDRESS + 4


class VfioPciConfig:
    """``vconfig``, ``pci_config_map`` and the state vfio-pci keeps with them
    (``bardirty``, ``rbar``, ``msi_perm``), built by ``vfio_config_init`` at the
    device's first open and dropped at its last close."""

    def __init__(self, fn: PciFunction, irqs: VfioPciIrqs, fail: FailNth) -> None:
        """``vfio_config_init``: ``pci_config_map`` and ``vconfig`` allocated (ENOMEM,
        the first freed if the second fails), the header and each capability copied
        from the hardware. Lab: the model's functions have no capability but MSI, so
        only MSI's length (``vfio_msi_cap_len``) is known; any other would be hidden as
        a length-0 one is. No extended capability (conventional PCI):
        ``vfio_ecap_init`` allocates nothing."""
        self.fn, self.irqs, self._fail = fn, irqs, fail
        size = PCI_CFG_SPACE_SIZE  # pdev->cfg_size: conventional PCI
        fail.check("kmalloc(pci_config_map)")
        fail.check("kmalloc(vconfig)")
        self.cfg_size = size
        self.map = bytearray([PCI_CAP_ID_BASIC] * PCI_STD_HEADER_SIZEOF +
                             [PCI_CAP_ID_INVALID] * (size - PCI_STD_HEADER_SIZEOF))
        self.vconfig = bytearray(size)
        self._fill(0, PCI_STD_HEADER_SIZEOF)
        self.bardirty = True
        self.rbar = [self._v(off, 4) for off in range(PCI_BASE_ADDRESS_0, _BAR_END, 4)]
        self.rbar.append(self._v(PCI_ROM_ADDRESS, 4))
        self.msi_perm: _Perm | None = None
        self._cap_init()

    # -- helpers -----------------------------------------------------------------------------
    def _v(self, off: int, size: int) -> int:
        return int.from_bytes(self.vconfig[off:off + size], "little")

    def _setv(self, off: int, size: int, value: int) -> None:
        self.vconfig[off:off + size] = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")

    def _fill(self, offset: int, size: int) -> None:
        """``vfio_fill_vconfig_bytes``: copy the hardware's bytes."""
        self.vconfig[offset:offset + size] = self.fn.cfg[offset:offset + size]

    def _cap_init(self) -> None:
        """``vfio_cap_init``: walk the capability list (at most 48 entries), map each
        known capability, unlink the ones of length 0; no capability left clears the
        status register's capability bit."""
        fn = self.fn
        if not fn.cfg_read(PCI_STATUS, 2) & PCI_STATUS_CAP_LIST:
            return
        pos = fn.cfg_read(PCI_CAPABILITY_LIST, 1)
        prev = PCI_CAPABILITY_LIST
        loops, caps = (PCI_CFG_SPACE_SIZE - PCI_STD_HEADER_SIZEOF) // 4, 0
        while pos and loops:
            loops -= 1
            cap, nxt = fn.cfg_read(pos, 1), fn.cfg_read(pos + 1, 1)
            length = self._msi_cap_len(pos) if cap == PCI_CAP_ID_MSI else 0
            if not length:
                self.vconfig[prev] = nxt
                pos = nxt
                continue
            self.map[pos:pos + length] = bytes([cap]) * length
            self._fill(pos, length)
            prev, pos = pos + 1, nxt
            caps += 1
        if not caps:
            self._setv(PCI_STATUS, 2, self._v(PCI_STATUS, 2) & ~PCI_STATUS_CAP_LIST)

    def _msi_cap_len(self, pos: int) -> int:
        """``vfio_msi_cap_len``: 10 bytes, 4 more for 64-bit addresses, 10 more for
        per-vector masking; the first call builds ``msi_perm``: the ``perm_bits``
        (kmalloc), then ``alloc_perm_bits``' two arrays, both tried before either is
        checked (ENOMEM; ``vfio_config_init`` then frees its map and vconfig)."""
        flags = self.fn.cfg_read(pos + PCI_MSI_FLAGS, 2)
        length = 10 + (4 if flags & PCI_MSI_FLAGS_64BIT else 0) + \
            (10 if flags & PCI_MSI_FLAGS_MASKBIT else 0)
        if self.msi_perm is None:
            fail = self._fail
            fail.check("kmalloc(msi_perm)")
            virt = fail.fails("kzalloc(perm_bits virt)")
            write = fail.fails("kzalloc(perm_bits write)")
            if virt or write:
                raise OutOfMemory("injected allocation failure at alloc_perm_bits "
                                  "(fail-nth)")
            self.msi_perm = _msi_perm(length, flags)
        return length

    def _find_cap_start(self, pos: int) -> int:
        """``vfio_find_cap_start``."""
        cap = self.map[pos]
        if cap == PCI_CAP_ID_BASIC:
            return 0
        while pos - 1 >= PCI_STD_HEADER_SIZEOF and self.map[pos - 1] == cap:
            pos -= 1
        return pos

    def memory_enabled(self) -> bool:
        """``__vfio_pci_memory_enabled``: the virtual command register's memory bit
        (the model's devices are in D0 and implement the bit)."""
        return bool(self._v(PCI_COMMAND, 2) & PCI_COMMAND_MEMORY)

    # -- vfio_pci_config_rw ------------------------------------------------------------------
    def rw(self, pos: int, count: int, data: bytes | None) -> bytes | int:
        """``vfio_pci_config_rw``: a read of ``count`` bytes (``data`` None: the bytes)
        or a write of ``data`` (the count written), piece by piece; the first piece
        that fails fails the whole call. EFAULT for a range outside config space
        (``vfio_config_do_rw``). O(count), at most 256."""
        pos &= u.VFIO_PCI_OFFSET_MASK
        out = bytearray()
        done = 0
        while count:
            n = self._do_rw(pos, count, data[done:] if data is not None else None, out)
            count -= n
            done += n
            pos += n
        return done if data is not None else bytes(out)

    def _do_rw(self, pos: int, count: int, data: bytes | None, out: bytearray) -> int:
        """``vfio_config_do_rw``: one aligned piece inside one capability and dword."""
        if pos < 0 or pos >= self.cfg_size or pos + count > self.cfg_size:
            raise BadAddress(f"config access of {count} bytes at {pos:#x}: outside the "
                             f"{self.cfg_size}-byte config space")
        cap = self.map[pos]
        remaining = 1
        while (pos + remaining) % 4 and self.map[pos + remaining] == cap:
            remaining += 1
        count = min(count, remaining)
        count = 4 if count >= 4 and not pos % 4 else 2 if count >= 2 and not pos % 2 else 1
        if cap == PCI_CAP_ID_INVALID:
            perm, start = _UNASSIGNED, pos
        elif cap == PCI_CAP_ID_BASIC:
            perm, start = _BASIC, 0
        else:  # the only capability _cap_init maps
            assert cap == PCI_CAP_ID_MSI and self.msi_perm is not None
            perm, start = self.msi_perm, self._find_cap_start(pos)
        offset = pos - start
        if data is not None:
            val = int.from_bytes(data[:count], "little")
            self._write(perm, pos, count, offset, val)
        else:
            out += self._read(perm, pos, count, offset).to_bytes(count, "little")
        return count

    def _read(self, perm: _Perm, pos: int, count: int, offset: int) -> int:
        if perm.kind == "raw":
            return self.fn.cfg_read(pos, count)
        if perm.kind == "basic" and _is_bar(offset):
            self._bar_fixup()
        if perm.kind == "msi" and offset <= PCI_MSI_FLAGS and offset + count >= PCI_MSI_FLAGS:
            # vfio_msi_config_read updates the word at the capability's *start* (its ID
            # and next pointer), not the flags: 6.12 does, and the ID byte is read from
            # the hardware and the next byte is untouched, so nobody sees it
            start = self._find_cap_start(pos)
            word = self._v(start, 2) & ~PCI_MSI_FLAGS_QMASK
            self._setv(start, 2, word | self.irqs.msi_qmax << 1)
        return self._default_read(perm, pos, count, offset)

    def _default_read(self, perm: _Perm, pos: int, count: int, offset: int) -> int:
        """``vfio_default_config_read``: virtual bits from ``vconfig``, the rest from the
        hardware."""
        val = self._v(pos, count)
        virt = int.from_bytes(perm.virt[offset:offset + count], "little")
        if virt != (1 << 8 * count) - 1:
            val = (self.fn.cfg_read(pos, count) & ~virt) | (val & virt)
        return val

    def _write(self, perm: _Perm, pos: int, count: int, offset: int, val: int) -> None:
        if perm.kind == "raw":
            self.fn.cfg_write(pos, count, val)
        elif perm.kind == "basic":
            self._basic_write(perm, pos, count, offset, val)
        else:
            self._msi_write(perm, pos, count, offset, val)

    def _default_write(self, perm: _Perm, pos: int, count: int, offset: int, val: int
                       ) -> None:
        """``vfio_default_config_write``: writable virtual bits to ``vconfig``, writable
        real bits to the hardware (read, modify, write)."""
        write = int.from_bytes(perm.write[offset:offset + count], "little")
        if not write:
            return
        virt = int.from_bytes(perm.virt[offset:offset + count], "little")
        if write & virt:
            self._setv(pos, count, (self._v(pos, count) & ~(write & virt)) |
                       (val & write & virt))
        if write & ~virt:
            phys = self.fn.cfg_read(pos, count) & ~(write & ~virt)
            self.fn.cfg_write(pos, count, phys | (val & write & ~virt))

    def _basic_write(self, perm: _Perm, pos: int, count: int, offset: int, val: int) -> None:
        """``vfio_basic_config_write``: a command write restores the BARs after a
        reset behind vfio's back, records the memory and I/O enables in ``vconfig``,
        and INTx disable masks or unmasks INTx (``virq_disabled``)."""
        if offset == PCI_COMMAND:
            phys_cmd, virt_cmd = self.fn.cfg_read(PCI_COMMAND, 2), self._v(PCI_COMMAND, 2)
            new_cmd = val & 0xFFFF
            bits = [(c & PCI_COMMAND_MEMORY, c & PCI_COMMAND_IO)
                    for c in (phys_cmd, virt_cmd, new_cmd)]
            (phys_mem, phys_io), (virt_mem, virt_io), (new_mem, new_io) = bits
            if (new_mem and virt_mem and not phys_mem) or \
                    (new_io and virt_io and not phys_io) or self._need_bar_restore():
                self._bar_restore()
        self._default_write(perm, pos, count, offset, val)
        if offset == PCI_COMMAND:
            mask = PCI_COMMAND_MEMORY | PCI_COMMAND_IO
            self._setv(PCI_COMMAND, 2, (self._v(PCI_COMMAND, 2) & ~mask) | (new_cmd & mask))
        if PCI_COMMAND <= offset <= PCI_COMMAND + 1:
            disable = bool(self._v(PCI_COMMAND, 2) & PCI_COMMAND_INTX_DISABLE)
            irqs = self.irqs
            if disable and not irqs.virq_disabled:
                irqs.virq_disabled = True
                irqs.intx_mask()
            elif not disable and irqs.virq_disabled:
                irqs.virq_disabled = False
                irqs.intx_unmask()
        if _is_bar(offset):
            self.bardirty = True

    def _msi_write(self, perm: _Perm, pos: int, count: int, offset: int, val: int) -> None:
        """``vfio_msi_config_write``: then the flags, with enable cleared unless MSI is
        on through SET_IRQS and the queue size capped at ``msi_qmax``, go to
        ``vconfig`` and to the hardware."""
        self._default_write(perm, pos, count, offset, val)
        if offset <= PCI_MSI_FLAGS and offset + count >= PCI_MSI_FLAGS:
            start = self._find_cap_start(pos)
            flags = self._v(start + PCI_MSI_FLAGS, 2)
            if self.irqs.irq_type != u.VFIO_PCI_MSI_IRQ_INDEX:
                flags &= ~PCI_MSI_FLAGS_ENABLE
            qmax = self.irqs.msi_qmax
            if (flags & PCI_MSI_FLAGS_QSIZE) >> 4 > qmax:
                flags = (flags & ~PCI_MSI_FLAGS_QSIZE) | qmax << 4
            self._setv(start + PCI_MSI_FLAGS, 2, flags)
            self.fn.cfg_write(start + PCI_MSI_FLAGS, 2, flags)

    # -- BARs ---------------------------------------------------------------------------------
    def _bar_fixup(self) -> None:
        """``vfio_bar_fixup``: the virtual BARs answer sizing as hardware would: BAR 0
        keeps the address bits its size allows plus its flags, the others and the ROM
        (the model's functions have none) read 0."""
        if not self.bardirty:
            return
        fn = self.fn
        mask = ~(fn.bar0_size - 1) & ((1 << 64) - 1)
        flags = fn.cfg_read(PCI_BASE_ADDRESS_0, 4) & 0xF  # the hardware's type bits
        bar = (self._v(PCI_BASE_ADDRESS_0, 4) & mask & _ALL) | flags
        self._setv(PCI_BASE_ADDRESS_0, 4, bar)
        first_unused = PCI_BASE_ADDRESS_0 + 4
        if flags & 0x4:  # PCI_BASE_ADDRESS_MEM_TYPE_64
            self._setv(first_unused, 4, self._v(first_unused, 4) & (mask >> 32))
            first_unused += 4
        for off in range(first_unused, _BAR_END, 4):
            self._setv(off, 4, 0)
        self._setv(PCI_ROM_ADDRESS, 4, 0)
        self.bardirty = False

    def _need_bar_restore(self) -> bool:
        """``vfio_need_bar_restore``: a BAR the hardware holds differs from ``rbar``."""
        return any(self.rbar[i] and self.fn.cfg_read(PCI_BASE_ADDRESS_0 + 4 * i, 4) !=
                   self.rbar[i] for i in range(6))

    def _bar_restore(self) -> None:
        """``vfio_bar_restore``: write ``rbar`` back to the hardware."""
        for i in range(6):
            self.fn.cfg_write(PCI_BASE_ADDRESS_0 + 4 * i, 4, self.rbar[i])
        self.fn.cfg_write(PCI_ROM_ADDRESS, 4, self.rbar[6])
