/**
 * Codec behaviour driven by the table: error codes for unknown ids, sizes, invalid payloads and
 * fd policies; what real frontends send (QEMU compact memory tables, padded tables, padded C
 * structs); replies (ack vs body, empty GET_CONFIG error reply); describe().
 */
import test from 'ava';
import {
  BackendReq,
  FrontendReq,
  ProtocolError,
  VHOST_USER_NEED_REPLY_MASK,
  VHOST_USER_REPLY_MASK,
  decode,
  describe,
  encode,
  encodeRaw,
  encodeReply,
  featureNames,
  VirtioF,
  bit,
  type RawFrame,
  type VhostMessage,
} from '../../protocol/index.ts';

function frame(request: number, payload: Uint8Array, fds: number[] = [], flags = 1): RawFrame {
  return { request, flags, payload, fds };
}
function u64le(...vals: bigint[]): Uint8Array {
  const b = new Uint8Array(vals.length * 8);
  const dv = new DataView(b.buffer);
  vals.forEach((v, i) => dv.setBigUint64(i * 8, v, true));
  return b;
}
function u32le(...vals: number[]): Uint8Array {
  const b = new Uint8Array(vals.length * 4);
  const dv = new DataView(b.buffer);
  vals.forEach((v, i) => dv.setUint32(i * 4, v, true));
  return b;
}
function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    if (e instanceof ProtocolError) return e.code;
    throw e;
  }
  return undefined;
}
const region = (gpa: bigint) => u64le(gpa, 0x1000n, 0x7f00_0000_0000n + gpa, 0n);

test('unknown request id 99 is rejected with PROTO_UNKNOWN_REQUEST (and keeps id and flags)', (t) => {
  const e = t.throws(() => decode('frontend', frame(99, new Uint8Array(0), [], 0x9)), { instanceOf: ProtocolError });
  t.is(e!.code, 'PROTO_UNKNOWN_REQUEST');
  t.is(e!.requestId, 99);
  t.is(e!.requestName, 'UNKNOWN(99)');
  t.is(e!.flags, 0x9);
  t.is(codeOf(() => decode('backend', frame(0, new Uint8Array(0)))), 'PROTO_UNKNOWN_REQUEST');
  t.is(codeOf(() => decode('backend', frame(11, new Uint8Array(0)))), 'PROTO_UNKNOWN_REQUEST');
  t.is(codeOf(() => encode('frontend', 99)), 'PROTO_UNKNOWN_REQUEST');
});

test('bad version in a frame given to decode() directly', (t) => {
  t.is(codeOf(() => decode('frontend', frame(FrontendReq.GET_FEATURES, new Uint8Array(0), [], 2))), 'PROTO_BAD_HEADER');
});

test('payload size mismatch is PROTO_BAD_SIZE', (t) => {
  t.is(codeOf(() => decode('frontend', frame(FrontendReq.SET_VRING_NUM, new Uint8Array(4)))), 'PROTO_BAD_SIZE');
  t.is(codeOf(() => decode('frontend', frame(FrontendReq.SET_VRING_NUM, new Uint8Array(12)))), 'PROTO_BAD_SIZE');
  t.is(codeOf(() => decode('frontend', frame(FrontendReq.GET_FEATURES, new Uint8Array(8)))), 'PROTO_BAD_SIZE');
  t.is(codeOf(() => decode('frontend', frame(FrontendReq.SET_FEATURES, new Uint8Array(0)))), 'PROTO_BAD_SIZE');
  // config: the size field must match the bytes that follow
  const cfg = new Uint8Array([...u32le(0, 8, 0), ...new Uint8Array(7)]);
  t.is(codeOf(() => decode('frontend', frame(FrontendReq.SET_CONFIG, cfg))), 'PROTO_BAD_SIZE');
  const e = t.throws(() => decode('frontend', frame(FrontendReq.SET_VRING_ADDR, new Uint8Array(48))), { instanceOf: ProtocolError });
  t.is(e!.requestName, 'SET_VRING_ADDR');
});

