/**
 * virtio-net device (virtio v1.2 §5.1): queue pairs (ring 2k = receiveq k, ring 2k+1 = transmitq k),
 * the virtio_net_hdr in front of every frame, mergeable RX buffers.
 *
 * The control queue is not ours: QEMU's vhost-user-net handles it in QEMU and DPDK virtio-user
 * emulates it, so neither sends it to a vhost-user backend.
 *
 * Frames move between the guest and one uplink Port. Backpressure is honoured both ways: when the
 * uplink is 'busy' the TX chain is given back (unpop) and TX resumes when the uplink has room; when
 * the guest has no RX buffers we answer 'busy' and call the waiters on the next RX kick.
 *
 * Why one file of about a thousand lines: TX and RX of a device share its ring table, header state,
 * RX reservoir and burst brackets, and the per-frame path is methods of one class so that TurboFan
 * inlines it whole (spec-notes/performance.md); pure frame work lives in ../frame/.
 */
import createDebug from 'debug';
import { VirtioF, bit, chainRecord, has, type TraceRingRecord } from '../../../protocol/index.ts';
import {
  Chain,
  ChainReader,
  ChainWriter,
  DIRECT_OK,
  copyBytes,
  copyBytesW,
  createDirectBuffer,
  createDrainPlan,
  DirectBurst,
  BURST_MAX,
  wordsOf,
  createSpan,
  type DirectBuffer,
  type DrainPlan,
  type GuestMemory,
} from '../../../virtqueue/index.ts';
import type { Device, ReadyQueue } from '../../core/device.ts';
import type { Delivery, FrameSink, Port } from '../ports/port.ts';
import {
  GSO_ECN,
  GSO_NONE,
  GSO_TCPV4,
  GSO_TCPV6,
  GSO_UDP,
  NET_HDR_F_DATA_VALID,
  NET_HDR_F_NEEDS_CSUM,
  NET_HDR_LEGACY_BYTES,
  NET_HDR_MRG_BYTES,
  NetHdr,
  PLAIN_HDR,
} from '../frame/net-hdr.ts';
import { completeChecksum, segmentTcp } from '../frame/offload.ts';
import { rarpFrame } from '../frame/rarp.ts';
import { BusyPoller, type PolledRing } from './busy-poll.ts';
import { NetConfig } from './net-config.ts';

const log = createDebug('vhost:net');
/** Chains handled per kick before yielding to the event loop (fairness between rings and ports). */
const TX_BUDGET = 256;
/**
 * Chains per TX burst: used entries go back to the driver (and the receiver publishes) after each
 * burst, not at the end of the pass, so a driver whose ring is no larger than the budget never runs
 * out of descriptors while we work (spec-notes/performance.md, finding 1).
 */
const TX_BURST = 32;
/** A frame (GSO frames included) never exceeds 64 KiB plus the virtio header. */
const MAX_FRAME = 65536 + 64;
/**
 * Busy-poll window for TX rings that ran empty (busy-poll.ts), in microseconds; 0 disables it.
 * Default: VHOST_USER_TS_BUSY_POLL_US from the environment, else DEFAULT_BUSY_POLL_US.
 */
export const DEFAULT_BUSY_POLL_US = 50;
const pollers = new Map<number, BusyPoller>();
/** One poll loop per window length for the whole process: all devices' rings are served by it in turn. */
function sharedPoller(us: number): BusyPoller {
  let p = pollers.get(us);
  if (p === undefined) {
    p = new BusyPoller(us / 1000);
    pollers.set(us, p);
  }
  return p;
}
function defaultBusyPollUs(): number {
  const v = process.env.VHOST_USER_TS_BUSY_POLL_US;
  if (v === undefined || v === '') return DEFAULT_BUSY_POLL_US;
  const n = Number(v);
  return Number.isFinite(n) && n >= 0 ? n : DEFAULT_BUSY_POLL_US;
}

/** Bytes of a frame hashed to pick its RX ring: Ethernet + IPv4 addresses. */
const HASH_BYTES = 34;
/** The most buffers one mergeable RX frame may take (virtio v1.2 5.1.6.4: num_buffers is a le16). */
const MAX_MRG_BUFFERS = 64;

/**
 * Features this device offers (virtio v1.2 5.1.3). Checksum and TCP segmentation offloads both
 * ways: what the receiving side did not negotiate is done in software (offload.ts), so any port can
 * carry them. UFO is not offered (deprecated in Linux, and IP fragmentation in software is not done).
 */
export const NET_FEATURES =
  bit(VirtioF.NET_F_CSUM) |
  bit(VirtioF.NET_F_GUEST_CSUM) |
  bit(VirtioF.NET_F_HOST_TSO4) |
  bit(VirtioF.NET_F_HOST_TSO6) |
  bit(VirtioF.NET_F_HOST_ECN) |
  bit(VirtioF.NET_F_GUEST_TSO4) |
  bit(VirtioF.NET_F_GUEST_TSO6) |
  bit(VirtioF.NET_F_GUEST_ECN) |
  bit(VirtioF.NET_F_MRG_RXBUF) |
  // The MTU in the config space (QEMU serves it from host_mtu=; NET_SET_MTU tells us).
  bit(VirtioF.NET_F_MTU) |
  // The guest announces itself (gratuitous ARP) after migration; QEMU handles the config bit.
  bit(VirtioF.NET_F_GUEST_ANNOUNCE) |
  bit(VirtioF.NET_F_MQ) |
  bit(VirtioF.RING_INDIRECT_DESC) |
  bit(VirtioF.RING_EVENT_IDX) |
  bit(VirtioF.VERSION_1) |
  // virtio v1.2 2.7.9 / 2.8.x: buffers are used in the order they were made available. Every path
  // here completes chains strictly in pop order (a chain that cannot be completed now is unpopped),
  // and one used element per chain is always allowed, so IN_ORDER needs no other change.
  bit(VirtioF.IN_ORDER) |
  bit(VirtioF.RING_PACKED) |
  // A ring reset arrives as GET_VRING_BASE + reconfiguration + SET_VRING_KICK of that ring only,
  // which the session's per-ring states already handle (spec-notes/decisions.md D18).
  bit(VirtioF.RING_RESET);

