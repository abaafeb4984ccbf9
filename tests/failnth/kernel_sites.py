"""Linux 6.12's fault-injection points along the iommufd ioctls, in the kernel's order, as data.

Each point is ``(site, where)``: ``site`` is the name the model logs for it
(:attr:`iommulab.mem.FailNth.log`), ``where`` the kernel ``file:function`` that makes the
allocation or calls ``iommufd_should_fail()`` (paths under drivers/iommu/iommufd/ unless
given). They were read from the 6.12 source along each call's path; what depends on the
state the call meets (how many pages, GUP calls, xarray nodes) is a parameter, and the
node counts follow lib/xarray.c's geometry (64 slots a node; only index 0 lives in the
head, and an ``XA_ZERO_ENTRY`` never does). Device-core work that the kernel does in
many allocations (``device_add``'s kobject and sysfs nodes, the IOMMU group's) is one
point per call in the model and here.
"""

from __future__ import annotations

__all__ = ["PCI_SCENARIO_SITES", "SCENARIO_SITES", "SEQUENCE_SITES", "Site", "xa_nodes_empty"]

Site = tuple[str, str]
PAGE_SLOTS = 2  # the mock's MOCK_IO_PAGE_SIZE is 2K: two xarray slots per 4K page
MOCK_IOVA = 1 << 24  # MOCK_APERTURE_START, where the mock sequences map

GET = ("iommufd_should_fail(iommufd_get_object)", "main.c:iommufd_get_object")
#: open(2) of /dev/iommu: fs/open.c:do_sys_openat2 -> fs/namei.c:getname_flags (the
#: path's names_cache buffer), path_openat -> fs/file_table.c:alloc_empty_file (before
#: the walk), then misc_open -> main.c:iommufd_fops_open
OPEN_IOMMUFD = [("getname(do_sys_openat2)", "fs/namei.c:getname_flags"),
                ("alloc_empty_file(path_openat)", "fs/file_table.c:alloc_empty_file"),
                ("kzalloc(iommufd_ctx)", "main.c:iommufd_fops_open")]
OBJECTS_NODE = ("xas_alloc(ictx->objects)", "main.c:_iommufd_object_alloc: xa_alloc")
UNFILL_BATCH = ("kmalloc(temp_kmalloc)",
                "pages.c:__iopt_area_unfill_domain: batch_init_backup")
#: DESTROY of a selftest device ends in selftest.c:mock_dev_destroy -> device_unregister;
#: after the IOMMU let the device go (BUS_NOTIFY_REMOVED_DEVICE), device_del sends the
#: KOBJ_REMOVE uevent, whose buffers device_del does not check (the netlink message, only
#: allocated while a program listens for uevents, is left out)
DEVICE_DEL = [("device_del: kzalloc(kobj_uevent_env)",
               "lib/kobject_uevent.c:kobject_uevent_env <- drivers/base/core.c:device_del"),
              ("device_del: kzalloc(kobject_get_path)",
               "lib/kobject.c:kobject_get_path <- lib/kobject_uevent.c:kobject_uevent_env")]


def xa_nodes_empty(first: int, last: int, *, root_ok: bool = True) -> int:
    """Nodes an empty xarray allocates to store ``[first, last]``: at each level up to
    the height ``last`` needs, one per 64-slot chunk the range touches."""
    if last == 0 and root_ok:
        return 0
    nodes, shift = 0, 6
    while True:
        nodes += (last >> shift) - (first >> shift) + 1
        if not last >> shift:
            return nodes
        shift += 6


def _n(site: Site, count: int) -> list[Site]:
    return [site] * count


# -- pages.c: the pfn_reader and its temporary arrays ------------------------------------------
def temp_kmalloc(caller: str) -> list[Site]:
    """``temp_kmalloc`` without a backup: ``iommufd_should_fail()``, then ``kmalloc``."""
    return [("iommufd_should_fail(temp_kmalloc)", f"pages.c:temp_kmalloc <- {caller}"),
            ("kmalloc(temp_kmalloc)", f"pages.c:temp_kmalloc <- {caller}")]


