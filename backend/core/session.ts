/**
 * One vhost-user session (one connected frontend): the state machine over the codec.
 *
 * Security model: the frontend is an external, possibly hostile peer. Every field of every message
 * is checked before use (syntax by the codec table, semantics here); a bad request is refused with
 * an error reply and never takes the process down. Guest memory is likewise hostile: that is the
 * virtqueue engine's job, which marks a ring broken rather than throwing.
 *
 * Dispatch is table driven (protocol/messages.ts gives the row: payload layout, fd policy, reply
 * kind, required feature); handlers here only implement semantics. REPLY_ACK is generic
 * (vhost-user.rst "REPLY_ACK"): the handler does not think about it. After every message the ring
 * readiness is recomputed and edges are reported to the device (like DPDK's post-dispatch loop),
 * instead of scattering "maybe start the queue" calls over handlers.
 */
import createDebug from 'debug';
import type { NativeBinding, Fd } from '../../native/types.ts';
import { POLL_READABLE } from '../../native/types.ts';
import {
  BackendReq,
  FrontendReq,
  VirtioF,
  ProtoF,
  bit,
  has,
  describe,
  decode,
  encodeRaw,
  encodeReply,
  messageDef,
  ProtocolError,
  VHOST_USER_VERSION,
  VHOST_USER_REPLY_MASK,
  VHOST_USER_NEED_REPLY_MASK,
  messageRecord,
  rawRecord,
  ringRecord,
  type TraceRingRecord,
  HEADER_SIZE,
  type Encoded,
  type MessageDef,
  type TraceMessageRecord,
  type MemoryRegion,
  type MemoryTable as MemoryTablePayload,
  type RarpMac,
  type SingleMemoryRegion,
  type LogDescription,
  type IotlbMsg,
  IotlbType,
  type VringAddr,
  type VringState,
  type RawFrame,
  type VringFd,
  type VhostMessage,
} from '../../protocol/index.ts';
import { PackedQueue, SplitQueue, VirtqError, type Virtqueue } from '../../virtqueue/index.ts';
import type { Device, ReadyQueue } from './device.ts';
import { BackendError, fail } from './errors.ts';
import { MemoryTable, hex, type RegionSpec } from './memory-table.ts';
import { Migration, type MigrationNative } from './migration.ts';
import { InflightBuffer, type InflightNative, type InflightShape } from './inflight-buffer.ts';
import { BackendChannel, type BackendChannelNative } from './backend-channel.ts';
import { DEVICE_HANDLERS, DeviceStateTransfer, type StateNative } from './device-handlers.ts';
import { Iommu } from './iommu.ts';
import { IotlbFault } from '../../virtqueue/iotlb.ts';
import { descTableBytes, availRingBytes, usedRingBytes, type GuestMemory } from '../../virtqueue/index.ts';
import { RingState } from './ring-state.ts';

const log = createDebug('vhost:session');
const logProto = createDebug('vhost:proto');

/** Slots we accept with CONFIGURE_MEM_SLOTS (vhost-user.rst: "VHOST_USER_MAX_RAM_SLOTS 509"). */
export const MAX_MEM_SLOTS = 509;
/** REPLY_ACK failure value (vhost-user.rst: "zero on success, non-zero on failure"). */
const NACK = 1n;
/** Poll period of rings whose kick is NOFD. */
const POLL_INTERVAL_MS = 1;
/** SET_VRING_ADDR flags bit 0 (vhost-user.rst "Vring address description"). */
const VHOST_VRING_F_LOG = 1;

export type SessionNative = Pick<
  NativeBinding,
  'close' | 'mmap' | 'munmap' | 'fstat' | 'eventfdRead' | 'eventfdWrite' | 'Poller'
> &
  MigrationNative &
  InflightNative &
  BackendChannelNative &
  StateNative;

export interface SessionOptions {
  device: Device;
  native: SessionNative;
  /** Sends an encoded message (bytes + fds to pass) to the frontend. */
  send: (bytes: Uint8Array, fds: readonly Fd[]) => void;
  /** Protocol features this backend offers (masked by what the session implements). */
  protocolFeatures?: bigint;
  /** Observer of every decoded request and encoded reply (tracing, conformance). */
  /** Receives a trace record for every request (decoded, or raw with the codec's error) and reply. */
  trace?: (rec: TraceMessageRecord) => void;
  /** Receives ring events (kick seen, call sent, ring broken) when ring tracing is on. */
  ringTrace?: (rec: TraceRingRecord) => void;
  label?: string;
}

/**
 * Protocol features the session implements for any device. NET_MTU is not offered: NET_SET_MTU also
 * needs the virtio NET_F_MTU feature, which the net device does not offer yet. PAGEFAULT is
 * withdrawn at run time when the native layer has no userfaultfd.
 */
export const SESSION_PROTOCOL_FEATURES =
  bit(ProtoF.MQ) |
  bit(ProtoF.LOG_SHMFD) |
  bit(ProtoF.PAGEFAULT) |
  bit(ProtoF.INFLIGHT_SHMFD) |
  bit(ProtoF.REPLY_ACK) |
  bit(ProtoF.RARP) |
  bit(ProtoF.BACKEND_REQ) |
  bit(ProtoF.INBAND_NOTIFICATIONS) |
  bit(ProtoF.CONFIG) |
  bit(ProtoF.NET_MTU) |
  bit(ProtoF.DEVICE_STATE) |
  bit(ProtoF.CONFIGURE_MEM_SLOTS) |
  bit(ProtoF.RESET_DEVICE) |
  bit(ProtoF.STATUS) |
  // Legacy big-endian rings (SET_VRING_ENDIAN), split only: decisions.md D33.
  bit(ProtoF.CROSS_ENDIAN);