/**
 * Where ring tracing sends one record per chain the device consumed (TX) or filled (RX), with the
 * first `snaplen` bytes of the frame. Off (null) costs one null check per chain.
 */
export interface NetRingTrace {
  record(rec: TraceRingRecord): void;
  snaplen: number;
}

export interface NetStats {
  rxFrames: number;
  rxBytes: number;
  rxDroppedNoQueue: number;
  rxDroppedTooBig: number;
  txFrames: number;
  txBytes: number;
  txDropped: number;
  /**
   * TX frames dropped (and counted in txDropped too) because their header asks for segmentation the
   * device does not know or the driver did not negotiate (virtio v1.2 5.1.6.2): never guessed at.
   */
  txBadGso: number;
  /** Offload work done in software for a guest that did not negotiate it. */
  rxSwChecksums: number;
  rxSwSegmented: number;
  /** Segments lost because the guest ran out of RX buffers in the middle of a software-segmented frame. */
  rxDroppedSegments: number;
}

export class NetDevice implements Device, FrameSink, PolledRing {
  readonly kind = 'net';
  /** The virtio-net header follows the ring's byte order (ReadyQueue.bigEndian): CROSS_ENDIAN. */
  readonly bigEndianRings = true;
  readonly features: bigint;
  readonly maxRings: number;
  readonly queueNum: number;
  /** Config space and internal state (GET/SET_CONFIG, NET_SET_MTU, SET_DEVICE_STATE_FD). */
  readonly config: NetConfig;
  readonly stats: NetStats = {
    rxFrames: 0,
    rxBytes: 0,
    rxDroppedNoQueue: 0,
    rxDroppedTooBig: 0,
    txFrames: 0,
    txBytes: 0,
    txDropped: 0,
    txBadGso: 0,
    rxSwChecksums: 0,
    rxSwSegmented: 0,
    rxDroppedSegments: 0,
  };
  /** Acked offload features as booleans (no BigInt work per frame). */
  private guestCsum = false;
  private guestTso4 = false;
  private guestTso6 = false;
  private guestEcn = false;
  private guestUfo = false;
  /**
   * The guest acked an offload it may ask of us on TX (CSUM, HOST_TSO4/6, HOST_UFO). Without one the
   * TX header is not read: virtio v1.2 5.1.6.2.1 makes its flags zero and gso_type NONE (D40).
   */
  private hostOffloads = false;
  /** The segmentation the driver may ask of us on TX (virtio v1.2 5.1.6.2), like guest* for RX. */
  private hostTso4 = false;
  private hostTso6 = false;
  private hostEcn = false;
  /** Inside a sender's burst: RX used rings are published at endBurst. */
  private burstDepth = 0;
  private readonly rxDirty: (ReadyQueue | null)[];
  private hdrLen = NET_HDR_LEGACY_BYTES;
  private mergeable = false;
  private readonly rings: (ReadyQueue | null)[];
  private uplink: Port | null = null;
  private spaceWaiters: (() => void)[] = [];
  private readonly txScheduled: boolean[];
  private readonly label: string;

  // Reused per-packet objects: the hot path allocates nothing.
  private readonly chain = new Chain();
  private readonly reader = new ChainReader();
  private readonly writer = new ChainWriter();
  private readonly txBuf = new Uint8Array(MAX_FRAME);
  private readonly rxHeads = new Uint32Array(MAX_MRG_BUFFERS);
  private readonly rxLens = new Uint32Array(MAX_MRG_BUFFERS);
  private readonly mrgChains: Chain[] = Array.from({ length: MAX_MRG_BUFFERS }, () => new Chain());
  private readonly txHdr = new NetHdr();
  private readonly rxHdr = new NetHdr();
  private readonly segHdr = new NetHdr();
  private readonly hdrBytes = new Uint8Array(NET_HDR_MRG_BYTES);
  /** Software offload work happens in a copy: the frame may live in another guest's memory. */
  private readonly scratch = new Uint8Array(MAX_FRAME);
  private readonly segScratch = new Uint8Array(MAX_FRAME);
  /** deliverChain: the source chain while a frame is delivered from it (null otherwise). */
  private src: ChainReader | null = null;
  /** deliverChain with offload work: the frame is gathered here (allocated on first use). */
  private gatherBuf: Uint8Array | null = null;
  private readonly hashBytes = new Uint8Array(HASH_BYTES);
  private readonly span = createSpan();
  /** One-descriptor buffers popped in place (popDirect): a TX buffer we read, an RX buffer we fill. */
  private readonly txBuf1 = createDirectBuffer(false);
  private readonly rxBuf1 = createDirectBuffer(true);
  /** TX buffers popped together (drain's burst handler). */
  private readonly txBurst = new DirectBurst(false);
  /**
   * Inside a sender's burst, RX buffers are popped together (popBurst) into this reservoir and
   * filled one frame at a time; `settleRx` gives back what was not filled and pushes what was,
   * before anything else pops that ring (so buffers are still used in ring order, IN_ORDER) and
   * before endBurst publishes.
   */
  private readonly rxRes = new DirectBurst(true);
  private rxResRing: ReadyQueue | null = null;
  private rxResNext = 0;
  /** Word views for the fast-path copy, one-entry caches keyed by region view (a switch copies between the same two regions). */
  private srcKey: Uint8Array | null = null;
  private srcWords: Int32Array | null = null;
  private srcBase = 0;
  private dstKey: Uint8Array | null = null;
  private dstWords: Int32Array | null = null;
  private dstBase = 0;

  /** Ring tracing (chains with frame bytes); null when off. */
  ringTrace: NetRingTrace | null = null;
  private traceBuf: Uint8Array | null = null;
  private traceLen = 0;

  /** Null when busy polling is off (busyPollUs 0). */
  private readonly poller: BusyPoller | null;
  /** TX ring i is waiting for the uplink's onSpace (not polled meanwhile). */
  private readonly txWaiting: boolean[];

