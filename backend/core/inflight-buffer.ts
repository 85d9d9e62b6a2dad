/**
 * The inflight buffer of one session (vhost-user.rst "Inflight I/O tracking", INFLIGHT_SHMFD): the
 * memfd we create for GET_INFLIGHT_FD, or the one the frontend hands back with SET_INFLIGHT_FD after
 * we restarted. This module owns the fd and the mapping and cuts it into per-queue regions
 * (virtqueue/inflight.ts holds the layout and the algorithms).
 *
 * The frontend keeps the fd across our death and never interprets its contents, so the layout only
 * has to agree with itself across our restart; the sizes are DPDK's (virtqueue/inflight.ts).
 *
 * Shrinking: the memfd we create allows sealing and is sealed by us once sized (F_SEAL_SHRINK |
 * F_SEAL_GROW | F_SEAL_SEAL: its size is the layout's, for good), so the frontend that holds it cannot
 * truncate it under our mapping (which would SIGBUS the process). A buffer the frontend hands us is
 * sealed against shrinking where it allows, and guarded either way (memory-table.ts MappingGuards).
 */
import createDebug from 'debug';
import { F_SEAL, type Fd, type NativeBinding, type SysError } from '../../native/types.ts';
import {
  inflightQueueOffset,
  inflightQueueSize,
  inflightRegionSize,
  openInflightRegion,
  type InflightLayout,
  type InflightRegion,
} from '../../virtqueue/index.ts';
import { BackendError, fail } from './errors.ts';
import { MappingGuards, guardOrRefuse, sealAgainstShrink, type GuardNative, type SealOutcome } from './mapping-guard.ts';

const log = createDebug('vhost:inflight');

export type InflightNative = Pick<NativeBinding, 'memfdCreate' | 'ftruncate' | 'mmap' | 'munmap' | 'close' | 'fstat'> &
  GuardNative;

/** The seals we put on the memfd we create, once it has its size. */
const OWN_SEALS = F_SEAL.shrink | F_SEAL.grow | F_SEAL.seal;

/** What GET_INFLIGHT_FD answers and SET_INFLIGHT_FD carries. */
export interface InflightShape {
  mmapSize: bigint;
  mmapOffset: bigint;
  numQueues: number;
  queueSize: number;
}

/** Largest buffer we create or accept: 32768 × 32 bytes × 64 queues = 64 MiB. */
const MAX_BYTES = 64 << 20;

export class InflightBuffer {
  private constructor(
    private readonly sys: InflightNative,
    private fd: Fd | null,
    private ab: ArrayBuffer | null,
    readonly layout: InflightLayout,
    readonly numQueues: number,
    readonly queueSize: number,
    /** One region object per queue index (each attach re-reads and validates its bytes). */
    private readonly regions: InflightRegion[],
    private readonly guards: MappingGuards,
    private guard: number | null,
  ) {}

  /** Told once when the buffer lost its memory (its fd was shrunk: see MappingGuards). */
  set onFault(sink: ((reason: string) => void) | null) {
    this.guards.onFault = sink;
  }

  /**
   * GET_INFLIGHT_FD: a zeroed memfd for `numQueues` queues of `queueSize` (a zero region means
   * "uninitialized": each queue initializes its part when it starts).
   */
  static create(sys: InflightNative, layout: InflightLayout, numQueues: number, queueSize: number): InflightBuffer {
    checkShape(numQueues, queueSize);
    const bytes = inflightRegionSize(layout, numQueues, queueSize);
    if (bytes > MAX_BYTES) fail('SESSION_BAD_INFLIGHT', `inflight buffer of ${bytes} bytes is too large`);
    const fd = sys.memfdCreate('vhost-user-ts-inflight', true);
    try {
      sys.ftruncate(fd, bytes);
      let seal: SealOutcome = 'unsupported';
      if (sys.addSeals) {
        try {
          sys.addSeals(fd, OWN_SEALS);
          seal = 'sealed';
        } catch (e) {
          // Our own fresh memfd: only a binding without seals (ENOSYS) gets here.
          log('inflight memfd not sealed: %s', (e as SysError).message);
        }
      }
      return InflightBuffer.map(sys, fd, layout, numQueues, queueSize, 0, bytes, seal);
    } catch (e) {
      sys.close(fd);
      throw e;
    }
  }