def mock_map(first_slot: int, nslots: int, filled: bool = False) -> list[Site]:
    """selftest.c:mock_domain_map_pages of ``nslots`` 2K slots into an empty mock
    xarray (``filled``: its nodes are there already)."""
    nodes = 0 if filled else xa_nodes_empty(first_slot, first_slot + nslots - 1)
    return [("iommufd_should_fail(mock_domain_map_pages)", "selftest.c:mock_domain_map_pages"),
            *_n(("xas_alloc(mock->pfns)", "selftest.c:mock_domain_map_pages: xa_store"),
                nodes)]


def fill_domains(npages: int, pins: int, domains: int, *, from_user: bool = True,
                 iova: int = MOCK_IOVA) -> list[Site]:
    """pages.c:iopt_area_fill_domains (or iopt_area_fill_domain, one domain): the
    pfn_reader's batch, the page array and ``pins`` GUP calls of its first hole when the
    pages come from the user, one ``iommu_map`` per domain of the one run of PFNs, then
    the charge when something was pinned."""
    out = temp_kmalloc("pfn_reader_init: batch_init")
    if from_user:
        out += temp_kmalloc("pfn_reader_user_pin: user->upages")
        out += _n(("iommufd_should_fail(pfn_reader_user_pin)", "pages.c:pfn_reader_user_pin"),
                  pins)
    for _ in range(domains):
        out += mock_map(iova // 2048, npages * PAGE_SLOTS)
    if from_user:
        out.append(("iommufd_should_fail(pfn_reader_user_update_pinned)",
                    "pages.c:pfn_reader_user_update_pinned"))
    return out


def pages_to_xarray(first: int, last: int) -> list[Site]:
    """pages.c:pages_to_xarray into an empty ``pinned_pfns``: the first half's nodes, the
    ``iommufd_should_fail()`` half way, the second half's nodes."""
    half = first + (last - first + 1) // 2
    before = xa_nodes_empty(first, half - 1) if half > first else 0
    after = xa_nodes_empty(first, last) - before
    node = ("xas_alloc(pages->pinned_pfns)", "pages.c:pages_to_xarray: xas_store")
    return [*_n(node, before),
            ("iommufd_should_fail(pages_to_xarray)", "pages.c:pages_to_xarray"),
            *_n(node, after)]


# -- the ioctls --------------------------------------------------------------------------------
def ioas_alloc(first_object: bool) -> list[Site]:
    """ioas.c:iommufd_ioas_alloc_ioctl: the object and, for the context's first object
    (id 1, never in the head), the objects xarray's node."""
    return [("kzalloc(iommufd_ioas)", "main.c:_iommufd_object_alloc <- iommufd_ioas_alloc"),
            *([OBJECTS_NODE] if first_object else [])]


def ioas_iova_ranges() -> list[Site]:
    return [GET]  # ioas.c:iommufd_ioas_iova_ranges: no allocation


def ioas_allow_iovas(nranges: int) -> list[Site]:
    return [GET, *_n(("kzalloc(iopt_allowed)", "ioas.c:iommufd_ioas_load_iovas"), nranges)]


def ioas_map(npages: int, domains: int, pins: int = 1, *, iova: int = MOCK_IOVA) -> list[Site]:
    """ioas.c:iommufd_ioas_map -> io_pagetable.c:iopt_map_user_pages: the pages, the area,
    then iopt_fill_domains_pages when there are domains."""
    out = [GET, ("kzalloc(iopt_pages)", "pages.c:iopt_alloc_pages"),
           ("kzalloc(iopt_area)", "io_pagetable.c:iopt_area_alloc")]
    if domains:
        out += fill_domains(npages, pins, domains, iova=iova)
    return out


def ioas_copy(npages: int, domains: int) -> list[Site]:
    """ioas.c:iommufd_ioas_copy: io_pagetable.c:iopt_get_pages' list element for the one
    source area, the destination's area, and its domains filled from the source's."""
    out = [GET, ("kzalloc(iopt_pages_list)", "io_pagetable.c:iopt_get_pages"), GET,
           ("kzalloc(iopt_area)", "io_pagetable.c:iopt_area_alloc")]
    if domains:
        out += fill_domains(npages, 0, domains, from_user=False)
    return out


def ioas_unmap(domains: int, npages: int = 0) -> list[Site]:
    """ioas.c:iommufd_ioas_unmap: unmapping the other domains allocates nothing; the
    storage domain's unfill has a batch with a 32-word stack backup."""
    return [GET, *([UNFILL_BATCH] if domains and npages * 12 >= 256 else [])]


def hwpt_paging_alloc() -> list[Site]:
    return [("kzalloc(iommufd_hwpt_paging)",
             "main.c:_iommufd_object_alloc <- hw_pagetable.c:iommufd_hwpt_paging_alloc"),
            ("kzalloc(mock_iommu_domain)", "selftest.c:mock_domain_alloc_paging")]


def add_domain(first_domain: bool) -> list[Site]:
    """io_pagetable.c:iopt_table_add_domain: the mock aperture's two reserved ranges and
    ``xa_reserve`` of the domain's index (a zero entry: a node for the first)."""
    reserved = ("kzalloc(iopt_reserved)", "io_pagetable.c:iopt_reserve_iova")
    node = ("xas_alloc(iopt->domains)", "io_pagetable.c:iopt_table_add_domain: xa_reserve")
    return [reserved, reserved, *([node] if first_domain else [])]


def attach() -> list[Site]:
    """device.c:iommufd_hw_pagetable_attach: the reserved regions, the attach handle."""
    return [("iommufd_should_fail(iopt_table_enforce_dev_resv_regions)",
             "io_pagetable.c:iopt_table_enforce_dev_resv_regions"),
            ("kzalloc(iommufd_attach_handle)", "device.c:iommufd_hwpt_attach_device")]


def hwpt_alloc(npages: int, first_domain: bool = False) -> list[Site]:
    """hw_pagetable.c:iommufd_hwpt_alloc: the device, the IOAS (EINVAL when missing), the
    HWPT and its domain, added to the IOAS and filled from its storage domain."""
    return [GET, ("iommufd_should_fail(iommufd_hwpt_alloc: iommufd_get_object)",
                  "hw_pagetable.c:iommufd_hwpt_alloc"),
            *hwpt_paging_alloc(), *add_domain(first_domain),
            *(fill_domains(npages, 0, 1, from_user=False) if npages else [])]


def mock_domain(*, first_domain: bool, npages: int = 0, pins: int = 1,
                from_user: bool = True, group_node: bool = False,
                iova: int = MOCK_IOVA) -> list[Site]:
    """selftest.c:iommufd_test_mock_domain: the selftest object, mock_dev_create (the
    device, its name, device_add and the IOMMU probe it sets off: drivers/iommu/iommu.c's
    dev_iommu, group and group device), device.c:iommufd_device_bind (the iommufd
    group, its ``groups`` slot, the device object), then iommufd_device_attach to an
    IOAS: a new automatic HWPT attached at once, added to the IOAS and filled."""
    out = [("kzalloc(selftest_obj)", "main.c:_iommufd_object_alloc <- "
            "selftest.c:iommufd_test_mock_domain"),
           ("kzalloc(mock_dev)", "selftest.c:mock_dev_create"),
           ("kvasprintf(dev_set_name)", "selftest.c:mock_dev_create: dev_set_name"),
           ("device_add", "drivers/base/core.c:device_add"),
           ("kzalloc(dev_iommu)", "drivers/iommu/iommu.c:dev_iommu_get"),
           ("kzalloc(iommu_group)", "drivers/iommu/iommu.c:iommu_group_alloc"),
           ("kzalloc(group_device)", "drivers/iommu/iommu.c:iommu_group_alloc_device"),
           ("kzalloc(iommufd_group)", "device.c:iommufd_get_group"),
           *([("xas_alloc(ictx->groups)", "device.c:iommufd_get_group: __xa_cmpxchg")]
             if group_node else []),
           ("kzalloc(iommufd_device)", "main.c:_iommufd_object_alloc <- "
            "device.c:iommufd_device_bind"),
           GET,  # device.c:iommufd_device_change_pt
           *hwpt_paging_alloc(), *attach(), *add_domain(first_domain)]
    if npages:
        out += fill_domains(npages, pins, 1, from_user=from_user, iova=iova)
    return out


def mock_domain_joins(*, group_node: bool = False) -> list[Site]:
    """MOCK_DOMAIN when the IOAS's automatic HWPT takes the new device: no new domain."""
    return [*mock_domain(first_domain=False)[:8],
            *([("xas_alloc(ictx->groups)", "device.c:iommufd_get_group: __xa_cmpxchg")]
              if group_node else []),
            ("kzalloc(iommufd_device)", "main.c:_iommufd_object_alloc <- "
             "device.c:iommufd_device_bind"),
            GET, *attach()]


def get_hw_info() -> list[Site]:
    return [GET, ("kzalloc(hw_info)", "selftest.c:mock_domain_hw_info")]


def create_access() -> list[Site]:
    """selftest.c:iommufd_test_create_access: the selftest access and its file
    (fs/anon_inodes.c -> alloc_file_pseudo: the dentry, the file), then
    device.c:iommufd_access_create and iommufd_access_attach's IOAS lookup (the first
    access takes index 0 of ``iopt->access_list``, in the head)."""
    return [("kzalloc(selftest_access)", "selftest.c:iommufd_test_alloc_access"),
            ("d_alloc_pseudo(anon_inode_getfile)", "fs/file_table.c:alloc_file_pseudo"),
            ("alloc_empty_file(anon_inode_getfile)", "fs/file_table.c:alloc_file"),
            ("kzalloc(iommufd_access)", "main.c:_iommufd_object_alloc <- "
             "device.c:iommufd_access_create"),
            GET]


def access_pages(npages: int, *, from_domain: bool) -> list[Site]:
    """selftest.c:iommufd_test_access_pages: the page array, then pages.c:
    iopt_area_add_access -> iopt_pages_fill_xarray (one GUP call for the hole, straight
    into that array, or the PFNs read from the domain), the xarray, the charge; then
    the selftest's item."""
    out = [("kvmalloc(access_pages pages)", "selftest.c:iommufd_test_access_pages: kvcalloc"),
           ("kzalloc(iopt_pages_access)", "pages.c:iopt_area_add_access")]
    if not from_domain:
        out.append(("iommufd_should_fail(pfn_reader_user_pin)",
                    "pages.c:pfn_reader_user_pin <- iopt_pages_fill_from_mm"))
    out += pages_to_xarray(0, npages - 1)
    if not from_domain:
        out.append(("iommufd_should_fail(pfn_reader_user_update_pinned)",
                    "pages.c:pfn_reader_user_update_pinned"))
    out.append(("kzalloc(selftest_access_item)", "selftest.c:iommufd_test_access_pages"))
    return out


def destroy_access_pages(npages: int, *, from_domain: bool) -> list[Site]:
    """pages.c:iopt_pages_unfill_xarray: a backup batch for the first hole."""
    if from_domain or npages * 12 < 256:
        return []
    return [("kmalloc(temp_kmalloc)", "pages.c:iopt_pages_unfill_xarray: batch_init_backup")]


def access_rw(length: int, *, slow: bool, limit: int = 65536) -> list[Site]:
    """selftest.c:iommufd_test_access_rw's buffer, then pages.c:iopt_pages_rw_access:
    the fast path allocates nothing, the slow one a pin for one page
    (iopt_pages_rw_page) or a pfn_reader over several (iopt_pages_rw_slow), whose page
    array holds ``limit / 8`` pages per GUP call."""
    out = [("kvmalloc(access_rw tmp)", "selftest.c:iommufd_test_access_rw: kvzalloc")]
    npages = -(-length // 4096)
    if not slow:
        return out
    if npages == 1:
        return [*out, ("iommufd_should_fail(iopt_pages_rw_page)", "pages.c:iopt_pages_rw_page")]
    per_pin = max(1, min(npages * 8, limit) // 8)
    return [*out, *temp_kmalloc("pfn_reader_init: batch_init"),
            *temp_kmalloc("pfn_reader_user_pin: user->upages"),
            *_n(("iommufd_should_fail(pfn_reader_user_pin)", "pages.c:pfn_reader_user_pin"),
                -(-npages // per_pin))]


def mock_domain_replace(*, new_domain: bool = False, other_ioas: bool = True,
                        npages: int = 0, unfill_old: bool = False) -> list[Site]:
    """selftest.c:iommufd_test_mock_domain_replace -> device.c:iommufd_device_replace. To
    an IOAS without a compatible automatic HWPT (``new_domain``) one is made and filled
    (from the user: its area has no domain yet) before the device moves; moving into
    another IOAS enforces the device's reserved regions there; the attach handle. An old
    automatic HWPT left without a device goes, and if it was its IOAS's last domain of
    an area big enough, the unfill's batch (``unfill_old``)."""
    out = [GET, GET]
    if new_domain:
        out += [*hwpt_paging_alloc(), *add_domain(True), *fill_domains(npages, 1, 1)]
    if other_ioas:
        out += attach()
    else:
        out.append(("kzalloc(iommufd_attach_handle)", "device.c:iommufd_hwpt_replace_device"))
    return out + ([UNFILL_BATCH] if unfill_old else [])


def fault_alloc() -> list[Site]:
    """fault.c:iommufd_fault_alloc: the object (the context's objects xarray has its node
    already), its file (fs/anon_inodes.c -> alloc_file_pseudo: the dentry, the file); the
    fd takes no allocation in a small table."""
    return [("kzalloc(iommufd_fault)", "main.c:_iommufd_object_alloc <- "
             "fault.c:iommufd_fault_alloc"),
            ("d_alloc_pseudo(anon_inode_getfile)", "fs/file_table.c:alloc_file_pseudo"),
            ("alloc_empty_file(anon_inode_getfile)", "fs/file_table.c:alloc_file")]


def hwpt_alloc_nested_fault() -> list[Site]:
    """hw_pagetable.c:iommufd_hwpt_alloc on a paging HWPT: the device, the parent (EINVAL
    when missing), iommufd_hwpt_nested_alloc's object, selftest.c:
    __mock_domain_alloc_nested's domain, then iommufd_get_fault."""
    return [GET, ("iommufd_should_fail(iommufd_hwpt_alloc: iommufd_get_object)",
                  "hw_pagetable.c:iommufd_hwpt_alloc"),
            ("kzalloc(iommufd_hwpt_nested)", "main.c:_iommufd_object_alloc <- "
             "hw_pagetable.c:iommufd_hwpt_nested_alloc"),
            ("kzalloc(mock_iommu_domain_nested)", "selftest.c:__mock_domain_alloc_nested"),
            ("iommufd_should_fail(iommufd_get_object)",
             "main.c:iommufd_get_object <- iommufd_private.h:iommufd_get_fault")]


def replace_iopf(*, enable: bool) -> list[Site]:
    """A replace within one IOAS (no reserved regions to enforce) onto a HWPT with a
    fault object: device.c:iommufd_hwpt_replace_device's handle, then (from a HWPT
    without one) fault.c:iommufd_fault_iopf_enable -> selftest.c:mock_dev_enable_feat ->
    io-pgfault.c:iopf_queue_add_device's fault parameter; iommu_replace_group_handle's
    xa_reserve finds PASID 0 taken by the old handle."""
    out = [GET, GET, ("kzalloc(iommufd_attach_handle)", "device.c:iommufd_hwpt_replace_device")]
    if enable:
        out.append(("kzalloc(iommu_fault_param)", "io-pgfault.c:iopf_queue_add_device"))
    return out


def trigger_iopf() -> list[Site]:
    """selftest.c:iommufd_test_trigger_iopf: the device, then io-pgfault.c:
    iommu_report_device_fault of a LAST_PAGE request: iopf_group_alloc's group (its
    failure is absorbed: the request is answered FAILURE)."""
    return [GET, ("kzalloc(iopf_group)", "io-pgfault.c:iopf_group_alloc")]


BUF_PAGES = 64  # tests/failnth/scenarios.py's BUF

#: scenario (tests/failnth/scenarios.py) -> its 6.12 points on the mock, in order
SCENARIO_SITES: dict[str, list[Site]] = {
    "IOAS_ALLOC": ioas_alloc(first_object=True),
    "IOAS_IOVA_RANGES": ioas_iova_ranges(),
    "IOAS_ALLOW_IOVAS": ioas_allow_iovas(2),
    "IOAS_MAP(no domain)": ioas_map(BUF_PAGES, 0),
    "IOAS_MAP(1 domain)": ioas_map(BUF_PAGES, 1),
    "IOAS_MAP(2 domains)": ioas_map(BUF_PAGES, 2),
    "IOAS_MAP(1 domain, limit 32)": ioas_map(BUF_PAGES, 1, pins=BUF_PAGES // 4),
    "IOAS_COPY": ioas_copy(BUF_PAGES, 1),
    "IOAS_UNMAP(1 domain)": ioas_unmap(1, BUF_PAGES),
    "IOAS_UNMAP(2 domains)": ioas_unmap(2, BUF_PAGES),
    "HWPT_ALLOC": hwpt_alloc(BUF_PAGES),
    "GET_HW_INFO": get_hw_info(),
    "TEST MOCK_DOMAIN": mock_domain(first_domain=True, npages=BUF_PAGES),
    "TEST MOCK_DOMAIN_REPLACE(ioas)": mock_domain_replace(unfill_old=True),
    "TEST MOCK_DOMAIN_REPLACE(hwpt)": mock_domain_replace(other_ioas=False),
    "TEST CREATE_ACCESS": create_access(),
    "TEST ACCESS_PAGES(no domain)": access_pages(BUF_PAGES, from_domain=False),
    "TEST ACCESS_PAGES(1 domain)": access_pages(BUF_PAGES, from_domain=True),
    "TEST DESTROY_ACCESS_PAGES": destroy_access_pages(BUF_PAGES, from_domain=False),
    "TEST ACCESS_RW(read)": access_rw(64, slow=False),
    "TEST ACCESS_RW(write)": access_rw(64, slow=False),
    "TEST ACCESS_RW(slow, one page)": access_rw(64, slow=True),
    "TEST ACCESS_RW(slow, 16 pages)": access_rw(16 * 4096, slow=True),
    "FAULT_QUEUE_ALLOC": fault_alloc(),
    "HWPT_ALLOC(nested, FAULT_ID_VALID)": hwpt_alloc_nested_fault(),
    "TEST MOCK_DOMAIN_REPLACE(nested, IOPF)": replace_iopf(enable=True),
    "TEST MOCK_DOMAIN_REPLACE(nested IOPF -> parent)": replace_iopf(enable=False),
    "TEST TRIGGER_IOPF(fault queue)": trigger_iopf(),
}

FAIL_NTH_PAGES = 512  # iommufd_fail_nth.c's BUFFER_SIZE, 2 MiB
LIMIT_32_PINS = 64 // 4  # 256K at a 32-byte temporary limit: 4 pages a GUP call

#: iommufd_fail_nth.c's TEST_FAIL_NTH bodies (tests/failnth/kernel_sequences.py) -> the
#: 6.12 points after their fail_nth_enable(), call after call
SEQUENCE_SITES: dict[str, list[Site]] = {
    "basic": [*OPEN_IOMMUFD, *ioas_alloc(first_object=True), *ioas_iova_ranges(),
              *ioas_allow_iovas(1), *ioas_map(FAIL_NTH_PAGES, 0), *ioas_copy(0, 0),
              *ioas_unmap(0), *ioas_unmap(0)],
    "map_domain": [*mock_domain(first_domain=True),
                   *ioas_map(64, 1, pins=LIMIT_32_PINS),
                   UNFILL_BATCH,  # DESTROY of the device: its HWPT, the IOAS's last domain
                   *DEVICE_DEL,
                   *mock_domain(first_domain=True, npages=64, pins=LIMIT_32_PINS)],
    "map_two_domains": [*mock_domain_joins(group_node=True),
                        *ioas_map(64, 1, pins=LIMIT_32_PINS),
                        *DEVICE_DEL,  # the first DESTROY: the HWPT stays for the other
                        UNFILL_BATCH,  # the second DESTROY: the shared HWPT goes
                        *DEVICE_DEL,
                        *mock_domain(first_domain=True, npages=64, pins=LIMIT_32_PINS),
                        *mock_domain_joins(group_node=True)],
    "access_rw": [*create_access(), *access_rw(64, slow=False), *access_rw(64, slow=False),
                  *access_rw(64, slow=True), *access_rw(64, slow=True),
                  *access_rw(4096 * 8, slow=True, limit=32)],
    "access_pin": [*access_pages(FAIL_NTH_PAGES, from_domain=False),
                   *destroy_access_pages(FAIL_NTH_PAGES, from_domain=False)],
    "access_pin_domain": [*access_pages(FAIL_NTH_PAGES, from_domain=True),
                          *destroy_access_pages(FAIL_NTH_PAGES, from_domain=True),
                          UNFILL_BATCH,  # DESTROY of the device: the last domain
                          *DEVICE_DEL],
    "device": [*mock_domain(first_domain=True, npages=1), *get_hw_info(), *hwpt_alloc(1),
               *mock_domain_replace(new_domain=True, npages=1),
               *mock_domain_replace()],
}


# -- vfio-pci (drivers/vfio/pci/, paths under it unless given) -----------------------------------
_VP = "drivers/vfio/pci/"
MEMDUP_IRQ_SET = ("memdup_user(vfio_irq_set data)",
                  _VP + "vfio_pci_core.c:vfio_pci_ioctl_set_irqs: memdup_user")
GROUP_DEVICE_FILE = [("strndup_user", "drivers/vfio/group.c:vfio_group_ioctl_get_device_fd"),
                     ("kzalloc(vfio_device_file)",
                      "drivers/vfio/vfio_main.c:vfio_allocate_device_file")]
ANON_INODE_FILE = [("d_alloc_pseudo(anon_inode_getfile)",
                    "fs/file_table.c:alloc_file_pseudo <- drivers/vfio/group.c:"
                    "vfio_device_open_file"),
                   ("alloc_empty_file(anon_inode_getfile)", "fs/file_table.c:alloc_file")]


def pci_core_enable(msi_cap: bool) -> list[Site]:
    """vfio_pci_core.c:vfio_pci_core_enable: the stored config state (whose failure it
    ignores), then vfio_pci_config.c:vfio_config_init's map and vconfig and, for an MSI
    capability, vfio_msi_cap_len's ``perm_bits`` and alloc_perm_bits' two arrays.
    (pci_enable_device and pci_try_reset_function allocate nothing; a conventional
    function has no extended capability to walk.)"""
    out = [("kzalloc(pci_store_saved_state)", "drivers/pci/pci.c:pci_store_saved_state"),
           ("kmalloc(pci_config_map)", _VP + "vfio_pci_config.c:vfio_config_init"),
           ("kmalloc(vconfig)", _VP + "vfio_pci_config.c:vfio_config_init")]
    if msi_cap:
        out += [("kmalloc(msi_perm)", _VP + "vfio_pci_config.c:vfio_msi_cap_len"),
                ("kzalloc(perm_bits virt)", _VP + "vfio_pci_config.c:alloc_perm_bits"),
                ("kzalloc(perm_bits write)", _VP + "vfio_pci_config.c:alloc_perm_bits")]
    return out


def request_irq(caller: str) -> Site:
    """kernel/irq/manage.c:request_threaded_irq's ``irqaction`` (the /proc/irq entries
    __setup_irq makes, unchecked, are left out)."""
    return ("kzalloc(irqaction)", f"kernel/irq/manage.c:request_threaded_irq <- {caller}")


def irq_ctx(caller: str) -> Site:
    """vfio_pci_intrs.c:vfio_irq_ctx_alloc's context (its xa_insert at vector 0 of an
    empty ``vdev->ctx`` needs no node)."""
    return ("kzalloc(vfio_pci_irq_ctx)", f"{_VP}vfio_pci_intrs.c:vfio_irq_ctx_alloc <- {caller}")


def msi_vector_signal() -> list[Site]:
    """vfio_pci_intrs.c:vfio_msi_set_vector_signal of a vector with no context: the
    context, its name, eventfd_ctx_fdget (nothing), request_irq."""
    return [irq_ctx("vfio_msi_set_vector_signal"),
            ("kasprintf(vfio-msi name)", _VP + "vfio_pci_intrs.c:vfio_msi_set_vector_signal"),
            request_irq("vfio_msi_set_vector_signal")]


def msi_enable(nvec: int) -> list[Site]:
    """vfio_pci_intrs.c:vfio_msi_enable -> pci_alloc_irq_vectors on x86: the MSI
    descriptor (drivers/pci/msi/msi.c:msi_setup_msi_desc -> kernel/irq/msi.c:
    msi_insert_msi_desc), one irq_desc per vector (kernel/irq/irqdesc.c:
    __irq_alloc_descs). The per-device MSI domain and the interrupt hierarchy's own
    allocations are one-off or left out (iommulab.vfio.pci_irq says which)."""
    return [("kzalloc(msi_desc)", "kernel/irq/msi.c:msi_alloc_desc <- drivers/pci/msi/msi.c:"
             "msi_setup_msi_desc"),
            *_n(("kzalloc(irq_desc)", "kernel/irq/irqdesc.c:alloc_desc <- __irq_alloc_descs"),
                nvec)]


#: scenario (tests/failnth/scenarios.py) -> its 6.12 points on x86-vtd, in order
PCI_SCENARIO_SITES: dict[str, list[Site]] = {
    "VFIO_GROUP_GET_DEVICE_FD": [*GROUP_DEVICE_FILE, *pci_core_enable(False),
                                 *ANON_INODE_FILE],
    "VFIO_GROUP_GET_DEVICE_FD(edu: MSI capability)": [*GROUP_DEVICE_FILE,
                                                      *pci_core_enable(True),
                                                      *ANON_INODE_FILE],
    "edu VFIO_DEVICE_GET_IRQ_INFO(INTx)": [],
    "edu SET_IRQS(INTx trigger eventfd: enable)": [
        MEMDUP_IRQ_SET, ("kasprintf(vfio-intx name)", _VP + "vfio_pci_intrs.c:vfio_intx_enable"),
        irq_ctx("vfio_intx_enable"), request_irq("vfio_intx_enable")],
    "edu SET_IRQS(INTx trigger eventfd: replace)": [MEMDUP_IRQ_SET],
    "edu SET_IRQS(INTx trigger none: disable)": [],
    "edu SET_IRQS(INTx unmask eventfd)": [
        MEMDUP_IRQ_SET, ("kzalloc(virqfd)", "drivers/vfio/virqfd.c:vfio_virqfd_enable")],
    "edu SET_IRQS(MSI trigger eventfd: enable)": [MEMDUP_IRQ_SET, *msi_enable(1),
                                                  *msi_vector_signal()],
    "edu SET_IRQS(MSI trigger eventfd: vector 0 of enabled MSI)": [MEMDUP_IRQ_SET,
                                                                   *msi_vector_signal()],
    "edu SET_IRQS(REQ trigger eventfd)": [MEMDUP_IRQ_SET],
    "mmap(vfio-pci BAR0)": [
        ("vm_area_alloc", "kernel/fork.c:vm_area_alloc <- mm/mmap.c:mmap_region"),
        ("kzalloc(resource)", "kernel/resource.c:__request_region <- drivers/pci/pci.c:"
         "pci_request_selected_regions <- " + _VP + "vfio_pci_core.c:vfio_pci_core_mmap"),
        ("ioremap(pci_iomap)", "arch/x86/mm/ioremap.c:__ioremap_caller <- lib/pci_iomap.c:"
         "pci_iomap_range")],
}