export type HandlerResult = { payload: unknown; fds?: Fd[] } | void;
export type Handler = (this: Session, msg: VhostMessage, fds: FdClaim) => HandlerResult;

/** The fds that came with one message; a handler claims the ones it keeps, the rest are closed. */
export class FdClaim {
  private readonly claimed = new Set<number>();
  constructor(readonly fds: readonly Fd[]) {}
  take(i: number): Fd {
    const fd = this.fds[i];
    if (fd === undefined) fail('SESSION_BAD_STATE', `expected an fd at position ${i}`);
    this.claimed.add(i);
    return fd;
  }
  takeAll(): Fd[] {
    return this.fds.map((_, i) => this.take(i));
  }
  unclaimed(): Fd[] {
    return this.fds.filter((_, i) => !this.claimed.has(i));
  }
}

export class Session {
  readonly device: Device;
  readonly sys: SessionNative;
  private readonly sendRaw: SessionOptions['send'];
  readonly trace: SessionOptions["trace"];
  /** Ring event sink (kicks, calls, broken rings); null = off, which costs one null check per event. */
  ringTrace: ((rec: TraceRingRecord) => void) | null;
  readonly label: string;

  /** Offered in GET_FEATURES. */
  readonly offeredFeatures: bigint;
  readonly offeredProtocolFeatures: bigint;
  ackedFeatures = 0n;
  featuresSet = false;
  ackedProtocolFeatures = 0n;
  protocolFeaturesSet = false;
  owner = false;
  status = 0;
  /** SET_BACKEND_REQ_FD: our channel for back-end requests (BACKEND_REQ). */
  backendChannel: BackendChannel | null = null;
  readonly memory: MemoryTable;
  readonly migration: Migration;
  /** IOTLB and IOVA translation, while ACCESS_PLATFORM is negotiated. */
  iommu: Iommu | null = null;
  /** SET_DEVICE_STATE_FD transfer in progress or finished (DEVICE_STATE). */
  stateTransfer: DeviceStateTransfer | null = null;
  /** GET/SET_INFLIGHT_FD buffer (INFLIGHT_SHMFD), shared with the frontend across our restarts. */
  inflight: InflightBuffer | null = null;
  private memGeneration = 0;
  readonly rings: RingState[];
  /** SET_VRING_ENDIAN per ring index: true = big-endian (num 1); unset = little-endian (D33). */
  readonly vringBigEndian: boolean[] = [];
  private closed = false;

  constructor(opts: SessionOptions) {
    this.device = opts.device;
    this.sys = opts.native;
    this.sendRaw = opts.send;
    this.trace = opts.trace;
    this.ringTrace = opts.ringTrace ?? null;
    this.label = opts.label ?? 'session';
    // LOG_ALL is a vhost feature, not the device's: QEMU blocks migration without it. ACCESS_PLATFORM
    // (vIOMMU) is the session's business too: it changes how addresses translate, not the device.
    this.offeredFeatures =
      opts.device.features | bit(VirtioF.PROTOCOL_FEATURES) | bit(VirtioF.LOG_ALL) | bit(VirtioF.ACCESS_PLATFORM);
    this.memory = new MemoryTable(opts.native);
    this.migration = new Migration(opts.native);
    let proto = (opts.protocolFeatures ?? SESSION_PROTOCOL_FEATURES) & SESSION_PROTOCOL_FEATURES;
    if (!this.migration.postcopySupported) proto &= ~bit(ProtoF.PAGEFAULT);
    // Device-dependent features: only what this device can back.
    const dev = opts.device;
    if (!dev.config) proto &= ~bit(ProtoF.CONFIG);
    if (!dev.config?.setMtu || !has(dev.features, VirtioF.NET_F_MTU)) proto &= ~bit(ProtoF.NET_MTU);
    if (!dev.saveState || !dev.loadState) proto &= ~bit(ProtoF.DEVICE_STATE);
    if (dev.bigEndianRings !== true) proto &= ~bit(ProtoF.CROSS_ENDIAN);
    this.offeredProtocolFeatures = proto;
    if (dev.config) dev.config.onChange = () => this.configChanged();
    this.rings = Array.from({ length: opts.device.maxRings }, (_, i) => new RingState(i));
  }

  /** VIRTIO_F_RING_PACKED acked: rings use the packed layout (virtio v1.2 2.8). */
  get packed(): boolean {
    return has(this.ackedFeatures, VirtioF.RING_PACKED);
  }

  /** A protocol feature is in force once SET_PROTOCOL_FEATURES acked it. */
  protoNegotiated(n: number): boolean {
    return this.protocolFeaturesSet && has(this.ackedProtocolFeatures, n);
  }

  /**
   * VHOST_USER_F_PROTOCOL_FEATURES counts as negotiated once the frontend has used
   * SET_PROTOCOL_FEATURES, even before SET_FEATURES acks bit 30: QEMU sends SET_VRING_ENABLE
   * before SET_FEATURES (spec-notes/decisions.md D2, rust-vmm/vhost#41).
   */
  virtioNegotiated(n: number): boolean {
    if (n === VirtioF.PROTOCOL_FEATURES && this.protocolFeaturesSet) return true;
    return has(this.ackedFeatures, n);
  }