  /**
   * `busyPollUs`: how long a TX ring that ran empty is polled before notifications are re-enabled
   * (busy-poll.ts); 0 = never poll. Default: see DEFAULT_BUSY_POLL_US.
   */
  constructor(opts: { queuePairs: number; label?: string; features?: bigint; busyPollUs?: number; ringTrace?: NetRingTrace }) {
    this.maxRings = opts.queuePairs * 2;
    this.queueNum = opts.queuePairs;
    this.config = new NetConfig(opts.queuePairs);
    this.features = opts.features ?? NET_FEATURES;
    this.rings = new Array<ReadyQueue | null>(this.maxRings).fill(null);
    this.txScheduled = new Array<boolean>(this.maxRings).fill(false);
    this.rxDirty = new Array<ReadyQueue | null>(this.maxRings).fill(null);
    this.label = opts.label ?? 'net';
    this.txWaiting = new Array<boolean>(this.maxRings).fill(false);
    const us = opts.busyPollUs ?? defaultBusyPollUs();
    this.poller = us > 0 ? sharedPoller(us) : null;
    if (opts.ringTrace) this.ringTrace = opts.ringTrace;
  }

  attachPort(port: Port): void {
    this.uplink = port;
    port.connect(this);
  }

  setFeatures(acked: bigint): void {
    this.guestCsum = has(acked, VirtioF.NET_F_GUEST_CSUM);
    this.guestTso4 = has(acked, VirtioF.NET_F_GUEST_TSO4);
    this.guestTso6 = has(acked, VirtioF.NET_F_GUEST_TSO6);
    this.guestEcn = has(acked, VirtioF.NET_F_GUEST_ECN);
    this.guestUfo = has(acked, VirtioF.NET_F_GUEST_UFO);
    this.hostOffloads =
      has(acked, VirtioF.NET_F_CSUM) ||
      has(acked, VirtioF.NET_F_HOST_TSO4) ||
      has(acked, VirtioF.NET_F_HOST_TSO6) ||
      has(acked, VirtioF.NET_F_HOST_UFO);
    this.hostTso4 = has(acked, VirtioF.NET_F_HOST_TSO4);
    this.hostTso6 = has(acked, VirtioF.NET_F_HOST_TSO6);
    this.hostEcn = has(acked, VirtioF.NET_F_HOST_ECN);
    this.uplink?.configure?.(acked);
    this.mergeable = has(acked, VirtioF.NET_F_MRG_RXBUF);
    // virtio v1.2 5.1.6: the header has num_buffers when VERSION_1 or MRG_RXBUF is negotiated.
    this.hdrLen = this.mergeable || has(acked, VirtioF.VERSION_1) ? NET_HDR_MRG_BYTES : NET_HDR_LEGACY_BYTES;
    log('%s: features %s, header %d bytes, mergeable %s', this.label, acked.toString(16), this.hdrLen, this.mergeable);
  }

  ringReady(ring: ReadyQueue): void {
    this.rings[ring.index] = ring;
    this.countRx();
    this.txWaiting[ring.index] = false;
    if (ring.index % 2 === 1) this.kick(ring.index); // TX may already hold chains (reconnect, restart)
    else this.wakeSpaceWaiters();
  }

  ringStopped(index: number): void {
    this.rings[index] = null;
    this.countRx();
  }

  kick(index: number): void {
    if (index % 2 === 0) this.wakeSpaceWaiters();
    else this.processTx(index);
  }

  saveState(): Uint8Array {
    return this.config.saveState();
  }
  loadState(bytes: Uint8Array): void {
    this.config.loadState(bytes);
  }

  reset(): void {
    this.rings.fill(null);
    this.countRx();
    this.txWaiting.fill(false);
    // Senders waiting for RX space (the TAP poller, a paired guest's TX) are woken, not forgotten: with
    // no RX ring now they get 'dropped' and go on; forgotten, they would wait for a kick that never
    // comes and stay stopped for every later guest of this backend. After this turn: reset runs
    // inside a session's close.
    if (this.spaceWaiters.length > 0) setImmediate(() => this.wakeSpaceWaiters());
  }

  sendRarp(mac: Uint8Array): void {
    this.uplink?.deliver(rarpFrame(mac), new NetHdr());
  }

  // ---- guest TX -> uplink --------------------------------------------------------------------

  // Per-pass state read by txChain (one handler object for the device's life: no closure per kick).
  private txRing: ReadyQueue | null = null;
  private txBlocked = false;
  private txDone = 0;
  private readonly txChain = (chain: Chain): number | false => {
    const ring = this.txRing!;
    this.reader.reset(chain, ring.memory);
    const total = this.reader.remaining;
    if (this.txMalformed(total)) return 0;
    // The header is parsed in place when contiguous (it always is with DPDK and Linux drivers).
    // A legacy big-endian ring has a big-endian header (virtio v1.2 5.1.6.1, SET_VRING_ENDIAN).
    const sp = this.span;
    const be = ring.bigEndian === true;
    let hdr: NetHdr;
    if (!this.hostOffloads) {
      // 5.1.6.2.1: flags zero, gso_type NONE; the rest has no meaning without them.
      hdr = PLAIN_HDR;
      this.reader.skip(this.hdrLen);
    } else if (this.reader.current(sp) >= this.hdrLen) {
      hdr = this.txHdr.read(sp.bytes, sp.offset, be);
      this.reader.skip(this.hdrLen);
    } else {
      this.reader.read(this.hdrBytes, 0, this.hdrLen);
      hdr = this.txHdr.read(this.hdrBytes, 0, be);
    }
    if (this.txBadHeader(hdr)) return 0;
    const byteLen = total - this.hdrLen;
    // Tracing: snapshot the frame's first bytes before delivery consumes the reader.
    if (this.ringTrace !== null) this.traceSnap(null, byteLen);
    const uplink = this.uplink;
    let out: Delivery;
    if (uplink === null) out = 'dropped';
    // Another guest (pair port): its device copies from this chain straight into its RX buffers.
    else if (uplink.deliverChain !== undefined) out = uplink.deliverChain(this.reader, hdr, byteLen);
    else {
      // Header and frame land in separate buffers, so the frame starts at 0 and no view is made per frame.
      this.reader.read(this.txBuf, 0, byteLen);
      out = uplink.deliver(this.txBuf, hdr, byteLen);
    }
    const used = this.txSent(out, byteLen);
    if (used !== false && this.ringTrace !== null) this.traceChain(ring.index, 'tx', chain, total, byteLen);
    return used;
  };

