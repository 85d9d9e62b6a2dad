/**
 * The session without sockets or the addon: requests are encoded with the protocol codec and handed to
 * `Session.handleFrame` with fds of the fake native binding (native/fake.ts), dup'ed as SCM_RIGHTS would
 * (the test keeps its own); every reply the session sends is decoded with the codec. A recording device
 * shows what the session tells a device. The sequences mirror test/integration/loopback.test.ts, which
 * runs them over a real socket with the real addon.
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { createFakeNative, FAKE_UFFD_MEMBERS, type FakeNative } from '../../native/fake.ts';
import type { Fd, NativeBinding } from '../../native/types.ts';
import { Session, SESSION_PROTOCOL_FEATURES, type HandlerTable, type SessionNative } from '../../backend/core/session.ts';
import { REQUEST_HANDLERS, supportedRequests } from '../../backend/core/handlers/index.ts';
import type { Device, ReadyQueue } from '../../backend/core/device.ts';
import {
  FRONTEND_MESSAGES,
  FrontendReq as R,
  HEADER_SIZE,
  ProtoF,
  TransferDirection,
  VHOST_USER_NEED_REPLY_MASK,
  VHOST_USER_REPLY_MASK,
  VHOST_USER_VERSION,
  VirtioF,
  bit,
  decode,
  encode,
  encodeRaw,
  has,
  readHeader,
  requestLayout,
  type MessageDef,
  type VhostMessage,
} from '../../protocol/index.ts';
import { Chain, FlatMemory, SplitDriver, readBytes } from '../../virtqueue/index.ts';
import { sample } from '../helpers/samples.ts';

// ---------------------------------------------------------------------------------------------------
// A device that records what the session tells it.

type DeviceCall =
  | { op: 'setFeatures'; features: bigint }
  | { op: 'ringReady'; index: number }
  | { op: 'ringStopped'; index: number }
  | { op: 'kick'; index: number }
  | { op: 'reset' }
  | { op: 'loadState'; bytes: Uint8Array };

interface RecordingDeviceOptions {
  /** Internal state for SET_DEVICE_STATE_FD (the session offers DEVICE_STATE only with it). */
  state?: Uint8Array;
  /** Make one method throw (a device bug). */
  throwIn?: 'setFeatures' | 'ringReady' | 'ringStopped';
}

class RecordingDevice implements Device {
  readonly kind = 'recording';
  readonly features = bit(VirtioF.VERSION_1) | bit(VirtioF.RING_EVENT_IDX) | bit(VirtioF.RING_INDIRECT_DESC);
  readonly maxRings = 2;
  readonly queueNum = 1;
  readonly calls: DeviceCall[] = [];
  /** The rings handed over by ringReady and not stopped since. */
  readonly ready = new Map<number, ReadyQueue>();
  saveState?: () => Uint8Array;
  loadState?: (bytes: Uint8Array) => void;

  constructor(private readonly opts: RecordingDeviceOptions = {}) {
    if (opts.state) {
      const state = opts.state;
      this.saveState = () => state;
      this.loadState = (bytes) => void this.calls.push({ op: 'loadState', bytes: bytes.slice() });
    }
  }
  setFeatures(features: bigint): void {
    this.calls.push({ op: 'setFeatures', features });
    if (this.opts.throwIn === 'setFeatures') throw new TypeError('device bug in setFeatures');
  }
  ringReady(ring: ReadyQueue): void {
    this.calls.push({ op: 'ringReady', index: ring.index });
    if (this.opts.throwIn === 'ringReady') throw new TypeError('device bug in ringReady');
    this.ready.set(ring.index, ring);
  }
  ringStopped(index: number): void {
    this.calls.push({ op: 'ringStopped', index });
    this.ready.delete(index);
    if (this.opts.throwIn === 'ringStopped') throw new TypeError('device bug in ringStopped');
  }
  kick(index: number): void {
    this.calls.push({ op: 'kick', index });
  }
  reset(): void {
    this.calls.push({ op: 'reset' });
    this.ready.clear();
  }
  /** The ring indices of the calls of one kind, in order. */
  of(op: 'ringReady' | 'ringStopped' | 'kick'): number[] {
    return this.calls.flatMap((c) => (c.op === op ? [c.index] : []));
  }
  acked(): bigint[] {
    return this.calls.flatMap((c) => (c.op === 'setFeatures' ? [c.features] : []));
  }
}

// ---------------------------------------------------------------------------------------------------
// The rig: a session on the fake, frames in, decoded replies out.

interface Reply {
  request: number;
  flags: number;
  /** The header's size field (checked against the bytes). */
  size: number;
  body: Uint8Array;
  /** The frontend's copies of the fds sent with the reply (held by the test). */
  fds: Fd[];
  /** The reply as the codec decodes it; null when it does not decode (an empty error body). */
  msg: VhostMessage | null;
  error: string | null;
}

interface RigOptions {
  device?: RecordingDevice;
  handlers?: HandlerTable;
  /** The binding the session gets (default: the fake's whole binding). */
  native?: (fake: FakeNative) => SessionNative;
}

const MEM_BYTES = 1 << 20;
const UVA = 0x7f12_0000_0000;
const QSIZE = 64;