test('SET_MEM_TABLE: QEMU compact size and 8-region padded size both accepted; short refused', (t) => {
  const compact = new Uint8Array([...u32le(2, 0), ...region(0n), ...region(0x10_0000n)]);
  t.is(compact.length, 8 + 2 * 32);
  const m = decode('frontend', frame(FrontendReq.SET_MEM_TABLE, compact, [3, 4]));
  t.is((m.payload as { nregions: number }).nregions, 2);
  const padded = new Uint8Array(8 + 8 * 32);
  padded.set(compact);
  const p = decode('frontend', frame(FrontendReq.SET_MEM_TABLE, padded, [3, 4]));
  t.deepEqual(p.payload, m.payload);
  t.is(codeOf(() => decode('frontend', frame(FrontendReq.SET_MEM_TABLE, compact.subarray(0, 8 + 32 + 31), [3, 4]))), 'PROTO_BAD_SIZE');
  // nregions 9 with room for 9: syntactically invalid, not a size error
  const nine = new Uint8Array([...u32le(9, 0), ...Array.from({ length: 9 }, (_, i) => [...region(BigInt(i) << 32n)]).flat()]);
  t.is(codeOf(() => decode('frontend', frame(FrontendReq.SET_MEM_TABLE, nine, [1, 2, 3, 4, 5, 6, 7, 8, 9]))), 'PROTO_INVALID_PAYLOAD');
  // nregions huge: cannot even be read
  t.is(codeOf(() => decode('frontend', frame(FrontendReq.SET_MEM_TABLE, u32le(0xffff_ffff, 0)))), 'PROTO_BAD_SIZE');
});

test('payload validate() failures are PROTO_INVALID_PAYLOAD', (t) => {
  const addr = new Uint8Array([...u32le(0, 2), ...u64le(0x1000n, 0x2000n, 0x3000n, 0n)]);
  const e = t.throws(() => decode('frontend', frame(FrontendReq.SET_VRING_ADDR, addr)), { instanceOf: ProtocolError });
  t.is(e!.code, 'PROTO_INVALID_PAYLOAD');
  t.regex(e!.message, /VRING_ADDR_FLAGS/);
  t.is(codeOf(() => decode('frontend', frame(FrontendReq.SET_VRING_ENABLE, u32le(0, 2)))), 'PROTO_INVALID_PAYLOAD');
  t.is(codeOf(() => decode('frontend', frame(FrontendReq.SET_VRING_ENABLE, u32le(0, 1)))), undefined);
  const cfg = new Uint8Array([...u32le(0, 300, 0), ...new Uint8Array(300)]);
  t.is(codeOf(() => decode('frontend', frame(FrontendReq.SET_CONFIG, cfg))), 'PROTO_INVALID_PAYLOAD');
});

test('fd count against the row policy is PROTO_BAD_FDS; the codec does not close fds', (t) => {
  const memTable = new Uint8Array([...u32le(2, 0), ...region(0n), ...region(0x10_0000n)]);
  t.is(codeOf(() => decode('frontend', frame(FrontendReq.SET_MEM_TABLE, memTable, [3]))), 'PROTO_BAD_FDS');
  t.is(codeOf(() => decode('frontend', frame(FrontendReq.SET_MEM_TABLE, memTable, [3, 4, 5]))), 'PROTO_BAD_FDS');
  // KICK: one fd unless bit 8
  t.is(codeOf(() => decode('frontend', frame(FrontendReq.SET_VRING_KICK, u64le(0x1n), []))), 'PROTO_BAD_FDS');
  t.is(codeOf(() => decode('frontend', frame(FrontendReq.SET_VRING_KICK, u64le(0x101n), [7]))), 'PROTO_BAD_FDS');
  const nofd = decode('frontend', frame(FrontendReq.SET_VRING_CALL, u64le(0x102n), []));
  t.deepEqual(nofd.payload, { index: 2, noFd: true, value: 0x102n });
  t.is(codeOf(() => decode('frontend', frame(FrontendReq.GET_FEATURES, new Uint8Array(0), [7]))), 'PROTO_BAD_FDS');
  // REM_MEM_REG: zero or one ("MAY accept messages with one file descriptor")
  const single = new Uint8Array([...u64le(0n), ...region(0n)]);
  t.is(codeOf(() => decode('frontend', frame(FrontendReq.REM_MEM_REG, single, []))), undefined);
  t.is(codeOf(() => decode('frontend', frame(FrontendReq.REM_MEM_REG, single, [8]))), undefined);
  t.is(codeOf(() => decode('frontend', frame(FrontendReq.REM_MEM_REG, single, [8, 9]))), 'PROTO_BAD_FDS');
  const fds = [10, 11];
  const f = frame(FrontendReq.SET_MEM_TABLE, memTable, fds);
  t.throws(() => decode('frontend', { ...f, fds: [10] }));
  t.deepEqual(fds, [10, 11], 'the caller still owns the fds');
});

