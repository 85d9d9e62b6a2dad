/**
 * The ring runtime of one session: everything that happens to a ring between the messages that
 * configure it and the device that processes it. It keeps the per-ring state (ring-state.ts), turns
 * "started, enabled, configured, mapped" into engine queues (split or packed) handed to the device
 * as ReadyQueues, watches kick fds (or polls NOFD rings), sends used-buffer notifications (call fd,
 * in-band VRING_CALL, or owed to the next call fd), and breaks a ring on a guest error (err fd or
 * in-band VRING_ERR).
 *
 * The session owns the negotiation and the tables a ring is built from; the runtime reads them
 * through RingHost and never sees a message. Readiness is recomputed after every message
 * (`update`), like DPDK's post-dispatch loop, instead of scattering "maybe start the queue" calls
 * over handlers.
 */
import createDebug from 'debug';
import type { Fd, NativeBinding } from '../../native/types.ts';
import { POLL_READABLE } from '../../native/types.ts';
import { BackendReq, IotlbType, ProtoF, VirtioF, has, ringRecord, type IotlbMsg, type TraceRingRecord } from '../../protocol/index.ts';
import {
  PackedQueue,
  SplitQueue,
  availRingBytes,
  descTableBytes,
  usedRingBytes,
  type GuestMemory,
  type Virtqueue,
} from '../../virtqueue/index.ts';
import { IotlbFault } from '../../virtqueue/iotlb.ts';
import { PageMissing } from './postcopy-memory.ts';
import type { BackendChannel } from './backend-channel.ts';
import type { Device, ReadyQueue } from './device.ts';
import { fail } from './errors.ts';
import type { InflightBuffer } from './inflight-buffer.ts';
import type { Iommu } from './iommu.ts';
import { hex } from './hex.ts';
import type { MemoryTable } from './memory-table.ts';
import type { Migration } from './migration.ts';
import { RingState } from './ring-state.ts';

const log = createDebug('vhost:session');

/** Poll period of rings whose kick is NOFD. */
const POLL_INTERVAL_MS = 1;
/** SET_VRING_ADDR flags bit 0 (vhost-user.rst "Vring address description"). */
const VHOST_VRING_F_LOG = 1;
/** Device status DRIVER_OK (virtio v1.2 2.1). */
const STATUS_DRIVER_OK = 4;

export type RingNative = Pick<NativeBinding, 'close' | 'eventfdRead' | 'eventfdWrite' | 'Poller'>;

/** What a ring is built from: the session's negotiation and tables (read live, never copied). */
export interface RingHost {
  readonly device: Device;
  readonly label: string;
  readonly memory: MemoryTable;
  readonly migration: Migration;
  readonly iommu: Iommu | null;
  readonly inflight: InflightBuffer | null;
  readonly backendChannel: BackendChannel | null;
  readonly ackedFeatures: bigint;
  /** The device status byte (SET_STATUS). */
  readonly status: number;
  /** Ring event sink (kicks, calls, broken rings); null = off, which costs one null check per event. */
  readonly ringTrace: ((rec: TraceRingRecord) => void) | null;
  protoNegotiated(n: number): boolean;
  virtioNegotiated(n: number): boolean;
}

export class RingRuntime {
  readonly rings: RingState[];
  /** SET_VRING_ENDIAN per ring index: true = big-endian (num 1); unset = little-endian (D33). */
  readonly bigEndian: boolean[] = [];
  /** Bumped by every change of the memory table: a queue built against an older one is rebuilt. */
  private memGeneration = 0;
  /** The memory queues are built on (postcopy's wrapper comes and goes: queues follow). */
  private builtOn: GuestMemory | null = null;

  constructor(
    private readonly host: RingHost,
    private readonly sys: RingNative,
    count: number,
  ) {
    this.rings = Array.from({ length: count }, (_, i) => new RingState(i));
  }

  /** VIRTIO_F_RING_PACKED acked: rings use the packed layout (virtio v1.2 2.8). */
  private get packed(): boolean {
    return has(this.host.ackedFeatures, VirtioF.RING_PACKED);
  }

  ring(index: number): RingState {
    const r = this.rings[index];
    if (!r) fail('SESSION_BAD_INDEX', `vring index ${index} out of range (device has ${this.rings.length})`);
    return r;
  }

  /** The memory table changed: every running queue is rebuilt against it at the next update. */
  memoryChanged(): void {
    this.memGeneration++;
  }

  // ---------------------------------------------------------------------------------------------
  // Readiness: recomputed after every message; edges go to the device.

