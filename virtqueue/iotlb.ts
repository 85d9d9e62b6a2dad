/**
 * The device IOTLB of vhost-user's IOMMU support, and guest memory addressed through it.
 *
 * With VIRTIO_F_IOMMU_PLATFORM (a.k.a. VIRTIO_F_ACCESS_PLATFORM) negotiated, every address the driver
 * gives the device (ring addresses, descriptor buffers, the used-ring log address) is an I/O virtual
 * address (vhost-user.rst "Memory access": "Guest addresses are also called I/O virtual addresses
 * (IOVAs). They are translated to user addresses via the IOTLB"). The front-end fills the IOTLB with
 * VHOST_USER_IOTLB_MSG UPDATE (iova, size, user address, permissions) and shrinks it with INVALIDATE
 * (iova, size); for an IOVA it does not hold, the back-end sends an IOTLB miss over the back-end
 * channel and the front-end answers with an UPDATE, or with nothing when the IOVA is invalid
 * ("IOMMU support", "Back-end communication", VHOST_USER_SLAVE_IOTLB_MSG).
 *
 * `IotlbCache` holds the entries. Design, against the failure modes DPDK's lib/vhost/iotlb.c had
 * (a sorted linked list scanned linearly on every lookup; an UPDATE whose iova was already present
 * dropped as "identical" so a changed mapping stayed stale; overlapping UPDATEs with other starts
 * accumulating as duplicates; cache entries and pending misses sharing one 2048-entry pool, emptied
 * by random eviction or by dropping every pending miss):
 * - Entries never overlap. An UPDATE first cuts every part of the existing entries it covers (the
 *   newest mapping wins, as an IOMMU would have it), then merges with neighbours contiguous in both
 *   IOVA and user address with the same permissions (as rust-vmm vm-memory's Iotlb does with its
 *   range map), so a repeated or overlapping UPDATE never adds an entry. INVALIDATE cuts exactly the
 *   given range, splitting an entry that straddles it.
 * - Lookup: binary search over a sorted array of starts, after a one-entry last-hit check. A hit
 *   returns the longest prefix contiguous in IOVA and user address that allows the access (DPDK's
 *   vhost_user_iotlb_cache_find chains entries by IOVA only and so could hand out a length spanning
 *   non-contiguous user memory); a miss returns the first IOVA without an entry; a mapping that
 *   exists but forbids the access is `denied`, not a miss (the "access failure" event: asking the
 *   front-end again would only bring back the same entry).
 * - Bounded: at most `maxEntries`. Past it, the least recently used entries are evicted in one batch
 *   (enough to get back to 7/8 of the bound), so a flood of UPDATEs costs O(log n) search plus one
 *   array splice per UPDATE, and an O(n log n) pass once every n/8 UPDATEs. Eviction is always safe
 *   (the translation is missed and asked for again); least-recently-used keeps the ring mappings,
 *   looked up on every poll, where random eviction would throw them out as often as anything.
 * - Pending misses (`shouldSendMiss`) are kept apart, bounded, de-duplicated per (iova, access),
 *   cleared by an UPDATE that covers them, and re-sendable after `missRetryMs` because the front-end
 *   stays silent on an invalid IOVA.
 *
 * `IotlbMemory` is a GuestMemory over IOVAs: IOTLB, then the memory table by user address
 * (`RegionMemory.translateUva`). A miss or a permission failure throws (VQ_IOTLB_MISS /
 * VQ_IOTLB_PERM, an `IotlbFault` carrying iova and access, also kept in `lastMiss` / `lastDenied`)
 * so the caller can park the queue and ask the front-end; a user address outside every region is a
 * front-end error ("Addresses and size must be within vhost memory regions") and gives `false`
 * (VQ_UNMAPPED), like any unmapped address. The dirty log stays indexed by guest physical address
 * (vhost-user.rst "Migration": "Where addr is the guest physical address"): `onWrite` takes the IOVAs
 * the engine wrote and reports the gpas behind them, as DPDK's __vhost_log_write_iova does
 * (iova -> user address -> gpa through the regions) and as QEMU expects when it syncs the log
 * (vhost_sync_dirty_bitmap translates the used ring's IOVA to a gpa before reading its bits).
 *
 * Addresses are JS numbers: IOVAs and user addresses at or above 2^53 cannot be cached
 * (`applyMessage` refuses such an UPDATE; descriptors with such addresses are already refused by
 * `joinAddr`). QEMU's Intel vIOMMU uses 39- or 48-bit IOVAs.
 */