function rig(t: ExecutionContext, opts: RigOptions = {}) {
  const fake = createFakeNative();
  const sys: NativeBinding = fake.native;
  const device = opts.device ?? new RecordingDevice();
  /** Fds the test (the frontend) holds; the session's are the rest. */
  const held = new Set<Fd>();
  const own = (fd: Fd): Fd => (held.add(fd), fd);
  const replies: Reply[] = [];
  const session = new Session({
    device,
    handlers: opts.handlers ?? REQUEST_HANDLERS,
    native: opts.native?.(fake) ?? sys,
    label: 'unit',
    send(bytes, fds) {
      const h = readHeader(bytes);
      // The fds a session sends stay the session's; the frontend receives its own copies (SCM_RIGHTS).
      const frame = { request: h.request, flags: h.flags, payload: bytes.slice(HEADER_SIZE), fds: fds.map((fd) => own(sys.dup(fd))) };
      let msg: VhostMessage | null = null;
      let error: string | null = h.size === frame.payload.length ? null : `header size ${h.size}, ${frame.payload.length} bytes`;
      try {
        msg = decode('frontend', frame);
      } catch (e) {
        error = `${(e as { code?: string }).code}: ${(e as Error).message}`;
      }
      replies.push({ request: h.request, flags: h.flags, size: h.size, body: frame.payload, fds: frame.fds, msg, error });
    },
  });
  t.teardown(() => {
    session.close();
    for (const fd of held) if (fake.fdInfo(fd)) sys.close(fd);
  });

  /** Hands one frame to the session (its fds dup'ed, as sendmsg would) and returns the replies it caused. */
  function frame(bytes: Uint8Array, fds: readonly Fd[] = []): Reply[] {
    const h = readHeader(bytes);
    const before = replies.length;
    session.handleFrame({ request: h.request, flags: h.flags, payload: bytes.slice(HEADER_SIZE), fds: fds.map((fd) => sys.dup(fd)) });
    return replies.slice(before);
  }
  /** Encodes request `id` with the codec and sends it. */
  function request(id: number, payload?: unknown, o: { needReply?: boolean; fds?: Fd[]; unchecked?: boolean } = {}): Reply[] {
    const enc = encode('frontend', id, {
      payload: payload ?? null,
      needReply: o.needReply ?? false,
      fds: o.fds ?? [],
      ...(o.unchecked ? { unchecked: true } : {}),
    });
    return frame(enc.bytes, enc.fds);
  }
  /** The one reply of a request that must get exactly one. */
  function one(rs: Reply[]): Reply {
    if (rs.length !== 1) throw new Error(`expected exactly one reply, got ${rs.length}`);
    const r = rs[0]!;
    if ((r.flags & VHOST_USER_REPLY_MASK) === 0 || (r.flags & 3) !== VHOST_USER_VERSION) throw new Error(`reply flags 0x${r.flags.toString(16)}`);
    return r;
  }
  /** The u64 of the one reply (a REPLY_ACK or a u64 body). */
  function u64(rs: Reply[]): bigint {
    const r = one(rs);
    if (!r.msg || r.msg.layout !== 'u64') throw new Error(`not a u64 reply: ${r.error ?? r.msg?.layout}`);
    return (r.msg.payload as { value: bigint }).value;
  }
  /** QEMU's opening (loopback.test.ts negotiate): features, protocol features, owner. */
  function negotiate(proto = bit(ProtoF.MQ) | bit(ProtoF.REPLY_ACK)): bigint {
    const features = u64(request(R.GET_FEATURES));
    const offered = u64(request(R.GET_PROTOCOL_FEATURES));
    if (request(R.SET_PROTOCOL_FEATURES, proto & offered).length !== 0) throw new Error('SET_PROTOCOL_FEATURES answered unasked');
    request(R.SET_OWNER);
    return features;
  }
  const eventfd = (): Fd => own(sys.eventfd(0));
  const openFds = (): Fd[] => fake.openFds().map((f) => f.fd);
  const heldFds = (): Fd[] => [...held].filter((fd) => fake.fdInfo(fd) !== null).sort((a, b) => a - b);

  /**
   * Guest memory the test maps too (the frontend's view), a split ring on it, and the requests that
   * configure ring `index` (kick/call/err eventfds of the test). Enables it unless told not to.
   */
  function guestMemory() {
    const memfd = own(fake.memfd('guest', MEM_BYTES));
    const ab = sys.mmap(memfd, 0, MEM_BYTES, true);
    t.teardown(() => sys.munmap(ab));
    const region = { guestPhysAddr: 0n, memorySize: BigInt(MEM_BYTES), userspaceAddr: BigInt(UVA), mmapOffset: 0n };
    const mem = new FlatMemory(ab, 0);
    return { memfd, ab, mem, region, table: { nregions: 1, padding: 0, regions: [region] } };
  }
  function configureRing(mem: FlatMemory, index: number, o: { call?: boolean; enable?: boolean } = {}) {
    const drv = new SplitDriver(mem, { size: QSIZE, base: 0x10000 * (index + 1), heapAddr: 0x80000 + 0x10000 * index, heapByteLen: 0x10000 });
    const ring = { drv, kick: eventfd(), call: eventfd(), err: eventfd() };
    const ack = { needReply: true };
    const acks = [
      u64(request(R.SET_VRING_NUM, { index, num: QSIZE }, ack)),
      u64(request(R.SET_VRING_BASE, { index, num: 0 }, ack)),
      u64(request(R.SET_VRING_ADDR, {
        index,
        flags: 0,
        descUserAddr: BigInt(UVA + drv.descAddr),
        usedUserAddr: BigInt(UVA + drv.usedAddr),
        availUserAddr: BigInt(UVA + drv.availAddr),
        logGuestAddr: 0n,
      }, ack)),
      ...(o.call === false ? [] : [u64(request(R.SET_VRING_CALL, { index, noFd: false }, { ...ack, fds: [ring.call] }))]),
      u64(request(R.SET_VRING_ERR, { index, noFd: false }, { ...ack, fds: [ring.err] })),
      u64(request(R.SET_VRING_KICK, { index, noFd: false }, { ...ack, fds: [ring.kick] })),
      ...(o.enable === false ? [] : [u64(request(R.SET_VRING_ENABLE, { index, num: 1 }, ack))]),
    ];
    if (acks.some((a) => a !== 0n)) throw new Error(`ring ${index} set-up refused: ${acks.join(',')}`);
    return ring;
  }

  return { fake, sys, device, session, replies, held, own, frame, request, one, u64, negotiate, eventfd, openFds, heldFds, guestMemory, configureRing };
}