  private isReady(r: RingState): boolean {
    return (
      r.started &&
      r.enabled &&
      !r.broken &&
      r.num > 0 &&
      r.addr !== null &&
      this.host.memory.regionCount > 0 &&
      this.host.migration.ackPending === null &&
      this.driverOk()
    );
  }

  /**
   * With STATUS negotiated the device may not consume buffers or notify before the driver set
   * DRIVER_OK (virtio v1.2 2.1.2: "The device MUST NOT consume buffers or send any used buffer
   * notifications to the driver before DRIVER_OK"); DPDK's virtio-user sets it once its rings are
   * configured. Without STATUS the frontend has no way to say it (D45).
   */
  private driverOk(): boolean {
    return !this.host.protoNegotiated(ProtoF.STATUS) || (this.host.status & STATUS_DRIVER_OK) !== 0;
  }

  /**
   * What the rings address: guest physical memory, or IOVAs through the IOTLB (ACCESS_PLATFORM); while
   * postcopy is live, seen through the wrapper that parks a ring on a page not migrated yet
   * (postcopy-memory.ts).
   */
  private queueMemory(): GuestMemory {
    const { iommu, memory, migration } = this.host;
    if (iommu === null) return migration.ringMemory(memory.memory);
    iommu.memory.backing = memory.memory;
    return migration.ringMemory(iommu.memory);
  }

  update(): void {
    const mem = this.queueMemory();
    if (mem !== this.builtOn) {
      this.builtOn = mem;
      this.memGeneration++;
    }
    this.host.migration.attach(mem);
    for (const r of this.rings) {
      const want = this.isReady(r);
      if (r.queue && (!want || r.memGeneration !== this.memGeneration)) this.stopQueue(r);
      if (want && !r.queue) this.startQueue(r);
    }
  }

  private startQueue(r: RingState): void {
    const a = r.addr!;
    const host = this.host;
    const acked = host.ackedFeatures;
    try {
      const desc = this.ringAddr(a.descUva, 'descriptor table');
      const avail = this.ringAddr(a.availUva, 'available ring');
      const used = this.ringAddr(a.usedUva, 'used ring');
      const mem = this.queueMemory();
      // VHOST_VRING_F_LOG (vhost-user.rst SET_VRING_ADDR): used-ring writes are logged at log_guest_addr.
      const logUsed = (a.flags & VHOST_VRING_F_LOG) !== 0 && a.logGpa <= BigInt(Number.MAX_SAFE_INTEGER);
      const common = {
        ...(logUsed ? { usedLogAddr: Number(a.logGpa) } : {}),
        size: r.num,
        descAddr: desc,
        eventIdx: has(acked, VirtioF.RING_EVENT_IDX),
        indirect: has(acked, VirtioF.RING_INDIRECT_DESC),
        label: `${host.label}:${r.index}`,
      };
      // A legacy big-endian ring (SET_VRING_ENDIAN 1). VERSION_1 or packed acked since then wins: modern
      // rings are little-endian (the kernel's vhost does the same, vhost_init_is_le). D33.
      const bigEndian = this.bigEndian[r.index] === true && !this.packed && !has(acked, VirtioF.VERSION_1);
      // SET_VRING_ADDR's avail/used fields carry the driver and device areas for packed rings.
      r.queue = this.packed
        ? new PackedQueue(
            {
              ...common,
              driverEventAddr: avail,
              deviceEventAddr: used,
              inOrder: has(acked, VirtioF.IN_ORDER),
              vhostBase: r.base,
            },
            mem,
          )
        : new SplitQueue({ ...common, availAddr: avail, usedAddr: used, lastAvailIdx: r.base & 0xffff, bigEndian }, mem);
      r.memGeneration = this.memGeneration;
      const resubmitted = this.attachInflight(r);
      // used.idx as found in guest memory: with `base` it shows whether a migrated or restarted ring resumes
      // where the previous backend stopped (the stop line logs both).
      log('%s: ring %d ready (size %d, base %d, used %d, desc %s)', host.label, r.index, r.num, r.base, splitUsedIdx(r.queue), hex(desc));
      this.watchKick(r);
      const ready: ReadyQueue = {
        index: r.index,
        queue: r.queue,
        memory: mem,
        bigEndian,
        notify: () => this.notify(r),
        fail: (err) => this.fail(r, err),
      };
      host.device.ringReady(ready);
      // No kick will come for chains the previous backend had taken: process them now (libvhost-user
      // writes its own kick eventfd for the same reason).
      if (resubmitted > 0) setImmediate(() => this.kickDevice(r));
    } catch (e) {
      if (r.queue) this.stopQueue(r);
      r.queue = null;
      // A ring address the IOTLB does not know yet: the miss is on its way to the frontend; the ring
      // starts when the UPDATE arrives (update() runs after every message).
      if (e instanceof IotlbFault && e.code === 'VQ_IOTLB_MISS') {
        log('%s: ring %d waits for an IOTLB update (%s)', host.label, r.index, e.message);
        return;
      }
      // A ring area on a page not migrated yet (postcopy): it is being fetched; resume() starts the ring.
      if (e instanceof PageMissing) {
        log('%s: ring %d waits for a page (%s)', host.label, r.index, e.message);
        return;
      }
      this.fail(r, e as Error);
    }
  }