  /** Decode one frame and handle it; a frame the codec rejects gets the error reply its header asks for. */
  handleFrame(frame: RawFrame): void {
    if (this.closed) return;
    if (this.migration.ackPending === frame.request && frame.payload.length === 8) {
      this.postcopyAck(frame);
      return;
    }
    let msg: VhostMessage;
    try {
      msg = decode('frontend', frame);
    } catch (e) {
      const code = e instanceof ProtocolError ? e.code : 'ERROR';
      const error = `${code}: ${(e as Error).message}`;
      log('%s: request %d rejected by the codec: %s', this.label, frame.request, error);
      this.trace?.(rawRecord('rx', 'frontend', { ...frame, fdCount: frame.fds.length }, error));
      for (const fd of frame.fds) this.sys.close(fd);
      const def = messageDef('frontend', frame.request);
      const needReply = (frame.flags & VHOST_USER_NEED_REPLY_MASK) !== 0 && this.protoNegotiated(ProtoF.REPLY_ACK);
      if (def && this.bodyReply(def)) this.replyRaw(frame.request, new Uint8Array(0));
      else if (needReply) this.replyRaw(frame.request, u64Bytes(NACK));
      return;
    }
    this.handle(msg);
  }

  /** Handle one decoded message from the frontend; never throws for frontend errors. */
  handle(msg: VhostMessage): void {
    if (this.closed) return;
    logProto('%s <- %s', this.label, describe(msg));
    const rec = this.trace ? messageRecord('rx', msg) : null;
    const claim = new FdClaim(msg.fds);
    const replyAck = msg.needReply && this.protoNegotiated(ProtoF.REPLY_ACK);
    const bodyReply = this.bodyReply(msg.def);
    let out: Encoded | null = null;
    try {
      this.checkRequires(msg);
      const handler = HANDLERS[msg.id];
      if (!handler) fail('SESSION_UNSUPPORTED', `${msg.name} is not supported by this backend`);
      const result = handler.call(this, msg, claim);
      if (bodyReply) {
        if (!result) throw new Error(`handler for ${msg.name} returned no reply payload`);
        out = encodeReply(msg, result.payload, result.fds ?? []);
      } else if (replyAck) {
        out = encodeReply(msg, 0n);
      }
    } catch (e) {
      const err = e instanceof Error ? e : new Error(String(e));
      const code = (err as { code?: string }).code ?? 'ERROR';
      log('%s: %s refused: [%s] %s', this.label, msg.name, code, err.message);
      if (!(e instanceof BackendError) && !(e instanceof VirtqError)) log('unexpected error: %O', e);
      if (rec) rec.error = `${code}: ${err.message}`;
      // A request that expects a body gets a reply with an empty body: frontends check the reply
      // size, so they fail cleanly instead of waiting forever (spec-notes/decisions.md D4).
      if (bodyReply) out = { bytes: encodeRaw(msg.id, VHOST_USER_VERSION | VHOST_USER_REPLY_MASK), fds: [] };
      else if (replyAck) out = encodeReply(msg, NACK);
    } finally {
      for (const fd of claim.unclaimed()) this.sys.close(fd);
    }
    if (rec) this.trace!(rec);
    if (out) this.send(out);
    this.updateRings();
  }

  private send(out: Encoded): void {
    if (this.trace) this.trace(replyRecord(out));
    this.sendRaw(out.bytes, out.fds);
  }

  /** A reply built outside the table: an empty body (error) or an ack for a refused frame. */
  private replyRaw(id: number, body: Uint8Array): void {
    this.send({ bytes: encodeRaw(id, VHOST_USER_VERSION | VHOST_USER_REPLY_MASK, body), fds: [] });
  }

  /** Does this request get a body reply now (vs. only an ack on NEED_REPLY)? See the table's replyWhen. */
  private bodyReply(def: MessageDef): boolean {
    if (def.reply === 'none' || def.reply === 'ack') return false;
    const when = def.replyWhen;
    if (!when) return true;
    if (when.kind === 'protocol-feature') return this.protoNegotiated(when.protocolFeature);
    return this.migration.listening;
  }

  /**
   * The frontend's u64 ack after our postcopy SET_MEM_TABLE / ADD_MEM_REG reply (not a request:
   * QEMU reuses the request id with an 8-byte body). Only now are our mappings registered with the
   * userfaultfd and may rings touch guest memory.
   */
  private postcopyAck(frame: RawFrame): void {
    const value = new DataView(frame.payload.buffer, frame.payload.byteOffset, 8).getBigUint64(0, true);
    for (const fd of frame.fds) this.sys.close(fd);
    let error: string | undefined;
    this.migration.ackPending = null;
    if (value !== 0n) {
      error = `frontend reported postcopy failure ${value}`;
    } else {
      try {
        this.migration.registerAll(this.memory.views());
      } catch (e) {
        error = `userfaultfd registration failed: ${(e as Error).message}`;
      }
    }
    if (error) log('%s: postcopy memory ack: %s', this.label, error);
    else logProto('%s <- postcopy memory ack', this.label);
    this.trace?.(rawRecord('rx', 'frontend', { ...frame, fdCount: frame.fds.length }, error ?? 'postcopy memory ack'));
    this.updateRings();
  }