// ---------------------------------------------------------------------------------------------------
// Negotiation.

test('GET/SET_FEATURES and GET/SET_PROTOCOL_FEATURES round trip; acking a bit not offered is refused and changes nothing', (t) => {
  const r = rig(t);
  const dev = r.device;
  const offered = r.u64(r.request(R.GET_FEATURES));
  t.is(offered, dev.features | bit(VirtioF.PROTOCOL_FEATURES) | bit(VirtioF.LOG_ALL) | bit(VirtioF.ACCESS_PLATFORM));

  const proto = r.u64(r.request(R.GET_PROTOCOL_FEATURES));
  t.is(proto & ~SESSION_PROTOCOL_FEATURES, 0n, 'nothing the session does not implement');
  for (const f of [ProtoF.REPLY_ACK, ProtoF.MQ, ProtoF.LOG_SHMFD, ProtoF.INFLIGHT_SHMFD, ProtoF.BACKEND_REQ]) t.true(has(proto, f), `bit ${f}`);
  // What this device cannot back is withdrawn: no config space, no MTU, no state, no big-endian rings.
  for (const f of [ProtoF.CONFIG, ProtoF.NET_MTU, ProtoF.DEVICE_STATE, ProtoF.CROSS_ENDIAN]) t.false(has(proto, f), `bit ${f}`);

  // REPLY_ACK is not in force before SET_PROTOCOL_FEATURES acks it: no answer to this one.
  const acked = bit(ProtoF.REPLY_ACK) | bit(ProtoF.MQ);
  t.deepEqual(r.request(R.SET_PROTOCOL_FEATURES, acked), []);
  t.is(r.session.ackedProtocolFeatures, acked);

  const features = bit(VirtioF.VERSION_1) | bit(VirtioF.RING_EVENT_IDX) | bit(VirtioF.PROTOCOL_FEATURES) | bit(VirtioF.LOG_ALL);
  t.is(r.u64(r.request(R.SET_FEATURES, features, { needReply: true })), 0n);
  t.is(r.session.ackedFeatures, features);
  t.deepEqual(dev.acked(), [features & ~bit(VirtioF.LOG_ALL)], 'the device never sees LOG_ALL (a vhost feature)');

  // A bit not offered (NET_F_MQ: this device has no multiqueue): NACK, nothing changes.
  t.not(r.u64(r.request(R.SET_FEATURES, features | bit(VirtioF.NET_F_MQ), { needReply: true })), 0n);
  t.is(r.session.ackedFeatures, features);
  t.is(dev.acked().length, 1, 'the device was not told');
  t.not(r.u64(r.request(R.SET_PROTOCOL_FEATURES, acked | bit(ProtoF.CRYPTO_SESSION), { needReply: true })), 0n);
  t.is(r.session.ackedProtocolFeatures, acked);
  t.is(r.u64(r.request(R.GET_PROTOCOL_FEATURES)), proto, 'the offer is unchanged');
});

test('without REPLY_ACK negotiated NEED_REPLY is not answered; GET_QUEUE_NUM answers the device (D6)', (t) => {
  const r = rig(t);
  r.negotiate(bit(ProtoF.MQ));
  t.deepEqual(r.request(R.SET_VRING_NUM, { index: 0, num: 64 }, { needReply: true }), [], 'silence, not a stray ack');
  t.is(r.session.rings[0]!.num, 64);
  t.is(r.u64(r.request(R.GET_QUEUE_NUM)), 1n);
});

test('REPLY_ACK: a good request is acked with 0, a bad one NACKed, and the session goes on (D5)', (t) => {
  const r = rig(t);
  r.negotiate();
  t.is(r.u64(r.request(R.SET_VRING_NUM, { index: 0, num: 256 }, { needReply: true })), 0n);
  t.not(r.u64(r.request(R.SET_VRING_NUM, { index: 0, num: 100 }, { needReply: true })), 0n, 'not a power of two');
  t.not(r.u64(r.request(R.SET_VRING_NUM, { index: 9, num: 256 }, { needReply: true })), 0n, 'no ring 9');
  t.is(r.session.rings[0]!.num, 256, 'state kept from the good request');
  t.is(r.u64(r.request(R.GET_QUEUE_NUM)), 1n, 'still serving');
});

test('PAGEFAULT: offered by a binding with userfaultfd (the fake\'s throws: POSTCOPY_ADVISE is refused, nothing leaks); withdrawn for one without', (t) => {
  const withUffd = rig(t);
  t.true(has(withUffd.u64(withUffd.request(R.GET_PROTOCOL_FEATURES)), ProtoF.PAGEFAULT));
  withUffd.negotiate(bit(ProtoF.REPLY_ACK) | bit(ProtoF.PAGEFAULT));
  const before = withUffd.openFds();
  const advise = withUffd.one(withUffd.request(R.POSTCOPY_ADVISE));
  t.deepEqual([advise.size, advise.fds], [0, []], 'an empty reply without the uffd: the frontend sees the failure');
  t.deepEqual(withUffd.openFds(), before);

  const without = rig(t, { native: (fake) => fake.without(...FAKE_UFFD_MEMBERS) });
  const proto = without.u64(without.request(R.GET_PROTOCOL_FEATURES));
  t.false(has(proto, ProtoF.PAGEFAULT));
  without.negotiate(bit(ProtoF.REPLY_ACK));
  t.not(without.u64(without.request(R.SET_PROTOCOL_FEATURES, bit(ProtoF.REPLY_ACK) | bit(ProtoF.PAGEFAULT), { needReply: true })), 0n);
});