  /** SET_INFLIGHT_FD: maps the frontend's buffer (takes ownership of fd, closed on failure). */
  static adopt(sys: InflightNative, fd: Fd, layout: InflightLayout, shape: InflightShape): InflightBuffer {
    try {
      checkShape(shape.numQueues, shape.queueSize);
      const need = inflightRegionSize(layout, shape.numQueues, shape.queueSize);
      if (shape.mmapSize < BigInt(need) || shape.mmapSize > BigInt(MAX_BYTES)) {
        fail('SESSION_BAD_INFLIGHT', `inflight mmap_size ${shape.mmapSize} does not fit ${shape.numQueues} ${layout} queues of ${shape.queueSize} (${need} bytes)`);
      }
      if (shape.mmapOffset > BigInt(Number.MAX_SAFE_INTEGER)) fail('SESSION_BAD_INFLIGHT', 'inflight mmap_offset out of range');
      const off = Number(shape.mmapOffset);
      // A buffer past the end of its file would SIGBUS us on first access (sealed first where it can be,
      // so the size checked is the size it keeps).
      const seal = sealAgainstShrink(sys, fd);
      const st = sys.fstat(fd);
      if (off + need > st.size) fail('SESSION_BAD_INFLIGHT', `inflight fd has ${st.size} bytes, need ${off + need}`);
      return InflightBuffer.map(sys, fd, layout, shape.numQueues, shape.queueSize, off, need, seal);
    } catch (e) {
      sys.close(fd);
      throw e;
    }
  }

  private static map(
    sys: InflightNative,
    fd: Fd,
    layout: InflightLayout,
    numQueues: number,
    queueSize: number,
    offset: number,
    bytes: number,
    seal: SealOutcome,
  ): InflightBuffer {
    let ab: ArrayBuffer;
    try {
      ab = sys.mmap(fd, offset, bytes, true);
    } catch (e) {
      throw new BackendError('SESSION_BAD_INFLIGHT', `mmap of the inflight buffer failed: ${(e as Error).message}`, { cause: e });
    }
    // Guarded before its bytes are first read (openInflightRegion below).
    const guards = new MappingGuards(sys);
    let guard: number | null;
    try {
      guard = guardOrRefuse(guards, ab, `the inflight buffer (+${bytes})`, seal);
    } catch (e) {
      sys.munmap(ab);
      throw new BackendError('SESSION_BAD_INFLIGHT', `the inflight buffer can neither be sealed nor guarded: ${(e as Error).message}`, { cause: e });
    }
    const per = inflightQueueSize(layout, queueSize);
    let regions: InflightRegion[];
    try {
      regions = Array.from({ length: numQueues }, (_, i) =>
        openInflightRegion(layout, new Uint8Array(ab, inflightQueueOffset(layout, i, queueSize), per), queueSize),
      );
    } catch (e) {
      guards.remove(guard);
      sys.munmap(ab);
      throw e;
    }
    log('%s inflight buffer: %d queues of %d, %d bytes at offset %d (%s, guard %s)', layout, numQueues, queueSize, bytes, offset, seal, guard ?? 'none');
    return new InflightBuffer(sys, fd, ab, layout, numQueues, queueSize, regions, guards, guard);
  }

  /** The GET_INFLIGHT_FD reply and our fd to send with it (sending does not give it away). */
  describe(): { shape: InflightShape; fd: Fd } {
    if (this.fd === null || this.ab === null) fail('SESSION_BAD_STATE', 'inflight buffer released');
    return {
      shape: { mmapSize: BigInt(this.ab.byteLength), mmapOffset: 0n, numQueues: this.numQueues, queueSize: this.queueSize },
      fd: this.fd,
    };
  }

  /** The region of queue `index`, if the buffer covers it and the ring has the size the buffer was made for. */
  regionFor(index: number, ringSize: number): InflightRegion | null {
    const r = this.regions[index];
    if (r === undefined) return null;
    if (ringSize !== this.queueSize) {
      fail('SESSION_BAD_INFLIGHT', `ring ${index} has size ${ringSize}, the inflight buffer was made for ${this.queueSize}`);
    }
    return r;
  }

  close(): void {
    this.guards.remove(this.guard);
    this.guard = null;
    if (this.ab !== null) this.sys.munmap(this.ab);
    if (this.fd !== null) this.sys.close(this.fd);
    this.ab = null;
    this.fd = null;
  }
}

function checkShape(numQueues: number, queueSize: number): void {
  if (numQueues < 1 || numQueues > 64) fail('SESSION_BAD_INFLIGHT', `inflight num_queues ${numQueues} is not in 1..64`);
  if (queueSize < 1 || queueSize > 32768) fail('SESSION_BAD_INFLIGHT', `inflight queue_size ${queueSize} is not in 1..32768`);
}