import createDebug from 'debug';
import type { GuestMemory, Span } from './memory.ts';
import { createSpan } from './memory.ts';
import { VirtqError, hexAddr } from './errors.ts';

const log = createDebug('vhost:iotlb');

const MAX_SAFE = Number.MAX_SAFE_INTEGER;
/** Permission bits, as in struct vhost_iotlb_msg (VHOST_ACCESS_RO = 1, WO = 2, RW = 3). */
const PERM_R = 1;
const PERM_W = 2;

export type IotlbPerm = 'ro' | 'wo' | 'rw';
const PERM_NAME: readonly IotlbPerm[] = ['ro', 'ro', 'wo', 'rw'];

/** 'ro' -> 1, 'wo' -> 2, 'rw' -> 3 (the vhost_iotlb_msg perm byte). */
export function iotlbPermBits(perm: IotlbPerm): 1 | 2 | 3 {
  return perm === 'ro' ? 1 : perm === 'wo' ? 2 : 3;
}

/** 1 / 2 / 3 -> 'ro' / 'wo' / 'rw'; null for 0 (VHOST_ACCESS_NONE) or anything else. */
export function iotlbPermFromBits(bits: number): IotlbPerm | null {
  return bits === 1 || bits === 2 || bits === 3 ? PERM_NAME[bits]! : null;
}

/** One IOTLB entry: `[iova, iova + size)` maps to `[uaddr, uaddr + size)` of the front-end. */
export interface IotlbEntry {
  iova: number;
  size: number;
  uaddr: number;
  perm: IotlbPerm;
}

/**
 * A lookup result, filled in place (allocate once with `createIotlbLookup`).
 * - hit: `[iova, iova + byteLen)` maps to `[uaddr, uaddr + byteLen)`, `byteLen` <= the length asked
 *   (the longest prefix contiguous in IOVA and user address that allows the access); `perm` is the
 *   first entry's permission.
 * - miss: `iova` is the first IOVA with no entry; `perm` is the access to ask for in the IOTLB miss
 *   message ('ro' for a device read, 'wo' for a device write); `byteLen` 0.
 * - denied: an entry covers `iova` but forbids the access; `perm` is the entry's permission.
 */
export interface IotlbLookup {
  kind: 'hit' | 'miss' | 'denied';
  iova: number;
  uaddr: number;
  byteLen: number;
  perm: IotlbPerm;
}

export function createIotlbLookup(): IotlbLookup {
  return { kind: 'miss', iova: 0, uaddr: 0, byteLen: 0, perm: 'ro' };
}

export interface IotlbStats {
  entries: number;
  maxEntries: number;
  lookups: number;
  hits: number;
  misses: number;
  /** Lookups refused for permissions (access failures). */
  denied: number;
  /** Lookups answered by the last-hit entry without a search. */
  lastHits: number;
  updates: number;
  invalidations: number;
  /** UPDATEs merged into an adjacent entry. */
  merges: number;
  evictions: number;
  pendingMisses: number;
  /** shouldSendMiss answers false because the same miss is already pending. */
  missesSuppressed: number;
}

export interface IotlbCacheOptions {
  /** Entry bound (default 4096). */
  maxEntries?: number;
  /** Pending-miss bound (default 64); the oldest is forgotten past it. */
  maxPendingMisses?: number;
  /** A pending miss may be sent again after this long without an answer (default 1000 ms). */
  missRetryMs?: number;
  /** Clock for pending misses (tests). */
  now?: () => number;
}

/** The decoded VHOST_USER_IOTLB_MSG payload (protocol/payloads.ts `IotlbMsg`). */
export interface IotlbMessage {
  iova: bigint;
  size: bigint;
  userAddr: bigint;
  perm: number;
  type: number;
}