// ---------------------------------------------------------------------------------------------------
// Refusals: never silence where an answer is due, never a leaked fd.

test('every request this backend does not implement gets a clear error reply and its fds are closed; the session goes on', (t) => {
  const r = rig(t);
  r.negotiate();
  const before = r.openFds();
  const supported = new Set(supportedRequests());
  const unsupported = (Object.values(FRONTEND_MESSAGES) as MessageDef[]).filter((d) => !supported.has(d.id));
  t.true(unsupported.length >= 5, 'the non-net requests at least (D29)');
  for (const def of unsupported) {
    const payload = sample(requestLayout(def), def);
    const n = def.fds === 'none' ? 0 : def.fds === 'per-region' ? (payload as { nregions: number }).nregions : 1;
    const fds = Array.from({ length: n }, () => r.sys.eventfd(0));
    const rep = r.one(r.request(def.id, payload, { needReply: true, fds }));
    t.is(rep.request, def.id, def.name);
    if (rep.msg?.layout === 'u64') t.not((rep.msg.payload as { value: bigint }).value, 0n, `${def.name}: NACK`);
    else t.is(rep.size, 0, `${def.name}: empty reply body (${rep.error})`);
    for (const fd of fds) r.sys.close(fd);
  }
  t.deepEqual(r.openFds(), before, 'no fd kept by refused requests');

  // An id the protocol does not know: the header's NEED_REPLY still gets its NACK; the fd is closed.
  const fd = r.sys.eventfd(0);
  const unknown = r.one(r.frame(encodeRaw(99, VHOST_USER_VERSION | VHOST_USER_NEED_REPLY_MASK), [fd]));
  t.is(unknown.request, 99);
  t.not(new DataView(unknown.body.buffer, unknown.body.byteOffset).getBigUint64(0, true), 0n);
  r.sys.close(fd);
  t.deepEqual(r.openFds(), before);
  t.is(r.u64(r.request(R.GET_QUEUE_NUM)), 1n, 'still serving');
});

test('a frame the codec rejects gets the error reply its header asks for, and its fds are closed', (t) => {
  const r = rig(t);
  r.negotiate();
  const before = r.openFds();
  const kick = r.eventfd();
  const withHeld = [...before, kick].sort((a, b) => a - b);
  const needReply = VHOST_USER_VERSION | VHOST_USER_NEED_REPLY_MASK;

  // Bad size (a vring_fd is 8 bytes): NACK, and the kick fd that came with it is closed.
  t.not(r.u64(r.frame(encodeRaw(R.SET_VRING_KICK, needReply, new Uint8Array(4)), [kick])), 0n);
  t.deepEqual(r.openFds(), withHeld);
  t.false(r.session.rings[0]!.started, 'not executed');
  // Two fds where the row allows one: both closed.
  const two = r.request(R.SET_VRING_CALL, { index: 0, noFd: false }, { needReply: true, fds: [kick, kick], unchecked: true });
  t.not(r.u64(two), 0n);
  t.deepEqual(r.openFds(), withHeld);
  // A request whose reply has a body gets an empty one, NEED_REPLY or not (D4).
  const base = r.one(r.frame(encodeRaw(R.GET_VRING_BASE, VHOST_USER_VERSION, new Uint8Array(4))));
  t.is(base.size, 0);
  t.regex(base.error ?? '', /PROTO_BAD_SIZE/, 'the frontend refuses it by size, as QEMU does');
  // A bad header version: refused (NACK), not executed.
  t.not(r.u64(r.frame(encodeRaw(R.SET_VRING_NUM, 2 | VHOST_USER_NEED_REPLY_MASK, new Uint8Array(8).fill(1)))), 0n);
  t.is(r.session.rings[0]!.num, 0);
  // Without NEED_REPLY a refused ack-only request stays silent (there is nothing to answer).
  t.deepEqual(r.frame(encodeRaw(R.SET_VRING_NUM, VHOST_USER_VERSION, new Uint8Array(3))), []);
  t.is(r.u64(r.request(R.GET_QUEUE_NUM)), 1n, 'still serving');
});

test('a handler or device error never throws out of handleFrame: the frontend gets its error reply', (t) => {
  const handlers: HandlerTable = {
    ...REQUEST_HANDLERS,
    [R.GET_QUEUE_NUM]() {
      throw new TypeError('handler bug');
    },
    [R.SET_STATUS]() {
      throw 'not even an Error';
    },
    [R.GET_STATUS]() {
      // A body reply is due and the handler returns none.
    },
  };
  const r = rig(t, { handlers: handlers, device: new RecordingDevice({ throwIn: 'setFeatures' }) });
  r.negotiate(bit(ProtoF.MQ) | bit(ProtoF.REPLY_ACK) | bit(ProtoF.STATUS));
  let reps: ReturnType<typeof r.request> = [];
  t.notThrows(() => (reps = r.request(R.GET_QUEUE_NUM)));
  t.is(r.one(reps).size, 0, 'empty body for a failed body request');
  t.notThrows(() => (reps = r.request(R.SET_STATUS, 0x0fn, { needReply: true })));
  t.not(r.u64(reps), 0n);
  t.notThrows(() => (reps = r.request(R.GET_STATUS)));
  t.is(r.one(reps).size, 0);
  t.notThrows(() => (reps = r.request(R.SET_FEATURES, bit(VirtioF.VERSION_1), { needReply: true })));
  t.not(r.u64(reps), 0n, 'the device failed: NACK');
  t.is(r.u64(r.request(R.GET_FEATURES)) & bit(VirtioF.VERSION_1), bit(VirtioF.VERSION_1), 'still serving');
});