test('flags: NEED_REPLY and REPLY are reported; reserved bits are tolerated', (t) => {
  const m = decode('frontend', frame(FrontendReq.SET_OWNER, new Uint8Array(0), [], 1 | VHOST_USER_NEED_REPLY_MASK | 0x100));
  t.true(m.needReply);
  t.false(m.isReply);
  const r = decode('frontend', frame(FrontendReq.SET_OWNER, u64le(0n), [], 1 | VHOST_USER_REPLY_MASK));
  t.true(r.isReply);
  t.deepEqual(r.payload, { value: 0n });
});

test('padded C structs: 26-byte and 32-byte IOTLB messages, 20- and 24-byte inflight', (t) => {
  const iotlb = new Uint8Array(32);
  iotlb.set(u64le(0x1000n, 0x1000n, 0x7f00_0000_0000n));
  iotlb[24] = 3;
  iotlb[25] = 2;
  const a = decode('frontend', frame(FrontendReq.IOTLB_MSG, iotlb));
  const b = decode('frontend', frame(FrontendReq.IOTLB_MSG, iotlb.subarray(0, 26)));
  t.deepEqual(a.payload, b.payload);
  t.deepEqual(a.payload, { iova: 0x1000n, size: 0x1000n, userAddr: 0x7f00_0000_0000n, perm: 3, type: 2 });
  const infl = new Uint8Array([...u64le(0x1000n, 0n), 2, 0, 0, 1]);
  t.deepEqual(decode('frontend', frame(FrontendReq.GET_INFLIGHT_FD, infl)).payload, {
    mmapSize: 0x1000n,
    mmapOffset: 0n,
    numQueues: 2,
    queueSize: 256,
  });
});

test('QEMU postcopy ack: SET_MEM_TABLE with u64 0 decodes as an empty table', (t) => {
  const m = decode('frontend', frame(FrontendReq.SET_MEM_TABLE, u64le(0n)));
  t.deepEqual(m.payload, { nregions: 0, padding: 0, regions: [] });
});

test('replies: ack vs body for conditional rows, empty GET_CONFIG error reply', (t) => {
  const req = decode('frontend', frame(FrontendReq.SET_MEM_TABLE, new Uint8Array([...u32le(1, 0), ...region(0n)]), [5], 1 | VHOST_USER_NEED_REPLY_MASK));
  const ack = encodeReply(req, 0n);
  t.is(ack.bytes.length, 12 + 8);
  const ackMsg = decode('frontend', { request: 5, flags: 0x5, payload: ack.bytes.subarray(12), fds: [] });
  t.is(ackMsg.layout, 'u64');
  t.true(describe(ackMsg).includes('SET_MEM_TABLE ack'));
  const body = encodeReply(req, { nregions: 1, padding: 0, regions: [{ guestPhysAddr: 0n, memorySize: 0x1000n, userspaceAddr: 0x7fff_0000_0000n, mmapOffset: 0n }] });
  const bodyMsg = decode('frontend', { request: 5, flags: 0x5, payload: body.bytes.subarray(12), fds: [] });
  t.is(bodyMsg.layout, 'memory_table');

  const getCfg = decode('frontend', frame(FrontendReq.GET_CONFIG, new Uint8Array([...u32le(0, 4, 0), 0, 0, 0, 0])));
  const empty = encodeReply(getCfg, null);
  t.is(empty.bytes.length, 12);
  const emptyMsg = decode('frontend', { request: FrontendReq.GET_CONFIG, flags: 0x5, payload: new Uint8Array(0), fds: [] });
  t.is(emptyMsg.payload, null);

  // SET_LOG_BASE with LOG_SHMFD: DPDK's empty reply and rust-vmm's 16-byte echo are both accepted.
  for (const n of [0, 16]) {
    const m = decode('frontend', { request: FrontendReq.SET_LOG_BASE, flags: 0x5, payload: new Uint8Array(n), fds: [] });
    t.is(m.layout, 'log_base_reply');
  }
  // A body reply with the wrong fd count is refused.
  t.is(codeOf(() => decode('frontend', { request: FrontendReq.GET_INFLIGHT_FD, flags: 0x5, payload: new Uint8Array(24), fds: [] })), 'PROTO_BAD_FDS');
});

