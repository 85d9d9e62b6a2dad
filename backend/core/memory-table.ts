/**
 * The guest memory table: regions received with SET_MEM_TABLE / ADD_MEM_REG, each an fd mapped into
 * this process. This module is the single owner of those fds and mappings; it releases them on
 * replacement, removal and close.
 *
 * vhost-user.rst "Memory regions description": each region has guest physical address, size, the
 * frontend's user address (which SET_VRING_ADDR uses) and an mmap offset into the fd.
 * A region larger than what its fd can back is refused here (fstat), so a hostile frontend cannot
 * make us SIGBUS later on access.
 *
 * Nor by shrinking the file after we mapped it (ftruncate: every access past the new end would SIGBUS
 * the whole process). Every mapping of a frontend's fd here, in the dirty log (migration.ts) and the
 * inflight buffer (inflight-buffer.ts) is
 *   - sealed against shrinking first where the file allows it (`sealAgainstShrink`: F_SEAL_SHRINK; QEMU's
 *     memory-backend-memfd and its dirty log come sealed already), before its size is checked;
 *   - and guarded (`MappingGuards`, the native SIGBUS guard) for what cannot be sealed: a fault in it
 *     maps zero pages instead of killing us, and the owner's `onFault` hears of it once, with a reason:
 *     the session then ends as broken (session.ts `fatal`); other sessions go on.
 */
import createDebug from 'debug';
import { F_SEAL, type NativeBinding, type Fd, type SysError } from '../../native/types.ts';
import { RegionMemory } from '../../virtqueue/index.ts';
import { BackendError } from './errors.ts';

const log = createDebug('vhost:mem');
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;

/**
 * How many bytes `fd` can back, or null when fstat cannot tell (not a regular file: the kernel
 * checks such mappings itself). Mapping past this would SIGBUS us on the first access, so every
 * mapping of a frontend's fd (memory regions, the dirty log) is checked against it first.
 */
export function fdBackedBytes(sys: Pick<NativeBinding, 'fstat'>, fd: Fd): number | null {
  const st = sys.fstat(fd);
  return (st.mode & S_IFMT) === S_IFREG ? st.size : null;
}
const MAX_SAFE = Number.MAX_SAFE_INTEGER;

/** The native calls that seal and guard mappings; optional: a binding may lack them (fakes, older builds). */
export type GuardNative = Partial<
  Pick<NativeBinding, 'addSeals' | 'getSeals' | 'guardMapping' | 'unguardMapping' | 'onGuestMemoryFault'>
>;

/** What sealing a frontend's fd against shrinking came to. */
export type SealOutcome =
  /** We added F_SEAL_SHRINK. */
  | 'sealed'
  /** It was sealed so already (QEMU's memory-backend-memfd with seal=on, the default; QEMU's dirty log). */
  | 'already'
  /** EPERM: born without MFD_ALLOW_SEALING, or sealed with F_SEAL_SEAL: only the SIGBUS guard covers it. */
  | 'refused'
  /** EINVAL: a file that cannot be sealed (not a memfd or shmem file): only the SIGBUS guard covers it. */
  | 'unsealable'
  /** The binding has no seals (or a call failed otherwise, logged). */
  | 'unsupported';

/**
 * F_SEAL_SHRINK on a frontend's fd, so that it can no longer shrink the file under our mapping. Only SHRINK:
 * never GROW (DPDK grows its memfd segments as it allocates), never WRITE (the frontend writes its own
 * memory), never SEAL (the frontend may still add seals of its own). Seals cannot be removed and belong
 * to the file: the frontend can no longer shrink it either, which QEMU never does to guest RAM (memory
 * is given back by punching holes, which F_SEAL_SHRINK allows).
 */
export function sealAgainstShrink(sys: GuardNative, fd: Fd): SealOutcome {
  if (!sys.addSeals || !sys.getSeals) return 'unsupported';
  try {
    if ((sys.getSeals(fd) & F_SEAL.shrink) !== 0) return 'already';
    sys.addSeals(fd, F_SEAL.shrink);
    return 'sealed';
  } catch (e) {
    const code = (e as SysError).code;
    if (code === 'EPERM') return 'refused';
    if (code === 'EINVAL') return 'unsealable';
    log('fd %d: sealing failed: %s', fd, (e as Error).message);
    return 'unsupported';
  }
}
const isSealed = (o: SealOutcome): boolean => o === 'sealed' || o === 'already';

