"""SMMU translation caches (IOTLB), in three organisations.

- ``qemu``: a hash of up to ``entries`` translations that is emptied when an
  insert finds it full (QEMU's ``smmu_iotlb_insert``, SMMU_IOTLB_MAX_SIZE 256).
- ``setassoc``: ``entries`` in sets of ``ways``, LRU or round-robin
  replacement (gem5's SMMUv3 TLBs: main TLB 2048 entries, 4-way, rr).
- ``lru``: a small fully associative LRU, to force evictions (the RISC-V
  reference model uses 2 entries).

An entry caches one leaf: its input and output base, size, permissions and,
with HTTU, whether writes may proceed without touching the descriptor.
Entries are tagged with (VMID, ASID, stage) as the TLBI commands select
them. Lookups probe each leaf size of the context, smallest first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Iotlb", "IotlbConfig", "IotlbEntry", "IotlbStats", "make_iotlb", "tlb_tag"]

_VPN_BITS = 52


def tlb_tag(vmid: int, asid: int, stage1: bool) -> int:
    """The tag TLBI commands match on: VMID, ASID (stage 1) and the stage."""
    return (vmid << 17) | (asid << 1) | int(stage1)


def _key(tag: int, shift: int, vpn: int) -> int:
    return (((tag << 7) | shift) << _VPN_BITS) | vpn


@dataclass(slots=True)
class IotlbEntry:
    """One cached leaf translation."""

    tag: int
    va: int  # input address of the leaf (aligned)
    shift: int  # log2 of the leaf size
    pa: int  # output address of the leaf
    readable: bool
    writable: bool  # writes proceed without a descriptor access
    user: bool  # unprivileged transactions allowed (stage-1 AP[1])
    dbm: bool  # writable through a hardware dirty-state update (HTTU)
    desc_pa: int  # physical address of the leaf descriptor (for HTTU updates)

    @property
    def key(self) -> int:
        return (((self.tag << 7) | self.shift) << _VPN_BITS) | (self.va >> self.shift)


@dataclass(frozen=True)
class IotlbConfig:
    kind: Literal["qemu", "setassoc", "lru"] = "qemu"
    entries: int = 256
    ways: int = 4
    policy: Literal["lru", "rr"] = "lru"

    @classmethod
    def qemu(cls) -> IotlbConfig:
        return cls("qemu", 256)

    @classmethod
    def gem5(cls) -> IotlbConfig:
        return cls("setassoc", 2048, 4, "rr")

    @classmethod
    def tiny(cls) -> IotlbConfig:
        return cls("lru", 2)


@dataclass
class IotlbStats:
    lookups: int = 0
    hits: int = 0
    misses: int = 0
    inserts: int = 0
    evictions: int = 0
    full_flushes: int = 0  # qemu: emptied because full
    invalidated_entries: int = 0
    invalidations: dict[str, int] = field(default_factory=dict)  # by command kind

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0


class Iotlb:
    """The common part: a dict of entries by key, invalidation by tag and range."""

    _touches = False  # whether a hit updates replacement state (LRU)

    def __init__(self, config: IotlbConfig) -> None:
        if config.entries < 1:
            raise ValueError(f"IOTLB needs at least one entry, not {config.entries}")
        self.config = config
        self.stats = IotlbStats()
        self._map: dict[int, IotlbEntry] = {}

    def __len__(self) -> int:
        return len(self._map)

    def entries(self) -> list[IotlbEntry]:
        return list(self._map.values())

    def lookup(self, tag: int, iova: int, shifts: tuple[int, ...]) -> IotlbEntry | None:
        self.stats.lookups += 1
        base = tag << 7
        m = self._map
        for shift in shifts:
            entry = m.get(((base | shift) << _VPN_BITS) | (iova >> shift))
            if entry is not None:
                self.stats.hits += 1
                if self._touches:
                    self._touch(entry)
                return entry
        self.stats.misses += 1
        return None

    def insert(self, entry: IotlbEntry) -> None:
        self.stats.inserts += 1
        self._insert(entry)

    # -- invalidation ------------------------------------------------------------------------
    def invalidate_all(self, kind: str) -> None:
        self._count(kind, len(self._map))
        self._map.clear()
        self._clear_extra()

    def invalidate_where(self, kind: str, pred_tag: int, mask: int) -> None:
        """Drop entries whose ``tag & mask == pred_tag``."""
        dead = [k for k, e in self._map.items() if e.tag & mask == pred_tag]
        self._drop(dead)
        self._count(kind, len(dead))

    def invalidate_range(self, kind: str, tag: int, lo: int, hi: int,
                         shifts: tuple[int, ...]) -> None:
        """Drop entries with ``tag`` overlapping ``[lo, hi)``.

        Enumerates the keys the range can hold when that is fewer than the
        entries cached, else scans: a one-page TLBI costs O(sizes).
        """
        probes = sum(((hi - 1) >> s) - (lo >> s) + 1 for s in shifts)
        if probes <= len(self._map):
            dead = []
            for s in shifts:
                for vpn in range(lo >> s, ((hi - 1) >> s) + 1):
                    k = _key(tag, s, vpn)
                    if k in self._map:
                        dead.append(k)
        else:
            dead = [k for k, e in self._map.items()
                    if e.tag == tag and e.va < hi and e.va + (1 << e.shift) > lo]
        self._drop(dead)
        self._count(kind, len(dead))

    def invalidate_range_where(self, kind: str, pred_tag: int, mask: int, lo: int,
                               hi: int) -> None:
        """Drop entries whose ``tag & mask == pred_tag`` overlapping ``[lo, hi)`` (an ASID
        wildcard: TLBI_NH_VAA). O(entries)."""
        dead = [k for k, e in self._map.items()
                if e.tag & mask == pred_tag and e.va < hi and e.va + (1 << e.shift) > lo]
        self._drop(dead)
        self._count(kind, len(dead))

    def _check(self) -> None:
        """O(entries): every entry under its own key, aligned, within the capacity; the
        organisation's bookkeeping holds exactly the cached keys."""
        assert len(self._map) <= self.config.entries
        for key, e in self._map.items():
            assert key == e.key, f"entry {e} under key {key:#x}"
            assert e.va & ((1 << e.shift) - 1) == 0 and e.pa & ((1 << e.shift) - 1) == 0, e
        self._check_extra()

    def _check_extra(self) -> None:
        """The organisation's own bookkeeping (nothing for a plain hash)."""

    def _count(self, kind: str, n: int) -> None:
        inv = self.stats.invalidations
        inv[kind] = inv.get(kind, 0) + 1
        self.stats.invalidated_entries += n

    def _drop(self, keys: list[int]) -> None:
        for k in keys:
            del self._map[k]
        if keys:
            self._forget(keys)

    # -- organisation hooks --------------------------------------------------------------------
    def _touch(self, entry: IotlbEntry) -> None:
        """A hit (LRU bookkeeping)."""

    def _insert(self, entry: IotlbEntry) -> None:
        raise NotImplementedError

    def _forget(self, keys: list[int]) -> None:
        """Keys dropped by invalidation (replacement bookkeeping)."""

    def _clear_extra(self) -> None:
        """Everything dropped (replacement bookkeeping)."""