/** vhost_iotlb_msg types (vhost-user.rst "An IOTLB message"). */
const MSG_UPDATE = 2;
const MSG_INVALIDATE = 3;
const BIG_MAX_SAFE = BigInt(MAX_SAFE);

/** One entry; a single shape for monomorphic accesses. Pieces cut from an entry are new Slots. */
class Slot {
  constructor(
    readonly iova: number,
    readonly end: number,
    readonly uaddr: number,
    readonly perm: number,
    /** Lookup clock at the last use (insertion counts): the eviction order. */
    public used: number,
  ) {}
}

interface PendingMiss {
  iova: number;
  need: number;
  at: number;
}

export class IotlbCache {
  readonly maxEntries: number;
  readonly maxPendingMisses: number;
  readonly missRetryMs: number;
  lookups = 0;
  hits = 0;
  misses = 0;
  denied = 0;
  lastHits = 0;
  updates = 0;
  invalidations = 0;
  merges = 0;
  evictions = 0;
  missesSuppressed = 0;

  private slots: Slot[] = [];
  private starts: number[] = [];
  private last = 0;
  private clock = 0;
  private readonly evictTo: number;
  private readonly pending = new Map<string, PendingMiss>();
  private readonly now: () => number;
  private readonly scratch = createIotlbLookup();

  constructor(opts: IotlbCacheOptions = {}) {
    const max = opts.maxEntries ?? 4096;
    if (!Number.isInteger(max) || max < 1) throw new RangeError(`IOTLB maxEntries ${max} is not a positive integer`);
    this.maxEntries = max;
    this.evictTo = max - Math.max(1, Math.floor(max / 8));
    this.maxPendingMisses = Math.max(1, opts.maxPendingMisses ?? 64);
    this.missRetryMs = opts.missRetryMs ?? 1000;
    this.now = opts.now ?? Date.now;
  }

  /** Number of entries. */
  get size(): number {
    return this.slots.length;
  }

  /** The entries sorted by iova (copies; diagnostics and tests). */
  entries(): IotlbEntry[] {
    return this.slots.map((s) => ({ iova: s.iova, size: s.end - s.iova, uaddr: s.uaddr, perm: PERM_NAME[s.perm]! }));
  }

  stats(): IotlbStats {
    return {
      entries: this.slots.length,
      maxEntries: this.maxEntries,
      lookups: this.lookups,
      hits: this.hits,
      misses: this.misses,
      denied: this.denied,
      lastHits: this.lastHits,
      updates: this.updates,
      invalidations: this.invalidations,
      merges: this.merges,
      evictions: this.evictions,
      pendingMisses: this.pending.size,
      missesSuppressed: this.missesSuppressed,
    };
  }

  /**
   * IOTLB UPDATE: `[iova, iova + size)` -> `[uaddr, uaddr + size)` with `perm` (a name or the message's
   * bits 1..3). Replaces whatever overlapped it. RangeError for arguments no message can carry
   * (negative, zero size, past 2^53, perm not 1..3); `applyMessage` checks a front-end's message first.
   */
  update(iova: number, size: number, uaddr: number, perm: IotlbPerm | number): void {
    const bits = typeof perm === 'number' ? perm : iotlbPermBits(perm);
    if (
      !(Number.isSafeInteger(iova) && Number.isSafeInteger(size) && Number.isSafeInteger(uaddr)) ||
      iova < 0 ||
      uaddr < 0 ||
      size <= 0 ||
      iova + size > MAX_SAFE ||
      uaddr + size > MAX_SAFE ||
      !(bits === 1 || bits === 2 || bits === 3)
    ) {
      throw new RangeError(`bad IOTLB update ${iova} +${size} -> ${uaddr} perm ${perm}`);
    }
    this.updates++;
    const end = iova + size;
    const i = this.cut(iova, end);
    const slots = this.slots;
    let from = i;
    let to = i;
    let nIova = iova;
    let nEnd = end;
    let nUaddr = uaddr;
    const prev = slots[i - 1];
    if (prev !== undefined && prev.end === iova && prev.perm === bits && prev.uaddr + (prev.end - prev.iova) === uaddr) {
      from = i - 1;
      nIova = prev.iova;
      nUaddr = prev.uaddr;
      this.merges++;
    }
    const next = slots[i];
    if (next !== undefined && next.iova === end && next.perm === bits && uaddr + size === next.uaddr) {
      to = i + 1;
      nEnd = next.end;
      this.merges++;
    }
    const s = new Slot(nIova, nEnd, nUaddr, bits, ++this.clock);
    slots.splice(from, to - from, s);
    this.starts.splice(from, to - from, nIova);
    this.last = from;
    if (this.pending.size > 0) this.settlePending(iova, end, bits);
    if (slots.length > this.maxEntries) this.evict();
  }