  private ringAddr(uva: bigint, what: string): number {
    if (uva > BigInt(Number.MAX_SAFE_INTEGER)) fail('SESSION_BAD_RING', `${what} address ${uva} out of range`);
    // With ACCESS_PLATFORM ring addresses are IOVAs, translated through the IOTLB like buffers.
    if (this.host.iommu !== null) return Number(uva);
    const gpa = this.host.memory.uvaToGpa(Number(uva));
    if (gpa === null) fail('SESSION_BAD_RING', `${what} at ${hex(uva)} is not in any memory region`);
    return gpa;
  }

  /** Attaches the ring's inflight region, if any; returns how many chains it resubmits. */
  private attachInflight(r: RingState): number {
    const region = this.host.inflight?.regionFor(r.index, r.num) ?? null;
    if (region === null || r.queue === null) return 0;
    const res = r.queue.attachInflight(region);
    if (res.resubmitted > 0) log('%s: ring %d resubmits %d inflight chains', this.host.label, r.index, res.resubmitted);
    return res.resubmitted;
  }

  /** Drop the engine object (ring stays started/enabled); the next update rebuilds it. */
  stopQueue(r: RingState): void {
    if (!r.queue) return;
    r.queue.flushUsed();
    r.base = r.queue instanceof PackedQueue ? r.queue.vhostBase : r.queue.lastAvailIdx;
    const used = splitUsedIdx(r.queue);
    r.queue = null;
    r.kickPoller?.stop();
    if (r.pollTimer) clearInterval(r.pollTimer);
    r.pollTimer = null;
    // Runs after every message and from close(): the ring is stopped whatever the device does.
    try {
      this.host.device.ringStopped(r.index);
    } catch (e) {
      asError(e, `device stopping ring ${r.index}`);
    }
    log('%s: ring %d stopped at avail %d, used %d', this.host.label, r.index, r.base, used);
  }

  // ---------------------------------------------------------------------------------------------
  // Ring lifecycle as vhost-user.rst "Ring states" defines it (started / enabled).

  /** SET_VRING_KICK (or its in-band equivalent): the ring is started. */
  start(r: RingState): void {
    r.started = true;
    r.broken = null;
    if (!this.host.virtioNegotiated(VirtioF.PROTOCOL_FEATURES)) r.enabled = true;
  }

  /** GET_VRING_BASE: stop the ring and return where the device stopped. */
  stop(r: RingState): number {
    this.stopQueue(r); // also stops watching the kick fd
    r.started = false;
    return r.base;
  }

  /** SET_FEATURES: without PROTOCOL_FEATURES rings are enabled as soon as they start (vhost-user.rst "Ring states"). */
  featuresChanged(): void {
    if (!this.host.virtioNegotiated(VirtioF.PROTOCOL_FEATURES)) for (const r of this.rings) if (r.started) r.enabled = true;
  }

  /** Every ring stopped and disabled (RESET_OWNER, RESET_DEVICE); configuration and fds kept. */
  stopAll(): void {
    for (const r of this.rings) {
      this.stopQueue(r);
      r.started = false;
      r.enabled = false;
    }
  }

  /** Every ring back to its initial state: stopped, disabled, unconfigured, no kick fd. */
  resetAll(): void {
    this.stopAll();
    this.bigEndian.length = 0;
    for (const r of this.rings) {
      this.replaceKick(r, null);
      r.num = 0;
      r.addr = null;
      r.base = 0;
      r.broken = null;
    }
  }