/**
 * Guard id -> what to do when that mapping is poisoned, per binding (keyed by its onGuestMemoryFault
 * function, which copies of a binding share). The native layer has one fault callback per process and
 * this module sets it: nothing else in the backend may call onGuestMemoryFault.
 */
const routes = new WeakMap<object, Map<number, () => void>>();
/** Bindings whose onGuestMemoryFault failed (a fake's ENOSYS): no guard, asked once. */
const noGuard = new WeakSet<object>();

function routeTable(sys: GuardNative): Map<number, () => void> | null {
  const on = sys.onGuestMemoryFault;
  if (!on || noGuard.has(on)) return null;
  const known = routes.get(on);
  if (known) return known;
  const t = new Map<number, () => void>();
  try {
    on.call(sys, (ids) => {
      for (const id of ids) {
        const poisoned = t.get(id);
        if (!poisoned) {
          log('guest memory fault in guarded mapping %d, which has no owner any more', id);
          continue;
        }
        t.delete(id); // reported once
        try {
          poisoned();
        } catch (e) {
          log('guest memory fault in mapping %d: its owner failed: %O', id, e);
        }
      }
    });
  } catch (e) {
    log('no SIGBUS guard: %s', (e as Error).message);
    noGuard.add(on);
    return null;
  }
  routes.set(on, t);
  return t;
}

/**
 * The guarded mappings of one owner (a memory table, a dirty log, an inflight buffer) and the one report
 * their owner gets when any of them is poisoned (a SIGBUS in it: its file was shrunk under us). The
 * report waits for `onFault` when none is set yet (a mapping can fault before its owner is handed to a
 * session).
 */
export class MappingGuards {
  private sink: ((reason: string) => void) | null = null;
  private pending: string | null = null;
  private faulted = false;
  private readonly ids = new Set<number>();

  constructor(private readonly sys: GuardNative) {}

  /** Told once, with a reason, when one of these mappings lost its backing. */
  set onFault(sink: ((reason: string) => void) | null) {
    this.sink = sink;
    const p = this.pending;
    if (sink !== null && p !== null) {
      this.pending = null;
      queueMicrotask(() => sink(p));
    }
  }

  /**
   * Guards `ab` (a mapping of a frontend's fd, named by `what` in the report). Returns the guard id, or null
   * when the binding has no guard. Throws (the native SysError) when the guard cannot take it (ENOSPC);
   * the caller decides whether a sealed mapping may go unguarded.
   */
  add(ab: ArrayBuffer, what: string): number | null {
    const s = this.sys;
    if (!s.guardMapping) return null;
    const table = routeTable(s);
    if (table === null) return null;
    const id = s.guardMapping(ab);
    this.ids.add(id);
    table.set(id, () => this.poisoned(what));
    return id;
  }

  /** Stops guarding (before the mapping is unmapped; munmap would unregister it too). */
  remove(id: number | null): void {
    if (id === null || !this.ids.delete(id)) return;
    const table = routeTable(this.sys);
    table?.delete(id);
    try {
      this.sys.unguardMapping?.(id);
    } catch (e) {
      log('unguard %d: %s', id, (e as Error).message);
    }
  }

  private poisoned(what: string): void {
    if (this.faulted) return;
    this.faulted = true;
    const reason = `${what} lost its memory (a SIGBUS in it: the frontend shrank the file under our mapping); zero pages were mapped over it`;
    log('%s', reason);
    if (this.sink !== null) this.sink(reason);
    else this.pending = reason;
  }
}

/**
 * Guards `ab` for `guards`: the guard id, or null when the binding has no guard or when the guard is full
 * but the fd is sealed against shrinking (it cannot SIGBUS then). A mapping that can neither be sealed nor
 * guarded throws: the caller refuses it.
 */