  /**
   * IOTLB INVALIDATE: no IOVA of `[iova, iova + size)` is translated afterwards; entries straddling
   * an edge keep their outside part. The range may reach past 2^53 (clamped). Returns the number of
   * entries that were removed or trimmed.
   */
  invalidate(iova: number, size: number): number {
    this.invalidations++;
    if (!(iova >= 0 && size > 0) || iova >= MAX_SAFE) return 0;
    const end = Math.min(iova + size, MAX_SAFE);
    const before = this.slots.length;
    const touched = this.countOverlapping(iova, end);
    if (touched === 0) return 0;
    this.cut(iova, end);
    // Splitting one entry around the range adds one: keep the bound.
    if (this.slots.length > this.maxEntries && this.slots.length > before) this.evict();
    return touched;
  }

  /** Drops every entry and pending miss (a new memory table, a device reset). */
  clear(): void {
    this.slots = [];
    this.starts = [];
    this.last = 0;
    this.pending.clear();
  }

  /**
   * Applies a VHOST_USER_IOTLB_MSG from the front-end. Returns null when applied, else why not
   * (reply non-zero, vhost-user.rst VHOST_USER_IOTLB_MSG). UPDATE with no access (perm 0) is treated
   * as an INVALIDATE of its range; a zero-size UPDATE or INVALIDATE changes nothing.
   */
  applyMessage(msg: IotlbMessage): string | null {
    if (msg.type === MSG_INVALIDATE) {
      if (msg.size === 0n || msg.iova >= BIG_MAX_SAFE) return null;
      const end = msg.iova + msg.size;
      this.invalidate(Number(msg.iova), Number((end > BIG_MAX_SAFE ? BIG_MAX_SAFE : end) - msg.iova));
      return null;
    }
    if (msg.type !== MSG_UPDATE) return `IOTLB message type ${msg.type} is not UPDATE or INVALIDATE`;
    if (msg.size === 0n) return null;
    if (msg.perm === 0) {
      if (msg.iova < BIG_MAX_SAFE) {
        const end = msg.iova + msg.size;
        this.invalidate(Number(msg.iova), Number((end > BIG_MAX_SAFE ? BIG_MAX_SAFE : end) - msg.iova));
      }
      return null;
    }
    if (iotlbPermFromBits(msg.perm) === null) return `IOTLB permissions ${msg.perm} are not 0..3`;
    if (msg.iova + msg.size > BIG_MAX_SAFE || msg.userAddr + msg.size > BIG_MAX_SAFE) {
      return `IOTLB update 0x${msg.iova.toString(16)} +0x${msg.size.toString(16)} -> 0x${msg.userAddr.toString(16)} reaches past 2^53`;
    }
    this.update(Number(msg.iova), Number(msg.size), Number(msg.userAddr), msg.perm);
    return null;
  }

  /**
   * Translates `[iova, iova + byteLen)` for a device read (`write` false) or write, into `out`
   * (default: an internal object overwritten by the next call). Counts lookups, hits, misses, denials.
   */
  lookup(iova: number, byteLen: number, write: boolean, out: IotlbLookup = this.scratch): IotlbLookup {
    this.lookups++;
    this.resolve(iova, byteLen, write ? PERM_W : PERM_R, out, true);
    if (out.kind === 'hit') this.hits++;
    else if (out.kind === 'miss') this.misses++;
    else this.denied++;
    return out;
  }