  /**
   * The end of one TX buffer, chain or direct: 'busy' gives it back (false; TX resumes when the
   * uplink has room), anything else completes it with used length 0 (TX buffers are read-only,
   * virtio v1.2 5.1.6.2) and is counted.
   */
  private txSent(out: Delivery, byteLen: number): number | false {
    if (out === 'busy') {
      this.txBlocked = true;
      return false;
    }
    if (out === 'ok') {
      this.stats.txFrames++;
      this.stats.txBytes += byteLen;
    } else this.stats.txDropped++;
    this.txDone++;
    return 0;
  }

  /**
   * A TX header whose gso_type this device does not know (tunnel or UDP_L4 types, UFO which is never
   * offered) or the driver did not negotiate (TCPV4 without HOST_TSO4, ECN without HOST_ECN: virtio
   * v1.2 5.1.6.2 "The driver MUST NOT set gso_type ... unless"): completed unsent and counted, never
   * segmented as something it is not.
   */
  private txBadHeader(hdr: NetHdr): boolean {
    const gso = hdr.gsoType;
    if (gso === GSO_NONE) return false;
    const base = gso & ~GSO_ECN;
    const known = base === GSO_TCPV4 ? this.hostTso4 : base === GSO_TCPV6 ? this.hostTso6 : false;
    if (known && ((gso & GSO_ECN) === 0 || this.hostEcn)) return false;
    this.stats.txDropped++;
    this.stats.txBadGso++;
    return true;
  }

  /** A TX buffer too long to be a frame, or shorter than the header: completed unsent (never stalls the ring). */
  private txMalformed(total: number): boolean {
    if (total <= MAX_FRAME && total >= this.hdrLen) return false;
    this.stats.txDropped++;
    return true;
  }

  /**
   * The TX fast path (drain's direct handler): a one-descriptor buffer, header and frame contiguous
   * in guest memory (DPDK virtio-user and Linux put the header in front of the frame). Same rules as
   * txChain; used only with little-endian rings (popDirect never answers for big-endian ones), no
   * ring tracing, and an uplink that takes a span (processTx).
   */
  private readonly txDirect = (b: DirectBuffer): number | false => this.txSpan(b.bytes, b.offset, b.byteLen);

  /**
   * txDirect for a burst of such buffers (drain's burst handler): completed from the front, in
   * order. Without host offloads (no header to read or carry) runs of well-formed frames go to the
   * uplink's deliverBurst; whatever it does not place, and malformed frames, go one by one.
   */
  private readonly txBurstFn = (b: DirectBurst): number => {
    const n = b.count;
    const bytes = b.bytes;
    const up = this.uplink!;
    const hl = this.hdrLen;
    const fast = !this.hostOffloads && up.deliverBurst !== undefined;
    const lens = b.byteLen;
    const used = b.usedLen;
    let k = 0;
    while (k < n) {
      if (fast) {
        let e = k;
        while (e < n && lens[e]! <= MAX_FRAME && lens[e]! >= hl) e++;
        if (e > k) {
          const got = up.deliverBurst!(b, k, e - k, hl);
          if (got > 0) {
            let sent = 0;
            for (let j = k; j < k + got; j++) {
              sent += lens[j]! - hl;
              used[j] = 0;
            }
            this.stats.txFrames += got;
            this.stats.txBytes += sent;
            this.txDone += got;
            k += got;
            if (k === n) break;
          }
        }
      }
      if (this.txSpan(bytes, b.offset[k]!, lens[k]!) === false) return k;
      used[k] = 0;
      k++;
    }
    return n;
  };

  private txSpan(bytes: Uint8Array, offset: number, total: number): number | false {
    if (this.txMalformed(total)) return 0;
    const hl = this.hdrLen;
    const byteLen = total - hl;
    // Without host offloads the header is not read (5.1.6.2.1; one cache line less per frame: D40),
    // so the receiver gets no raw header bytes to copy along either.
    const read = this.hostOffloads;
    const hdr = read ? this.txHdr.read(bytes, offset, false) : PLAIN_HDR;
    if (this.txBadHeader(hdr)) return 0;
    return this.txSent(this.uplink!.deliverSpan!(bytes, offset + hl, byteLen, hdr, read ? hl : 0), byteLen);
  }

  /**
   * processTx's drain plan: built once (drain allocates nothing), its budget, poll and fast-path
   * handlers set before each call (they depend on the ring and the uplink).
   */
  private readonly txPlan: DrainPlan = createDrainPlan(this.txChain, TX_BURST, {
    chain: this.chain,
    directBuf: this.txBuf1,
    burstBuf: this.txBurst,
  });

  /**
   * TX of ring `index`. Reached from kicks, timers, the busy poller and the uplink's onSpace (which
   * another session's ring may run): an exception here, a bug a guest found, breaks this ring only,
   * whoever called.
   */
  private processTx(index: number): void {
    const ring = this.rings[index];
    if (!ring) return;
    try {
      this.drainTx(index, ring);
    } catch (e) {
      this.txRing = null;
      log('%s: tx ring %d: %O', this.label, index, e);
      ring.fail(e instanceof Error ? e : new Error(String(e)));
    }
  }

