/**
 * One vhost-user session (one connected frontend): the state machine over the codec.
 *
 * Security model: the frontend is an external, possibly hostile peer. Every field of every message
 * is checked before use (syntax by the codec table, semantics here); a bad request is refused with
 * an error reply and never takes the process down. Guest memory is likewise hostile: that is the
 * virtqueue engine's job, which marks a ring broken rather than throwing.
 *
 * Dispatch is table driven (protocol/messages.ts gives the row: payload layout, fd policy, reply
 * kind, required feature) and the session is handed its handler table (handlers/: one handler per
 * request id, semantics only). REPLY_ACK is generic (vhost-user.rst "REPLY_ACK"): a handler does not
 * think about it. The session holds the negotiation and the tables (memory, dirty log, IOTLB,
 * inflight, back-end channel); its ring runtime (ring-runtime.ts) turns them into running queues,
 * recomputed after every message.
 */
import createDebug from 'debug';
import type { NativeBinding, Fd, FdKind } from '../../native/types.ts';
import {
  BackendReq,
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
  type TraceRingRecord,
  HEADER_SIZE,
  type Encoded,
  type MessageDef,
  type TraceMessageRecord,
  type RawFrame,
  type VhostMessage,
} from '../../protocol/index.ts';
import { VirtqError } from '../../virtqueue/index.ts';
import type { Device } from './device.ts';
import { BackendError, fail } from './errors.ts';
import { hex } from './hex.ts';
import { MemoryTable, type RegionSpec } from './memory-table.ts';
import { Migration, type MigrationNative } from './migration.ts';
import { type InflightBuffer, type InflightNative } from './inflight-buffer.ts';
import { type BackendChannel, type BackendChannelNative } from './backend-channel.ts';
import type { DeviceStateTransfer, StateNative } from './device-state.ts';
import { Iommu } from './iommu.ts';
import { RingRuntime, type RingHost, type RingNative } from './ring-runtime.ts';
import type { RingState } from './ring-state.ts';

const log = createDebug('vhost:session');
const logProto = createDebug('vhost:proto');

/** Slots we accept with CONFIGURE_MEM_SLOTS (vhost-user.rst: "VHOST_USER_MAX_RAM_SLOTS 509"). */
export const MAX_MEM_SLOTS = 509;
/** REPLY_ACK failure value (vhost-user.rst: "zero on success, non-zero on failure"). */
const NACK = 1n;

export type SessionNative = Pick<NativeBinding, 'close' | 'mmap' | 'munmap' | 'fstat' | 'fdKind'> &
  RingNative &
  MigrationNative &
  InflightNative &
  BackendChannelNative &
  StateNative;

export interface SessionOptions {
  device: Device;
  /** One handler per frontend request id (handlers/index.ts REQUEST_HANDLERS for this backend). */
  handlers: HandlerTable;
  native: SessionNative;
  /** Sends an encoded message (bytes + fds to pass) to the frontend. */
  send: (bytes: Uint8Array, fds: readonly Fd[]) => void;
  /** Protocol features this backend offers (masked by what the session implements). */
  protocolFeatures?: bigint;
  /** Receives a trace record for every request (decoded, or raw with the codec's error) and reply. */
  trace?: (rec: TraceMessageRecord) => void;
  /** Receives ring events (kick seen, call sent, ring broken) when ring tracing is on. */
  ringTrace?: (rec: TraceRingRecord) => void;
  label?: string;
}

/**
 * Protocol features the session implements for any device. Those a device cannot back are withdrawn
 * per device (CONFIG without a config space, NET_MTU without NET_F_MTU and setMtu, DEVICE_STATE
 * without save/load, CROSS_ENDIAN without big-endian support), and PAGEFAULT when the native layer
 * has no userfaultfd.
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

/**
 * Virtio features a started ring depends on: its layout and format (RING_PACKED, VERSION_1, IN_ORDER),
 * notification suppression (EVENT_IDX), chains (INDIRECT_DESC), addressing (ACCESS_PLATFORM) and the
 * net header's size (MRG_RXBUF). SET_FEATURES may not change them while a ring is started.
 */
const RING_FEATURES =
  bit(VirtioF.RING_PACKED) |
  bit(VirtioF.VERSION_1) |
  bit(VirtioF.IN_ORDER) |
  bit(VirtioF.RING_EVENT_IDX) |
  bit(VirtioF.RING_INDIRECT_DESC) |
  bit(VirtioF.ACCESS_PLATFORM) |
  bit(VirtioF.NET_F_MRG_RXBUF);

export type HandlerResult = { payload: unknown; fds?: Fd[] } | void;
export type Handler = (this: Session, msg: VhostMessage, fds: FdClaim) => HandlerResult;
/** The handler of each frontend request id this backend implements; the others are refused. */
export type HandlerTable = Readonly<Partial<Record<number, Handler>>>;