  /** `lookup` without the counters (dirty logging, address conversion). */
  probe(iova: number, byteLen: number, write: boolean, out: IotlbLookup = this.scratch): IotlbLookup {
    this.resolve(iova, byteLen, write ? PERM_W : PERM_R, out, false);
    return out;
  }

  /**
   * Should an IOTLB miss for (iova, access) be sent now? False while the same miss is pending (sent
   * less than `missRetryMs` ago and not yet answered by a covering UPDATE); true otherwise, and the
   * miss is then recorded as pending. Bounded: past `maxPendingMisses` the oldest is forgotten.
   */
  shouldSendMiss(iova: number, write: boolean): boolean {
    const need = write ? PERM_W : PERM_R;
    const key = (write ? 'w' : 'r') + iova;
    const now = this.now();
    const p = this.pending.get(key);
    if (p !== undefined) {
      if (now - p.at < this.missRetryMs) {
        this.missesSuppressed++;
        return false;
      }
      this.pending.delete(key); // re-inserted below, as the newest
    } else if (this.pending.size >= this.maxPendingMisses) {
      const oldest = this.pending.keys().next().value;
      if (oldest !== undefined) this.pending.delete(oldest);
    }
    this.pending.set(key, { iova, need, at: now });
    return true;
  }

  /** Misses sent and not yet answered. */
  get pendingMisses(): number {
    return this.pending.size;
  }

  // ---------------------------------------------------------------------------------------------

  private resolve(iova: number, byteLen: number, need: number, out: IotlbLookup, counted: boolean): void {
    const slots = this.slots;
    let i = this.last;
    let s = slots[i];
    if (s !== undefined && iova >= s.iova && iova < s.end) {
      if (counted) this.lastHits++;
    } else {
      i = this.floor(iova);
      s = i < 0 ? undefined : slots[i];
      if (s === undefined || iova >= s.end) {
        out.kind = 'miss';
        out.iova = iova;
        out.uaddr = 0;
        out.byteLen = 0;
        out.perm = need === PERM_W ? 'wo' : 'ro';
        return;
      }
      this.last = i;
    }
    out.iova = iova;
    if ((s.perm & need) === 0) {
      out.kind = 'denied';
      out.uaddr = 0;
      out.byteLen = 0;
      out.perm = PERM_NAME[s.perm]!;
      return;
    }
    const tick = ++this.clock;
    s.used = tick;
    const uaddr = s.uaddr + (iova - s.iova);
    let avail = s.end - iova;
    // Entries only stay apart when their permissions differ or they are not contiguous: rare.
    while (avail < byteLen) {
      const n = slots[++i];
      if (n === undefined || n.iova !== iova + avail || n.uaddr !== uaddr + avail || (n.perm & need) === 0) break;
      n.used = tick;
      avail += n.end - n.iova;
    }
    out.kind = 'hit';
    out.uaddr = uaddr;
    out.byteLen = avail < byteLen ? avail : byteLen;
    out.perm = PERM_NAME[s.perm]!;
  }