  private drainTx(index: number, ring: ReadyQueue): void {
    const q = ring.queue;
    const uplink = this.uplink;
    this.txRing = ring;
    this.txBlocked = false;
    this.txDone = 0;
    let processed = 0;
    let more = false;
    // With an inflight journal (INFLIGHT_SHMFD) each chain is published as used right after its frame
    // left: a chain that was sent but not yet published would be resubmitted, i.e. sent twice, by a
    // backend restarted after a crash (spec-notes/decisions.md D26). Without one, bursts are cheaper.
    const burst = q.inflight !== null ? 1 : TX_BURST;
    // Busy polling: a ring that runs empty keeps notifications disabled and is handed to the poller.
    const poll = this.poller !== null;
    // One-descriptor buffers skip the chain walk when the uplink takes a span and nothing records chains.
    const direct = uplink !== null && uplink.deliverSpan !== undefined && this.ringTrace === null ? this.txDirect : null;
    // Bursts of TX_BURST: each ends with our used entries published (drain flushes) and the
    // receiver's burst published (endBurst), up to TX_BUDGET chains per turn of the event loop.
    const plan = this.txPlan;
    do {
      uplink?.beginBurst?.();
      let res;
      try {
        plan.budget = burst;
        plan.poll = poll;
        plan.onDirect = direct;
        plan.onBurst = direct !== null ? this.txBurstFn : null;
        res = q.drain(plan);
      } finally {
        uplink?.endBurst?.();
      }
      if (res.notify) ring.notify();
      processed += res.processed;
      more = res.more;
    } while (more && !this.txBlocked && processed < TX_BUDGET && this.rings[index] === ring);
    this.txRing = null;
    if (q.broken) return ring.fail(q.broken);
    if (this.txBlocked && uplink) {
      // drain re-enabled notifications (stopped); the uplink calls back when it has room.
      this.txWaiting[index] = true;
      uplink.onSpace(this.resumeWhenSpace(index));
    } else if (more) {
      if (!this.txScheduled[index]) {
        // More is pending: continue after other events had their turn.
        this.txScheduled[index] = true;
        setImmediate(this.continueTx(index));
      }
    } else if (poll && this.rings[index] === ring) this.poller!.watch(this, index);
    if (this.txDone && log.enabled) log('%s: tx ring %d: %d frames', this.label, index, this.txDone);
  }

  // The callbacks live in their own methods: a closure in processTx would make V8 allocate a context
  // for `index` on every call of it (once per burst), closure made or not.
  private resumeWhenSpace(index: number): () => void {
    return () => {
      this.txWaiting[index] = false;
      this.processTx(index);
    };
  }
  private continueTx(index: number): () => void {
    return () => {
      this.txScheduled[index] = false;
      this.processTx(index);
    };
  }

  // ---- busy polling (PolledRing, called by the shared BusyPoller) ----------------------------

  pollValid(index: number): boolean {
    const r = this.rings[index];
    return r !== null && r !== undefined && r.queue.broken === null && !this.txWaiting[index];
  }
  pollAvailable(index: number): boolean {
    return this.rings[index]!.queue.hasAvailable();
  }
  pollProcess(index: number): void {
    this.processTx(index);
  }
  pollStop(index: number): boolean {
    const r = this.rings[index];
    return r !== null && r !== undefined && r.queue.enableNotification();
  }

  // ---- uplink -> guest RX --------------------------------------------------------------------

  onSpace(cb: () => void): void {
    this.spaceWaiters.push(cb);
  }

  private wakeSpaceWaiters(): void {
    if (this.spaceWaiters.length === 0) return;
    const w = this.spaceWaiters;
    this.spaceWaiters = [];
    // Each waiter is another sender (a port, a paired device): its failure is its own, not this ring's.
    for (const cb of w) {
      try {
        cb();
      } catch (e) {
        log('%s: a sender waiting for RX space failed: %O', this.label, e);
      }
    }
  }

  /** RX rings ready, and the first of them (pickRx needs no scan per frame). */
  private rxCount = 0;
  private firstRx: ReadyQueue | null = null;
  private countRx(): void {
    this.rxCount = 0;
    this.firstRx = null;
    for (let i = 0; i < this.maxRings; i += 2) {
      const r = this.rings[i];
      if (r) {
        if (this.firstRx === null) this.firstRx = r;
        this.rxCount++;
      }
    }
  }

  /**
   * Picks the RX ring for a frame: one flow stays on one ring (hash of the MAC/IP header bytes).
   * `frame` null: the frame is in `this.src` (a chain), whose first bytes are peeked for the hash.
   */
  private pickRx(frame: Uint8Array | null, byteLen: number, off = 0): ReadyQueue | null {
    const count = this.rxCount;
    const first = this.firstRx;
    if (count <= 1) return first;
    let h = 0;
    let end = Math.min(byteLen, HASH_BYTES);
    if (frame === null) {
      frame = this.hashBytes;
      end = this.src!.peek(frame, 0, end);
      off = 0;
    }
    for (let i = 0; i < end; i++) h = (h * 31 + frame[off + i]!) | 0;
    let k = (h >>> 0) % count;
    for (let i = 0; i < this.maxRings; i += 2) {
      const r = this.rings[i];
      if (r && k-- === 0) return r;
    }
    return first;
  }

  /**
   * A frame that is the next `byteLen` readable bytes of another guest's TX chain (pair port): plain
   * frames are copied from that chain straight into this guest's RX buffers (one copy). Frames that
   * need offload work in software are gathered into a buffer first and take the deliver() path.
   */
  deliverChain(src: ChainReader, hdr: NetHdr, byteLen: number): Delivery {
    const h = this.rxHeader(hdr);
    this.settleRx();
    if (!h.plain) {
      const buf = this.gatherBuf ?? (this.gatherBuf = new Uint8Array(MAX_FRAME));
      return this.deliverSlow(buf, h, src.read(buf, 0, byteLen));
    }
    this.src = src;
    try {
      return this.deliverOne(null, byteLen, h);
    } finally {
      this.src = null;
    }
  }

  /**
   * A frame that is bytes[off, off + byteLen) (another guest's one-descriptor TX buffer, pair port).
   * Fast path: a plain frame into one RX buffer popped in place (popDirect) that holds header and
   * frame: header written, frame copied, used entry pushed; the write reported to the dirty log
   * after the bytes landed (D19). Anything else (offload work, tracing, an RX chain, a buffer too
   * small, an empty or broken ring) takes the general path with the frame gathered first.
   */
  deliverSpan(bytes: Uint8Array, off: number, byteLen: number, hdr: NetHdr, rawHdrBytes = 0): Delivery {
    const h = this.rxHeader(hdr);
    if (h.plain && this.ringTrace === null) {
      const r = this.rxDirect(bytes, off, byteLen, h, rawHdrBytes);
      if (r !== null) return r;
    }
    const buf = this.gatherBuf ?? (this.gatherBuf = new Uint8Array(MAX_FRAME));
    copyBytes(buf, 0, bytes, off, byteLen);
    return this.deliverSlow(buf, h, byteLen);
  }