// ---------------------------------------------------------------------------------------------------
// Memory.

test('SET_MEM_TABLE maps the memfd; a region larger than its fd is refused, the old table stays and the refused fd is closed (D11)', (t) => {
  const r = rig(t);
  r.negotiate();
  const g = r.guestMemory();
  t.is(r.u64(r.request(R.SET_MEM_TABLE, g.table, { needReply: true, fds: [g.memfd] })), 0n);
  t.is(r.session.memory.regionCount, 1);
  t.is(r.session.memory.uvaToGpa(UVA + 4096), 4096);
  // The session's mapping and the test's are the same memory.
  new Uint8Array(g.ab).set([1, 2, 3, 4], 0x1234);
  const seen = new Uint8Array(4);
  readBytes(r.session.memory.memory, 0x1234, seen);
  t.deepEqual([...seen], [1, 2, 3, 4]);
  const fdsWithTable = r.openFds();

  const tooBig = { ...g.region, memorySize: BigInt(2 * MEM_BYTES) };
  t.not(r.u64(r.request(R.SET_MEM_TABLE, { nregions: 1, padding: 0, regions: [tooBig] }, { needReply: true, fds: [g.memfd] })), 0n);
  t.is(r.session.memory.regionCount, 1, 'old table kept');
  t.is(r.session.memory.uvaToGpa(UVA + 4096), 4096);
  t.deepEqual(r.openFds(), fdsWithTable, 'the refused table\'s fd was closed');
});

test('CONFIGURE_MEM_SLOTS: two regions of one memfd, an identical ADD_MEM_REG counts a reference and its fd is closed (D34), overlap refused, REM_MEM_REG', (t) => {
  const r = rig(t);
  r.negotiate(bit(ProtoF.REPLY_ACK) | bit(ProtoF.CONFIGURE_MEM_SLOTS));
  t.is(r.u64(r.request(R.GET_MAX_MEM_SLOTS)), 509n);
  const fd = r.own(r.fake.memfd('guest', 2 << 20));
  const reg = (gpa: number, uva: number, off: number) => ({
    padding: 0n,
    region: { guestPhysAddr: BigInt(gpa), memorySize: 1n << 20n, userspaceAddr: BigInt(uva), mmapOffset: BigInt(off) },
  });
  const a = reg(0, 0x7f00_0000_0000, 0);
  const b = reg(0x100000, 0x7f00_0010_0000, 0x100000);
  const before = r.openFds().length;
  t.is(r.u64(r.request(R.ADD_MEM_REG, a, { needReply: true, fds: [fd] })), 0n);
  t.is(r.u64(r.request(R.ADD_MEM_REG, b, { needReply: true, fds: [fd] })), 0n);
  t.is(r.openFds().length, before + 2, 'one fd kept per region');
  t.is(r.u64(r.request(R.ADD_MEM_REG, a, { needReply: true, fds: [fd] })), 0n, 'the second queue pair adds it again');
  t.is(r.openFds().length, before + 2, 'the duplicate fd was closed');
  t.is(r.session.memory.regionCount, 2);
  t.not(r.u64(r.request(R.ADD_MEM_REG, reg(0x80000, 0x7f00_0020_0000, 0), { needReply: true, fds: [fd] })), 0n, 'overlap');
  t.is(r.openFds().length, before + 2, 'the refused region\'s fd was closed');
  t.deepEqual(r.fake.mappings().map((m) => [m.offset, m.byteLen]), [[0, 1 << 20], [1 << 20, 1 << 20]]);

  t.is(r.u64(r.request(R.REM_MEM_REG, a, { needReply: true })), 0n);
  t.is(r.session.memory.regionCount, 2, 'still referenced once');
  t.is(r.u64(r.request(R.REM_MEM_REG, a, { needReply: true })), 0n);
  t.is(r.session.memory.regionCount, 1);
  t.is(r.session.memory.uvaToGpa(0x7f00_0010_0010), 0x100010);
  t.is(r.session.memory.uvaToGpa(0x7f00_0000_0010), null, 'removed region gone');
  t.is(r.openFds().length, before + 1, 'its fd closed');
  t.is(r.fake.mappings().length, 1, 'and its mapping released');
  t.not(r.u64(r.request(R.REM_MEM_REG, a, { needReply: true })), 0n, 'removing it again is refused');
});

// ---------------------------------------------------------------------------------------------------
// Rings.