export function guardOrRefuse(guards: MappingGuards, ab: ArrayBuffer, what: string, seal: SealOutcome): number | null {
  try {
    return guards.add(ab, what);
  } catch (e) {
    if (isSealed(seal)) {
      log('%s: sealed, left unguarded: %s', what, (e as Error).message);
      return null;
    }
    throw e;
  }
}

export interface RegionSpec {
  gpa: bigint;
  byteLen: bigint;
  uva: bigint;
  mmapOffset: bigint;
}

interface MappedRegion {
  gpa: number;
  uva: number;
  byteLen: number;
  fd: Fd;
  ab: ArrayBuffer;
  /** SIGBUS guard id (null: the binding has none, or the fd is sealed and the guard was full). */
  guard: number | null;
  /** ADD_MEM_REG count for this exact region (QEMU adds it once per vhost device: D34). */
  refs: number;
}

export type MemoryNative = Pick<NativeBinding, 'mmap' | 'munmap' | 'fstat' | 'close'> & GuardNative;

export class MemoryTable {
  private regions: MappedRegion[] = [];
  private mem: RegionMemory = new RegionMemory([]);
  private readonly guards: MappingGuards;
  constructor(private readonly sys: MemoryNative) {
    this.guards = new MappingGuards(sys);
  }

  /** Told once when a region lost its memory (the frontend shrank its fd: see MappingGuards). */
  set onFault(sink: ((reason: string) => void) | null) {
    this.guards.onFault = sink;
  }

  get memory(): RegionMemory {
    return this.mem;
  }
  get regionCount(): number {
    return this.regions.length;
  }
  /** The mapped regions in table order (postcopy replies and registration need our mappings). */
  views(): { gpa: number; byteLen: number; ab: ArrayBuffer }[] {
    return this.regions.map((r) => ({ gpa: r.gpa, byteLen: r.byteLen, ab: r.ab }));
  }
  /** Frontend user address -> guest physical address (SET_VRING_ADDR carries user addresses). */
  uvaToGpa(uva: number): number | null {
    for (const r of this.regions) if (uva >= r.uva && uva - r.uva < r.byteLen) return r.gpa + (uva - r.uva);
    return null;
  }

  /**
   * Map one region; takes ownership of fd (closed on failure too).
   * Refuses overlaps (in GPA space) and regions past the fd's end.
   */
  private map(spec: RegionSpec, fd: Fd): MappedRegion {
    try {
      const gpa = toSafe(spec.gpa, 'guest_phys_addr');
      const byteLen = toSafe(spec.byteLen, 'memory_size');
      const uva = toSafe(spec.uva, 'userspace_addr');
      const off = toSafe(spec.mmapOffset, 'mmap_offset');
      if (byteLen === 0) throw new BackendError('SESSION_BAD_MEMORY', 'memory region of size 0');
      if (gpa + byteLen > MAX_SAFE || uva + byteLen > MAX_SAFE) {
        throw new BackendError('SESSION_BAD_MEMORY', 'memory region wraps the address space');
      }
      for (const r of this.regions) {
        if (gpa < r.gpa + r.byteLen && r.gpa < gpa + byteLen) {
          throw new BackendError('SESSION_BAD_MEMORY', `memory region at gpa ${hex(gpa)} overlaps region at ${hex(r.gpa)}`);
        }
      }
      // Sealed first, so the size checked next is the size it keeps.
      const seal = sealAgainstShrink(this.sys, fd);
      const backed = fdBackedBytes(this.sys, fd);
      if (backed !== null && off + byteLen > backed) {
        throw new BackendError(
          'SESSION_BAD_MEMORY',
          `memory region [offset ${hex(off)}, +${hex(byteLen)}) is larger than its fd (${hex(backed)} bytes)`,
        );
      }
      let ab: ArrayBuffer;
      try {
        ab = this.sys.mmap(fd, off, byteLen, true);
      } catch (e) {
        throw new BackendError('SESSION_BAD_MEMORY', `mmap of region at gpa ${hex(gpa)} failed: ${(e as Error).message}`, {
          cause: e,
        });
      }
      let guard: number | null;
      try {
        guard = guardOrRefuse(this.guards, ab, `guest memory region at gpa ${hex(gpa)} (+${hex(byteLen)})`, seal);
      } catch (e) {
        this.sys.munmap(ab);
        throw new BackendError('SESSION_BAD_MEMORY', `region at gpa ${hex(gpa)} can neither be sealed nor guarded: ${(e as Error).message}`, {
          cause: e,
        });
      }
      log('mapped gpa %s size %s uva %s off %s (%s, guard %s)', hex(gpa), hex(byteLen), hex(uva), hex(off), seal, guard ?? 'none');
      return { gpa, uva, byteLen, fd, ab, guard, refs: 1 };
    } catch (e) {
      this.sys.close(fd);
      throw e;
    }
  }