test('encode refuses invalid payloads unless unchecked', (t) => {
  const bad = { index: 0, flags: 4, descUserAddr: 0n, usedUserAddr: 0n, availUserAddr: 0n, logGuestAddr: 0n };
  t.is(codeOf(() => encode('frontend', FrontendReq.SET_VRING_ADDR, { payload: bad })), 'PROTO_INVALID_PAYLOAD');
  const raw = encode('frontend', FrontendReq.SET_VRING_ADDR, { payload: bad, unchecked: true });
  t.is(raw.bytes.length, 12 + 40);
  t.is(codeOf(() => encode('frontend', FrontendReq.SET_VRING_KICK, { payload: { index: 0, noFd: false } })), 'PROTO_BAD_FDS');
  t.is(codeOf(() => encode('frontend', FrontendReq.SET_VRING_NUM, {})), 'PROTO_ENCODE');
  t.is(codeOf(() => encode('frontend', FrontendReq.SET_VRING_NUM, { payload: { index: 'x', num: 1 }, unchecked: true })), 'PROTO_ENCODE');
  t.is(codeOf(() => encode('frontend', FrontendReq.GET_SHMEM_CONFIG, { reply: true, payload: 0n })), 'PROTO_ENCODE');
  t.deepEqual(encode('frontend', FrontendReq.GET_FEATURES, { flags: 0 }).bytes, encodeRaw(FrontendReq.GET_FEATURES, 0));
});

test('describe(): name, key fields in hex, feature names, fd count', (t) => {
  const addr = encode('frontend', FrontendReq.SET_VRING_ADDR, {
    payload: { index: 1, flags: 0, descUserAddr: 0x7f00_1000n, usedUserAddr: 0x7f00_2000n, availUserAddr: 0x7f00_3000n, logGuestAddr: 0n },
  });
  const m = decode('frontend', frame(FrontendReq.SET_VRING_ADDR, addr.bytes.subarray(12)));
  const s = describe(m);
  t.true(s.startsWith('SET_VRING_ADDR '));
  t.regex(s, /index=1 /);
  t.regex(s, /descUserAddr=0x7f001000/);
  t.regex(s, /fds=0$/);

  const feats = bit(VirtioF.VERSION_1) | bit(VirtioF.RING_EVENT_IDX) | bit(VirtioF.PROTOCOL_FEATURES);
  const sf = decode('frontend', frame(FrontendReq.SET_FEATURES, u64le(feats), [], 9));
  const d = describe(sf);
  t.regex(d, /^SET_FEATURES need_reply 0x160000000 <RING_EVENT_IDX\|PROTOCOL_FEATURES\|VERSION_1> fds=0$/);
  t.deepEqual(featureNames(feats, VirtioF), ['RING_EVENT_IDX', 'PROTOCOL_FEATURES', 'VERSION_1']);

  const kick = decode('frontend', frame(FrontendReq.SET_VRING_KICK, u64le(0x3n), [4]));
  t.is(describe(kick), 'SET_VRING_KICK index=3 noFd=false fds=1');

  const shared = encode('backend', BackendReq.SHARED_OBJECT_ADD, { payload: { uuid: Uint8Array.from({ length: 16 }, (_, i) => i) } });
  const sm: VhostMessage = decode('backend', frame(BackendReq.SHARED_OBJECT_ADD, shared.bytes.subarray(12)));
  t.is(describe(sm), 'BACKEND_SHARED_OBJECT_ADD uuid=00010203-0405-0607-0809-0a0b0c0d0e0f fds=0');

  const mt = decode('frontend', frame(FrontendReq.SET_MEM_TABLE, new Uint8Array([...u32le(1, 0), ...region(0x10_0000n)]), [9]));
  t.regex(describe(mt), /^SET_MEM_TABLE nregions=1 regions=\[\{guestPhysAddr=0x100000 memorySize=0x1000 /);
});