  /**
   * The RX fast path: a plain frame bytes[off, off + byteLen) into one RX buffer popped in place
   * (popDirect) that holds header and frame: header written (or, when `rawHdrBytes` equals our header
   * size, the sender's header bytes in front of the frame copied along and patched), frame copied,
   * the write reported to the dirty log after the bytes landed (D19), used element pushed. Null when
   * it does not apply (no such buffer: an RX chain, too small, none, a broken or big-endian ring);
   * the general path then decides. `h` is the header as this guest must see it.
   */
  private rxDirect(bytes: Uint8Array, off: number, byteLen: number, h: NetHdr, rawHdrBytes: number): Delivery | null {
    const ring = this.pickRx(bytes, byteLen, off);
    if (ring === null) {
      this.stats.rxDroppedNoQueue++;
      return 'dropped';
    }
    const q = ring.queue;
    const hl = this.hdrLen;
    const need = hl + byteLen;
    let dst: Uint8Array;
    let o: number;
    let k = -1;
    if (this.burstDepth > 0) {
      const res = this.rxRes;
      k = this.nextRxBuffer(ring);
      if (k < 0) return null;
      // Too small for the frame alone: given back with the rest; the general path gathers or drops.
      if (res.byteLen[k]! < need) {
        this.settleRx();
        return null;
      }
      dst = res.bytes;
      o = res.offset[k]!;
    } else {
      const b = this.rxBuf1;
      if (q.popDirect(b) !== DIRECT_OK) return null;
      if (b.byteLen < need) {
        q.unpop(1); // too small for the frame alone: the general path gathers buffers or drops
        return null;
      }
      dst = b.bytes;
      o = b.offset;
    }
    if (bytes !== this.srcKey) this.srcView(bytes);
    if (dst !== this.dstKey) this.dstView(dst);
    if (rawHdrBytes === hl) {
      // The sender's header goes along in the same copy; then the fields that differ: flags
      // (DATA_VALID cleared for a guest without GUEST_CSUM) and num_buffers (LE, 5.1.6).
      copyBytesW(dst, this.dstWords, o, bytes, this.srcWords, off - hl, need, this.dstBase, this.srcBase);
      dst[o] = h.flags;
      if (hl === NET_HDR_MRG_BYTES) {
        dst[o + 10] = 1;
        dst[o + 11] = 0;
      }
    } else {
      this.putRxHdr(h, dst, o);
      copyBytesW(dst, this.dstWords, o + hl, bytes, this.srcWords, off, byteLen, this.dstBase, this.srcBase);
    }
    const mem = q.memory;
    const hook = mem.onWrite;
    this.stats.rxFrames++;
    this.stats.rxBytes += byteLen;
    if (k >= 0) {
      this.filledRxBuffer(k, need, mem);
      this.rxDirty[ring.index] = ring;
      return 'ok';
    }
    const b = this.rxBuf1;
    if (hook !== undefined) hook.call(mem, b.addr, need);
    q.pushUsed(b.id, need);
    if (this.burstDepth > 0) this.rxDirty[ring.index] = ring;
    else if (q.flushUsed()) ring.notify();
    return 'ok';
  }

  /**
   * FrameSink.deliverBurst: plain frames from a sender without offloads, each into the next buffer
   * of the RX reservoir (one ring: with several, each frame picks its ring by hash and takes
   * deliverSpan). Stops at the first frame the reservoir cannot take (no buffer, too small): the
   * sender hands that one to deliverSpan, whose general path decides.
   */
  deliverBurst(src: DirectBurst, from: number, n: number, hdrLen: number): number {
    if (this.burstDepth === 0 || this.ringTrace !== null || this.rxCount !== 1) return 0;
    const ring = this.firstRx!;
    const q = ring.queue;
    const res = this.rxRes;
    const hl = this.hdrLen;
    const bytes = src.bytes;
    if (bytes !== this.srcKey) this.srcView(bytes);
    const mem = q.memory;
    const offs = src.offset;
    const lens = src.byteLen;
    let done = 0;
    let sent = 0;
    for (let j = from; j < from + n; j++) {
      const k = this.nextRxBuffer(ring);
      if (k < 0) break;
      const byteLen = lens[j]! - hdrLen;
      const need = hl + byteLen;
      if (res.byteLen[k]! < need) break;
      const dst = res.bytes;
      if (dst !== this.dstKey) this.dstView(dst);
      const o = res.offset[k]!;
      this.putRxHdr(PLAIN_HDR, dst, o);
      copyBytesW(dst, this.dstWords, o + hl, bytes, this.srcWords, offs[j]! + hdrLen, byteLen, this.dstBase, this.srcBase);
      this.filledRxBuffer(k, need, mem);
      sent += byteLen;
      done++;
    }
    if (done > 0) {
      this.stats.rxFrames += done;
      this.stats.rxBytes += sent;
      this.rxDirty[ring.index] = ring;
    }
    return done;
  }

  /**
   * The next RX buffer of the reservoir for `ring` (its index in rxRes), refilled from the ring
   * (popBurst) when empty or another ring's; -1 when the ring has no such buffer (the general path
   * decides). Only inside a burst.
   */
  private nextRxBuffer(ring: ReadyQueue): number {
    if (this.rxResRing !== ring || this.rxResNext === this.rxRes.count) {
      this.settleRx();
      if (ring.queue.popBurst(this.rxRes, BURST_MAX) === 0) return -1;
      this.rxResRing = ring;
    }
    return this.rxResNext;
  }

  /** Reservoir buffer k holds `need` bytes: reported to the dirty log (after the copy, D19), used length set. */
  private filledRxBuffer(k: number, need: number, mem: GuestMemory): void {
    const res = this.rxRes;
    const hook = mem.onWrite;
    if (hook !== undefined) hook.call(mem, res.addrBase + res.offset[k]!, need);
    res.usedLen[k] = need;
    this.rxResNext = k + 1;
  }

