#!/usr/bin/env python3
"""Scaling model of pmpage's allocator (docs/scaling.md): per-CPU caches of split regions (issue #8)
against the single pool lock, from 1 to 256 CPUs. Python 3 standard library only.

Three parts, each printed as a table:

  1. packing   a simulation of the placement policy: a 512-bit free bitmap per 2 MiB region,
               C per-CPU caches that each hold one region, a fullest-first filler for refills,
               merge hysteresis (EMPTY_SPLIT_KEPT), random alloc/free at 50 % occupancy. Reports
               split regions / ceil(live / 512), the issue's bound 1.25 x ceil(live/512) + C, and
               how often the pool lock is needed (refills, deferred re-files, empties, splits).
  2. analytic  per-operation cost = private work + persist + lock hold (with cache-line
               transfers), the pool lock's service demand per operation, and exact mean value
               analysis (MVA) of the closed system "N CPUs around one pool lock" (M/M/1-like),
               with the crossover core count N* = cycle time / pool-lock demand.
  3. des       a discrete-event simulation of N = 1..256 CPUs running four workloads (local
               pairs, remote frees between random CPU pairs, a long-lived random heap, mixed
               orders 0..10): FIFO locks with deterministic hold times, line transfers whenever
               a lock changes CPU (same- or cross-socket cost).

Designs compared: old (today: one pool lock per operation); new (per-CPU region caches as issue
#8 designs them: strict fullest-first refill, deferred re-files, splits and orders >= 9 under the
pool lock); new+T (refill threshold); new+T+off (threshold, re-files and split faults off the pool
lock, orders >= 9 on the buddy's own lock). The analytic part also prints a CXL device (write
bandwidth as a second queue) and per-node region pools on 2 sockets.

The refill rates the analytic model and the DES use for the heap and mixed workloads come from
the packing simulation run in the same invocation. Parameters and where they come from are
printed first; every one can be overridden (see --help).
"""
import argparse
import heapq
import math
import random
import sys
import time
from collections import deque

PAGES = 512  # 4 KiB pages per 2 MiB region
FULL = (1 << PAGES) - 1
ALIGNED = [sum(1 << i for i in range(0, PAGES, 1 << k)) for k in range(10)]


# ------------------------------------------------------------------------------------------------
# 1. packing simulation
# ------------------------------------------------------------------------------------------------

def block_mask(bits, k):
    """Bit i set <=> pages i .. i + 2^k - 1 are free and i is 2^k-aligned."""
    m = bits
    s = 1
    while s < (1 << k):
        m &= m >> s
        s <<= 1
    return m & ALIGNED[k]


def longest(bits):
    if not bits:
        return -1
    k = 0
    while k < 9 and block_mask(bits, k + 1):
        k += 1
    return k