/** fd kinds a request may carry where it carries one (checked where the fd arrives, before any use). */
export const FD_KINDS = {
  /** Guest memory, the dirty log, the inflight buffer: mappable files (memfd, hugetlbfs, /dev/shm). */
  mappable: ['memfd', 'file'],
  /** Kick, call and err fds (vhost-user.rst: "eventfd"), SET_LOG_FD. */
  eventfd: ['eventfd'],
  /** The back-end channel (SET_BACKEND_REQ_FD): a unix socket. */
  socket: ['socket'],
  /** The device state channel (SET_DEVICE_STATE_FD): "a pipe" or a socket. */
  stream: ['pipe', 'socket'],
} as const satisfies Record<string, readonly FdKind[]>;

/**
 * The fds that came with one message; a handler claims the ones it keeps, the rest are closed. A
 * claim names the kinds it accepts: an fd of another kind is refused (SESSION_BAD_FD) and, being
 * unclaimed, closed. A pipe where an eventfd belongs would otherwise break the kick watcher later.
 */
export class FdClaim {
  private readonly claimed = new Set<number>();
  constructor(
    readonly fds: readonly Fd[],
    private readonly kindOf: (fd: Fd) => FdKind,
  ) {}
  take(i: number, kinds: readonly FdKind[], what: string): Fd {
    const fd = this.fds[i];
    if (fd === undefined) fail('SESSION_BAD_STATE', `expected an fd at position ${i}`);
    this.check(fd, kinds, what);
    this.claimed.add(i);
    return fd;
  }
  /** Every fd, all of the accepted kinds (all checked before any is claimed). */
  takeAll(kinds: readonly FdKind[], what: string): Fd[] {
    this.fds.forEach((fd, i) => this.check(fd, kinds, `${what} ${i}`));
    this.fds.forEach((_, i) => this.claimed.add(i));
    return [...this.fds];
  }
  private check(fd: Fd, kinds: readonly FdKind[], what: string): void {
    const kind = this.kindOf(fd);
    if (!kinds.includes(kind)) fail('SESSION_BAD_FD', `${what}: a ${kind} fd where ${kinds.join(' or ')} belongs`);
  }
  unclaimed(): Fd[] {
    return this.fds.filter((_, i) => !this.claimed.has(i));
  }
}

export class Session implements RingHost {
  readonly device: Device;
  readonly sys: SessionNative;
  private readonly sendRaw: SessionOptions['send'];
  private readonly handlers: HandlerTable;
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
  get inflight(): InflightBuffer | null {
    return this.inflightBuffer;
  }
  set inflight(b: InflightBuffer | null) {
    this.inflightBuffer = b;
    if (b !== null) b.onFault = (reason) => this.fatal(reason);
  }
  private inflightBuffer: InflightBuffer | null = null;
  /**
   * Ends this session's connection (set by the endpoint): called when the session cannot go on, e.g. a
   * mapping of its guest memory, dirty log or inflight buffer lost its memory (memory-table.ts MappingGuards).
   */
  onFatal: ((reason: string) => void) | null = null;
  /** The rings: their state, running queues, eventfds and notifications. */
  readonly runtime: RingRuntime;
  private closed = false;

  constructor(opts: SessionOptions) {
    this.device = opts.device;
    this.sys = opts.native;
    this.sendRaw = opts.send;
    this.handlers = opts.handlers;
    this.trace = opts.trace;
    this.ringTrace = opts.ringTrace ?? null;
    this.label = opts.label ?? 'session';
    // LOG_ALL is a vhost feature, not the device's: QEMU blocks migration without it. ACCESS_PLATFORM
    // (vIOMMU) is the session's business too: it changes how addresses translate, not the device.
    this.offeredFeatures =
      opts.device.features | bit(VirtioF.PROTOCOL_FEATURES) | bit(VirtioF.LOG_ALL) | bit(VirtioF.ACCESS_PLATFORM);
    this.memory = new MemoryTable(opts.native);
    this.migration = new Migration(opts.native);
    this.memory.onFault = this.migration.onFault = (reason) => this.fatal(reason);
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
    this.runtime = new RingRuntime(this, opts.native, opts.device.maxRings);
    // Postcopy: a page a ring waited for is there (postcopy-memory.ts).
    this.migration.onPagesArrived = () => {
      if (!this.closed) this.runtime.resume();
    };
  }

  /** Per-ring state, by ring index. */
  get rings(): readonly RingState[] {
    return this.runtime.rings;
  }