test('ring bring-up: ringReady at SET_VRING_ENABLE; a kick reaches the device after the poller fires; notify() signals the call eventfd; GET_VRING_BASE stops the ring and answers the base', async (t) => {
  const r = rig(t);
  const dev = r.device;
  r.negotiate();
  t.is(r.u64(r.request(R.SET_FEATURES, bit(VirtioF.VERSION_1) | bit(VirtioF.PROTOCOL_FEATURES), { needReply: true })), 0n);
  const g = r.guestMemory();
  t.is(r.u64(r.request(R.SET_MEM_TABLE, g.table, { needReply: true, fds: [g.memfd] })), 0n);
  const ring = r.configureRing(g.mem, 0, { enable: false });
  t.deepEqual(dev.of('ringReady'), [], 'started but not enabled: PROTOCOL_FEATURES rings start disabled');
  t.true(r.session.rings[0]!.started);

  t.is(r.u64(r.request(R.SET_VRING_ENABLE, { index: 0, num: 1 }, { needReply: true })), 0n);
  t.deepEqual(dev.of('ringReady'), [0]);
  const ready = dev.ready.get(0)!;
  t.is(ready.index, 0);
  t.truthy(ready.queue);
  t.is(ready.queue.size, QSIZE);

  // The driver (the test, on its own mapping) makes a buffer available and kicks.
  const data = Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i);
  const head = ring.drv.addChain([{ byteLen: data.length, write: false, data }]);
  r.sys.eventfdWrite(ring.kick, 1n);
  t.deepEqual(dev.of('kick'), [], 'not synchronously: the poller fires from the event loop');
  await r.fake.settle();
  t.deepEqual(dev.of('kick'), [0]);
  t.is(r.fake.peekEventfd(ring.kick), 0n, 'the kick was consumed');

  // The device pops the chain through the queue it was handed: the test's memory is the session's.
  const chain = new Chain();
  t.true(ready.queue.pop(chain));
  t.is(chain.head, head);
  t.is(chain.readByteLen, data.length);
  t.deepEqual([...chain.segBytes[0]!.subarray(chain.segOffset[0]!, chain.segOffset[0]! + chain.segLen[0]!)], [...data]);
  ready.queue.pushUsed(chain.head, 0);
  ready.queue.flushUsed();
  t.is(r.fake.peekEventfd(ring.call), 0n);
  ready.notify();
  t.is(r.fake.readEventfd(ring.call), 1n, 'notify() wrote the call eventfd');
  t.deepEqual(ring.drv.readUsed().map((u) => u.id), [head], 'the used element is in the driver\'s memory');
  t.is(r.fake.peekEventfd(ring.err), 0n, 'no error signalled');

  const base = r.one(r.request(R.GET_VRING_BASE, { index: 0, num: 0 }));
  t.deepEqual(base.msg!.payload, { index: 0, num: 1 }, 'one chain consumed');
  t.deepEqual(dev.of('ringStopped'), [0]);
  t.false(dev.ready.has(0));
  t.false(r.session.rings[0]!.started, 'GET_VRING_BASE stops the ring');
  t.true(r.session.rings[0]!.enabled, '... and leaves it enabled');
  r.sys.eventfdWrite(ring.kick, 1n);
  await r.fake.settle();
  t.deepEqual(dev.of('kick'), [0], 'a stopped ring is not kicked');
  t.is(r.fake.peekEventfd(ring.kick), 1n, 'nor its kick fd read');
  t.deepEqual(r.fake.violations(), []);
});

test('a kick written before the ring is ready reaches the device once it starts; SET_VRING_KICK does not disable (D7); enable before SET_FEATURES counts (D2)', async (t) => {
  const r = rig(t);
  const dev = r.device;
  r.negotiate();
  const g = r.guestMemory();
  t.is(r.u64(r.request(R.SET_MEM_TABLE, g.table, { needReply: true, fds: [g.memfd] })), 0n);
  t.is(r.u64(r.request(R.SET_VRING_ENABLE, { index: 1, num: 1 }, { needReply: true })), 0n);
  t.true(r.session.rings[1]!.enabled);
  const ring = r.configureRing(g.mem, 1, { enable: false });
  t.true(r.session.rings[1]!.enabled, 'the kick did not disable it');
  t.deepEqual(dev.of('ringReady'), [1], 'enabled before SET_FEATURES, started by the kick fd: ready');
  r.sys.eventfdWrite(ring.kick, 1n);
  await r.fake.settle();
  t.deepEqual(dev.of('kick'), [1]);

  // A new kick fd for the running ring: the old one is released, the new one watched.
  const kick2 = r.eventfd();
  const fdsBefore = r.openFds().length;
  t.is(r.u64(r.request(R.SET_VRING_KICK, { index: 1, noFd: false }, { needReply: true, fds: [kick2] })), 0n);
  t.is(r.openFds().length, fdsBefore, 'the session swapped its dup of the old kick fd for one of the new');
  await r.fake.settle();
  const kicksNow = dev.of('kick').length;
  r.sys.eventfdWrite(ring.kick, 1n);
  await r.fake.settle();
  t.is(dev.of('kick').length, kicksNow, 'the old kick fd is not watched any more');
  r.sys.eventfdWrite(kick2, 1n);
  await r.fake.settle();
  t.is(dev.of('kick').length, kicksNow + 1, 'the new one is');
  t.deepEqual(r.fake.violations(), [], 'the poller was closed before its fd');
});

test('a ring that ran without a call fd owes the notification to the next one (D41); a new call fd replaces the old', (t) => {
  const r = rig(t);
  r.negotiate();
  t.is(r.u64(r.request(R.SET_FEATURES, bit(VirtioF.VERSION_1) | bit(VirtioF.PROTOCOL_FEATURES), { needReply: true })), 0n);
  const g = r.guestMemory();
  t.is(r.u64(r.request(R.SET_MEM_TABLE, g.table, { needReply: true, fds: [g.memfd] })), 0n);
  r.configureRing(g.mem, 0, { call: false });
  const ready = r.device.ready.get(0)!;
  t.truthy(ready, 'a ring runs without a call fd (the order QEMU uses on a migration destination)');
  t.notThrows(() => ready.notify());
  const call = r.eventfd();
  t.is(r.u64(r.request(R.SET_VRING_CALL, { index: 0, noFd: false }, { needReply: true, fds: [call] })), 0n);
  t.is(r.fake.readEventfd(call), 1n, 'the owed notification went to the new call fd at once');

  const fdsBefore = r.openFds().length;
  const call2 = r.eventfd();
  t.is(r.u64(r.request(R.SET_VRING_CALL, { index: 0, noFd: false }, { needReply: true, fds: [call2] })), 0n);
  t.is(r.openFds().length, fdsBefore + 1, 'only the test\'s new eventfd: the session closed its copy of the old one');
  t.is(r.fake.peekEventfd(call2), 0n, 'nothing owed this time');
  ready.notify();
  t.deepEqual([r.fake.readEventfd(call), r.fake.readEventfd(call2)], [0n, 1n]);
});