class Packing:
    """Placement policy of the per-CPU design (one region per cache, fullest-first refill).

    threshold: a refill takes the fullest published region with at least this many free pages
    (1 = strict fullest-first); if there is none, a kept empty region, then a fresh one from the
    buddy, and only when the pool has no free region the fullest region with any room.
    Frees go to the page's region; a free into a region no cache holds changes its filler key
    (fullness bucket of 8, longest free order; regions below the threshold are not candidates and
    need no key), and such a region is re-filed at the next refill (deferred): counted as
    'refile'. A region no cache holds that becomes empty is kept split (at most kept_max, the
    oldest merges): counted as 'empty' (a pool-lock acquisition) and 'merge'.
    """

    def __init__(self, caches, live_regions, threshold=1, orders=None, seed=1, occupancy=0.5,
                 kept_max=16, percpu=True):
        self.percpu = percpu  # False: the old design, fullest region for every allocation
        self.C = caches
        self.T = threshold
        self.rng = random.Random(seed)
        self.L = live_regions * PAGES
        self.P = int(math.ceil(live_regions / occupancy))  # pool size: live is 50 % of it
        self.bits = [0] * self.P
        self.nfree = [0] * self.P
        self.held = [-1] * self.P
        self.key = [None] * self.P
        self.buckets = [set() for _ in range(PAGES + 1)]  # published regions by free pages
        self.marked = set()
        self.kept = deque()
        self.kept_max = kept_max
        self.free_regions = list(range(self.P - 1, -1, -1))
        self.cache = [-1] * caches
        self.split = 0
        self.live = 0
        self.allocs = []
        self.orders = orders or [(0, 1.0)]
        self.ev = {}
        self.reset_counts()

    def reset_counts(self):
        self.ev = dict(refill=0, refile=0, fresh=0, empty=0, merge=0, fallback=0, alloc=0,
                       free=0, free_held=0)
        self.by_order = [[0, 0] for _ in range(9)]  # [allocations, refills] per order

    def keyof(self, r):
        if self.nfree[r] < self.T:
            return None
        return (self.nfree[r] * 8 // (PAGES + 1), longest(self.bits[r]))

    def file(self, r):
        n = self.nfree[r]
        if 0 < n < PAGES:
            self.buckets[n].add(r)

    def find(self, lo, k):
        b = self.buckets
        for n in range(lo, PAGES):
            if b[n]:
                if k == 0:
                    return next(iter(b[n]))
                for r in b[n]:
                    if block_mask(self.bits[r], k):
                        return r
        return -1

    def to_kept(self, r):
        self.ev["empty"] += 1
        self.kept.appendleft(r)
        if len(self.kept) > self.kept_max:
            m = self.kept.pop()
            self.bits[m] = 0
            self.nfree[m] = 0
            self.split -= 1
            self.free_regions.append(m)
            self.ev["merge"] += 1

    def refill(self, c, k):
        ev = self.ev
        ev["refill"] += 1
        self.by_order[k][1] += 1
        old = self.cache[c]
        if old >= 0:
            self.held[old] = -1
            self.key[old] = self.keyof(old)
            if self.nfree[old] == PAGES:
                self.to_kept(old)
            else:
                self.file(old)
        ev["refile"] += len(self.marked)
        self.marked.clear()
        r = self.find(max(self.T, 1 << k), k)
        if r < 0 and self.kept:
            r = self.kept.popleft()  # the most recently emptied one
        elif r < 0 and self.free_regions:
            r = self.free_regions.pop()
            self.bits[r] = FULL
            self.nfree[r] = PAGES
            self.split += 1
            ev["fresh"] += 1
        elif r < 0:
            r = self.find(1 << k, k)
            ev["fallback"] += 1
            if r < 0:
                raise RuntimeError("packing simulation: pool full")
        self.buckets[self.nfree[r]].discard(r)
        self.held[r] = c
        self.cache[c] = r
        return r

    def take_block(self, r, k):
        m = block_mask(self.bits[r], k)
        if not m:
            return -1
        pos = (m & -m).bit_length() - 1
        self.bits[r] &= ~(((1 << (1 << k)) - 1) << pos)
        self.nfree[r] -= 1 << k
        return pos

    def alloc(self, c, k):
        self.ev["alloc"] += 1
        self.by_order[k][0] += 1
        if not self.percpu:
            c = 0
            old = self.cache[0]
            if old >= 0:  # no cache: the region goes back to the filler after every allocation
                self.held[old] = -1
                self.cache[0] = -1
                if self.nfree[old] == PAGES:
                    self.to_kept(old)
                else:
                    self.file(old)
        r = self.cache[c]
        pos = self.take_block(r, k) if r >= 0 else -1
        if pos < 0:
            r = self.refill(c, k)
            pos = self.take_block(r, k)
        self.allocs.append((r, pos, k))
        self.live += 1 << k

    def free_random(self):
        self.ev["free"] += 1
        a = self.allocs
        i = self.rng.randrange(len(a))
        a[i], a[-1] = a[-1], a[i]
        r, pos, k = a.pop()
        self.live -= 1 << k
        held = self.held[r] >= 0
        if held:
            self.ev["free_held"] += 1
        else:
            self.buckets[self.nfree[r]].discard(r)
        self.bits[r] |= ((1 << (1 << k)) - 1) << pos
        self.nfree[r] += 1 << k
        if held:
            return
        if self.nfree[r] == PAGES:
            self.marked.discard(r)
            self.to_kept(r)
            return
        self.file(r)
        if r not in self.marked and self.keyof(r) != self.key[r]:
            self.marked.add(r)

    def order(self):
        x = self.rng.random()
        for k, p in self.orders:
            x -= p
            if x < 0:
                return k
        return self.orders[-1][0]

    def run(self, churn):
        """Fill to the target, churn `churn` x live allocations; measure the second half only."""
        rng = self.rng
        while self.live < self.L:
            self.alloc(rng.randrange(self.C), self.order())
        steps = int(churn * len(self.allocs))
        worst = 0.0
        mx = 0
        tot = 0
        for i in range(steps):
            if i == steps // 2:
                self.reset_counts()
                worst, mx, tot = 0.0, 0, 0
            self.free_random()
            while self.live < self.L:
                self.alloc(rng.randrange(self.C), self.order())
            sp = self.split
            mn = -(-self.live // PAGES)
            mx = max(mx, sp)
            tot += sp
            worst = max(worst, sp / (1.25 * mn + self.C))
        n = steps - steps // 2
        res = dict(self.ev)
        res.update(min=-(-self.live // PAGES), max=mx, mean=tot / n, worst=worst,
                   kept=len(self.kept))
        return res


class PackingOrder0(Packing):
    """The same policy for order-0 only workloads, with free-page counts instead of bitmaps (any
    free page serves an order-0 allocation). The filler key of a region is its fullness bucket
    (8 buckets) once it has >= threshold free pages; below that it is not a candidate."""

    def keyof(self, r):
        n = self.nfree[r]
        return None if n < self.T else n * 8 // (PAGES + 1)

    def alloc(self, c, k=0):
        ev = self.ev
        ev["alloc"] += 1
        r = self.cache[c]
        if r < 0 or self.nfree[r] == 0:
            r = self.refill(c, 0)
        self.nfree[r] -= 1
        self.allocs.append(r)
        self.live += 1

    def find(self, lo, k):
        b = self.buckets
        for n in range(lo, PAGES):
            if b[n]:
                return next(iter(b[n]))
        return -1

    def free_random(self):
        ev = self.ev
        ev["free"] += 1
        a = self.allocs
        i = self.rng.randrange(len(a))
        r = a[i]
        a[i] = a[-1]
        a.pop()
        self.live -= 1
        n = self.nfree[r]
        if self.held[r] >= 0:
            ev["free_held"] += 1
            self.nfree[r] = n + 1
            return
        self.buckets[n].discard(r)
        n += 1
        self.nfree[r] = n
        if n == PAGES:
            self.marked.discard(r)
            self.to_kept(r)
            return
        self.buckets[n].add(r)
        if r not in self.marked and self.keyof(r) != self.key[r]:
            self.marked.add(r)

    def order(self):
        return 0


def pool_events(res):
    """Pool-lock events per small allocation / free of a packing result."""
    a, f = max(res["alloc"], 1), max(res["free"], 1)
    return dict(refill=res["refill"] / a, fresh=res["fresh"] / a, refile=res["refile"] / f,
                empty=res["empty"] / f, held=res["free_held"] / f)


# ------------------------------------------------------------------------------------------------
# parameters
# ------------------------------------------------------------------------------------------------

SMALL_ORDERS = [(k, 2.0 ** -k) for k in range(9)]  # orders 0..8 by count, P(k) ~ 2^-k
_s = sum(w for _, w in SMALL_ORDERS)
SMALL_ORDERS = [(k, w / _s) for k, w in SMALL_ORDERS]

PARAMS = [
    # name, default, unit, source
    ("persist", 202.0, "ns", "measured: floor/persist64/libpmem, 1 thread, this VM (202-214 ns)"),
    ("cpu_op", 28.0, "ns", "measured: (alloc/order0_pair 460 ns - 2 x persist) / 2, 1 thread"),
    ("cs_small", 20.0, "ns", "assumed: the part of cpu_op under the lock (bitmap, map line, clwb)"),
    ("cs_large", 45.0, "ns", "measured: (alloc/order9_pair 493 ns - 2 x persist) / 2"),
    ("k_lock", 2.0, "lines", "calibrated: old design at 2 CPUs (calibration table)"),
    ("cs_refill", 80.0, "ns", "assumed, 4 x cs_small: give back the old region, find, take a new one"),
    ("k_refill", 4.0, "lines", "assumed: lock, filler heads, old and new region's list links"),
    ("cs_refile", 20.0, "ns", "assumed: one deferred re-file (unlink + link), + 1 line moved"),
    ("k_large", 3.0, "lines", "assumed: lock, buddy heads, region descriptors"),
    ("cs_empty", 50.0, "ns", "assumed: bookkeeping of an emptied region (hysteresis), + 2 lines"),
    ("split", 50000.0, "ns", "assumed: split part of splitmerge/order0_cycle (107 us here, 24 us Intel)"),
    ("f_large", 0.02, "of ops", "assumed: share of orders 9..10 in the mixed workload"),
    ("tx_vm", 220.0, "ns", "measured: one-way cache-line hand-off CPU0<->CPU1 here (scaling_probe.c)"),
    ("tx_same", 60.0, "ns", "assumed (brief): same socket 40-70 ns"),
    ("tx_cross", 100.0, "ns", "assumed (brief): cross socket ~100 ns"),
    ("cores_per_socket", 128, "CPUs", "assumed: 256 CPUs = 2 sockets x 128"),
    ("cxl_persist", 300.0, "ns", "assumed: CXL expander write + flush, 200-400 ns"),
    ("cxl_bw", 25.0, "GB/s", "assumed: one x16 CXL expander, sustained 64 B writes"),
]

# Variants of the new design. T: refill threshold (free pages a region needs to be taken);
# off: deferred re-files and a fresh split's descriptor faults are done outside the pool lock and
# orders >= 9 have their own lock (the region buddy's).
VARIANTS = ["old", "new", "new+T", "new+T+off"]


def variant_threshold(v, thr):
    return 1 if v in ("old", "new") else thr


# ------------------------------------------------------------------------------------------------
# 2. analytic model
# ------------------------------------------------------------------------------------------------

def tx_avg(n, p, tx=None):
    """Mean cost of a line transfer from a random other CPU among n (same / cross socket)."""
    if tx is not None:
        return tx
    if n <= 1:
        return 0.0
    cps = p["cores_per_socket"]
    sockets = max(1, math.ceil(n / cps))
    per = n / sockets
    p_cross = (n - per) / (n - 1)
    return (1 - p_cross) * p["tx_same"] + p_cross * p["tx_cross"]


def costs(v, wl, n, p, ev, thr, tx=None):
    """Per-operation costs of variant v on workload wl with n CPUs.

    Returns z (ns per op spent outside the shared locks: private work, persist, the CPU's own
    region lock, lines fetched from other CPUs) and the shared-lock events, each
    (resource, probability per op, hold ns, lines moved if the previous holder was another CPU,
    lines that are elsewhere in any case)."""
    t = tx_avg(n, p, tx)
    other = 1.0 if n > 1 else 0.0  # a shared lock changes hands (exact when it is busy)
    f = p["f_large"] if wl == "mixed" else 0.0
    s = 1 - f
    e = ev.get((wl, variant_threshold(v, thr)))
    if v == "old":
        z = p["cpu_op"] - p["cs_small"] + p["persist"]
        evs = [("pool", s, p["cs_small"], p["k_lock"], 0.0)]
        if f:
            evs.append(("pool", f, p["cs_large"], p["k_large"], 0.0))
        return z, evs
    off = v == "new+T+off"
    z = p["cpu_op"] - p["cs_small"] + 2.0 + p["persist"] + s * p["cs_small"]  # 2 ns: rseq cpu id
    evs = []
    if wl == "remote":
        z += other * p["k_lock"] * t  # the region lock and lines alternate between two CPUs
    if e:
        # a free lands in a region no cache holds (its lines are elsewhere) or in another CPU's
        # cached region (a remote free); the region a refill takes was last used elsewhere
        z += s * 0.5 * p["k_lock"] * t * ((1 - e["held"]) + other * e["held"])
        z += s * 0.5 * e["refill"] * p["k_lock"] * t
        per_refill = e["refile"] / e["refill"] if e["refill"] else 0.0
        if off:
            z += s * 0.5 * e["refile"] * (p["cs_refile"] + t)  # the freeing CPU re-files
            z += s * 0.5 * e["fresh"] * p["split"]             # faults outside the pool lock
            evs.append(("pool", s * 0.5 * e["refill"], p["cs_refill"], p["k_refill"], 0.0))
            evs.append(("pool", s * 0.5 * e["fresh"], p["cs_refill"], p["k_refill"], 0.0))
        else:
            evs.append(("pool", s * 0.5 * e["refill"],
                        p["cs_refill"] + per_refill * p["cs_refile"], p["k_refill"], per_refill))
            evs.append(("pool", s * 0.5 * e["fresh"], p["split"], 0.0, 0.0))
        evs.append(("pool", s * 0.5 * e["empty"], p["cs_empty"], 2.0, 0.0))
    if f:
        evs.append(("buddy" if off else "pool", f, p["cs_large"], p["k_large"], 0.0))
    return z, [x for x in evs if x[1] > 0]


def lock_demands(n, p, evs, tx=None):
    t = tx_avg(n, p, tx)
    other = 1.0 if n > 1 else 0.0
    d = {}
    for res, prob, hold, lines, cold in evs:
        d[res] = d.get(res, 0.0) + prob * (hold + (lines * other + cold) * t)
    return d


def mva(n, z, stations):
    """Exact mean value analysis of a closed network: n CPUs, think time z, FIFO queueing
    stations with the given demands (ns per op). Returns (ops per ns, utilisations)."""
    q = [0.0] * len(stations)
    x = 0.0
    for m in range(1, n + 1):
        r = [d * (1 + qi) for d, qi in zip(stations, q)]
        x = m / (z + sum(r))
        q = [x * ri for ri in r]
    return x, [x * d for d in stations]


def model(v, wl, n, p, ev, thr, tx=None, device=None):
    """MVA throughput (ops/ns) and pool-lock utilisation."""
    z, evs = costs(v, wl, n, p, ev, thr, tx)
    d = lock_demands(n, p, evs, tx)
    names = sorted(d)
    st = [d[k] for k in names]
    if device:
        z += device[0] - p["persist"]
        st.append(device[1])
        names.append("device")
    x, u = mva(n, z, st)
    return x, dict(zip(names, u))


def crossover(v, wl, n, p, ev, thr, tx=None):
    """N* = cycle / max lock demand: the CPU count at which a shared lock is always busy."""
    z, evs = costs(v, wl, n, p, ev, thr, tx)
    d = lock_demands(n, p, evs, tx)
    if not d or max(d.values()) <= 0:
        return float("inf"), z, 0.0
    dm = max(d.values())
    return (z + sum(d.values())) / dm, z + sum(d.values()), dm


# ------------------------------------------------------------------------------------------------
# 3. discrete-event simulation
# ------------------------------------------------------------------------------------------------

POOL, BUDDY = 0, 1


def des(v, wl, n, p, ev, thr, events, seed, tx=None):
    """n CPUs, one thread each, until `events` shared-lock acquisitions. Returns (ops/ns, pool util).

    Shared locks are FIFO servers taken in time order. A hold is the critical section plus one
    transfer per line when the lock's previous holder was another CPU (same- or cross-socket cost
    by the two CPUs' sockets), plus the lines that are elsewhere anyway. Operations that take no
    shared lock are not simulated one by one: a CPU runs Geometric(q) of them (z ns each) between
    two that do. In the remote workload every operation takes a region lock: its own (alloc) or a
    random other CPU's (free)."""
    rng = random.Random(seed)
    z, evs = costs(v, wl, n, p, ev, thr, tx)
    if v != "old" and wl == "local":
        return n / z, 0.0  # no shared lock at all: exact
    t_same, t_cross = (tx, tx) if tx is not None else (p["tx_same"], p["tx_cross"])
    t_avg = tx_avg(n, p, tx)
    cps = p["cores_per_socket"]
    remote = v != "old" and wl == "remote"
    if remote:  # the region lock and its lines are simulated instead of averaged into z
        z -= (1.0 if n > 1 else 0.0) * p["k_lock"] * t_avg + p["cs_small"]
        evs = [("region", 1.0, p["cs_small"], p["k_lock"], 0.0)]
    q = sum(x[1] for x in evs)
    cum = []
    acc = 0.0
    for res, prob, hold, lines, cold in evs:
        acc += prob / q
        cum.append((acc, POOL if res == "pool" else BUDDY if res == "buddy" else -2, hold, lines,
                    cold * t_avg))
    lq = math.log(1 - q) if q < 1 else None

    def gap():
        return 0 if lq is None else int(math.log(1.0 - rng.random()) / lq)

    nres = n + 2
    free_at = [0.0] * nres
    last = [-1] * nres
    pending = [0] * n      # private ops before this CPU's next shared event
    is_alloc = [True] * n
    heap = []
    for i in range(n):
        pending[i] = gap()
        heap.append((rng.random() * z + pending[i] * z, i))
    heapq.heapify(heap)
    warm = events // 5
    holds = []
    ops = 0
    t_warm = 0.0
    tlast = 0.0
    pop, push = heapq.heappop, heapq.heappush
    for step in range(events):
        t, i = pop(heap)
        if step == warm:
            t_warm = t
            ops = 0
        ops += pending[i]
        x = rng.random()
        for acc, res, hold, lines, cold in cum:
            if x < acc:
                break
        if res == -2:  # a region lock: own for an allocation, a random other CPU's for a free
            if is_alloc[i] or n == 1:
                res = i + 2
            else:
                j = rng.randrange(n - 1)
                res = (j + (j >= i)) + 2
            is_alloc[i] = not is_alloc[i]
        g = free_at[res] if free_at[res] > t else t
        prev = last[res]
        if prev != i and prev >= 0 and lines:
            hold += lines * (t_same if prev // cps == i // cps else t_cross)
        hold += cold
        free_at[res] = g + hold
        last[res] = i
        if res == POOL and step >= warm:
            holds.append((g, hold))
        ops += 1
        pending[i] = gap()
        tlast = t
        push(heap, (g + hold + z * (1 + pending[i]), i))
    span = tlast - t_warm
    busy = sum(max(0.0, min(g + h, tlast) - max(g, t_warm)) for g, h in holds)
    return ops / span, busy / span


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------

def table(header, rows):
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    print()


def fmt_n(x):
    if x == float("inf") or x > 1e5:
        return "none"
    return "%.0f" % x if x >= 10 else "%.1f" % x


def pct(u):
    return "%.0f %%" % (100 * u)


def run_packing(args, ev):
    """Prints the packing table; stores the pool-lock event rates the model uses in ev."""
    thr = args.threshold
    rows = []

    def row(orders, label_c, t, r, bound_c):
        pe = pool_events(r)
        bound = 1.25 * r["min"] + bound_c
        rows.append((orders, label_c, t, r["min"], r["max"], "%.3f" % (r["max"] / r["min"]),
                     "%.3f" % ((r["max"] - bound_c) / r["min"]), "%.0f" % bound,
                     "yes" if r["max"] <= bound else "**no**",
                     "%.4f" % pe["refill"] if label_c != "none" else "1 (every alloc)",
                     "%.3f" % pe["refile"], "%.3f" % pe["held"]))
        return pe

    for c, lr in ((2, 128), (64, 256), (256, 512)):
        lr = args.live_regions or lr
        for t in sorted({1, thr}):
            r = PackingOrder0(c, lr, threshold=t, seed=args.seed).run(args.churn)
            pe = row("0", c, t, r, c)
            if c == 2:  # a pool of many more regions than caches: the rates the model uses
                ev[("heap", t)] = pe
    # orders 0..8: smaller pool, longer churn (large blocks need it to reach a steady state)
    r = Packing(1, 128, seed=args.seed, orders=SMALL_ORDERS, percpu=False).run(args.churn_mixed)
    row("0..8", "none", "-", r, 0)
    by_order = None
    for t in sorted({1, thr}):
        pk = Packing(2, 128, threshold=t, seed=args.seed, orders=SMALL_ORDERS)
        r = pk.run(args.churn_mixed)
        ev[("mixed", t)] = row("0..8", 2, t, r, 2)
        by_order = pk.by_order
    table(["orders", "caches C", "refill threshold T", "ceil(live/512)", "max split regions",
           "ratio", "(max - C) / ceil", "bound 1.25x+C", "within?", "refills / alloc",
           "re-files / free", "frees into a cached region"], rows)
    print("Orders 0..8, C = 2, T = %d: refills per allocation of order 0..8: %s.\n"
          % (thr, ", ".join("%.3f" % (rf / a if a else 0.0) for a, rf in by_order)))
    print("C = none: the old design (fullest region for every allocation, no cache). Orders 0..8: "
          "P(k) ~ 2^-k by count. The model below uses the C = 2 rows (a pool of many more "
          "regions than caches, as on a large machine with a large pool).\n")


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpus", default="1,2,4,8,16,32,64,128,256",
                    help="CPU counts to model (default: %(default)s)")
    ap.add_argument("--events", type=int, default=20000,
                    help="DES: shared-lock acquisitions per run (default %(default)s)")
    ap.add_argument("--threshold", type=int, default=64,
                    help="refill threshold T of the new+T variants: a refill takes the fullest"
                         " region with >= T free pages (default %(default)s; 'new' uses 1, strict"
                         " fullest-first)")
    ap.add_argument("--live-regions", type=int, default=0,
                    help="packing, order 0: live data in regions (default 128 / 256 / 512 for"
                         " 2 / 64 / 256 caches)")
    ap.add_argument("--churn", type=float, default=2.0,
                    help="packing, order 0: free+alloc steps as a multiple of the live"
                         " allocations; the second half is measured (default %(default)s)")
    ap.add_argument("--churn-mixed", type=float, default=8.0,
                    help="packing, orders 0..8: the same (default %(default)s)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: packing,des")
    ap.add_argument("--dat", metavar="FILE",
                    help="also write the DES speed-ups as TSV (gnuplot: scripts/scaling.gp)")
    for name, default, unit, src in PARAMS:
        ap.add_argument("--" + name.replace("_", "-"), dest=name, type=type(default),
                        default=default, help="%s (%s; default %s)" % (src, unit, default))
    args = ap.parse_args()
    p = {name: getattr(args, name) for name, *_ in PARAMS}
    thr = args.threshold
    ns = [int(x) for x in args.cpus.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    t0 = time.time()
    loads = ["local", "remote", "heap", "mixed"]
    vlabel = {"old": "old", "new": "new", "new+T": "new+T%d" % thr, "new+T+off": "new+T%d+off" % thr}

    print("## Parameters\n")
    table(["parameter", "value", "source"],
          [(name, "%g %s" % (p[name], unit), src) for name, _, unit, src in PARAMS])
    print("Workloads: local = alloc + free of the CPU's own order-0 page; remote = order-0 alloc, "
          "free of a page another random CPU allocated; heap = random long-lived order-0 "
          "allocations at 50 %% occupancy (rates from the packing simulation); mixed = heap with "
          "orders 0..8 (P ~ 2^-k) and %.0f %% orders 9..10.\n" % (100 * p["f_large"]))
    print("Variants: old = one pool lock per operation (today); new = per-CPU caches as designed "
          "(strict fullest-first refill, deferred re-files at the refill, splits and orders >= 9 "
          "under the pool lock); new+T%d = refill takes only regions with >= %d free pages; "
          "new+T%d+off = that, plus re-files done by the freeing CPU, descriptor faults of a "
          "split outside the pool lock, orders >= 9 on the region buddy's own lock.\n"
          % (thr, thr, thr))

    ev = {}
    if "packing" not in skip:
        print("## 1. Packing: random alloc/free at 50 % occupancy (second half of the churn)\n")
        run_packing(args, ev)
        print("(packing: %.1f s)\n" % (time.time() - t0))
    else:  # representative values of a default run
        ev[("heap", 1)] = dict(refill=0.6, fresh=0.0, refile=0.75, empty=0.0, held=0.2)
        ev[("heap", thr)] = dict(refill=0.009, fresh=0.0, refile=0.17, empty=0.0, held=0.2)
        ev[("mixed", 1)] = dict(refill=0.1, fresh=0.0, refile=0.6, empty=0.0002, held=0.05)
        ev[("mixed", thr)] = dict(refill=0.04, fresh=0.0, refile=0.4, empty=0.0002, held=0.05)

    # ---- analytic ----------------------------------------------------------------------------
    print("## 2. Analytic model\n")
    print("Per operation: cycle = time outside shared locks + shared-lock demand D (hold times "
          "with line transfers, the lock changing hands every time). N* = cycle / D of the "
          "busiest shared lock: the CPU count at which it is always busy.\n")
    rows = []
    for wl in loads:
        for v in VARIANTS:
            if wl in ("local", "remote") and v in ("new+T", "new+T+off"):
                continue
            n64, cyc, dm = crossover(v, wl, 64, p, ev, thr)
            n256, _, _ = crossover(v, wl, 256, p, ev, thr)
            nvm, _, _ = crossover(v, wl, 2, p, ev, thr, tx=p["tx_vm"])
            rows.append((wl, vlabel[v], "%.0f" % cyc, "%.1f" % dm, fmt_n(n64), fmt_n(n256),
                         fmt_n(nvm)))
    # growth: every 512 order-0 allocations split a fresh region
    zg = p["cpu_op"] + 2 + p["persist"]
    for label, hold in (("growth, split under the pool lock", p["split"]),
                        ("growth, descriptor faults outside it",
                         p["cs_refill"] + p["k_refill"] * p["tx_same"])):
        d = hold / 1024  # one split per 512 allocations = per 1024 alloc+free operations
        rows.append((label, "new", "%.0f" % (zg + d), "%.2f" % d, fmt_n((zg + d) / d),
                     fmt_n((zg + d) / d), fmt_n((zg + d) / d)))
    table(["workload", "variant", "cycle ns/op (64 CPUs)", "max D ns/op (64 CPUs)",
           "N* (64-CPU costs)", "N* (256-CPU costs)", "N* (this VM's t_x)"], rows)

    print("### MVA: speed-up over the old design on 1 CPU (pool-lock utilisation)\n")
    rows = []
    for wl in loads:
        base = model("old", wl, 1, p, ev, thr)[0]
        for n in ns:
            row = [wl, n]
            for v in VARIANTS:
                x, u = model(v, wl, n, p, ev, thr)
                row.append("%.2f (%s)" % (x / base, pct(u.get("pool", 0.0))))
            rows.append(row)
    table(["workload", "CPUs"] + [vlabel[v] for v in VARIANTS], rows)

    # calibration
    print("### Calibration at 2 CPUs on this VM (t_x = %g ns), order-0 alloc/free\n" % p["tx_vm"])
    x1, _ = model("old", "local", 1, p, ev, thr, tx=p["tx_vm"])
    x2, _ = model("old", "local", 2, p, ev, thr, tx=p["tx_vm"])
    d2, _ = des("old", "local", 2, p, ev, thr, args.events, args.seed, tx=p["tx_vm"])
    xn, _ = model("new", "local", 2, p, ev, thr, tx=p["tx_vm"])
    xr, _ = model("new", "remote", 2, p, ev, thr, tx=p["tx_vm"])
    dr, _ = des("new", "remote", 2, p, ev, thr, args.events, args.seed, tx=p["tx_vm"])
    table(["", "1 CPU (M ops/s)", "2 CPUs (M ops/s)", "2 / 1"],
          [("old, MVA", "%.2f" % (x1 * 1e3), "%.2f" % (x2 * 1e3), "%.2f" % (x2 / x1)),
           ("old, DES", "", "%.2f" % (d2 * 1e3), "%.2f" % (d2 / x1)),
           ("old, measured: threads/order0_pair/pmpage", "4.34", "2.05-2.62", "0.47-0.60"),
           ("new, local, MVA", "", "%.2f" % (xn * 1e3), "%.2f" % (xn / x1)),
           ("new, remote, MVA / DES", "", "%.2f / %.2f" % (xr * 1e3, dr * 1e3),
            "%.2f / %.2f" % (xr / x1, dr / x1)),
           ("persist floor, measured: threads/persist/floor", "4.95", "9.7-10.7", "1.96-2.15")])

    # CXL
    dev_ns = 64 / p["cxl_bw"]
    print("### CXL device: persist %g ns, %g GB/s of 64 B writes (%.2f ns per line), MVA\n"
          % (p["cxl_persist"], p["cxl_bw"], dev_ns))
    rows = []
    for n in ns:
        row = [n]
        for v, wl in (("old", "local"), ("new", "local"), ("new+T", "heap"), ("new+T+off", "heap")):
            x1, _ = model("old", wl, 1, p, ev, thr, device=(p["cxl_persist"], dev_ns))
            x, u = model(v, wl, n, p, ev, thr, device=(p["cxl_persist"], dev_ns))
            row.append("%.0f M/s, %.2f (dev %s)" % (x * 1e3, x / x1, pct(u["device"])))
        rows.append(row)
    table(["CPUs", "old, local", "new, local", "%s, heap" % vlabel["new+T"],
           "%s, heap" % vlabel["new+T+off"]], rows)
    print("The device is saturated at N* = (persist + cpu) / (64 B / bandwidth) = %.0f CPUs.\n"
          % ((p["cxl_persist"] + p["cpu_op"] + 2) / dev_ns))

    # sensitivity
    print("### Sensitivity of N* (64 CPUs, one socket) to the line-transfer cost and the large share\n")
    rows = []
    for txv in (40.0, 60.0, 100.0, 220.0):
        row = ["t_x = %g ns" % txv]
        for v, wl in (("old", "local"), ("new+T", "heap"), ("new+T+off", "heap"), ("new+T", "mixed"),
                      ("new+T+off", "mixed")):
            row.append(fmt_n(crossover(v, wl, 64, p, ev, thr, tx=txv)[0]))
        rows.append(row)
    for fl in (0.005, 0.02, 0.1):
        pf = dict(p)
        pf["f_large"] = fl
        row = ["orders >= 9: %g %%" % (100 * fl), "", "", ""]
        for v in ("new+T", "new+T+off"):
            row.append(fmt_n(crossover(v, "mixed", 64, pf, ev, thr)[0]))
        rows.append(row)
    table(["", "old, local", "%s, heap" % vlabel["new+T"], "%s, heap" % vlabel["new+T+off"],
           "%s, mixed" % vlabel["new+T"], "%s, mixed" % vlabel["new+T+off"]], rows)

    # NUMA: one pool lock for the machine vs one region pool (filler + buddy + lock) per node
    print("### NUMA: 256 CPUs on 2 sockets, one region pool vs one per node (MVA)\n")
    print("Per-node pools: each node's pool lock serves its own CPUs (same-socket transfers only); "
          "the machine's throughput is the sum over nodes. Speed-up over the old design on 1 CPU.\n")
    rows = []
    for v, wl in (("old", "local"), ("new+T", "heap"), ("new+T+off", "heap"), ("new+T", "mixed"),
                  ("new+T+off", "mixed")):
        x1, _ = model("old", wl, 1, p, ev, thr)
        x_one, u_one = model(v, wl, 256, p, ev, thr)
        pn = dict(p)
        pn["cores_per_socket"] = 10 ** 6
        x_node, u_node = model(v, wl, 128, pn, ev, thr)
        rows.append(("%s, %s" % (vlabel[v], wl), "%.1f (%s)" % (x_one / x1, pct(u_one.get("pool", 0))),
                     "%.1f (%s)" % (2 * x_node / x1, pct(u_node.get("pool", 0))),
                     fmt_n(crossover(v, wl, 256, p, ev, thr)[0]),
                     fmt_n(2 * crossover(v, wl, 128, pn, ev, thr)[0])))
    table(["variant, workload", "one pool: speed-up (pool util)", "2 per-node pools",
           "N*, one pool", "N*, 2 per-node pools"], rows)

    # one region lock shared by a producer and its consumers
    hot = 2 * (p["cs_small"] + p["k_lock"] * p["tx_same"])
    print("A region lock shared by one allocating CPU and the CPUs freeing its pages passes %g "
          "lines per operation both ways: at most 1 / (2 x (cs_small + k_lock x t_x)) = %.1f M "
          "pages/s through one region (%.1f M/s at cross-socket cost), against %.1f M allocs/s a "
          "lone CPU manages; it limits that producer, not the machine.\n"
          % (p["k_lock"], 1e3 / hot, 1e3 / (2 * (p["cs_small"] + p["k_lock"] * p["tx_cross"])),
             1e3 / (p["cpu_op"] + 2 + p["persist"])))

    # ---- DES --------------------------------------------------------------------------------
    if "des" not in skip:
        t1 = time.time()
        print("## 3. Discrete-event simulation: speed-up over the old design on 1 CPU "
              "(pool-lock utilisation)\n")
        rows = []
        dat = []
        cache = {}
        for wl in loads:
            base = des("old", wl, 1, p, ev, thr, args.events, args.seed + 1)[0]
            for n in ns:
                row = [wl, n]
                vals = []
                for v in VARIANTS:
                    key = (v, "heap" if v == "old" and wl != "mixed" else wl, n)
                    if wl in ("local", "remote") and v in ("new+T", "new+T+off"):
                        key = ("new", wl, n)
                    if key not in cache:
                        cache[key] = des(key[0], key[1], n, p, ev, thr, args.events,
                                         args.seed + n)
                    x, u = cache[key]
                    row.append("%.2f (%s)" % (x / base, pct(u)))
                    vals.append(x / base)
                rows.append(row)
                dat.append([wl, n] + vals)
        table(["workload", "CPUs"] + [vlabel[v] for v in VARIANTS], rows)
        print("(DES: %.1f s)\n" % (time.time() - t1))
        if args.dat:
            with open(args.dat, "w") as f:
                f.write("# workload\tcpus\t" + "\t".join(vlabel[v] for v in VARIANTS) + "\n")
                for r in dat:
                    f.write("%s\t%d\t" % (r[0], r[1]) + "\t".join("%.3f" % x for x in r[2:]) + "\n")
    print("(total %.1f s)" % (time.time() - t0))


if __name__ == "__main__":
    sys.exit(main())
