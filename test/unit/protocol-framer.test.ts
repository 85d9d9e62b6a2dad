/**
 * Framer: messages split at every byte position, several messages per chunk, fds bound to the
 * last message whose first byte is in the chunk that carried them, header errors.
 */
import test from 'ava';
import {
  Framer,
  FrontendReq,
  HEADER_SIZE,
  MAX_PAYLOAD,
  ProtocolError,
  decode,
  encode,
  encodeRaw,
  readHeader,
  writeHeader,
  makeFlags,
  type RawFrame,
} from '../../protocol/index.ts';

const memTable = encode('frontend', FrontendReq.SET_MEM_TABLE, {
  payload: {
    nregions: 2,
    padding: 0,
    regions: [
      { guestPhysAddr: 0n, memorySize: 0x1000n, userspaceAddr: 0x7000n, mmapOffset: 0n },
      { guestPhysAddr: 0x10000n, memorySize: 0x2000n, userspaceAddr: 0x9000n, mmapOffset: 0x1000n },
    ],
  },
  fds: [40, 41],
});
const kick = encode('frontend', FrontendReq.SET_VRING_KICK, { payload: { index: 1, noFd: false }, fds: [50] });
const getFeatures = encode('frontend', FrontendReq.GET_FEATURES, {});

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

test('header round trip', (t) => {
  const b = new Uint8Array(HEADER_SIZE);
  const h = { request: 0xdead_beef, flags: makeFlags({ reply: true, needReply: true }), size: 0x1234 };
  writeHeader(b, h);
  t.deepEqual(readHeader(b), h);
  t.is(h.flags, 0xd);
  t.is(makeFlags(), 1);
});

test('a message split at every byte position: nothing until the last byte, fds from the first chunk', (t) => {
  const bytes = memTable.bytes;
  for (let k = 1; k < bytes.length; k++) {
    const f = new Framer();
    f.push(bytes.subarray(0, k), memTable.fds); // SCM_RIGHTS rides with the first byte
    t.is(f.next(), null, `split at ${k}: incomplete`);
    t.deepEqual(f.pendingFds(), [40, 41]);
    f.push(bytes.subarray(k), []);
    const frame = f.next();
    t.truthy(frame, `split at ${k}: complete`);
    t.deepEqual(frame!.fds, [40, 41]);
    t.deepEqual(frame!.payload, bytes.subarray(HEADER_SIZE));
    t.is(f.next(), null);
    t.deepEqual(f.pendingFds(), []);
    t.is(f.bufferedBytes, 0);
  }
});

test('byte-at-a-time delivery of two messages', (t) => {
  const f = new Framer();
  const all = concat(memTable.bytes, kick.bytes);
  const frames: RawFrame[] = [];
  for (let i = 0; i < all.length; i++) {
    const fds = i === 0 ? memTable.fds : i === memTable.bytes.length ? kick.fds : [];
    f.push(all.subarray(i, i + 1), fds);
    frames.push(...f.drain());
  }
  t.is(frames.length, 2);
  t.deepEqual(frames.map((x) => x.request), [FrontendReq.SET_MEM_TABLE, FrontendReq.SET_VRING_KICK]);
  t.deepEqual(frames.map((x) => x.fds), [[40, 41], [50]]);
});

test('two messages in one chunk: fds go to the last message starting in the chunk', (t) => {
  // Linux glues earlier fd-less writes in front of the write that carries fds.
  const f = new Framer();
  f.push(concat(getFeatures.bytes, kick.bytes), kick.fds);
  const [a, b] = f.drain();
  t.is(a!.request, FrontendReq.GET_FEATURES);
  t.deepEqual(a!.fds, []);
  t.is(b!.request, FrontendReq.SET_VRING_KICK);
  t.deepEqual(b!.fds, [50]);
});