test('a device that throws in ringReady breaks only that ring: its err eventfd is signalled, the session goes on', (t) => {
  const r = rig(t, { device: new RecordingDevice({ throwIn: 'ringReady' }) });
  r.negotiate();
  const g = r.guestMemory();
  t.is(r.u64(r.request(R.SET_MEM_TABLE, g.table, { needReply: true, fds: [g.memfd] })), 0n);
  let ring: ReturnType<typeof r.configureRing> | undefined;
  t.notThrows(() => (ring = r.configureRing(g.mem, 0)));
  t.deepEqual(r.device.of('ringReady'), [0]);
  t.is(r.fake.readEventfd(ring!.err), 1n, 'err eventfd signalled');
  t.truthy(r.session.rings[0]!.broken);
  t.is(r.u64(r.request(R.GET_QUEUE_NUM)), 1n);
});

test('RESET_OWNER returns every ring to its initial state and releases its kick fd, but keeps the memory table (D3)', (t) => {
  const r = rig(t);
  r.negotiate();
  const g = r.guestMemory();
  t.is(r.u64(r.request(R.SET_MEM_TABLE, g.table, { needReply: true, fds: [g.memfd] })), 0n);
  r.configureRing(g.mem, 1);
  t.deepEqual(r.device.of('ringReady'), [1]);
  const kickCopies = r.fake.openFds().filter((f) => f.kind === 'eventfd').length;
  t.is(r.u64(r.request(R.RESET_OWNER, undefined, { needReply: true })), 0n);
  const ring = r.session.rings[1]!;
  t.deepEqual([ring.enabled, ring.started, ring.num, ring.base, ring.addr], [false, false, 0, 0, null]);
  t.deepEqual(r.device.of('ringStopped'), [1]);
  t.is(r.fake.openFds().filter((f) => f.kind === 'eventfd').length, kickCopies - 1, 'its kick fd closed');
  t.is(r.session.memory.regionCount, 1);
  t.deepEqual(r.fake.pollers(), [], 'no watcher left');
});

// ---------------------------------------------------------------------------------------------------
// Device state over a pipe.

test('SET_DEVICE_STATE_FD: SAVE writes the state into the pipe and closes it; LOAD reads to EOF and applies it', async (t) => {
  const state = new TextEncoder().encode('device state v1');
  const r = rig(t, { device: new RecordingDevice({ state }) });
  r.negotiate(bit(ProtoF.REPLY_ACK) | bit(ProtoF.DEVICE_STATE));
  const [rd, wr] = r.fake.pipe();
  r.own(rd);
  r.own(wr);
  const save = r.u64(r.request(R.SET_DEVICE_STATE_FD, { transferDirection: TransferDirection.SAVE, migrationPhase: 0 }, { fds: [wr] }));
  t.is(save & 0xffn, 0n, 'accepted');
  r.sys.close(wr);
  const buf = new Uint8Array(64);
  const n = r.sys.read(rd, buf, 0, buf.length);
  t.deepEqual(buf.subarray(0, n ?? 0), state);
  t.is(r.sys.read(rd, buf, 0, buf.length), 0, 'EOF: the session closed its end');
  t.is(r.u64(r.request(R.CHECK_DEVICE_STATE)), 0n);

  const [rd2, wr2] = r.fake.pipe();
  r.own(wr2);
  t.is(r.u64(r.request(R.SET_DEVICE_STATE_FD, { transferDirection: TransferDirection.LOAD, migrationPhase: 0 }, { fds: [rd2] })) & 0xffn, 0n);
  r.sys.close(rd2);
  t.not(r.u64(r.request(R.CHECK_DEVICE_STATE)), 0n, 'not finished before EOF');
  r.sys.write(wr2, state, 0, state.length);
  r.sys.close(wr2);
  await r.fake.settle();
  t.is(r.u64(r.request(R.CHECK_DEVICE_STATE)), 0n);
  t.deepEqual(r.device.calls.filter((c) => c.op === 'loadState'), [{ op: 'loadState', bytes: state }]);
  t.deepEqual(r.fake.pollers(), []);
});

// ---------------------------------------------------------------------------------------------------
// close().