  /** SET_VRING_ENDIAN per ring index: true = big-endian (num 1); unset = little-endian (D33). */
  get vringBigEndian(): readonly boolean[] {
    return this.runtime.bigEndian;
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
      if (def && this.bodyReply(def)) this.replyRaw(frame.request, refusalBody(def));
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
    const claim = new FdClaim(msg.fds, (fd) => this.sys.fdKind(fd));
    const replyAck = msg.needReply && this.protoNegotiated(ProtoF.REPLY_ACK);
    const bodyReply = this.bodyReply(msg.def);
    let out: Encoded | null = null;
    try {
      // vhost-user.rst "Header": the REPLY flag marks a back-end's reply. A "request" carrying it is
      // refused and not executed (its NEED_REPLY is void: the codec clears needReply on replies).
      if (msg.isReply) fail('SESSION_BAD_REQUEST', `${msg.name} carries the REPLY flag (flags 0x${msg.flags.toString(16)}): not a request`);
      this.checkRequires(msg);
      const handler = this.handlers[msg.id];
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
      // A request that expects a body gets a reply with an empty body (or its failure result):
      // frontends check the reply, so they fail cleanly instead of waiting forever (decisions.md D4, D46).
      if (bodyReply) out = { bytes: encodeRaw(msg.id, VHOST_USER_VERSION | VHOST_USER_REPLY_MASK, refusalBody(msg.def)), fds: [] };
      else if (replyAck) out = encodeReply(msg, NACK);
    } finally {
      for (const fd of claim.unclaimed()) this.sys.close(fd);
    }
    if (rec) this.trace!(rec);
    if (out) this.send(out);
    this.runtime.update();
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
    this.runtime.update();
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

  /** This session is broken beyond repair: log why and end it (its connection); other sessions go on. */
  fatal(reason: string): void {
    if (this.closed) return;
    log('%s: session broken, ending it: %s', this.label, reason);
    if (this.onFatal !== null) this.onFatal(reason);
    else this.close();
  }

  /** The connection is gone: release every fd and mapping this session owns. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.runtime.close();
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

  /** The device changed its config space: tell the frontend (BACKEND_CONFIG_CHANGE_MSG, with CONFIG). */
  private configChanged(): void {
    if (this.closed || !this.protoNegotiated(ProtoF.CONFIG) || this.backendChannel === null) return;
    this.backendChannel
      .request(BackendReq.CONFIG_CHANGE_MSG, null, { needReply: true })
      .catch((e: Error) => log('%s: CONFIG_CHANGE_MSG failed: %s', this.label, e.message));
  }

  // ---------------------------------------------------------------------------------------------
  // State changes the handlers ask for.

  setMemory(specs: RegionSpec[], fds: Fd[]): void {
    this.memory.replace(specs, fds);
    this.runtime.memoryChanged();
  }
  /** Returns the region's index in the table (an identical region is only referenced again, D34). */
  addMemory(spec: RegionSpec, fd: Fd): number {
    const { index, added } = this.memory.add(spec, fd, MAX_MEM_SLOTS);
    if (added) this.runtime.memoryChanged();
    return index;
  }
  removeMemory(spec: RegionSpec): void {
    // Rings using the region are restarted against the new table (and fail if they lost it).
    if (this.memory.remove(spec)) this.runtime.memoryChanged();
  }

  setAckedFeatures(f: bigint): void {
    const extra = f & ~this.offeredFeatures;
    if (extra !== 0n) fail('SESSION_BAD_FEATURES', `SET_FEATURES acks bits not offered: ${hex(extra)}`);
    // A started ring was built for the features it started with (layout, notification suppression,
    // header size): changing those under it is refused (decisions.md D44). LOG_ALL and the rest may
    // change while rings run (QEMU toggles LOG_ALL at the start and end of a migration).
    const changed = (f ^ this.ackedFeatures) & RING_FEATURES;
    if (this.featuresSet && changed !== 0n && this.runtime.rings.some((r) => r.started)) {
      fail('SESSION_BAD_STATE', `SET_FEATURES changes ring features ${hex(changed)} while rings run`);
    }
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
    this.runtime.featuresChanged();
  }

  /** RESET_DEVICE: rings, features, status, the device and migration state back to the start; memory kept. */
  resetDevice(): void {
    this.runtime.resetAll();
    this.ackedFeatures = 0n;
    this.featuresSet = false;
    this.status = 0;
    this.iommu = null;
    this.migration.close();
    this.device.reset();
  }
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

/** The body of a refused request's reply: its row's u64 failure result, else empty (D4). */
function refusalBody(def: MessageDef): Uint8Array {
  return def.failureResult === undefined ? new Uint8Array(0) : u64Bytes(def.failureResult);
}

function u64Bytes(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v, true);
  return b;
}