  /** Index of the last entry starting at or before x, or -1. */
  private floor(x: number): number {
    const starts = this.starts;
    let lo = 0;
    let hi = starts.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (starts[mid]! <= x) lo = mid + 1;
      else hi = mid - 1;
    }
    return hi;
  }

  /** Index of the first entry ending after `start` (the first that can overlap `[start, ...)`). */
  private firstOverlap(start: number): number {
    const i = this.floor(start);
    return i >= 0 && this.slots[i]!.end > start ? i : i + 1;
  }

  private countOverlapping(start: number, end: number): number {
    const slots = this.slots;
    let j = this.firstOverlap(start);
    const i = j;
    while (j < slots.length && slots[j]!.iova < end) j++;
    return j - i;
  }

  /** Removes `[start, end)` from every entry; returns the index where that gap now is. */
  private cut(start: number, end: number): number {
    const slots = this.slots;
    const i = this.firstOverlap(start);
    let j = i;
    while (j < slots.length && slots[j]!.iova < end) j++;
    if (j === i) return i;
    const first = slots[i]!;
    const lastS = slots[j - 1]!;
    const keep: Slot[] = [];
    if (first.iova < start) keep.push(new Slot(first.iova, start, first.uaddr, first.perm, first.used));
    if (lastS.end > end) keep.push(new Slot(end, lastS.end, lastS.uaddr + (end - lastS.iova), lastS.perm, lastS.used));
    slots.splice(i, j - i, ...keep);
    this.starts.splice(i, j - i, ...keep.map((s) => s.iova));
    this.last = 0;
    return first.iova < start ? i + 1 : i;
  }

  /** Evicts the least recently used entries down to 7/8 of the bound, in one pass. */
  private evict(): void {
    const slots = this.slots;
    const n = slots.length;
    const k = n - this.evictTo;
    if (k <= 0) return;
    const used = new Float64Array(n);
    for (let r = 0; r < n; r++) used[r] = slots[r]!.used;
    used.sort();
    const threshold = used[k - 1]!;
    // Entries used before the threshold go; of those used exactly at it, only as many as needed.
    let lo = 0;
    while (used[lo]! < threshold) lo++;
    let atThreshold = k - lo;
    const starts = this.starts;
    let w = 0;
    for (let r = 0; r < n; r++) {
      const s = slots[r]!;
      if (s.used < threshold) continue;
      if (s.used === threshold && atThreshold > 0) {
        atThreshold--;
        continue;
      }
      slots[w] = s;
      starts[w] = s.iova;
      w++;
    }
    slots.length = w;
    starts.length = w;
    this.evictions += n - w;
    this.last = 0;
    log('IOTLB full (%d entries): evicted the %d least recently used', n, n - w);
  }

  /** Pending misses answered by an UPDATE of `[start, end)` with permissions `bits`. */
  private settlePending(start: number, end: number, bits: number): void {
    for (const [key, p] of this.pending) {
      if (p.iova >= start && p.iova < end && (p.need & bits) === p.need) this.pending.delete(key);
    }
  }
}

// -------------------------------------------------------------------------------------------------

/** Memory addressed by the front-end's user addresses; RegionMemory implements it. */
export interface UvaMemory {
  /**
   * Fills `out` for `[uva, uva + byteLen)` as far as it is contiguous in one region; returns the
   * gpa of `uva`, or -1 when it is unmapped (or read-only for `write`).
   */
  translateUva(uva: number, byteLen: number, write: boolean, out: Span): number;
}

/** A VQ_IOTLB_MISS / VQ_IOTLB_PERM error with the IOVA and access to report to the front-end. */
export class IotlbFault extends VirtqError {
  constructor(
    code: 'VQ_IOTLB_MISS' | 'VQ_IOTLB_PERM',
    /** First IOVA that could not be translated. */
    readonly iova: number,
    /** The access was a device write. */
    readonly write: boolean,
    message: string,
  ) {
    super(code, message);
    this.name = 'IotlbFault';
  }
}

/** The IOVA and access of the last fault. */
export interface IotlbAccess {
  iova: number;
  write: boolean;
}

type WriteHook = (gpa: number, byteLen: number) => void;

/**
 * GuestMemory over IOVAs: the IOTLB, then the memory table by user address. Spans stop where the
 * IOTLB translation stops being contiguous or where a region ends, as RegionMemory's stop at region
 * ends; callers loop as they already do.
 */
export class IotlbMemory implements GuestMemory {
  /** The last miss (also carried by the thrown IotlbFault). */
  lastMiss: IotlbAccess | null = null;
  /** The last permission failure. */
  lastDenied: IotlbAccess | null = null;
  /**
   * Told of every fault as it happens (the session sends the miss / ACCESS_FAIL on the back-end
   * channel); the fault is still thrown to the engine.
   */
  onFault: ((kind: 'miss' | 'denied', access: IotlbAccess) => void) | null = null;
  /** Device writes whose gpa could not be found for the dirty log (should stay 0, see `onWrite`). */
  unloggedWrites = 0;
  private readonly r = createIotlbLookup();
  private readonly logR = createIotlbLookup();
  private readonly logSpan = createSpan();
  private gpaHook: WriteHook | undefined = undefined;
  private iovaHook: WriteHook | undefined = undefined;