  /** The session ends: every ring stopped, every ring fd closed. */
  close(): void {
    for (const r of this.rings) {
      this.stopQueue(r);
      this.replaceKick(r, null);
      if (r.callFd !== null) this.sys.close(r.callFd);
      if (r.errFd !== null) this.sys.close(r.errFd);
      r.callFd = r.errFd = null;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // The three eventfds (vhost-user.rst SET_VRING_KICK / CALL / ERR) and their in-band forms.

  replaceKick(r: RingState, fd: Fd | null): void {
    if (r.kickPoller) {
      r.kickPoller.close();
      r.kickPoller = null;
    }
    if (r.pollTimer) clearInterval(r.pollTimer);
    r.pollTimer = null;
    if (r.kickFd !== null) this.sys.close(r.kickFd);
    r.kickFd = fd;
    // A running ring is watched through its new fd at once (SET_VRING_KICK on a running ring: the
    // queue is not rebuilt, so startQueue will not do it), and served once in case a kick came
    // before we watched.
    if (r.queue !== null) {
      this.watchKick(r);
      this.kickDevice(r);
    }
  }

  /** SET_VRING_CALL: the new call fd (null: NOFD) replaces the old one. */
  setCall(r: RingState, fd: Fd | null): void {
    if (r.callFd !== null) this.sys.close(r.callFd);
    r.callFd = fd;
    // A ring that ran without a call fd (started at SET_VRING_KICK, before SET_VRING_CALL: the order
    // QEMU uses on a migration destination, or NOFD while the frontend polled) may have published
    // used buffers nobody was told of: the new fd gets that notification now, or the driver could
    // wait for it forever. libvhost-user signals every new call fd; only an owed one is signalled
    // here (a notification with nothing new is harmless to a driver, but needless). D41.
    if (r.callFd !== null && r.callOwed) {
      r.callOwed = false;
      this.notify(r);
    }
  }

  /** SET_VRING_ERR: the new err fd (null: NOFD) replaces the old one. */
  setErr(r: RingState, fd: Fd | null): void {
    if (r.errFd !== null) this.sys.close(r.errFd);
    r.errFd = fd;
  }

  /** VRING_KICK (INBAND_NOTIFICATIONS): the kick arrives as a message instead of an eventfd write. */
  inbandKick(r: RingState): void {
    if (this.host.ringTrace !== null) this.host.ringTrace(ringRecord(r.index, 'kick', { inband: true }));
    // vhost-user.rst "Ring states": a ring starts on SET_VRING_KICK "or receiving the in-band
    // message VHOST_USER_VRING_KICK"; a ring that never got a kick fd starts here.
    if (!r.started) {
      this.start(r);
      this.update();
    }
    this.kickDevice(r);
  }

  /**
   * The device processes ring r, if it runs. Called from timers and deferred callbacks: an exception
   * (a device bug, or a guest input nobody foresaw) breaks this ring, never the process.
   */
  private kickDevice(r: RingState): void {
    if (r.queue === null) return;
    try {
      this.host.device.kick(r.index);
    } catch (e) {
      this.fail(r, asError(e, `device on ring ${r.index}`));
    }
  }

  private watchKick(r: RingState): void {
    if (r.kickFd === null) {
      // With in-band notifications the kicks come as VRING_KICK messages: no polling.
      if (this.host.protoNegotiated(ProtoF.INBAND_NOTIFICATIONS)) return;
      // vhost-user.rst SET_VRING_KICK: "the invalid FD flag ... signals that polling should be used
      // instead of waiting for the kick". Poll every millisecond while the ring is ready.
      r.pollTimer ??= setInterval(() => this.kickDevice(r), POLL_INTERVAL_MS);
      return;
    }
    if (!r.kickPoller) {
      const fd = r.kickFd;
      const host = this.host;
      // The callback runs from native code: nothing may escape it (a throw here would end the
      // process). A failing kick fd or device breaks this ring only.
      r.kickPoller = new this.sys.Poller(fd, (err) => {
        try {
          if (err) throw err;
          if (this.sys.eventfdRead(fd) === null) return; // spurious wake-up: nothing was written
          if (host.ringTrace !== null) host.ringTrace(ringRecord(r.index, 'kick'));
          if (r.queue) host.device.kick(r.index);
        } catch (e) {
          this.fail(r, asError(e, `kick fd of ring ${r.index}`));
        }
      });
    }
    r.kickPoller.start(POLL_READABLE);
  }

  /** A used-buffer notification for ring r (call fd, in-band VRING_CALL, or owed to the next call fd). */
  notify(r: RingState): void {
    if (this.host.ringTrace !== null) this.host.ringTrace(ringRecord(r.index, 'call'));
    if (r.callFd === null) {
      if (this.inband()) this.inbandCall(r);
      else r.callOwed = true;
      return;
    }
    try {
      this.sys.eventfdWrite(r.callFd, 1n);
    } catch (e) {
      log('%s: call eventfd of ring %d failed: %s', this.host.label, r.index, (e as Error).message);
    }
  }

  /** A guest error on this ring: mark it broken, signal the err eventfd (vhost-user.rst SET_VRING_ERR). */
  fail(r: RingState, err: Error): void {
    const host = this.host;
    log('%s: ring %d broken: %s', host.label, r.index, err.message);
    if (host.ringTrace !== null) host.ringTrace(ringRecord(r.index, 'broken', { error: err.message }));
    r.broken = err;
    if (r.queue) this.stopQueue(r);
    if (r.errFd === null && this.inband()) {
      host.backendChannel!.request(BackendReq.VRING_ERR, { index: r.index, num: 0 }, { needReply: true }).catch((e: Error) =>
        log('%s: in-band VRING_ERR failed: %s', host.label, e.message),
      );
    }
    if (r.errFd !== null) {
      try {
        this.sys.eventfdWrite(r.errFd, 1n);
      } catch (e) {
        log('err eventfd write failed: %s', (e as Error).message);
      }
    }
  }

  /** In-band notifications are usable: negotiated, with the backend channel they need (vhost-user.rst). */
  private inband(): boolean {
    const ch = this.host.backendChannel;
    return this.host.protoNegotiated(ProtoF.INBAND_NOTIFICATIONS) && ch !== null && ch.isOpen;
  }

  /**
   * VRING_CALL on the backend channel. The spec wants each one acked before going on ("block until
   * they are processed"); we do not block the loop: one call per ring is in flight, and calls wanted
   * meanwhile collapse into one sent after the ack (an interrupt carries no count).
   */
  private inbandCall(r: RingState): void {
    if (r.inbandCallInFlight) {
      r.inbandCallAgain = true;
      return;
    }
    r.inbandCallInFlight = true;
    this.host.backendChannel!.request(BackendReq.VRING_CALL, { index: r.index, num: 0 }, { needReply: true })
      .catch((e: Error) => log('%s: in-band VRING_CALL on ring %d failed: %s', this.host.label, r.index, e.message))
      .finally(() => {
        r.inbandCallInFlight = false;
        if (r.inbandCallAgain) {
          r.inbandCallAgain = false;
          if (this.inband()) this.inbandCall(r);
        }
      });
  }

  // ---------------------------------------------------------------------------------------------
  // vIOMMU (ACCESS_PLATFORM): ring areas are IOVAs.

  /** Guest-address ranges of a ring's three areas (for IOTLB invalidations). */
  private ringRanges(r: RingState): [number, number][] {
    const a = r.addr!;
    const n = r.num;
    const packed = this.packed;
    return [
      [Number(a.descUva), packed ? 16 * n : descTableBytes(n)],
      [Number(a.availUva), packed ? 4 : availRingBytes(n)],
      [Number(a.usedUva), packed ? 4 : usedRingBytes(n)],
    ];
  }

  /**
   * Postcopy pages arrived (or postcopy ended): start the rings whose areas were missing, and let every
   * ready ring try again what it parked on. From setImmediate (migration.ts).
   */
  resume(): void {
    this.update();
    for (const r of this.rings) this.kickDevice(r);
  }

  /** IOTLB_MSG applied: restart rings whose areas an invalidation hit; resume rings parked on a miss. */
  iotlbChanged(msg: IotlbMsg): void {
    if (msg.type === IotlbType.INVALIDATE) {
      const lo = Number(msg.iova);
      const hi = lo + Number(msg.size);
      for (const r of this.rings) {
        if (r.queue && this.ringRanges(r).some(([at, len]) => at < hi && lo < at + len)) this.stopQueue(r);
      }
      return;
    }
    // An UPDATE may be what a parked queue waits for: let every ready ring try again.
    setImmediate(() => {
      for (const r of this.rings) this.kickDevice(r);
    });
  }
}

/** An exception as an Error (a thrown non-Error included), its code kept; logged with where it came from. */
function asError(e: unknown, where: string): Error {
  const err = e instanceof Error ? e : new Error(String(e));
  log('exception from the %s: %O', where, err);
  return err;
}

/** For the ring log lines: a split ring's used.idx; -1 for a packed ring, whose used position is in `base`. */
function splitUsedIdx(q: Virtqueue): number {
  return q instanceof SplitQueue ? q.usedIdx : -1;
}