  private rebuild(): void {
    this.mem = new RegionMemory(
      this.regions.map((r) => ({ gpa: r.gpa, uva: r.uva, byteLen: r.byteLen, bytes: new Uint8Array(r.ab) })),
    );
  }

  private release(r: MappedRegion): void {
    this.guards.remove(r.guard);
    this.sys.munmap(r.ab);
    this.sys.close(r.fd);
  }

  /** SET_MEM_TABLE: replace the whole table. All-or-nothing: on error the old table stays. */
  replace(specs: readonly RegionSpec[], fds: readonly Fd[]): void {
    const old = this.regions;
    this.regions = [];
    const fresh: MappedRegion[] = [];
    try {
      specs.forEach((s, i) => {
        const r = this.map(s, fds[i]!);
        fresh.push(r);
        this.regions.push(r);
      });
    } catch (e) {
      for (const r of fresh) this.release(r);
      for (let i = fresh.length + 1; i < fds.length; i++) this.sys.close(fds[i]!);
      this.regions = old;
      throw e;
    }
    for (const r of old) this.release(r);
    this.rebuild();
  }

  /**
   * ADD_MEM_REG (CONFIGURE_MEM_SLOTS). Returns the region's index and whether it is new: a region
   * identical to a mapped one (same gpa, size, user address) only counts one more reference, because
   * QEMU's vhost-user-net sends every region once per queue pair over the same connection (D34).
   */
  add(spec: RegionSpec, fd: Fd, maxSlots: number): { index: number; added: boolean } {
    const same = this.regions.findIndex(
      (r) => BigInt(r.gpa) === spec.gpa && BigInt(r.uva) === spec.uva && BigInt(r.byteLen) === spec.byteLen,
    );
    if (same >= 0) {
      this.sys.close(fd);
      this.regions[same]!.refs++;
      log('region at gpa %s added again (%d references)', hex(Number(spec.gpa)), this.regions[same]!.refs);
      return { index: same, added: false };
    }
    if (this.regions.length >= maxSlots) {
      this.sys.close(fd);
      throw new BackendError('SESSION_BAD_MEMORY', `no free memory slot (max ${maxSlots})`);
    }
    this.regions.push(this.map(spec, fd));
    this.rebuild();
    return { index: this.regions.length - 1, added: true };
  }

  /** REM_MEM_REG: identified by gpa, user address and size ("the mmap offset is ignored"). */
  /** Returns whether the region went away (false: other references remain). */
  remove(spec: RegionSpec): boolean {
    const i = this.regions.findIndex(
      (r) => BigInt(r.gpa) === spec.gpa && BigInt(r.uva) === spec.uva && BigInt(r.byteLen) === spec.byteLen,
    );
    if (i < 0) throw new BackendError('SESSION_BAD_MEMORY', `REM_MEM_REG: no region at gpa ${hex(Number(spec.gpa))}`);
    if (--this.regions[i]!.refs > 0) return false;
    const [r] = this.regions.splice(i, 1);
    this.rebuild();
    this.release(r!);
    return true;
  }

  close(): void {
    for (const r of this.regions) this.release(r);
    this.regions = [];
    this.rebuild();
  }
}

function toSafe(v: bigint, what: string): number {
  if (v < 0n || v > BigInt(MAX_SAFE)) throw new BackendError('SESSION_BAD_MEMORY', `${what} ${v} out of range`);
  return Number(v);
}
export function hex(n: number | bigint): string {
  return '0x' + n.toString(16);
}