  private checkRequires(msg: VhostMessage): void {
    const req = msg.def.requires;
    if (!req) return;
    if (req.protocolFeature !== undefined && !this.protoNegotiated(req.protocolFeature)) {
      fail('SESSION_NOT_NEGOTIATED', `${msg.name} needs protocol feature ${req.protocolFeature}, not negotiated`);
    }
    const vf = req.virtioFeature;
    if (vf !== undefined && !(req.offeredOnly ? has(this.offeredFeatures, vf) : this.virtioNegotiated(vf))) {
      fail('SESSION_NOT_NEGOTIATED', `${msg.name} needs virtio feature ${req.virtioFeature}, not negotiated`);
    }
  }

  ring(index: number): RingState {
    const r = this.rings[index];
    if (!r) fail('SESSION_BAD_INDEX', `vring index ${index} out of range (device has ${this.rings.length})`);
    return r;
  }

  // ---------------------------------------------------------------------------------------------
  // Ring readiness: recomputed after every message; edges go to the device.

  private isReady(r: RingState): boolean {
    return (
      r.started &&
      r.enabled &&
      !r.broken &&
      r.num > 0 &&
      r.addr !== null &&
      this.memory.regionCount > 0 &&
      this.migration.ackPending === null
    );
  }

  /** What the rings address: guest physical memory, or IOVAs through the IOTLB (ACCESS_PLATFORM). */
  private queueMemory(): GuestMemory {
    if (this.iommu === null) return this.memory.memory;
    this.iommu.memory.backing = this.memory.memory;
    return this.iommu.memory;
  }

  updateRings(): void {
    this.migration.attach(this.queueMemory());
    for (const r of this.rings) {
      const want = this.isReady(r);
      if (r.queue && (!want || r.memGeneration !== this.memGeneration)) this.stopQueue(r);
      if (want && !r.queue) this.startQueue(r);
    }
  }