  /**
   * A one-buffer RX header (num_buffers 1) at dst[o] (dstView is dst's): word stores where they apply,
   * since the header line is usually one the driver's CPU wrote last, and each store waits in the store
   * buffer until we own it.
   */
  private putRxHdr(h: NetHdr, dst: Uint8Array, o: number): void {
    const hl = this.hdrLen;
    const dw = this.dstWords;
    if (hl !== NET_HDR_MRG_BYTES || dw === null || !h.writeWords(dw, this.dstBase + o, 1)) h.write(dst, o, hl, 1, false);
  }

  // The fast-path copy's views of a region, kept with the region view they belong to. byteOffset is
  // kept too: optimized code reads it through a generic property load (copyBytesW).
  private srcView(bytes: Uint8Array): void {
    this.srcKey = bytes;
    this.srcWords = wordsOf(bytes);
    this.srcBase = bytes.byteOffset;
  }
  private dstView(bytes: Uint8Array): void {
    this.dstKey = bytes;
    this.dstWords = wordsOf(bytes);
    this.dstBase = bytes.byteOffset;
  }

  /**
   * Ends the RX reservoir: the buffers not filled go back to the ring (they are the ring's last
   * popped), the filled ones are pushed as used, in ring order. A ring that stopped meanwhile is
   * left alone (its queue is gone).
   */
  private settleRx(): void {
    const ring = this.rxResRing;
    if (ring === null) return;
    const res = this.rxRes;
    const used = this.rxResNext;
    this.rxResRing = null;
    this.rxResNext = 0;
    if (this.rings[ring.index] !== ring) return;
    const q = ring.queue;
    if (used < res.count) q.unpop(res.count - used);
    q.pushUsedBurst(res, used);
  }

  /**
   * A frame for the guest. Offload work the guest did not negotiate is done here in software
   * (virtio v1.2 5.1.6.4: the device MUST NOT set NEEDS_CSUM / a gso_type the driver did not accept).
   */
  deliver(frame: Uint8Array, hdr: NetHdr, byteLen = frame.length): Delivery {
    const h = this.rxHeader(hdr);
    if (this.ringTrace === null && h.plain) {
      const r = this.rxDirect(frame, 0, byteLen, h, 0);
      if (r !== null) return r;
    }
    return this.deliverSlow(frame, h, byteLen);
  }

  /**
   * The header as this guest must see it (rxHdr, valid until the next frame): the sender's, with
   * DATA_VALID cleared for a guest without GUEST_CSUM. Every RX entry point makes it once.
   */
  private rxHeader(hdr: NetHdr): NetHdr {
    if (hdr === PLAIN_HDR) return hdr;
    const h = this.rxHdr.copyFrom(hdr);
    if (!this.guestCsum) h.flags &= ~NET_HDR_F_DATA_VALID;
    return h;
  }

  /**
   * deliver() without the fast path: one RX chain or several, offload work in software. `h` is
   * the receive header (rxHeader).
   */
  private deliverSlow(frame: Uint8Array, h: NetHdr, byteLen: number): Delivery {
    this.settleRx();
    if (h.plain) return this.deliverOne(frame, byteLen, h);
    const gso = h.gsoType & ~GSO_ECN;
    if (gso !== GSO_NONE && !this.guestTakesGso(h.gsoType)) {
      // Only TCP is segmented in software; UFO is never offered, so never produced, and other types
      // are not guessed at.
      if (gso !== GSO_TCPV4 && gso !== GSO_TCPV6) return this.countBadOffload();
      return this.deliverSegmented(frame, byteLen, h);
    }
    if (h.flags & NET_HDR_F_NEEDS_CSUM && !this.guestCsum) {
      const copy = this.scratch;
      copy.set(frame.subarray(0, byteLen));
      if (!completeChecksum(copy, byteLen, h.csumStart, h.csumOffset)) return this.countBadOffload();
      this.stats.rxSwChecksums++;
      h.clear();
      return this.deliverOne(copy, byteLen, h);
    }
    return this.deliverOne(frame, byteLen, h);
  }

  private guestTakesGso(gsoType: number): boolean {
    if (gsoType & GSO_ECN && !this.guestEcn) return false;
    switch (gsoType & ~GSO_ECN) {
      case GSO_TCPV4:
        return this.guestTso4;
      case GSO_TCPV6:
        return this.guestTso6;
      case GSO_UDP:
        return this.guestUfo;
      default:
        return false;
    }
  }

  private countBadOffload(): Delivery {
    this.stats.rxDroppedTooBig++;
    return 'dropped';
  }

  /**
   * TCP segmentation in software. Once the first segment is in the guest's ring the frame is
   * committed: a later 'busy' loses the remaining segments (counted; TCP retransmits) rather than
   * deliver the first ones twice on retry.
   */
  private deliverSegmented(frame: Uint8Array, byteLen: number, h: NetHdr): Delivery {
    const seg = this.segHdr;
    let first: Delivery = 'ok';
    let delivered = 0;
    const copy = this.scratch;
    copy.set(frame.subarray(0, byteLen));
    const n = segmentTcp(copy, byteLen, h.gsoSize, this.segScratch, (s, len) => {
      const r = this.deliverOne(s, len, seg.clear());
      if (delivered === 0 && r !== 'ok') {
        first = r;
        return false;
      }
      if (r === 'ok') delivered++;
      else this.stats.rxDroppedSegments++;
      return true;
    });
    if (n < 0) return this.countBadOffload();
    if (delivered > 0) this.stats.rxSwSegmented++;
    return delivered > 0 ? 'ok' : first;
  }

  /** `frame` null: the frame is the next byteLen readable bytes of `this.src`. */
  private deliverOne(frame: Uint8Array | null, byteLen: number, hdr: NetHdr): Delivery {
    const ring = this.pickRx(frame, byteLen);
    if (!ring) {
      this.stats.rxDroppedNoQueue++;
      return 'dropped';
    }
    const need = this.hdrLen + byteLen;
    if (this.ringTrace !== null) this.traceSnap(frame, byteLen);
    const res = this.mergeable
      ? this.rxMergeable(ring, frame, byteLen, need, hdr)
      : this.rxSingle(ring, frame, byteLen, need, hdr);
    if (ring.queue.broken) {
      ring.fail(ring.queue.broken);
      return 'dropped';
    }
    if (res === 'ok') {
      if (this.ringTrace !== null) this.traceChain(ring.index, 'rx', this.mergeable ? this.mrgChains[0]! : this.chain, need, byteLen);
      this.stats.rxFrames++;
      this.stats.rxBytes += byteLen;
      if (this.burstDepth > 0) this.rxDirty[ring.index] = ring;
      else if (ring.queue.flushUsed()) ring.notify();
    }
    return res;
  }