class QemuIotlb(Iotlb):
    """Flush everything when an insert finds the table full."""

    def _insert(self, entry: IotlbEntry) -> None:
        if len(self._map) >= self.config.entries:
            self.stats.full_flushes += 1
            self.stats.evictions += len(self._map)
            self._map.clear()
        self._map[entry.key] = entry


class LruIotlb(Iotlb):
    """Fully associative, least recently used replacement."""

    _touches = True

    def __init__(self, config: IotlbConfig) -> None:
        super().__init__(config)
        self._order: OrderedDict[int, None] = OrderedDict()

    def _touch(self, entry: IotlbEntry) -> None:
        self._order.move_to_end(entry.key)

    def _insert(self, entry: IotlbEntry) -> None:
        key = entry.key
        if key not in self._map and len(self._map) >= self.config.entries:
            victim, _ = self._order.popitem(last=False)
            del self._map[victim]
            self.stats.evictions += 1
        self._map[key] = entry
        self._order[key] = None
        self._order.move_to_end(key)

    def _forget(self, keys: list[int]) -> None:
        for k in keys:
            self._order.pop(k, None)

    def _check_extra(self) -> None:
        assert set(self._order) == set(self._map)

    def _clear_extra(self) -> None:
        self._order.clear()


class SetAssocIotlb(Iotlb):
    """``entries / ways`` sets indexed by the page number; LRU or round-robin victims."""

    def __init__(self, config: IotlbConfig) -> None:
        super().__init__(config)
        if config.ways < 1 or config.entries % config.ways:
            raise ValueError(f"{config.entries} entries do not split into {config.ways} ways")
        self._nsets = config.entries // config.ways
        self._sets: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(self._nsets)]
        self._rr = [0] * self._nsets
        self._touches = config.policy == "lru"

    def _set_of(self, key: int) -> int:
        return (key ^ (key >> _VPN_BITS)) % self._nsets

    def _touch(self, entry: IotlbEntry) -> None:
        self._sets[self._set_of(entry.key)].move_to_end(entry.key)

    def _insert(self, entry: IotlbEntry) -> None:
        key = entry.key
        idx = self._set_of(key)
        ways = self._sets[idx]
        if key not in ways and len(ways) >= self.config.ways:
            if self.config.policy == "lru":
                victim = next(iter(ways))
            else:  # round-robin over the way slots, as gem5's 'rr'
                victim = list(ways)[self._rr[idx] % len(ways)]
                self._rr[idx] += 1
            del ways[victim]
            del self._map[victim]
            self.stats.evictions += 1
        ways[key] = None
        ways.move_to_end(key)
        self._map[key] = entry

    def _forget(self, keys: list[int]) -> None:
        for k in keys:
            self._sets[self._set_of(k)].pop(k, None)

    def _check_extra(self) -> None:
        for i, ways in enumerate(self._sets):
            assert len(ways) <= self.config.ways
            assert all(self._set_of(k) == i for k in ways)
        assert sorted(k for ways in self._sets for k in ways) == sorted(self._map)

    def _clear_extra(self) -> None:
        for ways in self._sets:
            ways.clear()


def make_iotlb(config: IotlbConfig) -> Iotlb:
    kinds: dict[str, type[Iotlb]] = {"qemu": QemuIotlb, "lru": LruIotlb,
                                     "setassoc": SetAssocIotlb}
    if config.kind not in kinds:
        raise ValueError(f"IOTLB kind must be one of {sorted(kinds)}, not {config.kind!r}")
    return kinds[config.kind](config)