  private startQueue(r: RingState): void {
    const a = r.addr!;
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
        eventIdx: has(this.ackedFeatures, VirtioF.RING_EVENT_IDX),
        indirect: has(this.ackedFeatures, VirtioF.RING_INDIRECT_DESC),
        label: `${this.label}:${r.index}`,
      };
      // A legacy big-endian ring (SET_VRING_ENDIAN 1). VERSION_1 or packed acked since then wins: modern
      // rings are little-endian (the kernel's vhost does the same, vhost_init_is_le). D33.
      const bigEndian = this.vringBigEndian[r.index] === true && !this.packed && !has(this.ackedFeatures, VirtioF.VERSION_1);
      // SET_VRING_ADDR's avail/used fields carry the driver and device areas for packed rings.
      r.queue = this.packed
        ? new PackedQueue(
            {
              ...common,
              driverEventAddr: avail,
              deviceEventAddr: used,
              inOrder: has(this.ackedFeatures, VirtioF.IN_ORDER),
              vhostBase: r.base,
            },
            mem,
          )
        : new SplitQueue({ ...common, availAddr: avail, usedAddr: used, lastAvailIdx: r.base & 0xffff, bigEndian }, mem);
      r.memGeneration = this.memGeneration;
      const resubmitted = this.attachInflight(r);
      // used.idx as found in guest memory: with `base` it shows whether a migrated or restarted ring resumes
      // where the previous backend stopped (the stop line logs both).
      log('%s: ring %d ready (size %d, base %d, used %d, desc %s)', this.label, r.index, r.num, r.base, splitUsedIdx(r.queue), hex(desc));
      this.watchKick(r);
      const ready: ReadyQueue = {
        index: r.index,
        queue: r.queue,
        memory: mem,
        bigEndian,
        notify: () => this.notify(r),
        fail: (err) => this.ringFailed(r, err),
      };
      this.device.ringReady(ready);
      // No kick will come for chains the previous backend had taken: process them now (libvhost-user
      // writes its own kick eventfd for the same reason).
      if (resubmitted > 0) setImmediate(() => r.queue && this.device.kick(r.index));
    } catch (e) {
      if (r.queue) this.stopQueue(r);
      r.queue = null;
      // A ring address the IOTLB does not know yet: the miss is on its way to the frontend; the ring
      // starts when the UPDATE arrives (updateRings runs after every message).
      if (e instanceof IotlbFault && e.code === 'VQ_IOTLB_MISS') {
        log('%s: ring %d waits for an IOTLB update (%s)', this.label, r.index, e.message);
        return;
      }
      this.ringFailed(r, e as Error);
    }
  }

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
      for (const r of this.rings) if (r.queue) this.device.kick(r.index);
    });
  }

  /** Attaches the ring's inflight region, if any; returns how many chains it resubmits. */
  private attachInflight(r: RingState): number {
    const region = this.inflight?.regionFor(r.index, r.num) ?? null;
    if (region === null || r.queue === null) return 0;
    const res = r.queue.attachInflight(region);
    if (res.resubmitted > 0) log('%s: ring %d resubmits %d inflight chains', this.label, r.index, res.resubmitted);
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
    this.device.ringStopped(r.index);
    log('%s: ring %d stopped at avail %d, used %d', this.label, r.index, r.base, used);
  }

  private ringAddr(uva: bigint, what: string): number {
    if (uva > BigInt(Number.MAX_SAFE_INTEGER)) fail('SESSION_BAD_RING', `${what} address ${uva} out of range`);
    // With ACCESS_PLATFORM ring addresses are IOVAs, translated through the IOTLB like buffers.
    if (this.iommu !== null) return Number(uva);
    const gpa = this.memory.uvaToGpa(Number(uva));
    if (gpa === null) fail('SESSION_BAD_RING', `${what} at ${hex(uva)} is not in any memory region`);
    return gpa;
  }

  /** A guest error on this ring: mark it broken, signal the err eventfd (vhost-user.rst SET_VRING_ERR). */
  private ringFailed(r: RingState, err: Error): void {
    log('%s: ring %d broken: %s', this.label, r.index, err.message);
    if (this.ringTrace !== null) this.ringTrace(ringRecord(r.index, 'broken', { error: err.message }));
    r.broken = err;
    if (r.queue) this.stopQueue(r);
    if (r.errFd === null && this.inband()) {
      this.backendChannel!.request(BackendReq.VRING_ERR, { index: r.index, num: 0 }, { needReply: true }).catch((e: Error) =>
        log('%s: in-band VRING_ERR failed: %s', this.label, e.message),
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

  /** A used-buffer notification for ring r (call fd, in-band VRING_CALL, or owed to the next call fd). */
  notify(r: RingState): void {
    if (this.ringTrace !== null) this.ringTrace(ringRecord(r.index, 'call'));
    if (r.callFd === null) {
      if (this.inband()) this.inbandCall(r);
      else r.callOwed = true;
      return;
    }
    try {
      this.sys.eventfdWrite(r.callFd, 1n);
    } catch (e) {
      log('%s: call eventfd of ring %d failed: %s', this.label, r.index, (e as Error).message);
    }
  }

  /** The device changed its config space: tell the frontend (BACKEND_CONFIG_CHANGE_MSG, with CONFIG). */
  private configChanged(): void {
    if (this.closed || !this.protoNegotiated(ProtoF.CONFIG) || this.backendChannel === null) return;
    this.backendChannel
      .request(BackendReq.CONFIG_CHANGE_MSG, null, { needReply: true })
      .catch((e: Error) => log('%s: CONFIG_CHANGE_MSG failed: %s', this.label, e.message));
  }

  /** In-band notifications are usable: negotiated, with the backend channel they need (vhost-user.rst). */
  private inband(): boolean {
    return this.protoNegotiated(ProtoF.INBAND_NOTIFICATIONS) && this.backendChannel !== null && this.backendChannel.isOpen;
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
    this.backendChannel!.request(BackendReq.VRING_CALL, { index: r.index, num: 0 }, { needReply: true })
      .catch((e: Error) => log('%s: in-band VRING_CALL on ring %d failed: %s', this.label, r.index, e.message))
      .finally(() => {
        r.inbandCallInFlight = false;
        if (r.inbandCallAgain) {
          r.inbandCallAgain = false;
          if (this.inband()) this.inbandCall(r);
        }
      });
  }

  private watchKick(r: RingState): void {
    if (r.kickFd === null) {
      // With in-band notifications the kicks come as VRING_KICK messages: no polling.
      if (this.protoNegotiated(ProtoF.INBAND_NOTIFICATIONS)) return;
      // vhost-user.rst SET_VRING_KICK: "the invalid FD flag ... signals that polling should be used
      // instead of waiting for the kick". Poll every millisecond while the ring is ready.
      r.pollTimer ??= setInterval(() => {
        if (r.queue) this.device.kick(r.index);
      }, POLL_INTERVAL_MS);
      return;
    }
    if (!r.kickPoller) {
      const fd = r.kickFd;
      r.kickPoller = new this.sys.Poller(fd, (err) => {
        if (err) {
          log('kick poller error on ring %d: %s', r.index, err.message);
          return;
        }
        this.sys.eventfdRead(fd);
        if (this.ringTrace !== null) this.ringTrace(ringRecord(r.index, 'kick'));
        if (r.queue) this.device.kick(r.index);
      });
    }
    r.kickPoller.start(POLL_READABLE);
  }

  replaceKick(r: RingState, fd: Fd | null): void {
    if (r.kickPoller) {
      r.kickPoller.close();
      r.kickPoller = null;
    }
    if (r.kickFd !== null) this.sys.close(r.kickFd);
    r.kickFd = fd;
  }

  /** Every ring stopped and disabled (RESET_OWNER, RESET_DEVICE); configuration and fds kept. */
  stopAllRings(): void {
    for (const r of this.rings) {
      this.stopQueue(r);
      r.started = false;
      r.enabled = false;
    }
  }

  /** The connection is gone: release every fd and mapping this session owns. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const r of this.rings) {
      this.stopQueue(r);
      this.replaceKick(r, null);
      if (r.callFd !== null) this.sys.close(r.callFd);
      if (r.errFd !== null) this.sys.close(r.errFd);
      r.callFd = r.errFd = null;
    }
    this.device.reset();
    this.memory.close();
    this.migration.close();
    this.inflight?.close();
    this.inflight = null;
    this.stateTransfer?.close();
    this.stateTransfer = null;
    this.backendChannel?.close();
    this.backendChannel = null;
  }

  // ---------------------------------------------------------------------------------------------
  // Helpers used by handlers.

  setMemory(specs: RegionSpec[], fds: Fd[]): void {
    this.memory.replace(specs, fds);
    this.memGeneration++;
  }
  /** Returns the region's index in the table (an identical region is only referenced again, D34). */
  addMemory(spec: RegionSpec, fd: Fd): number {
    const { index, added } = this.memory.add(spec, fd, MAX_MEM_SLOTS);
    if (added) this.memGeneration++;
    return index;
  }
  removeMemory(spec: RegionSpec): void {
    // Rings using the region are restarted against the new table (and fail if they lost it).
    if (this.memory.remove(spec)) this.memGeneration++;
  }

  resetRings(): void {
    this.stopAllRings();
    this.vringBigEndian.length = 0;
    for (const r of this.rings) {
      this.replaceKick(r, null);
      r.num = 0;
      r.addr = null;
      r.base = 0;
      r.broken = null;
    }
  }

  setAckedFeatures(f: bigint): void {
    const extra = f & ~this.offeredFeatures;
    if (extra !== 0n) fail('SESSION_BAD_FEATURES', `SET_FEATURES acks bits not offered: ${hex(extra)}`);
    this.ackedFeatures = f;
    this.featuresSet = true;
    // vhost-user.rst "Migration": LOG_ALL switches dirty logging on and off; the device never sees it.
    this.migration.logAll = has(f, VirtioF.LOG_ALL);
    if (has(f, VirtioF.ACCESS_PLATFORM)) {
      this.iommu ??= new Iommu(this.memory.memory, () => this.backendChannel, this.label);
    } else {
      this.iommu = null;
    }
    this.device.setFeatures(f & ~bit(VirtioF.LOG_ALL));
    // Without PROTOCOL_FEATURES rings are enabled as soon as they start (vhost-user.rst "Ring states").
    if (!this.virtioNegotiated(VirtioF.PROTOCOL_FEATURES)) for (const r of this.rings) if (r.started) r.enabled = true;
  }

  startRing(r: RingState): void {
    r.started = true;
    r.broken = null;
    if (!this.virtioNegotiated(VirtioF.PROTOCOL_FEATURES)) r.enabled = true;
  }

  /** GET_VRING_BASE: stop the ring and return where the device stopped. */
  stopRing(r: RingState): number {
    this.stopQueue(r); // also stops watching the kick fd
    r.started = false;
    return r.base;
  }
}

/** The u64 body of a request (protocol/payloads.ts u64Payload). */
function u64(msg: VhostMessage): bigint {
  return (msg.payload as { value: bigint }).value;
}

/** Trace record of an outgoing reply: decoded when it decodes, raw otherwise (the empty error reply). */
function replyRecord(out: Encoded): TraceMessageRecord {
  const dv = new DataView(out.bytes.buffer, out.bytes.byteOffset, out.bytes.byteLength);
  const frame = {
    request: dv.getUint32(0, true),
    flags: dv.getUint32(4, true),
    payload: out.bytes.subarray(HEADER_SIZE),
    fds: out.fds,
  };
  try {
    return messageRecord('tx', decode('frontend', frame));
  } catch (e) {
    return rawRecord('tx', 'frontend', { ...frame, fdCount: frame.fds.length }, `error reply (${(e as Error).message})`);
  }
}

function u64Bytes(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v, true);
  return b;
}

function regionOf(p: MemoryRegion): RegionSpec {
  return { gpa: p.guestPhysAddr, byteLen: p.memorySize, uva: p.userspaceAddr, mmapOffset: p.mmapOffset };
}

/** One handler per request id; the table row (protocol/messages.ts) has already been enforced. */
/** For the ring log lines: a split ring's used.idx, -1 for a packed ring (its used position is in `base`). */
function splitUsedIdx(q: Virtqueue): number {
  return q instanceof SplitQueue ? q.usedIdx : -1;
}

const HANDLERS: Partial<Record<number, Handler>> = {
  ...DEVICE_HANDLERS,
  [FrontendReq.GET_FEATURES]() {
    return { payload: { value: this.offeredFeatures } };
  },
  [FrontendReq.SET_FEATURES](msg) {
    this.setAckedFeatures(u64(msg));
  },
  [FrontendReq.GET_PROTOCOL_FEATURES]() {
    return { payload: { value: this.offeredProtocolFeatures } };
  },
  [FrontendReq.SET_PROTOCOL_FEATURES](msg) {
    const f = u64(msg);
    const extra = f & ~this.offeredProtocolFeatures;
    if (extra !== 0n) fail('SESSION_BAD_FEATURES', `SET_PROTOCOL_FEATURES acks bits not offered: ${hex(extra)}`);
    this.ackedProtocolFeatures = f;
    this.protocolFeaturesSet = true;
  },
  [FrontendReq.SET_OWNER]() {
    this.owner = true;
  },
  [FrontendReq.RESET_OWNER]() {
    // vhost-user.rst: "no longer used ... recommended that back-ends either ignore this message, or
    // use it to disable all rings". We return every ring to its initial state (stopped, disabled,
    // unconfigured) and keep memory, features and the dirty log (D3).
    this.resetRings();
  },
  [FrontendReq.GET_QUEUE_NUM]() {
    return { payload: { value: BigInt(this.device.queueNum) } };
  },
  [FrontendReq.SET_MEM_TABLE](msg, fds) {
    const p = msg.payload as MemoryTablePayload;
    this.setMemory(p.regions.map(regionOf), fds.takeAll());
    if (!this.migration.listening) return;
    // vhost-user.rst SET_MEM_TABLE: in postcopy "the back-end replies with the bases of the memory
    // mapped regions"; the frontend then acks (postcopyAck).
    const views = this.memory.views();
    this.migration.ackPending = msg.id;
    return {
      payload: {
        ...p,
        regions: p.regions.map((r, i) => ({ ...r, userspaceAddr: this.migration.addressOf(views[i]!.ab) })),
      },
    };
  },
  [FrontendReq.GET_MAX_MEM_SLOTS]() {
    return { payload: { value: BigInt(MAX_MEM_SLOTS) } };
  },
  [FrontendReq.ADD_MEM_REG](msg, fds) {
    const p = msg.payload as SingleMemoryRegion;
    const index = this.addMemory(regionOf(p.region), fds.take(0));
    if (!this.migration.listening) return;
    // Postcopy (QEMU send_add_regions): each region is answered with our mapping's address; one
    // ack follows the last one.
    const views = this.memory.views();
    this.migration.ackPending = msg.id;
    return { payload: { ...p, region: { ...p.region, userspaceAddr: this.migration.addressOf(views[index]!.ab) } } };
  },
  [FrontendReq.SET_LOG_BASE](msg, fds) {
    const p = msg.payload as LogDescription;
    // Without LOG_SHMFD the log lives in the frontend's own memory, which we cannot reach.
    if (!this.protoNegotiated(ProtoF.LOG_SHMFD) || fds.fds.length === 0) {
      fail('SESSION_UNSUPPORTED', 'SET_LOG_BASE without a log fd (LOG_SHMFD) is not supported');
    }
    this.migration.setLogBase(fds.take(0), p.mmapSize, p.mmapOffset);
    // Reply body: see protocol/messages.ts logBaseReply (empty, like DPDK).
    return { payload: { bytes: new Uint8Array(0) } };
  },
  [FrontendReq.GET_INFLIGHT_FD](msg) {
    const p = msg.payload as InflightShape;
    this.inflight?.close();
    this.inflight = null;
    this.inflight = InflightBuffer.create(this.sys, this.packed ? 'packed' : 'split', p.numQueues, p.queueSize);
    const { shape, fd } = this.inflight.describe();
    return { payload: shape, fds: [fd] };
  },
  [FrontendReq.SET_INFLIGHT_FD](msg, fds) {
    const p = msg.payload as InflightShape;
    const buf = InflightBuffer.adopt(this.sys, fds.take(0), this.packed ? 'packed' : 'split', p);
    this.inflight?.close();
    this.inflight = buf;
  },
  [FrontendReq.SET_LOG_FD](_msg, fds) {
    this.migration.setLogFd(fds.take(0));
  },
  [FrontendReq.POSTCOPY_ADVISE]() {
    return { payload: null, fds: [this.migration.advise()] };
  },
  [FrontendReq.POSTCOPY_LISTEN]() {
    this.migration.listen(this.memory.regionCount);
  },
  [FrontendReq.POSTCOPY_END]() {
    this.migration.end();
    return { payload: { value: 0n } };
  },
  [FrontendReq.REM_MEM_REG](msg) {
    const p = msg.payload as SingleMemoryRegion;
    this.removeMemory(regionOf(p.region));
  },
  [FrontendReq.SET_VRING_NUM](msg) {
    const p = msg.payload as VringState;
    const r = this.ring(p.index);
    if (r.started) fail('SESSION_BAD_STATE', `SET_VRING_NUM on started ring ${p.index}`);
    // virtio v1.2 2.7: "Queue Size value is always a power of 2. The maximum Queue Size value is
    // 32768." 2.8 (packed) drops the power-of-two rule.
    if (p.num === 0 || p.num > 32768) fail('SESSION_BAD_RING', `ring ${p.index}: size ${p.num} is not in 1..32768`);
    if (!this.packed && (p.num & (p.num - 1)) !== 0) {
      fail('SESSION_BAD_RING', `ring ${p.index}: size ${p.num} is not a power of two (split ring)`);
    }
    r.num = p.num;
  },
  [FrontendReq.SET_VRING_ADDR](msg) {
    const p = msg.payload as VringAddr;
    const r = this.ring(p.index);
    r.addr = {
      flags: p.flags,
      descUva: p.descUserAddr,
      usedUva: p.usedUserAddr,
      availUva: p.availUserAddr,
      logGpa: p.logGuestAddr,
    };
    r.broken = null;
    // A running ring picks up new addresses by restarting (the frontend may move rings while
    // enabled, e.g. when LOG_ALL toggles): force the rebuild.
    if (r.queue) this.stopQueue(r);
  },
  [FrontendReq.SET_VRING_BASE](msg) {
    const p = msg.payload as VringState;
    const r = this.ring(p.index);
    if (r.started) fail('SESSION_BAD_STATE', `SET_VRING_BASE on started ring ${p.index}`);
    r.base = p.num >>> 0; // interpreted per ring format when the ring starts
    r.broken = null;
  },
  [FrontendReq.GET_VRING_BASE](msg) {
    const p = msg.payload as VringState;
    const r = this.ring(p.index);
    const base = this.stopRing(r);
    return { payload: { index: p.index, num: base } };
  },
  [FrontendReq.SET_VRING_KICK](msg, fds) {
    const p = msg.payload as VringFd;
    const ring = this.ring(p.index);
    this.replaceKick(ring, p.noFd ? null : fds.take(0));
    this.startRing(ring);
  },
  [FrontendReq.SET_VRING_CALL](msg, fds) {
    const p = msg.payload as VringFd;
    const ring = this.ring(p.index);
    if (ring.callFd !== null) this.sys.close(ring.callFd);
    ring.callFd = p.noFd ? null : fds.take(0);
    // A ring that ran without a call fd (started at SET_VRING_KICK, before SET_VRING_CALL: the order
    // QEMU uses on a migration destination, or NOFD while the frontend polled) may have published
    // used buffers nobody was told of: the new fd gets that notification now, or the driver could
    // wait for it forever. libvhost-user signals every new call fd; only an owed one is signalled
    // here (a notification with nothing new is harmless to a driver, but needless).
    if (ring.callFd !== null && ring.callOwed) {
      ring.callOwed = false;
      this.notify(ring);
    }
  },
  [FrontendReq.SET_VRING_ERR](msg, fds) {
    const p = msg.payload as VringFd;
    const ring = this.ring(p.index);
    if (ring.errFd !== null) this.sys.close(ring.errFd);
    ring.errFd = p.noFd ? null : fds.take(0);
  },
  [FrontendReq.SET_VRING_ENDIAN](msg) {
    // vhost-user.rst SET_VRING_ENDIAN (CROSS_ENDIAN and num 0/1 are checked by the table row). Taken
    // while the ring is stopped, before or after SET_VRING_BASE (QEMU sends it after; D33). Modern
    // rings are little-endian (virtio v1.2 2.7: VERSION_1 rings are le; packed needs VERSION_1).
    const p = msg.payload as VringState;
    const r = this.ring(p.index);
    if (r.started) fail('SESSION_BAD_STATE', `SET_VRING_ENDIAN on started ring ${p.index}`);
    if (p.num === 1 && (this.packed || has(this.ackedFeatures, VirtioF.VERSION_1))) {
      fail('SESSION_BAD_RING', `ring ${p.index}: big-endian refused, VERSION_1 / RING_PACKED rings are little-endian`);
    }
    this.vringBigEndian[p.index] = p.num === 1;
    log('%s: ring %d is %s-endian', this.label, p.index, p.num === 1 ? 'big' : 'little');
  },
  [FrontendReq.SET_VRING_ENABLE](msg) {
    const p = msg.payload as VringState;
    const r = this.ring(p.index);
    if (p.num !== 0 && p.num !== 1) fail('SESSION_BAD_STATE', `SET_VRING_ENABLE with ${p.num} (must be 0 or 1)`);
    r.enabled = p.num === 1;
  },
  [FrontendReq.SET_BACKEND_REQ_FD](_msg, fds) {
    this.backendChannel?.close();
    this.backendChannel = new BackendChannel(fds.take(0), this.sys, {
      replyAck: () => this.protoNegotiated(ProtoF.REPLY_ACK),
      ...(this.trace ? { trace: this.trace } : {}),
      label: this.label,
    });
  },
  [FrontendReq.IOTLB_MSG](msg) {
    const p = msg.payload as IotlbMsg;
    if (this.iommu === null) fail('SESSION_BAD_STATE', 'IOTLB_MSG without ACCESS_PLATFORM negotiated');
    const err = this.iommu.apply(p);
    if (err !== null) fail('SESSION_BAD_STATE', `IOTLB_MSG refused: ${err}`);
    this.iotlbChanged(p);
  },
  [FrontendReq.VRING_KICK](msg) {
    // vhost-user.rst INBAND_NOTIFICATIONS: the kick arrives as a message instead of an eventfd write.
    const p = msg.payload as VringState;
    const r = this.ring(p.index);
    if (this.ringTrace !== null) this.ringTrace(ringRecord(r.index, 'kick', { inband: true }));
    if (r.queue) this.device.kick(r.index);
  },
  [FrontendReq.GET_STATUS]() {
    return { payload: { value: BigInt(this.status) } };
  },
  [FrontendReq.SET_STATUS](msg) {
    const s = u64(msg);
    if (s > 0xffn) fail('SESSION_BAD_STATE', `SET_STATUS ${hex(s)} is not a device status byte`);
    this.status = Number(s);
  },
  [FrontendReq.RESET_DEVICE]() {
    // "reset all internal device state to the initial state": rings, features, status, the device,
    // and migration state (dirty log, postcopy). The memory table stays: the spec keeps it ("until
    // the frontend sends a new one") and QEMU does not resend it.
    this.resetRings();
    this.ackedFeatures = 0n;
    this.featuresSet = false;
    this.status = 0;
    this.iommu = null;
    this.migration.close();
    this.device.reset();
  },
  [FrontendReq.SEND_RARP](msg) {
    const { mac } = msg.payload as RarpMac;
    if (!this.device.sendRarp) fail('SESSION_UNSUPPORTED', 'device cannot send RARP');
    this.device.sendRarp(mac);
  },
};

/** Frontend request ids this backend implements (the rest get a clear error reply). */
export function supportedRequests(): number[] {
  return Object.keys(HANDLERS).map(Number);
}
