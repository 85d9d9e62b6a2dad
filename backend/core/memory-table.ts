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
 * Nor by shrinking the file after we mapped it: mapping-guard.ts seals and guards every region.
 */
import createDebug from 'debug';
import type { NativeBinding, Fd } from '../../native/types.ts';
import { RegionMemory } from '../../virtqueue/index.ts';
import { BackendError } from './errors.ts';
import { hex } from './hex.ts';
import { MappingGuards, fdBackedBytes, guardOrRefuse, sealAgainstShrink, type GuardNative } from './mapping-guard.ts';

const log = createDebug('vhost:mem');

const MAX_SAFE = Number.MAX_SAFE_INTEGER;

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
  /** Whether [uva, uva + byteLen) lies inside the table's user address ranges, contiguously (IOTLB updates). */
  coversUva(uva: number, byteLen: number): boolean {
    let at = uva;
    const end = uva + byteLen;
    while (at < end) {
      const r = this.regions.find((q) => at >= q.uva && at - q.uva < q.byteLen);
      if (r === undefined) return false;
      at = r.uva + r.byteLen;
    }
    return true;
  }

  /** Frontend user address -> guest physical address (SET_VRING_ADDR carries user addresses). */
  uvaToGpa(uva: number): number | null {
    for (const r of this.regions) if (uva >= r.uva && uva - r.uva < r.byteLen) return r.gpa + (uva - r.uva);
    return null;
  }

  /**
   * Map one region; takes ownership of fd (closed on failure too).
   * Refuses overlaps (in guest physical and in user address space) and regions past the fd's end.
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
        // Ring addresses (SET_VRING_ADDR) and IOTLB entries are user addresses: two regions sharing one
        // would make their translation ambiguous (D47).
        if (uva < r.uva + r.byteLen && r.uva < uva + byteLen) {
          throw new BackendError(
            'SESSION_BAD_MEMORY',
            `memory region at user address ${hex(uva)} (+${hex(byteLen)}) overlaps the region at user address ${hex(r.uva)}`,
          );
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