  beginBurst(): void {
    this.burstDepth++;
  }

  /** Publishes the RX used entries of the burst, one index store and at most one interrupt per ring. */
  endBurst(): void {
    if (--this.burstDepth > 0) return;
    this.settleRx();
    for (let i = 0; i < this.maxRings; i += 2) {
      const ring = this.rxDirty[i];
      if (!ring) continue;
      this.rxDirty[i] = null;
      // The ring may have stopped meanwhile (then its entries were flushed by the session).
      if (this.rings[i] === ring && ring.queue.flushUsed()) ring.notify();
    }
  }

  /** Writes frame bytes [off, off + take) at the writer's position, from `frame` or else from `this.src`. */
  private putFrame(frame: Uint8Array | null, off: number, take: number): void {
    if (frame === null) this.writer.copyFrom(this.src!, take);
    else this.writer.write(frame, off, take);
  }

  /**
   * Writes the header for `numBuffers` buffers at the writer's position (in place when contiguous),
   * big-endian on a legacy big-endian ring (virtio v1.2 5.1.6.1, SET_VRING_ENDIAN).
   */
  private putHdr(hdr: NetHdr, numBuffers: number, be: boolean): void {
    const w = this.writer;
    const sp = this.span;
    const n = this.hdrLen;
    if (w.current(sp) >= n) {
      hdr.write(sp.bytes, sp.offset, n, numBuffers, be);
      w.commit(n);
    } else {
      hdr.write(this.hdrBytes, 0, n, numBuffers, be);
      w.write(this.hdrBytes, 0, n);
    }
  }

  private rxSingle(ring: ReadyQueue, frame: Uint8Array | null, byteLen: number, need: number, hdr: NetHdr): Delivery {
    const q = ring.queue;
    const c = this.chain;
    if (!this.popRx(ring, c)) return 'busy';
    this.writer.reset(c, ring.memory);
    if (this.writer.remaining < need) {
      // virtio v1.2 5.1.6.3.1: without mergeable buffers the driver must post buffers big enough;
      // this one is not, so the frame is dropped and the buffer handed back untouched.
      q.unpop(1);
      this.stats.rxDroppedTooBig++;
      return 'dropped';
    }
    this.putHdr(hdr, 1, ring.bigEndian === true);
    this.putFrame(frame, 0, byteLen);
    q.pushUsed(c.head, this.writer.written);
    return 'ok';
  }

  private rxMergeable(ring: ReadyQueue, frame: Uint8Array | null, byteLen: number, need: number, hdr: NetHdr): Delivery {
    const q = ring.queue;
    const w = this.writer;
    // Fast path: the first buffer holds header and frame (the common case; num_buffers = 1).
    const c0 = this.mrgChains[0]!;
    if (!this.popRx(ring, c0)) return 'busy';
    w.reset(c0, ring.memory);
    if (w.remaining >= need) {
      this.putHdr(hdr, 1, ring.bigEndian === true);
      this.putFrame(frame, 0, byteLen);
      q.pushUsed(c0.head, w.written);
      return 'ok';
    }
    let n = 1;
    let room = w.remaining;
    while (room < need) {
      if (n === MAX_MRG_BUFFERS) {
        q.unpop(n);
        this.stats.rxDroppedTooBig++;
        return 'dropped';
      }
      const c = this.mrgChains[n]!;
      if (!this.popRx(ring, c)) {
        if (n) q.unpop(n);
        return 'busy';
      }
      this.writer.reset(c, ring.memory);
      room += this.writer.remaining;
      n++;
    }
    // Fill the buffers in order; num_buffers in the first header says how many were used.
    let off = 0;
    for (let i = 0; i < n; i++) {
      const c = this.mrgChains[i]!;
      this.writer.reset(c, ring.memory);
      if (i === 0) this.putHdr(hdr, n, ring.bigEndian === true);
      const take = Math.min(this.writer.remaining, byteLen - off);
      if (take > 0) this.putFrame(frame, off, take);
      off += take;
      this.rxHeads[i] = c.head;
      this.rxLens[i] = this.writer.written;
    }
    for (let i = 0; i < n; i++) q.pushUsed(this.rxHeads[i]!, this.rxLens[i]!);
    return 'ok';
  }

  /** Copies the frame's first snaplen bytes (from `frame`, or peeked from the chain being read). */
  private traceSnap(frame: Uint8Array | null, byteLen: number): void {
    const snap = Math.min(this.ringTrace!.snaplen, byteLen);
    const buf = this.traceBuf !== null && this.traceBuf.length >= snap ? this.traceBuf : (this.traceBuf = new Uint8Array(Math.max(snap, 256)));
    if (frame !== null) {
      buf.set(frame.subarray(0, snap));
      this.traceLen = snap;
    } else {
      this.traceLen = (this.src ?? this.reader).peek(buf, 0, snap);
    }
  }

  private traceChain(queue: number, dir: 'tx' | 'rx', c: Chain, len: number, frameLen: number): void {
    this.ringTrace!.record(
      chainRecord(queue, { dir, head: c.head, descs: c.descCount, len, frameLen, frame: this.traceBuf!.subarray(0, this.traceLen) }),
    );
  }

  /** Pops one RX chain; false when the ring is empty (after re-enabling notifications) or broken. */
  private popRx(ring: ReadyQueue, c: Chain): boolean {
    const q = ring.queue;
    if (q.pop(c)) return true;
    // Empty: ask the driver to kick us when it posts buffers, then look once more (the race of
    // virtio v1.2 2.7.10: buffers added between our check and enabling notifications).
    if (q.enableNotification()) {
      q.disableNotification();
      return q.pop(c);
    }
    return false;
  }
}