  constructor(
    readonly iotlb: IotlbCache,
    /** The memory table (replace it when the front-end sends a new one). */
    public backing: UvaMemory,
  ) {}

  /**
   * GuestMemory.translate for an IOVA. Throws IotlbFault VQ_IOTLB_MISS / VQ_IOTLB_PERM when the
   * IOTLB has no entry / forbids the access at `iova`, or right after a translated prefix shorter
   * than asked (every caller needs the whole range: a ring then gets the miss, not a layout error).
   * False when the user address is in no region (the front-end's error: VQ_UNMAPPED for callers).
   */
  translate(iova: number, byteLen: number, write: boolean, out: Span): boolean {
    const r = this.iotlb.lookup(iova, byteLen, write, this.r);
    if (r.kind !== 'hit') throw this.fault(r.kind, r.iova, write);
    const got = r.byteLen;
    if (got < byteLen) {
      const ahead = this.iotlb.lookup(iova + got, byteLen - got, write, this.logR);
      if (ahead.kind !== 'hit') throw this.fault(ahead.kind, ahead.iova, write);
    }
    if (this.backing.translateUva(r.uaddr, got, write, out) >= 0) return true;
    log('iova %s -> user address %s is in no memory region', hexAddr(iova), hexAddr(r.uaddr));
    return false;
  }

  /**
   * gpa behind an IOVA, or -1 (the used-ring log address is an IOVA too: DPDK translate_log_addr).
   * Records nothing and counts nothing.
   */
  iovaToGpa(iova: number, write = false): number {
    const r = this.iotlb.probe(iova, 1, write, this.logR);
    if (r.kind !== 'hit') return -1;
    return this.backing.translateUva(r.uaddr, 1, false, this.logSpan);
  }

  /**
   * Dirty-log hook. Set it with a gpa hook (DirtyLog); the engine calls what it reads back with the
   * IOVAs it wrote, which are translated and reported as gpa ranges (split at entry and region
   * boundaries). Own properties of the installed hook (tags such as migration's `log`) are copied
   * onto the wrapper. A write whose IOVA is no longer in the IOTLB cannot be logged: counted in
   * `unloggedWrites`. It cannot happen while IOTLB messages are handled between event-loop turns and
   * chains complete in the turn that popped them (the entry that allowed the write is still there).
   */
  get onWrite(): WriteHook | undefined {
    return this.iovaHook;
  }

  set onWrite(hook: WriteHook | undefined) {
    this.gpaHook = hook;
    if (hook === undefined) {
      this.iovaHook = undefined;
      return;
    }
    const wrapper: WriteHook = (iova, byteLen) => this.logIova(iova, byteLen);
    Object.assign(wrapper, hook);
    this.iovaHook = wrapper;
  }

  private logIova(iova: number, byteLen: number): void {
    const hook = this.gpaHook;
    if (hook === undefined) return;
    const s = this.logSpan;
    let done = 0;
    while (done < byteLen) {
      const r = this.iotlb.probe(iova + done, byteLen - done, true, this.logR);
      const gpa = r.kind === 'hit' ? this.backing.translateUva(r.uaddr, r.byteLen, false, s) : -1;
      if (gpa < 0 || s.byteLen <= 0) {
        if (this.unloggedWrites++ === 0) log('dirty log: iova %s +%d has no translation any more', hexAddr(iova + done), byteLen - done);
        return;
      }
      hook(gpa, s.byteLen);
      done += s.byteLen;
    }
  }

  private fault(kind: 'miss' | 'denied', iova: number, write: boolean): IotlbFault {
    const access = { iova, write };
    this.onFault?.(kind, access);
    if (kind === 'miss') {
      this.lastMiss = access;
      return new IotlbFault('VQ_IOTLB_MISS', iova, write, `IOTLB miss at iova ${hexAddr(iova)} (${write ? 'write' : 'read'})`);
    }
    this.lastDenied = access;
    return new IotlbFault(
      'VQ_IOTLB_PERM',
      iova,
      write,
      `IOTLB entry at iova ${hexAddr(iova)} does not allow a device ${write ? 'write' : 'read'}`,
    );
  }
}