test('chunk = tail of one message + head of the next with the next one\'s fds', (t) => {
  const f = new Framer();
  const cut = 5;
  f.push(memTable.bytes.subarray(0, cut), memTable.fds);
  f.push(concat(memTable.bytes.subarray(cut), kick.bytes.subarray(0, 3)), kick.fds);
  const first = f.next();
  t.deepEqual(first!.fds, [40, 41]);
  t.is(f.next(), null);
  t.deepEqual(f.pendingFds(), [50]);
  f.push(kick.bytes.subarray(3));
  t.deepEqual(f.next()!.fds, [50]);
});

test('takePendingFds hands the pending fds over: the framer forgets them (the proxy forwards them when framing is lost)', (t) => {
  const f = new Framer();
  f.push(memTable.bytes.subarray(0, 5), memTable.fds);
  t.deepEqual(f.takePendingFds(), [40, 41]);
  t.deepEqual(f.pendingFds(), [], 'not closed a second time when the connection goes away');
  f.push(memTable.bytes.subarray(5));
  t.deepEqual(f.next()!.fds, [], 'nor handed out with the message');
});

test('fds on a continuation chunk (no message starts in it) go to the message in progress', (t) => {
  const f = new Framer();
  f.push(kick.bytes.subarray(0, 4));
  f.push(kick.bytes.subarray(4), [77]);
  t.deepEqual(f.next()!.fds, [77]);
});

test('unconsumed fds are reported for cleanup', (t) => {
  const f = new Framer();
  f.push(memTable.bytes.subarray(0, 20), [1, 2]);
  t.is(f.next(), null);
  t.deepEqual(f.pendingFds(), [1, 2]);
});

test('oversize header rejected with PROTO_TOO_LARGE, and the framer stays failed', (t) => {
  const f = new Framer();
  const h = new Uint8Array(HEADER_SIZE);
  writeHeader(h, { request: FrontendReq.SET_MEM_TABLE, flags: 1, size: MAX_PAYLOAD + 1 });
  f.push(h);
  const e = t.throws(() => f.next(), { instanceOf: ProtocolError });
  t.is(e!.code, 'PROTO_TOO_LARGE');
  t.true(e!.framingLost);
  t.is(e!.requestId, FrontendReq.SET_MEM_TABLE);
  f.push(getFeatures.bytes);
  t.is(t.throws(() => f.next(), { instanceOf: ProtocolError })!.code, 'PROTO_TOO_LARGE');
  // Exactly at the cap is fine.
  const g = new Framer();
  g.push(encodeRaw(FrontendReq.CREATE_CRYPTO_SESSION, 1, new Uint8Array(MAX_PAYLOAD)));
  t.is(g.next()!.payload.length, MAX_PAYLOAD);
});

test('bad version rejected with PROTO_BAD_HEADER before the payload arrives', (t) => {
  for (const flags of [0x0, 0x2, 0x3]) {
    const f = new Framer();
    f.push(encodeRaw(FrontendReq.GET_FEATURES, flags).subarray(0, HEADER_SIZE));
    t.is(t.throws(() => f.next(), { instanceOf: ProtocolError })!.code, 'PROTO_BAD_HEADER');
  }
});

test('payload is a copy, not a view of the framer buffer', (t) => {
  const f = new Framer();
  const bytes = kick.bytes.slice();
  f.push(bytes, [9]);
  const frame = f.next()!;
  bytes.fill(0xff);
  f.push(getFeatures.bytes);
  f.next();
  t.is(decode('frontend', frame).name, 'SET_VRING_KICK');
  t.deepEqual(decode('frontend', frame).payload, { index: 1, noFd: false, value: 1n });
});

test('the buffer grows for large messages and compacts', (t) => {
  const f = new Framer();
  const big = encodeRaw(FrontendReq.CREATE_CRYPTO_SESSION, 1, new Uint8Array(6000).fill(7));
  for (let round = 0; round < 5; round++) {
    f.push(big.subarray(0, 3000));
    f.push(big.subarray(3000));
    f.push(getFeatures.bytes);
    const [a, b] = f.drain();
    t.is(a!.payload.length, 6000);
    t.true(a!.payload.every((x) => x === 7));
    t.is(b!.request, FrontendReq.GET_FEATURES);
  }
});