test('close() releases every fd, mapping and watcher the session took; the device is reset; the back-end channel sees EOF', (t) => {
  const r = rig(t, { device: new RecordingDevice({ state: new Uint8Array(8) }) });
  r.negotiate(
    bit(ProtoF.MQ) | bit(ProtoF.REPLY_ACK) | bit(ProtoF.LOG_SHMFD) | bit(ProtoF.INFLIGHT_SHMFD) | bit(ProtoF.BACKEND_REQ) |
      bit(ProtoF.DEVICE_STATE),
  );
  t.is(r.u64(r.request(R.SET_FEATURES, bit(VirtioF.VERSION_1) | bit(VirtioF.PROTOCOL_FEATURES), { needReply: true })), 0n);
  // The back-end channel: the test keeps one end, the session gets the other.
  const [mine, theirs] = r.sys.socketpair();
  r.own(mine);
  r.own(theirs);
  t.is(r.u64(r.request(R.SET_BACKEND_REQ_FD, undefined, { needReply: true, fds: [theirs] })), 0n);
  r.sys.close(theirs);
  // An inflight buffer of the session's (the test receives its own copy of the fd).
  const inflight = r.one(r.request(R.GET_INFLIGHT_FD, { mmapSize: 0n, mmapOffset: 0n, numQueues: 2, queueSize: QSIZE }));
  t.is(inflight.fds.length, 1);
  t.true(inflight.fds.every((fd) => r.fake.fdInfo(fd)?.kind === 'memfd'));
  // The dirty log and its eventfd.
  const log = r.own(r.fake.memfd('log', 4096));
  const logBase = r.one(r.request(R.SET_LOG_BASE, { mmapSize: 4096n, mmapOffset: 0n }, { needReply: true, fds: [log] }));
  t.deepEqual([logBase.request, logBase.size, logBase.error], [R.SET_LOG_BASE, 0, null], 'the (empty) log base reply, not a refusal');
  t.truthy(r.session.migration.log, 'the log is mapped');
  t.is(r.u64(r.request(R.SET_LOG_FD, undefined, { needReply: true, fds: [r.eventfd()] })), 0n);
  // Guest memory and both rings.
  const g = r.guestMemory();
  t.is(r.u64(r.request(R.SET_MEM_TABLE, g.table, { needReply: true, fds: [g.memfd] })), 0n);
  r.configureRing(g.mem, 0);
  r.configureRing(g.mem, 1);
  t.deepEqual(r.device.of('ringReady'), [0, 1]);
  // A device state LOAD still in progress (its write end open).
  t.is(r.u64(r.request(R.SET_VRING_ENABLE, { index: 0, num: 0 }, { needReply: true })), 0n);
  t.is(r.u64(r.request(R.SET_VRING_ENABLE, { index: 1, num: 0 }, { needReply: true })), 0n);
  const [rd, wr] = r.fake.pipe();
  r.own(wr);
  t.is(r.u64(r.request(R.SET_DEVICE_STATE_FD, { transferDirection: TransferDirection.LOAD, migrationPhase: 0 }, { fds: [rd] })) & 0xffn, 0n);
  r.sys.close(rd);

  const sessionFds = r.fake.openFds().filter((f) => !r.held.has(f.fd));
  const kinds: Record<string, number> = {};
  for (const f of sessionFds) kinds[f.kind] = (kinds[f.kind] ?? 0) + 1;
  // kick/call/err of two rings + the log eventfd; guest memory + inflight buffer (the log memfd is closed
  // once mapped); the state pipe; the channel.
  t.deepEqual(kinds, { eventfd: 7, memfd: 2, pipe: 1, socket: 1 });
  t.is(r.fake.pollers().length, 4, 'two kick watchers (stopped: rings disabled), the channel, the state pipe');
  t.deepEqual(r.fake.mappings().map((m) => `${m.file} x${m.count}`).sort(), [
    'memfd:guest x2',
    'memfd:log x1',
    'memfd:vhost-user-ts-inflight x1',
  ]);

  r.session.close();
  t.deepEqual(r.openFds(), r.heldFds(), 'only what the test holds is open');
  t.deepEqual(r.fake.pollers(), [], 'no watcher left');
  t.deepEqual(r.fake.mappings().map((m) => [m.file, m.count]), [['memfd:guest', 1]], 'only the test\'s own mapping');
  t.deepEqual(r.fake.violations(), [], 'every Poller was closed before its fd');
  t.deepEqual(r.device.calls.at(-1), { op: 'reset' });
  const eof = r.sys.recvmsg(mine, new Uint8Array(16), 0, 16, 4);
  t.deepEqual(eof, { byteLen: 0, fds: [], fdsTruncated: false }, 'the channel\'s peer sees EOF');
  // A closed session ignores frames.
  t.deepEqual(r.request(R.GET_FEATURES), []);
});

// ---------------------------------------------------------------------------------------------------
// Bugs the fake found (issue 15): fds refused after they were claimed, and a device exception after
// the handler's try.

test('SET_BACKEND_REQ_FD with an fd that cannot be polled (a memfd: epoll refuses it, EPERM) is refused and the fd closed', (t) => {
  const r = rig(t);
  r.negotiate(bit(ProtoF.REPLY_ACK) | bit(ProtoF.BACKEND_REQ));
  const memfd = r.own(r.fake.memfd('not-a-socket', 4096));
  t.not(r.u64(r.request(R.SET_BACKEND_REQ_FD, undefined, { needReply: true, fds: [memfd] })), 0n, 'refused');
  r.session.close();
  // FdClaim.take() makes the fd the channel's; PolledSocket closes it when it cannot watch it.
  t.deepEqual(r.openFds(), r.heldFds(), 'the refused fd was closed');
});

test('SET_DEVICE_STATE_FD (LOAD) with an fd that cannot be polled (a memfd) fails at once and the fd is closed', (t) => {
  const r = rig(t, { device: new RecordingDevice({ state: new Uint8Array(4) }) });
  r.negotiate(bit(ProtoF.REPLY_ACK) | bit(ProtoF.DEVICE_STATE));
  const memfd = r.own(r.fake.memfd('not-a-pipe', 4096));
  const reply = r.u64(r.request(R.SET_DEVICE_STATE_FD, { transferDirection: TransferDirection.LOAD, migrationPhase: 0 }, { fds: [memfd] }));
  t.not(reply & 0xffn, 0n, 'refused');
  r.session.close();
  // DeviceStateTransfer owns the fd from its constructor: startLoad fails the transfer and closes it.
  t.deepEqual(r.openFds(), r.heldFds(), 'the refused fd was closed');
});

test('a device that throws in ringStopped does not make handleFrame throw (the ring stops all the same)', (t) => {
  const r = rig(t, { device: new RecordingDevice({ throwIn: 'ringStopped' }) });
  r.negotiate();
  const g = r.guestMemory();
  t.is(r.u64(r.request(R.SET_MEM_TABLE, g.table, { needReply: true, fds: [g.memfd] })), 0n);
  r.configureRing(g.mem, 0);
  t.deepEqual(r.device.of('ringReady'), [0]);
  // ringReady and kick failures break only their ring (ring-runtime.ts startQueue / kickDevice); a
  // ringStopped failure is logged and the ring is stopped.
  t.notThrows(() => r.request(R.SET_VRING_ENABLE, { index: 0, num: 0 }, { needReply: true }));
  t.is(r.session.rings[0]!.queue, null, 'the ring stopped all the same');
});
