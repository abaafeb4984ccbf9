"""The op generator: each step picks a family of calls and builds one from the world's
state (open fds, iommufd ids, mapped IOVAs, the processes' mappings), well-formed most of
the time and otherwise mutated where the kernel checks, or random bytes.

The generator reads the model's state only to choose arguments; what it produces is a
list of concrete :class:`~.world.Op` s, so a sequence replays without it. When a call
needs something that does not exist yet (an ioctl on a container nobody opened), the
step makes that first, so sequences go deep (open, attach, map, track dirty pages,
DMA, unmap) instead of bouncing off the first argument check.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ...devices import DmaDevice
from ...eventfd import EventFdFile
from ...iommufd import selftest as st
from ...iommufd import uapi as iu
from ...iommufd.file import IommufdFile, MemFdFile
from ...iommufd.objects import Access, Device, HwptNested, HwptPaging, Ioas, IommufdObject
from ...iommufd.pages import ACCOUNT_NONE
from ...iommufd.selftest import AccessFile, SelftestDevice
from ...kernel import LINUX_7_0, KernelVersion
from ...mem.mm import Vma
from ...vfio import uapi as vu
from ...vfio.device import VfioDeviceFile
from ...vfio.files import Container, GroupFile, VfioFile
from . import specs
from .nested import NestedSteps
from .values import U32, U64, Spec, boundary, fill_bytes
from .world import Op, World

__all__ = ["Gen"]

F = TypeVar("F", bound=VfioFile)

PAGE = 4096
_KERNEL_VA = 0xFFFF_8880_0000_0000  # a kernel address: access_ok fails
_MAX_HINTS = 64


@dataclass(frozen=True)
class _Mapped:
    """An IOVA range a map answered with; ``uptr`` is the user memory behind it (0 for
    an IOAS_COPY or a file)."""

    iova: int
    length: int
    uptr: int = 0


def _container_ready(f: VfioFile) -> bool:
    """A type1 container with a group, or an iommufd with a compatibility IOAS."""
    if isinstance(f, Container):
        return bool(f.groups)
    return isinstance(f, IommufdFile) and f.ctx.vfio_ioas is not None


def _test_weights() -> dict[int, float]:
    return {st.OP_MOCK_DOMAIN: 3, st.OP_MOCK_DOMAIN_FLAGS: 2, st.OP_MOCK_DOMAIN_REPLACE: 1.5,
            st.OP_ADD_RESERVED: 1, st.OP_MD_CHECK_MAP: 1.5, st.OP_MD_CHECK_REFS: 1,
            st.OP_CREATE_ACCESS: 2, st.OP_DESTROY_ACCESS_PAGES: 1, st.OP_ACCESS_PAGES: 3,
            st.OP_ACCESS_RW: 2, st.OP_SET_TEMP_MEMORY_LIMIT: 0.5, st.OP_ACCESS_REPLACE_IOAS: 1,
            st.OP_DIRTY: 2, st.OP_MD_CHECK_IOTLB: 0.3, st.OP_TRIGGER_IOPF: 0.5}


_TEST_WEIGHTS = _test_weights()


class Gen:
    """Makes the next ops for ``world`` from ``rng``: ``mutate`` is the share of mutated
    ioctls; ``wild`` scales how often mmap, memfd_create and ftruncate get lengths they
    must refuse (negative, past the address space), 0 to leave them out."""

    def __init__(self, world: World, rng: random.Random, *, mutate: float = 0.25,
                 wild: float = 1.0) -> None:
        self.w = world
        self.rng = rng
        self.mutate_p = mutate
        self.wild = wild
        self.kernel: KernelVersion = world.machine.kernel
        self.mock = world.machine.platform == "mock"
        self.has_iommu = world.machine.core is not None
        self.mapped: list[_Mapped] = []
        self.ids_seen: dict[int, set[int]] = {}  # id(ctx) -> every id ever published
        self.nested = NestedSteps(self)
        self.families = self._families()

    # -- the step ----------------------------------------------------------------------------
    def _families(self) -> list[tuple[float, Callable[[int], list[Op]]]]:
        fams: list[tuple[float, Callable[[int], list[Op]]]] = [
            (9, self.mmap), (4, self.munmap), (2, self.rw), (1, self.memfd),
            (1.2, self.fork_or_exit), (2, self.close), (1.5, self.open_any), (6, self.dma),
            (0.6, self.eventfd_ops)]
        if self.has_iommu:
            fams += [(9, self.type1), (6, self.cdev), (22, self.iommufd), (2, self.garbage)]
            if self.mock:
                fams.append((14, self.selftest))
            if self.w.config.vtd_scalable:  # nest parents, nested HWPTs, vIOMMUs
                fams.append((30, self.nested.step))
            elif self.mock or (self.w.machine.platform == "arm64-smmuv3" and
                               self.kernel >= LINUX_7_0):
                fams.append((14, self.nested.step))
        return fams

    def next(self) -> list[Op]:
        """The ops of one step (usually one)."""
        live = self.w.live()
        if not live:
            return [Op(0, "spawn", kwargs=(("memlock_limit", 1 << 24), ("uid", 1000)),
                       note="a new process")]
        pi = live[0] if self.rng.random() < 0.75 else self.rng.choice(live)
        self._note_ids()
        weights = [f[0] for f in self.families]
        fam = self.rng.choices(self.families, weights)[0][1]
        return fam(pi)

    def observe(self, op: Op, result: Any) -> None:
        """Learn from a call that succeeded: the IOVAs maps answered with."""
        if op.call != "ioctl" or not isinstance(result, tuple):
            return
        buf = result[1]
        if not isinstance(buf, bytearray):
            return
        req = op.args[1]
        hit: _Mapped | None = None
        if req in (iu.IOMMU_IOAS_MAP, iu.IOMMU_IOAS_MAP_FILE, iu.IOMMU_IOAS_COPY) and \
                len(buf) >= 40:
            f = specs.IOMMUFD[req].unpack(buf)
            hit = _Mapped(f["iova"] if "iova" in f else f["dst_iova"], f["length"],
                          f.get("user_va", 0))
        elif req == vu.VFIO_IOMMU_MAP_DMA and len(buf) >= 32:
            f = specs.VFIO["MAP_DMA"].unpack(buf)
            hit = _Mapped(f["iova"], f["size"], f["vaddr"])
        if hit is not None and hit.length < 1 << 40:
            self.mapped.append(hit)
            del self.mapped[:-_MAX_HINTS]

    def _note_ids(self) -> None:
        for f in self._all_iommufds():
            self.ids_seen.setdefault(id(f.ctx), set()).update(f.ctx.objects)

    # -- state the generator reads -----------------------------------------------------------
    def files(self, pi: int, kind: type[Any] | tuple[type[Any], ...] = VfioFile,
              pred: Callable[[Any], bool] | None = None) -> list[int]:
        return [fd for fd, f in sorted(self.w.procs[pi].files.items())
                if isinstance(f, kind) and (pred is None or pred(f))]

    def file(self, pi: int, fd: int, kind: type[F]) -> F:
        """Process ``pi``'s file at ``fd``, which the caller knows is a ``kind``."""
        f = self.w.procs[pi].files[fd]
        assert isinstance(f, kind), f
        return f

    def pick(self, items: list[Any]) -> Any:
        return self.rng.choice(items) if items else None

    def bad_fd(self, pi: int) -> int:
        """A closed fd, a negative one, or an open fd of any kind."""
        fds = sorted(self.w.procs[pi].files)
        r = self.rng.random()
        if r < 0.5 and fds:
            return int(self.rng.choice(fds))
        if r < 0.7:
            return -self.rng.randrange(1, 3)
        return (max(fds) + 1 if fds else 3) + self.rng.randrange(3) if r < 0.9 else \
            self.rng.randrange(1 << 31)

    def _all_iommufds(self) -> list[IommufdFile]:
        out: dict[int, IommufdFile] = {}
        for i in self.w.live():
            for f in self.w.procs[i].files.values():
                if isinstance(f, IommufdFile):
                    out.setdefault(id(f), f)
        return list(out.values())

    def ids(self, f: IommufdFile, kind: type[IommufdObject]) -> list[int]:
        return [i for i, o in sorted(f.ctx.objects.items()) if isinstance(o, kind)]

    def obj_id(self, f: IommufdFile | None, *kinds: type[IommufdObject]) -> int:
        """An id of one of ``kinds`` in ``f``'s context, mostly; otherwise a destroyed id,
        one of another /dev/iommu file, an object of another kind, or a random one."""
        r = self.rng.random()
        if f is not None:
            good = [i for k in kinds for i in self.ids(f, k)]
            if good and r < 0.8:
                return int(self.rng.choice(good))
            gone = sorted(self.ids_seen.get(id(f.ctx), set()) - set(f.ctx.objects))
            if gone and r < 0.88:
                return int(self.rng.choice(gone))
            if f.ctx.objects and r < 0.93:
                return int(self.rng.choice(sorted(f.ctx.objects)))
        others = [i for g in self._all_iommufds() if g is not f for i in g.ctx.objects]
        if others and r < 0.97:
            return int(self.rng.choice(others))
        return self.rng.choice([0, 1, 2, 3, self.rng.randrange(64), U32])

    def vma(self, pi: int, *, writable: bool = False, pinnable: bool = False) -> Vma | None:
        vmas = [v for v in self.w.procs[pi].mm.vmas
                if (v.writable or not writable) and (not v.pfnmap or not pinnable)]
        return self.rng.choice(vmas) if vmas else None

    def uptr(self, pi: int, length: int, *, writable: bool = False, pinnable: bool = True
             ) -> int:
        """A user address with ``length`` bytes of a mapping after it where there is one
        (page aligned, mostly); else, or at times, somewhere no mapping is."""
        vma = self.vma(pi, writable=writable, pinnable=pinnable)
        if vma is None or self.rng.random() < 0.05:
            return self.rng.choice([0, 0x1000, _KERNEL_VA, 0x7FFF_0000_0000, U64 - 0xFFF])
        room = max(0, vma.end - vma.start - length)
        off = self.rng.randrange(room // PAGE + 1) * PAGE
        if self.rng.random() < 0.05:
            off += self.rng.randrange(1, PAGE)
        return vma.start + off

    def length(self, big: float = 0.02) -> int:
        """A map length: pages, at times a huge-page multiple, rarely huge."""
        r = self.rng.random()
        if r < big:
            return boundary(self.rng)
        if r < 0.2:
            return self.rng.choice([1, 2]) << 21
        return self.rng.choice([1, 1, 2, 3, 4, 8, 16, 64, 255]) * PAGE

    def iova(self, length: int = PAGE) -> int:
        """An IOVA the platform can map: in the mock aperture, or above 4G."""
        if self.mapped and self.rng.random() < 0.3:
            m = self.rng.choice(self.mapped)
            return m.iova + self.rng.choice([0, m.length, -length, m.length // 2 & ~0xFFF])
        if self.rng.random() < 0.03:
            return boundary(self.rng)
        base, span = (1 << 24, (1 << 31) - (1 << 24)) if self.mock else (1 << 32, 1 << 30)
        align = 1 << 21 if self.rng.random() < 0.3 else PAGE
        return base + self.rng.randrange(span // align) * align

    def hint_in(self, ioas: Ioas | None) -> _Mapped:
        """A range mapped in ``ioas`` (its user address when a map gave it), mostly; else
        :meth:`hint`."""
        areas = ioas.iopt.areas() if ioas is not None else []
        if not areas or self.rng.random() < 0.1:
            return self.hint()
        a = self.rng.choice(areas)
        uptr = next((m.uptr for m in self.mapped if m.iova == a.iova and m.uptr), 0)
        return _Mapped(a.iova, a.length, uptr)

    def hwpt(self, f: IommufdFile | None, *, dirty: bool = False) -> HwptPaging | None:
        """A paging HWPT of ``f``'s context (one that can track dirty pages, with
        ``dirty``)."""
        if f is None:
            return None
        hwpts = [o for o in f.ctx.objects.values() if isinstance(o, HwptPaging) and
                 (not dirty or o.domain.dirty_ops is not None)]
        return self.rng.choice(hwpts) if hwpts else None

    def hint(self) -> _Mapped:
        if self.mapped and self.rng.random() < 0.85:
            return self.rng.choice(self.mapped)
        return _Mapped(self.iova(), self.length())

    # -- building an ioctl -------------------------------------------------------------------
    def ioctl(self, pi: int, fd: int, sp: Spec, values: dict[str, int], note: str = "",
              *, file: IommufdFile | None = None, mutate: float | None = None) -> list[Op]:
        """The ioctl with ``sp`` filled from ``values`` (``size``/``argsz`` set to the
        struct's size), mutated at times (``mutate``: that share instead of the
        generator's, for a step that sets up state deeper steps need)."""
        scale = 1.0 if mutate is None else mutate / self.mutate_p if self.mutate_p else 0.0
        vals = dict(values)
        for name in sp.fields_with("size"):
            vals.setdefault(name, sp.layout.size)
        tail = b""
        cut: int | None = None
        arg: int | bytes
        if self.rng.random() < self.mutate_p * scale:
            tail, cut = self.mutate(pi, sp, vals, file)
            note = f"{note} (mutated)".strip()
        if self.rng.random() < 0.1 * scale and self.mutate_p:  # the wrong file gets it
            fd = self.bad_fd(pi)
        raw = sp.pack(vals) + tail
        arg = raw if cut is None else raw[:cut]
        if cut == -1:
            arg = boundary(self.rng)
        return [Op(pi, "ioctl", (fd, sp.request, arg), note=f"{sp.name} {note}".strip())]

    def mutate(self, pi: int, sp: Spec, vals: dict[str, int], file: IommufdFile | None
               ) -> tuple[bytes, int | None]:
        """Change one to three things where the kernel checks; the extra bytes to append
        and where to cut the buffer (-1: pass an integer instead)."""
        rng = self.rng
        tail = b""
        cut: int | None = None
        roles = [*sorted({r for r in sp.roles if r != "plain"}), "plain", "cut", "range"]
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            role = rng.choice(roles)
            names = sp.fields_with(role) if role not in ("cut", "range") else []
            name = rng.choice(names) if names else ""
            if role == "size":
                size = sp.layout.size
                choice = rng.choice([0, sp.min_size - 1, sp.min_size, size + 8, size + 8,
                                     size + 64, 1 << 12, U32, rng.randrange(2 * size)])
                vals[name] = choice
                if size < choice <= size + 64:
                    tail = fill_bytes(rng, choice - size) if rng.random() < 0.5 else \
                        bytes(choice - size)
            elif role == "flags":
                vals[name] = vals.get(name, 0) ^ (1 << rng.randrange(sp.bits(name))) \
                    if rng.random() < 0.7 else boundary(rng, sp.bits(name))
            elif role == "rsvd":
                vals[name] = boundary(rng, sp.bits(name)) or 1
            elif role == "id":
                vals[name] = self.obj_id(file, Ioas, HwptPaging, HwptNested, Device, Access)
            elif role == "fd":
                vals[name] = self.map_file_fd(pi) if sp.request == iu.IOMMU_IOAS_MAP_FILE \
                    else self.bad_fd(pi)
            elif role == "ptr":
                vals[name] = rng.choice([0, 1, _KERNEL_VA, U64, 0x7FFF_FFFF_F000,
                                         vals.get(name, 0) + rng.randrange(1, PAGE),
                                         self.uptr(pi, PAGE)])
            elif role in ("len", "iova", "plain") and name:
                vals[name] = boundary(rng, sp.bits(name))
            elif role == "range":  # a range that wraps or runs off the end
                lens, iovas = sp.fields_with("len"), sp.fields_with("iova")
                if iovas:
                    vals[rng.choice(iovas)] = U64 - rng.choice([0, 0xFFF, 0x1FFFFF])
                if lens:
                    vals[rng.choice(lens)] = rng.choice([0x2000, 1 << 47, U64 - 0xFFF, U64])
            elif role == "cut":
                cut = rng.choice([-1, 0, 3, rng.randrange(max(1, sp.min_size))])
        return tail, cut

    # -- memory and processes ----------------------------------------------------------------
    def mmap(self, pi: int) -> list[Op]:
        rng = self.rng
        r = rng.random()
        kw: dict[str, Any] = {}
        length: int = self.length(big=0)
        backing = "anon"
        if r < 0.1:  # a device region
            devs = self.files(pi, VfioDeviceFile, lambda f: f.access_granted)
            fd = self.pick(devs) if devs and rng.random() < 0.9 else self.bad_fd(pi)
            length = rng.choice([PAGE, 2 * PAGE, 1 << 20, 1 << 16])
            kw = {"fd": fd, "offset": rng.choice([0, 0, PAGE, 1 << 19, 1 << 40, 7 << 40,
                                                  boundary(rng) if self.wild else 0])}
        elif r < 0.25:  # a memfd
            fds = self.files(pi, MemFdFile)
            if not fds:
                return self.memfd(pi)
            fd = self.pick(fds)
            size = self.file(pi, fd, MemFdFile).memfd.size
            length = max(PAGE, min(length, size)) if size else PAGE
            kw = {"fd": fd, "offset": rng.choice([0, 0, PAGE, 0x800,
                                                  size - length if self.wild else 0]),
                  "private": rng.random() < 0.3}
        elif r < 0.32:
            kw = {"shared": True}
        else:
            backing = rng.choice(["anon", "anon", "anon", "thp", "thp", "hugetlb-2M",
                                  "hugetlb-1G" if rng.random() < 0.1 * self.wild else "anon"])
        kw.setdefault("populate", rng.random() < 0.2)
        prot = "r" if rng.random() < 0.1 else "rw"
        if rng.random() < 0.05 * self.wild:  # lengths mmap must refuse
            length = rng.choice([0, -1, -PAGE, 1 << 45, 1 << 47, 1 << 64, U64,
                                 boundary(rng)])
        if rng.random() < 0.01:
            backing, prot = rng.choice([("thp2", "rw"), ("anon", "x"), ("anon", "")])
        return [Op(pi, "mmap", (length, backing, prot), tuple(kw.items()))]

    def munmap(self, pi: int) -> list[Op]:
        rng = self.rng
        vma = self.vma(pi)
        if vma is None:
            return self.mmap(pi)
        size = vma.end - vma.start
        r = rng.random()
        if r < 0.5:
            addr, length = vma.start, size
        elif r < 0.85:
            lo = rng.randrange(size // PAGE) * PAGE
            addr, length = vma.start + lo, rng.randrange(1, (size - lo) // PAGE + 1) * PAGE
        elif r < 0.92:
            addr, length = vma.start, size + rng.choice([PAGE, 1 << 21, 1 << 30])
        else:
            addr = rng.choice([vma.start + 1, vma.start, 0, U64 - 0xFFF])
            length = rng.choice([0, -PAGE, 1, U64, 1 << 47, boundary(rng)])
        return [Op(pi, "munmap", (addr, length))]

    def rw(self, pi: int) -> list[Op]:
        rng = self.rng
        n = rng.choice([1, 8, 64, PAGE, 3 * PAGE])
        va = self.uptr(pi, n, writable=True, pinnable=False)
        if rng.random() < 0.03:
            va = boundary(rng)
        if rng.random() < 0.4:
            return [Op(pi, "read", (va, n))]
        return [Op(pi, "write", (va, fill_bytes(rng, n)))]

    def memfd(self, pi: int) -> list[Op]:
        rng = self.rng
        fds = self.files(pi, MemFdFile)
        if fds and rng.random() < 0.4:
            size = rng.choice([0, PAGE, 5 * PAGE, 1 << 21, 4 << 20, 3 << 21])
            if rng.random() < 0.05 * self.wild:
                size = rng.choice([-1, 1 << 45, 1 << 63, boundary(rng)])
            fd = self.pick(fds) if rng.random() < 0.9 else self.bad_fd(pi)
            return [Op(pi, "ftruncate", (fd, size))]
        hugetlb = rng.choice([None, None, None, "2M", "1G" if rng.random() < 0.1 else None])
        size = rng.choice([0, PAGE, 16 * PAGE, 1 << 21, 4 << 20])
        if hugetlb:
            size = -(-size // (2 << 20)) * (2 << 20)
        if rng.random() < 0.04 * self.wild:
            size = rng.choice([-1, 1 << 45, boundary(rng)])
        if rng.random() < 0.02:
            hugetlb = "3M"
        return [Op(pi, "memfd_create", ("fuzz", size, hugetlb))]

    def fork_or_exit(self, pi: int) -> list[Op]:
        rng = self.rng
        live = self.w.live()
        if len(live) < 4 and rng.random() < 0.55:
            return [Op(pi, "fork")]
        if len(live) > 1 and rng.random() < 0.8:
            return [Op(rng.choice(live[1:]), "exit")]
        if rng.random() < 0.1:
            return [Op(pi, "exit")]
        limit = rng.choice([None, 1 << 20, 1 << 24, 0])
        return [Op(0, "spawn", kwargs=(("memlock_limit", limit),
                                       ("cap_ipc_lock", rng.random() < 0.3),
                                       ("uid", rng.choice([1000, 1001])),
                                       ("cap_sys_resource", rng.random() < 0.3)))]

    def close(self, pi: int) -> list[Op]:
        fds = sorted(self.w.procs[pi].files)
        fd = self.rng.choice(fds) if fds and self.rng.random() < 0.9 else self.bad_fd(pi)
        return [Op(pi, "close", (fd,))]

    def open_any(self, pi: int) -> list[Op]:
        rng = self.rng
        groups = sorted({d.iommu_group for d in self.w.machine.devices.values()
                         if d.iommu_group is not None})
        paths = ["/dev/iommu", "/dev/vfio/vfio", *(f"/dev/vfio/{g}" for g in groups),
                 *(f"/dev/vfio/devices/vfio{i}" for i in range(self.w.config.devices))]
        if rng.random() < 0.15:
            paths = ["/dev/vfio/", "/dev/vfio/99", "/dev/vfio/devices/vfio9",
                     "/dev/vfio/devices/vfio-1", "/dev/vfio/devices/", "/dev/null",
                     "/dev/vfio/devices/vfio01", "/dev/vfio/ 0", "/dev/iommu/"]
        return [Op(pi, "open", (rng.choice(paths),))]

    def dma(self, pi: int) -> list[Op]:
        """A device reads or writes, mostly where its domain maps something."""
        rng = self.rng
        devs = self.w.devices()
        if not devs:
            return self.open_any(pi)
        live = [(d, m) for d in devs for m in self.mapped if self._maps(d, m.iova)]
        if live and rng.random() < 0.85:
            dev, h = rng.choice(live)
        else:
            dev, h = rng.choice(devs), self.hint()
        n = rng.choice([1, 4, 64, PAGE, 2 * PAGE, 5000])
        iova = h.iova + rng.randrange(max(1, min(h.length, 1 << 24)))
        if rng.random() < 0.05:
            iova, n = rng.choice([(U64 - 3, 8), (boundary(rng), PAGE), (0, 0),
                                  (h.iova + h.length - 2, 8)])
        iova = min(iova, (1 << 64) - n)  # a device address is 64 bits
        if rng.random() < 0.5:
            return [Op(dev.sid, "dma_read", (iova, n))]
        return [Op(dev.sid, "dma_write", (iova, fill_bytes(rng, n)))]

    @staticmethod
    def _maps(dev: DmaDevice, iova: int) -> bool:
        """Whether ``dev``'s current domain translates ``iova``."""
        domain = dev.group.domain if dev.group is not None else None
        return domain is not None and domain.ops is not None and \
            bool(domain.iova_to_phys(iova))

    # -- VFIO container, group, device fds ---------------------------------------------------
    def _containers(self, pi: int) -> list[int]:
        """Container fds, those with a group set first."""
        files = self.w.procs[pi].files
        fds = self.files(pi, (Container, IommufdFile))
        ready = [fd for fd in fds if _container_ready(files[fd])]
        return ready if ready and self.rng.random() < 0.75 else fds

    def type1(self, pi: int) -> list[Op]:
        """A container (/dev/vfio/vfio: type1, or iommufd's compatibility one) with a group
        set to it and an IOMMU type, then its ioctls; what is missing is made first."""
        rng = self.rng
        containers = self._containers(pi)
        groups = self.files(pi, GroupFile)
        if not containers or rng.random() < 0.04:
            return [Op(pi, "open", ("/dev/vfio/vfio",))]
        if not groups or rng.random() < 0.05:
            gids = sorted({d.iommu_group for d in self.w.machine.devices.values()
                           if d.iommu_group is not None})
            return [Op(pi, "open", (f"/dev/vfio/{rng.choice(gids)}",))] if gids else []
        c = self.pick(containers)
        files = self.w.procs[pi].files
        cf = files[c]
        free = [g for g in groups if not self.file(pi, g, GroupFile).has_iommu()]
        unset = (isinstance(cf, Container) and not cf.groups) or \
            (isinstance(cf, IommufdFile) and cf.ctx.vfio_ioas is None)
        if unset and free and rng.random() < 0.8:
            return self._t1_set_container(pi, c, self.pick(free))
        if isinstance(cf, Container) and cf.iommu is None and rng.random() < 0.8:
            return self._t1_set_iommu(pi, c, 0)
        g = self.pick(groups)
        step = rng.choices(
            ["set_container", "set_iommu", "map", "unmap", "dirty", "info", "ext", "status",
             "unset", "device_fd", "device"],
            [0.4, 0.3, 6, 4, 2.5, 1, 1, 0.7, 0.4, 2, 5])[0]
        return list(getattr(self, "_t1_" + step)(pi, c, g))

    def _t1_set_container(self, pi: int, c: int, g: int) -> list[Op]:
        fd = c if self.rng.random() < 0.85 else self.bad_fd(pi)
        return [Op(pi, "ioctl", (g, vu.VFIO_GROUP_SET_CONTAINER, struct.pack("<i", fd)),
                   note=f"container fd {fd}")]

    def _t1_set_iommu(self, pi: int, c: int, g: int) -> list[Op]:
        t = self.rng.choice([vu.VFIO_TYPE1v2_IOMMU] * 4 + [
            vu.VFIO_TYPE1_IOMMU, vu.VFIO_TYPE1_NESTING_IOMMU, vu.VFIO_SPAPR_TCE_IOMMU,
            vu.VFIO_NOIOMMU_IOMMU, 0, boundary(self.rng, 32)])
        return [Op(pi, "ioctl", (c, vu.VFIO_SET_IOMMU, t))]

    def _t1_ext(self, pi: int, c: int, g: int) -> list[Op]:
        if self.rng.random() < 0.2:
            return [Op(pi, "ioctl", (c, vu.VFIO_GET_API_VERSION, 0))]
        return [Op(pi, "ioctl", (c, vu.VFIO_CHECK_EXTENSION, self.rng.randrange(13)))]

    def _t1_info(self, pi: int, c: int, g: int) -> list[Op]:
        sp = specs.VFIO["GET_INFO"]
        argsz = self.rng.choice([16, 24, 24, 64, 256])
        ops = self.ioctl(pi, c, sp, {"argsz": argsz})
        op = ops[0]
        arg = op.args[2]
        if isinstance(arg, bytes) and argsz > len(arg):
            op = Op(op.who, op.call, (op.args[0], op.args[1], arg + bytes(argsz - len(arg))),
                    note=op.note)
        return [op]

    def _t1_map(self, pi: int, c: int, g: int) -> list[Op]:
        if self.vma(pi, writable=True, pinnable=True) is None:
            return self.mmap(pi)
        length = self.length()
        va = self.uptr(pi, length, writable=self.rng.random() < 0.9,
                       pinnable=self.rng.random() < 0.9)
        flags = self.rng.choice([3, 3, 3, 1, 2, 0, vu.VFIO_DMA_MAP_FLAG_VADDR])
        return self.ioctl(pi, c, specs.VFIO["MAP_DMA"],
                          {"flags": flags, "vaddr": va, "iova": self.iova(length),
                           "size": length})

    def _t1_unmap(self, pi: int, c: int, g: int) -> list[Op]:
        rng = self.rng
        h = self.hint()
        r = rng.random()
        iova, size, flags = h.iova, h.length, 0
        if r < 0.15:
            iova, size, flags = 0, 0, vu.VFIO_DMA_UNMAP_FLAG_ALL
        elif r < 0.35:
            iova += rng.randrange(max(1, h.length // PAGE)) * PAGE
            size = PAGE * rng.randrange(1, 8)
        elif r < 0.55:  # with a dirty bitmap
            bsize = max(8, -(-(size // PAGE) // 64) * 8)
            return self.ioctl(pi, c, specs.VFIO["UNMAP_DMA_BITMAP"], {
                "flags": vu.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, "iova": iova, "size": size,
                "pgsize": PAGE, "bsize": bsize, "data": self.uptr(pi, bsize, writable=True)})
        elif r < 0.6:
            flags = vu.VFIO_DMA_UNMAP_FLAG_VADDR
        return self.ioctl(pi, c, specs.VFIO["UNMAP_DMA"],
                          {"flags": flags, "iova": iova, "size": size})

    def _t1_dirty(self, pi: int, c: int, g: int) -> list[Op]:
        rng = self.rng
        legacy = self.files(pi, Container, lambda x: x.iommu is not None)
        if legacy and rng.random() < 0.9:
            c = self.pick(legacy)
        r = rng.random()
        if r < 0.45:
            flags = rng.choice([vu.VFIO_IOMMU_DIRTY_PAGES_FLAG_START] * 3 +
                               [vu.VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP, 0, 3])
            return self.ioctl(pi, c, specs.VFIO["DIRTY_PAGES"], {"flags": flags})
        h = self.hint()
        size = h.length
        bsize = max(8, -(-(size // PAGE) // 64) * 8)
        return self.ioctl(pi, c, specs.VFIO["DIRTY_GET_BITMAP"], {
            "flags": vu.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP, "iova": h.iova, "size": size,
            "pgsize": rng.choice([PAGE, PAGE, 1 << 21, 0x3000]), "bsize": bsize,
            "data": self.uptr(pi, bsize, writable=True)})

    def _t1_status(self, pi: int, c: int, g: int) -> list[Op]:
        return self.ioctl(pi, g, specs.VFIO["GROUP_STATUS"], {})

    def _t1_unset(self, pi: int, c: int, g: int) -> list[Op]:
        return [Op(pi, "ioctl", (g, vu.VFIO_GROUP_UNSET_CONTAINER, 0))]

    def _t1_device_fd(self, pi: int, c: int, g: int) -> list[Op]:
        gf = self.file(pi, g, GroupFile)
        names = [d.bdf for d in self.w.machine.group_devices(gf.id)]
        name = (self.pick(names) or "0000:00:02.0").encode()
        r = self.rng.random()
        if r < 0.1:
            name = self.rng.choice([b"", b"0000:00:1f.7", b"\xff\xfe", b"0000:00:02.0" * 9])
        arg = name + (b"\0" if r < 0.95 else b"")
        return [Op(pi, "ioctl", (g, vu.VFIO_GROUP_GET_DEVICE_FD, arg))]

    def _t1_device(self, pi: int, c: int, g: int) -> list[Op]:
        devs = self.files(pi, VfioDeviceFile)
        if not devs:
            return self._t1_device_fd(pi, c, g)
        usable = self.files(pi, VfioDeviceFile, lambda f: f.access_granted)
        if self.rng.random() < 0.85:
            if not usable:
                return self._t1_device_fd(pi, c, g)
            devs = usable
        return self._device_ioctl(pi, self.pick(devs))

    def _device_ioctl(self, pi: int, fd: int) -> list[Op]:
        rng = self.rng
        r = rng.random()
        if r < 0.15:
            return self.ioctl(pi, fd, specs.VFIO["DEVICE_INFO"],
                              {"argsz": rng.choice([16, 24])})
        if r < 0.3:
            return self.ioctl(pi, fd, specs.VFIO["REGION_INFO"],
                              {"index": rng.choice([0, 0, 7, 6, 8, 9, 1])})
        if r < 0.4:
            return self.ioctl(pi, fd, specs.VFIO["IRQ_INFO"],
                              {"index": rng.choice([0, 1, 2, 3, 4, 5, U32])})
        if r < 0.9:  # interrupts and regions: mostly on a device that has them (edu)
            edu = self.files(pi, VfioDeviceFile,
                             lambda f: f.access_granted and f.dev.fn.ident.interrupt_pin)
            if edu and rng.random() < 0.8:
                fd = self.pick(edu)
            return self._set_irqs(pi, fd) if r < 0.6 else self._region_rw(pi, fd)
        if r < 0.95:
            return self._hot_reset(pi, fd)
        return [Op(pi, "ioctl", (fd, rng.choice([vu.VFIO_DEVICE_RESET, vu.VFIO_IOMMU_MAP_DMA,
                                                 iu.IOMMU_IOAS_ALLOC]), bytes(32)))]

    def _hot_reset(self, pi: int, fd: int) -> list[Op]:
        """GET_PCI_HOT_RESET_INFO with room for a few devices, or PCI_HOT_RESET with the
        process's group fds (none, as a cdev wants, at times)."""
        rng = self.rng
        if rng.random() < 0.5:
            room = rng.choice([0, 1, 4])
            ops = self.ioctl(pi, fd, specs.VFIO["HOT_RESET_INFO"],
                             {"argsz": vu.HOT_RESET_INFO.size + 16 * room})
            tail = bytes(16 * room)
        else:
            groups = self.files(pi, GroupFile)[:rng.choice([0, 1, 2])]
            tail = b"".join(struct.pack("<i", g) for g in groups)
            ops = self.ioctl(pi, fd, specs.VFIO["HOT_RESET"],
                             {"argsz": vu.HOT_RESET.size + len(tail), "count": len(groups)})
        op = ops[0]
        if isinstance(op.args[2], bytes):
            op = Op(op.who, op.call, (op.args[0], op.args[1], op.args[2] + tail), note=op.note)
        return [op]

    def _eventfd(self, pi: int) -> int:
        """An eventfd of the process, mostly; else a bad fd (or -1, which clears)."""
        efds = self.files(pi, EventFdFile)
        r = self.rng.random()
        if efds and r < 0.8:
            return int(self.pick(efds))
        return -1 if r < 0.88 else self.bad_fd(pi)

    def _set_irqs(self, pi: int, fd: int) -> list[Op]:
        """VFIO_DEVICE_SET_IRQS: an interrupt index and action with eventfds (made
        first when the process has none), bools or no data."""
        rng = self.rng
        if not self.files(pi, EventFdFile) and rng.random() < 0.7:
            return [Op(pi, "eventfd", (rng.choice([0, 0, 1]),))]
        df = self.w.procs[pi].files.get(fd)
        pci = df.vdev.pci if isinstance(df, VfioDeviceFile) else None
        index = rng.choice([0, 0, 0, 1, 1, 1, 1, 4, 2, 3, 5])
        if pci is not None and pci.dev.ident.interrupt_pin and rng.random() < 0.6:
            in_use = pci.irqs.irq_type  # mostly the type in use, or one when none is
            index = in_use if in_use < 2 and rng.random() < 0.7 else rng.choice([0, 1])
        action = rng.choice([vu.VFIO_IRQ_SET_ACTION_TRIGGER] * 4 + [
            vu.VFIO_IRQ_SET_ACTION_MASK, vu.VFIO_IRQ_SET_ACTION_UNMASK])
        data_type = rng.choice([vu.VFIO_IRQ_SET_DATA_EVENTFD] * 3 + [
            vu.VFIO_IRQ_SET_DATA_NONE, vu.VFIO_IRQ_SET_DATA_BOOL])
        start, count = 0, rng.choice([1, 1, 1, 1, 1, 0, 2])
        if data_type == vu.VFIO_IRQ_SET_DATA_EVENTFD:
            data = b"".join(struct.pack("<i", self._eventfd(pi)) for _ in range(count))
        elif data_type == vu.VFIO_IRQ_SET_DATA_BOOL:
            data = bytes(rng.choice([0, 1]) for _ in range(count))
        else:
            data = b""
        ops = self.ioctl(pi, fd, specs.VFIO["SET_IRQS"],
                         {"argsz": 20 + len(data), "flags": data_type | action,
                          "index": index, "start": start, "count": count})
        op = ops[0]
        if isinstance(op.args[2], bytes):
            op = Op(op.who, op.call, (op.args[0], op.args[1], op.args[2] + data), note=op.note)
        return [op]

    def _region_rw(self, pi: int, fd: int) -> list[Op]:
        """pread/pwrite of a device region: config space (its command register and BAR
        most), BAR 0 (edu's registers: a DMA through the IOMMU to a mapped IOVA, mostly)
        or an offset no region has."""
        rng = self.rng
        r = rng.random()
        cfg = vu.VFIO_PCI_CONFIG_REGION_INDEX << vu.VFIO_PCI_OFFSET_SHIFT
        if r < 0.35:
            off = cfg + rng.choice([0, 4, 4, 4, 0x10, 0x3C, 0x40, 0x42, 0x44, 0xFE,
                                    rng.randrange(0x100)])
            n = rng.choice([1, 2, 4, 4, 8, 0x100, 1 << 40])
            if rng.random() < 0.5:
                return [Op(pi, "pread", (fd, n, off))]
            value = rng.choice([0x6, 0x2, 0x406, 0, 0xFFFF_FFFF, rng.randrange(1 << 32)])
            return [Op(pi, "pwrite", (fd, value.to_bytes(4, "little")[:min(n, 4)], off))]
        if r < 0.8:  # edu's DMA engine: source, destination, count, command
            h = self.hint()
            ram = (h.iova + rng.choice([0, 0, PAGE, h.length])) & U64  # a 64-bit register
            buf = 0x40000 + rng.choice([0, 0, 0x800, 0xFF8, 0x1000])
            to_ram = rng.random() < 0.5
            cnt = rng.choice([8, 64, PAGE, 0x801, 1 << 40])
            regs = struct.pack("<QQQQ", buf if to_ram else ram, ram if to_ram else buf, cnt,
                               1 | (2 if to_ram else 0) | (4 if rng.random() < 0.7 else 0))
            return [Op(pi, "pwrite", (fd, regs, 0x80), note="edu DMA")]
        if r < 0.95:
            off = rng.choice([0, 4, 8, 0x20, 0x24, 0x60, 0x64, 0x98, (1 << 20) - 4, 1 << 20])
            if rng.random() < 0.5:
                return [Op(pi, "pread", (fd, rng.choice([1, 4, 8, 64]), off))]
            return [Op(pi, "pwrite", (fd, rng.randrange(1 << 32).to_bytes(4, "little"), off))]
        off = rng.choice([-1, 6 << 40, 8 << 40, 9 << 40, (1 << 63) - 2, 1 << 40])
        return [Op(pi, "pread", (fd, 4, off))]

    def eventfd_ops(self, pi: int) -> list[Op]:
        """An eventfd made, read, written or read at an offset (ESPIPE)."""
        rng = self.rng
        efds = self.files(pi, EventFdFile)
        if not efds or rng.random() < 0.2:
            return [Op(pi, "eventfd", (rng.choice([0, 0, 5, 1 << 32]),),
                       (("semaphore", rng.random() < 0.3),))]
        fd = self.pick(efds) if rng.random() < 0.9 else self.bad_fd(pi)
        r = rng.random()
        if r < 0.6:
            return [Op(pi, "read_fd", (fd, rng.choice([8, 8, 4, 16])))]
        if r < 0.9:
            value = rng.choice([1, 2, U64, U64 - 1, 0])
            return [Op(pi, "write_fd", (fd, value.to_bytes(8, "little")))]
        return [Op(pi, "pread", (fd, 8, 0))]

    # -- VFIO device cdevs -------------------------------------------------------------------
    def cdev(self, pi: int) -> list[Op]:
        rng = self.rng
        cdevs = self.files(pi, VfioDeviceFile, lambda f: f.group is None)
        if not cdevs or rng.random() < 0.06:
            n = rng.randrange(self.w.config.devices + (1 if rng.random() < 0.1 else 0))
            return [Op(pi, "open", (f"/dev/vfio/devices/vfio{n}",))]
        fd = self.pick(cdevs)
        df = self.file(pi, fd, VfioDeviceFile)
        iommufds = self.files(pi, IommufdFile)
        if not df.access_granted or rng.random() < 0.08:
            if not iommufds:
                return [Op(pi, "open", ("/dev/iommu",))]
            return self.ioctl(pi, fd, specs.VFIO["BIND"], {"iommufd": self.pick(iommufds)})
        r = rng.random()
        f = df.iommufd
        if r < 0.5:
            flags = vu.VFIO_DEVICE_ATTACH_PASID if rng.random() < 0.1 else 0
            return self.ioctl(pi, fd, specs.VFIO["ATTACH"],
                              {"flags": flags,
                               "pt_id": self.obj_id(f, Ioas, HwptPaging, HwptNested),
                               "pasid": rng.choice([0, 0, 1, U32])}, file=f)
        if r < 0.7:
            flags = vu.VFIO_DEVICE_DETACH_PASID if rng.random() < 0.1 else 0
            return self.ioctl(pi, fd, specs.VFIO["DETACH"],
                              {"flags": flags, "pasid": rng.choice([0, 0, 1])})
        return self._device_ioctl(pi, fd)

    # -- iommufd -----------------------------------------------------------------------------
    def iommufd(self, pi: int) -> list[Op]:
        rng = self.rng
        fds = self.files(pi, IommufdFile)
        if not fds or rng.random() < 0.03:
            return [Op(pi, "open", ("/dev/iommu",))]
        fd = self.pick(fds)
        f = self.file(pi, fd, IommufdFile)
        if not self.ids(f, Ioas) and rng.random() < 0.7:
            return self.ioctl(pi, fd, specs.IOMMUFD[iu.IOMMU_IOAS_ALLOC], {}, file=f)
        steps = {"alloc": 1.5, "map": 6, "map_file": 2, "unmap": 4, "copy": 2, "ranges": 1,
                 "allow": 0.7, "option": 1, "vfio_ioas": 1.2, "hwpt": 2.5, "hw_info": 1,
                 "dirty_set": 2, "dirty_get": 2.5, "invalidate": 0.4, "change": 0.5,
                 "destroy": 2.5, "compat": 3, "unknown": 0.3}
        step = rng.choices(list(steps), list(steps.values()))[0]
        return list(getattr(self, "_fd_" + step)(pi, fd, f))

    def _cmd(self, pi: int, fd: int, f: IommufdFile, req: int, values: dict[str, int]
             ) -> list[Op]:
        return self.ioctl(pi, fd, specs.IOMMUFD[req], values, file=f)

    def _fd_alloc(self, pi: int, fd: int, f: IommufdFile) -> list[Op]:
        return self._cmd(pi, fd, f, iu.IOMMU_IOAS_ALLOC, {})

    def _map_flags(self) -> int:
        rng = self.rng
        flags = rng.choice([6, 6, 6, 2, 4, 0])
        if rng.random() < 0.4:
            flags |= iu.IOMMU_IOAS_MAP_FIXED_IOVA
        return flags

    def _fd_map(self, pi: int, fd: int, f: IommufdFile, ioas: Ioas | None = None
                ) -> list[Op]:
        """IOAS_MAP of user memory into ``ioas`` (None: any)."""
        if self.vma(pi, writable=True, pinnable=True) is None:
            return self.mmap(pi)
        length = self.length()
        va = self.uptr(pi, length, writable=self.rng.random() < 0.9,
                       pinnable=self.rng.random() < 0.9)
        return self._cmd(pi, fd, f, iu.IOMMU_IOAS_MAP, {
            "flags": self._map_flags(), "ioas_id": ioas.id if ioas else self.obj_id(f, Ioas),
            "user_va": va, "length": length, "iova": self.iova(length)})

    def _need_areas(self, pi: int, fd: int, f: IommufdFile, ioas: Ioas | None
                    ) -> list[Op] | None:
        """A map into ``ioas`` when it has nothing mapped, mostly."""
        if ioas is None or ioas.iopt.areas() or self.rng.random() < 0.2 or \
                ioas.id not in f.ctx.objects:
            return None
        return self._fd_map(pi, fd, f, ioas)

    def _tracking(self, pi: int, fd: int, f: IommufdFile, hwpt: HwptPaging | None
                  ) -> list[Op]:
        """SET_DIRTY_TRACKING on ``hwpt`` first when it can track and does not yet."""
        ops = hwpt.domain.dirty_ops if hwpt is not None else None
        if hwpt is None or ops is None or getattr(ops, "tracking", True) or \
                self.rng.random() < 0.3:
            return []
        return self._cmd(pi, fd, f, iu.IOMMU_HWPT_SET_DIRTY_TRACKING,
                         {"flags": iu.IOMMU_HWPT_DIRTY_TRACKING_ENABLE, "hwpt_id": hwpt.id})

    def _fd_map_file(self, pi: int, fd: int, f: IommufdFile) -> list[Op]:
        memfds = self.files(pi, MemFdFile)
        if not memfds:
            return self.memfd(pi)
        mfd = self.pick(memfds) if self.rng.random() < 0.9 else self.map_file_fd(pi)
        size = self.file(pi, mfd, MemFdFile).memfd.size if mfd in memfds else PAGE
        length = min(self.length(), max(size, PAGE))
        start = self.rng.choice([0, 0, PAGE, max(0, size - length), 0x10])
        return self._cmd(pi, fd, f, iu.IOMMU_IOAS_MAP_FILE, {
            "flags": self._map_flags(), "ioas_id": self.obj_id(f, Ioas), "fd": mfd,
            "start": start, "length": length, "iova": self.iova(length)})

    def map_file_fd(self, pi: int) -> int:
        """A wrong fd for IOAS_MAP_FILE: closed, negative, or a file that holds no iommufd
        context. Mapping an iommufd, a selftest access, a bound device or a group set to an
        iommufd would make the context hold a file that holds the context: the kernel's
        ``iopt_alloc_file_pages`` takes any file, and that cycle is never released (a
        kernel leak the model shares, reported apart), so the fuzzer leaves it out."""
        fd = self.bad_fd(pi)
        f = self.w.procs[pi].files.get(fd)
        if isinstance(f, IommufdFile | AccessFile | VfioDeviceFile | GroupFile):
            return -1
        return fd

    def _fd_unmap(self, pi: int, fd: int, f: IommufdFile) -> list[Op]:
        rng = self.rng
        h = self.hint()
        iova, length = h.iova, h.length
        r = rng.random()
        if r < 0.15:
            iova, length = 0, U64
        elif r < 0.4:
            iova += rng.randrange(max(1, h.length // PAGE)) * PAGE
            length = rng.randrange(1, 8) * PAGE
        return self._cmd(pi, fd, f, iu.IOMMU_IOAS_UNMAP,
                         {"ioas_id": self.obj_id(f, Ioas), "iova": iova, "length": length})

    def _fd_copy(self, pi: int, fd: int, f: IommufdFile) -> list[Op]:
        src = self.pick([o for o in f.ctx.objects.values()
                         if isinstance(o, Ioas) and o.iopt.areas()])
        h = self.hint_in(src)
        length = h.length if self.rng.random() < 0.6 else PAGE * self.rng.randrange(1, 4)
        src_id = src.id if src is not None and self.rng.random() < 0.9 else \
            self.obj_id(f, Ioas)
        return self._cmd(pi, fd, f, iu.IOMMU_IOAS_COPY, {
            "flags": self._map_flags(), "dst_ioas_id": self.obj_id(f, Ioas),
            "src_ioas_id": src_id, "length": length,
            "dst_iova": self.iova(length), "src_iova": h.iova})

    def _fd_ranges(self, pi: int, fd: int, f: IommufdFile) -> list[Op]:
        num = self.rng.choice([0, 1, 4, 16])
        return self._cmd(pi, fd, f, iu.IOMMU_IOAS_IOVA_RANGES, {
            "ioas_id": self.obj_id(f, Ioas), "num_iovas": num,
            "allowed_iovas": self.uptr(pi, 16 * max(num, 1), writable=True, pinnable=False)})

    def _fd_allow(self, pi: int, fd: int, f: IommufdFile) -> list[Op]:
        """The ranges are written to user memory first, then ALLOW_IOVAS reads them."""
        rng = self.rng
        num = rng.choice([0, 1, 1, 2, 3])
        ptr = self.uptr(pi, 16 * max(num, 1), writable=True, pinnable=False)
        ranges = b""
        for _ in range(num):
            start = self.iova()
            last = start + self.rng.choice([PAGE, 1 << 21, 1 << 30]) - 1
            if rng.random() < 0.1:
                start, last = last, start
            ranges += struct.pack("<QQ", start & U64, last & U64)
        ops = [Op(pi, "write", (ptr, ranges))] if ranges else []
        return ops + self._cmd(pi, fd, f, iu.IOMMU_IOAS_ALLOW_IOVAS, {
            "ioas_id": self.obj_id(f, Ioas), "num_iovas": num, "allowed_iovas": ptr})

    def _fd_option(self, pi: int, fd: int, f: IommufdFile) -> list[Op]:
        rng = self.rng
        option = rng.choice([iu.IOMMU_OPTION_RLIMIT_MODE, iu.IOMMU_OPTION_HUGE_PAGES,
                             iu.IOMMU_OPTION_HUGE_PAGES, 2])
        op = rng.choice([iu.IOMMU_OPTION_OP_GET, iu.IOMMU_OPTION_OP_SET,
                         iu.IOMMU_OPTION_OP_SET, 2])
        obj = 0 if option == iu.IOMMU_OPTION_RLIMIT_MODE else self.obj_id(f, Ioas)
        return self._cmd(pi, fd, f, iu.IOMMU_OPTION, {
            "option_id": option, "op": op, "object_id": obj,
            "val64": rng.choice([0, 1, 1, 2])})

    def _fd_vfio_ioas(self, pi: int, fd: int, f: IommufdFile) -> list[Op]:
        op = self.rng.choice([iu.IOMMU_VFIO_IOAS_SET, iu.IOMMU_VFIO_IOAS_SET,
                              iu.IOMMU_VFIO_IOAS_GET, iu.IOMMU_VFIO_IOAS_CLEAR, 3])
        return self._cmd(pi, fd, f, iu.IOMMU_VFIO_IOAS,
                         {"ioas_id": self.obj_id(f, Ioas), "op": op})

    def _need_device(self, pi: int, fd: int, f: IommufdFile) -> list[Op] | None:
        """Ops that bind a device to ``f`` when it has none (a cdev, or on the mock a
        MOCK_DOMAIN), at times none."""
        if self.ids(f, Device) or self.rng.random() < 0.2:
            return None
        if self.mock and self.rng.random() < 0.6:
            return self.selftest(pi, fd=fd, op=2)
        cdevs = self.files(pi, VfioDeviceFile, lambda d: d.group is None and
                           not d.access_granted)
        if not cdevs:
            n = self.rng.randrange(self.w.config.devices)
            return [Op(pi, "open", (f"/dev/vfio/devices/vfio{n}",))]
        return self.ioctl(pi, self.pick(cdevs), specs.VFIO["BIND"], {"iommufd": fd})

    def _fd_hwpt(self, pi: int, fd: int, f: IommufdFile) -> list[Op]:
        rng = self.rng
        need = self._need_device(pi, fd, f)
        if need is not None:
            return need
        flags = rng.choice([0, 0, iu.IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
                            iu.IOMMU_HWPT_ALLOC_DIRTY_TRACKING, iu.IOMMU_HWPT_ALLOC_NEST_PARENT,
                            iu.IOMMU_HWPT_FAULT_ID_VALID, iu.IOMMU_HWPT_ALLOC_PASID])
        vals = {"flags": flags, "dev_id": self.obj_id(f, Device),
                "pt_id": self.obj_id(f, Ioas, HwptPaging)}
        if rng.random() < 0.15:  # driver data: the selftest's struct, or anything
            vals |= {"data_type": rng.choice([1, 2, 3, 0xdead]), "data_len": rng.choice([4, 8]),
                     "data_uptr": self.uptr(pi, 8, pinnable=False)}
        return self._cmd(pi, fd, f, iu.IOMMU_HWPT_ALLOC, vals)

    def _fd_hw_info(self, pi: int, fd: int, f: IommufdFile) -> list[Op]:
        rng = self.rng
        need = self._need_device(pi, fd, f)
        if need is not None:
            return need
        data_len = rng.choice([0, 8, 24, 40, 64, 4096])
        new = self.kernel >= LINUX_7_0
        flags = iu.IOMMU_HW_INFO_FLAG_INPUT_TYPE if new and rng.random() < 0.3 else 0
        return self._cmd(pi, fd, f, iu.IOMMU_GET_HW_INFO, {
            "flags": flags, "dev_id": self.obj_id(f, Device), "data_len": data_len,
            "data_uptr": self.uptr(pi, data_len, writable=True, pinnable=False),
            "data_type": rng.choice([0, 1, 2, iu.IOMMU_HW_INFO_TYPE_SELFTEST])})

    def _need_dirty_hwpt(self, pi: int, fd: int, f: IommufdFile) -> list[Op] | None:
        """HWPT_ALLOC with DIRTY_TRACKING when ``f`` has no HWPT that tracks, mostly."""
        if self.hwpt(f, dirty=True) is not None or self.rng.random() < 0.25:
            return None
        need = self._need_device(pi, fd, f)
        if need is not None:
            return need
        return self._cmd(pi, fd, f, iu.IOMMU_HWPT_ALLOC, {
            "flags": iu.IOMMU_HWPT_ALLOC_DIRTY_TRACKING, "dev_id": self.obj_id(f, Device),
            "pt_id": self.obj_id(f, Ioas)})

    def _hwpt_id(self, f: IommufdFile, hwpt: HwptPaging | None) -> int:
        if hwpt is not None and self.rng.random() < 0.9:
            return hwpt.id
        return self.obj_id(f, HwptPaging)

    def _fd_dirty_set(self, pi: int, fd: int, f: IommufdFile) -> list[Op]:
        need = self._need_dirty_hwpt(pi, fd, f)
        if need is not None:
            return need
        flags = self.rng.choice([1, 1, 1, 0, 2])
        return self._cmd(pi, fd, f, iu.IOMMU_HWPT_SET_DIRTY_TRACKING,
                         {"flags": flags, "hwpt_id": self._hwpt_id(f, self.hwpt(f, dirty=True))})

    def _fd_dirty_get(self, pi: int, fd: int, f: IommufdFile) -> list[Op]:
        rng = self.rng
        need = self._need_dirty_hwpt(pi, fd, f)
        if need is not None:
            return need
        hwpt = self.hwpt(f, dirty=True)
        need = self._need_areas(pi, fd, f, hwpt.ioas if hwpt is not None else None)
        if need is not None:
            return need
        pre = self._tracking(pi, fd, f, hwpt)
        h = self.hint_in(hwpt.ioas if hwpt is not None else None)
        page = rng.choice([PAGE, PAGE, PAGE, 2048, 1 << 21, 0x3000])
        length = h.length if rng.random() < 0.7 else rng.randrange(1, 8) * PAGE
        nbytes = max(8, -(-(length // max(page, 1)) // 64) * 8)
        return pre + self._cmd(pi, fd, f, iu.IOMMU_HWPT_GET_DIRTY_BITMAP, {
            "hwpt_id": self._hwpt_id(f, hwpt),
            "flags": rng.choice([0, 0, iu.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR]),
            "iova": h.iova, "length": length, "page_size": page,
            "data": self.uptr(pi, nbytes, writable=True, pinnable=False)})

    def _fd_invalidate(self, pi: int, fd: int, f: IommufdFile) -> list[Op]:
        return self._cmd(pi, fd, f, iu.IOMMU_HWPT_INVALIDATE, {
            "hwpt_id": self.obj_id(f, HwptPaging), "data_uptr": self.uptr(pi, 64),
            "data_type": self.rng.choice([0, 1, 2]), "entry_len": self.rng.choice([0, 16, 32]),
            "entry_num": self.rng.choice([0, 1, 2])})

    def _fd_change(self, pi: int, fd: int, f: IommufdFile) -> list[Op]:
        """IOAS_CHANGE_PROCESS; with a non-zero ``__reserved`` (refused) when it would
        move pages pinned without accounting (CAP_IPC_LOCK, ACCOUNT_NONE) from another
        mm: the kernel changes their mm without moving the ``pinned_vm`` charge, so the
        old mm keeps it and the new one goes negative at unpin (a kernel wart the model
        keeps, tests/iommufd/test_selftest_fork.py), which the leak check would report
        on every such sequence."""
        mm = self.w.procs[pi].mm
        wart = any(a.pages is not None and a.pages.account.mode == ACCOUNT_NONE and
                   a.pages.account.mm is not mm
                   for o in f.ctx.objects.values() if isinstance(o, Ioas)
                   for a in o.iopt.areas())
        return self._cmd(pi, fd, f, iu.IOMMU_IOAS_CHANGE_PROCESS, {"rsvd": int(wart)})

    def _fd_destroy(self, pi: int, fd: int, f: IommufdFile) -> list[Op]:
        return self._cmd(pi, fd, f, iu.IOMMU_DESTROY,
                         {"id": self.obj_id(f, Ioas, HwptPaging, HwptNested, Device,
                                            Access, SelftestDevice)})

    def _fd_unknown(self, pi: int, fd: int, f: IommufdFile) -> list[Op]:
        req = self.rng.choice(specs.UNKNOWN_IOMMUFD)
        return [Op(pi, "ioctl", (fd, req, struct.pack("<I", 32) + bytes(60)))]

    def _fd_compat(self, pi: int, fd: int, f: IommufdFile) -> list[Op]:
        """The VFIO container ioctls on an iommufd (vfio_compat.c)."""
        rng = self.rng
        step = rng.choice(["set_iommu", "ext", "info", "map", "map", "map", "unmap", "unmap",
                           "unmap", "dirty" if rng.random() < 0.3 else "info"])
        if step == "dirty":
            return self._t1_dirty(pi, fd, fd)
        return list(getattr(self, "_t1_" + step)(pi, fd, fd))

    # -- random bytes ------------------------------------------------------------------------
    def garbage(self, pi: int) -> list[Op]:
        """Any request on any fd with random bytes (the first four at times a plausible
        size)."""
        rng = self.rng
        fds = sorted(self.w.procs[pi].files)
        fd = rng.choice(fds) if fds else self.bad_fd(pi)
        reqs = [*specs.IOMMUFD, *specs.UNKNOWN_IOMMUFD, iu.IOMMU_TEST_CMD,
                *(s.request for s in specs.VFIO.values()), vu.VFIO_GET_API_VERSION,
                vu.VFIO_CHECK_EXTENSION, vu.VFIO_SET_IOMMU, vu.VFIO_GROUP_SET_CONTAINER,
                vu.VFIO_GROUP_UNSET_CONTAINER, vu.VFIO_GROUP_GET_DEVICE_FD,
                vu.VFIO_DEVICE_RESET, rng.randrange(1 << 32)]
        req = rng.choice(reqs)
        n = rng.choice([0, 2, 4, 8, 16, 24, 32, 40, 48, 72, 80, 128])
        raw = bytearray(rng.randbytes(n))
        if n >= 4 and rng.random() < 0.6:
            raw[:4] = struct.pack("<I", rng.choice([n, n, 8, 12, 16, 24, 32, 40, 48, 72]))
        return [Op(pi, "ioctl", (fd, req, bytes(raw)), note="random bytes")]

    # -- the selftest's IOMMU_TEST_CMD -------------------------------------------------------
    def selftest(self, pi: int, *, fd: int | None = None, op: int = 0) -> list[Op]:
        """IOMMU_TEST_CMD ``op`` (0: any) on ``fd`` (None: any iommufd)."""
        rng = self.rng
        fds = self.files(pi, IommufdFile)
        if not fds:
            return [Op(pi, "open", ("/dev/iommu",))]
        fd = self.pick(fds) if fd is None else fd
        f = self.file(pi, fd, IommufdFile)
        if not self.ids(f, Ioas):
            return self._fd_alloc(pi, fd, f)
        accesses = self.files(pi, AccessFile, lambda a: a.ctx is f.ctx)
        if not op:
            op = rng.choices(list(_TEST_WEIGHTS), list(_TEST_WEIGHTS.values()))[0]
        if op == st.OP_ACCESS_PAGES:  # one that can pin, mostly
            pinning = self.files(pi, AccessFile, lambda a: a.ctx is f.ctx and a.needs_pin)
            if not pinning and rng.random() < 0.8:
                return self.ioctl(pi, fd, specs.TEST[st.OP_CREATE_ACCESS], {
                    "op": st.OP_CREATE_ACCESS, "id": self.obj_id(f, Ioas),
                    "flags": st.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES}, file=f)
            accesses = pinning or accesses
        acc = self.pick(accesses) if accesses and rng.random() < 0.9 else self.bad_fd(pi)
        af = self.w.procs[pi].files.get(acc)
        access_ioas = af.access.ioas if isinstance(af, AccessFile) else None
        hwpt = self.hwpt(f, dirty=rng.random() < 0.6) or self.hwpt(f)
        ops: list[Op] = []
        vals: dict[str, int]
        if op in (st.OP_ACCESS_PAGES, st.OP_ACCESS_RW, st.OP_ACCESS_REPLACE_IOAS,
                  st.OP_DESTROY_ACCESS_PAGES) and not accesses and rng.random() < 0.8:
            op = st.OP_CREATE_ACCESS
        target = access_ioas if op in (st.OP_ACCESS_PAGES, st.OP_ACCESS_RW) else \
            hwpt.ioas if hwpt is not None else None
        need = self._need_areas(pi, fd, f, target)
        if need is not None and op != st.OP_MOCK_DOMAIN:
            return need
        if op == st.OP_DIRTY:
            ops += self._tracking(pi, fd, f, hwpt)
        h = self.hint_in(target)
        hwpt_id = self._hwpt_id(f, hwpt)
        obj = self.obj_id(f, Ioas, HwptPaging)
        if op == st.OP_ADD_RESERVED:
            vals = {"id": self.obj_id(f, Ioas), "start": self.iova(),
                    "length": rng.choice([PAGE, 1 << 21, 1])}
        elif op in (st.OP_MOCK_DOMAIN, st.OP_MOCK_DOMAIN_FLAGS):
            flags = rng.choice([0, 0, st.MOCK_FLAGS_DEVICE_NO_DIRTY,
                                st.MOCK_FLAGS_DEVICE_HUGE_IOVA, st.MOCK_FLAGS_DEVICE_PASID])
            vals = {"id": obj, "dev_flags": flags}
        elif op == st.OP_MOCK_DOMAIN_REPLACE:
            vals = {"id": self.obj_id(f, SelftestDevice), "pt_id": obj}
        elif op == st.OP_MD_CHECK_MAP:
            vals = {"id": hwpt_id, "iova": h.iova, "length": min(h.length, 1 << 22),
                    "uptr": h.uptr}
        elif op == st.OP_MD_CHECK_REFS:
            vals = {"length": min(h.length, 1 << 22), "uptr": h.uptr or self.uptr(pi, PAGE),
                    "refs": rng.choice([0, 1, 1, 2])}
        elif op == st.OP_CREATE_ACCESS:
            vals = {"id": self.obj_id(f, Ioas),
                    "flags": rng.choice([st.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES] * 3 +
                                        [0, 2])}
        elif op == st.OP_DESTROY_ACCESS_PAGES:
            items = sorted(af.items) if isinstance(af, AccessFile) else []
            vals = {"id": acc, "access_pages_id": self.pick(items) or rng.randrange(4)}
        elif op == st.OP_ACCESS_PAGES:
            skip = rng.randrange(max(1, h.length // PAGE)) * PAGE if rng.random() < 0.5 else 0
            length = max(1, min(h.length - skip, rng.choice([PAGE, 2 * PAGE, 1 << 20,
                                                             h.length])))
            flags = rng.choice([0, st.MOCK_FLAGS_ACCESS_WRITE, st.MOCK_FLAGS_ACCESS_WRITE])
            iova = h.iova + skip + (0x10 if rng.random() < 0.1 else 0)
            if rng.random() < 0.15:  # syzkaller's IOVA: the nth area of the IOAS, an offset
                flags |= st.MOCK_FLAGS_ACCESS_SYZ
                iova = rng.randrange(3) | skip << 32
            vals = {"id": acc, "iova": iova, "length": length, "flags": flags,
                    "uptr": rng.choice([0, h.uptr, h.uptr, 1, _KERNEL_VA])}
        elif op == st.OP_ACCESS_RW:
            n = rng.choice([1, 8, PAGE, 3 * PAGE])
            vals = {"id": acc, "iova": h.iova + rng.randrange(max(1, h.length)), "length": n,
                    "uptr": self.uptr(pi, n, writable=True, pinnable=False),
                    "flags": rng.choice([0, st.MOCK_ACCESS_RW_WRITE, st.MOCK_ACCESS_RW_SLOW_PATH,
                                         st.MOCK_ACCESS_RW_WRITE | st.MOCK_ACCESS_RW_SLOW_PATH])}
        elif op == st.OP_SET_TEMP_MEMORY_LIMIT:
            vals = {"limit": rng.choice([12, 16, 64, 4096, 65536, 11])}
        elif op == st.OP_ACCESS_REPLACE_IOAS:
            vals = {"id": acc, "ioas_id": self.obj_id(f, Ioas)}
        elif op == st.OP_DIRTY:
            page = rng.choice([2048, 2048, PAGE, 1 << 20])
            length = max(page, min(h.length, 1 << 22) // page * page)
            h = _Mapped(h.iova // page * page, length, h.uptr)
            nbits = max(1, length // page)
            ptr = self.uptr(pi, -(-nbits // 8), writable=True, pinnable=False)
            ops.append(Op(pi, "write", (ptr, fill_bytes(rng, min(-(-nbits // 8), 4096)))))
            vals = {"id": hwpt_id, "iova": h.iova, "length": length, "page_size": page,
                    "uptr": ptr}
        elif op == st.OP_MD_CHECK_IOTLB:
            vals = {"id": hwpt_id, "iotlb_id": rng.randrange(4)}
        else:
            vals = {"dev_id": self.obj_id(f, Device), "addr": h.iova}
        vals["op"] = op
        return ops + self.ioctl(pi, fd, specs.TEST[op], vals, file=f)
