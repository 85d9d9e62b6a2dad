/**
 * ScriptedFrontend against an in-memory fake back-end built from the same codec: replies matched
 * in order, no-reply requests resolve with null, NEED_REPLY acks, reply fds, chunked delivery,
 * protocol violations by the back-end.
 */
import test from 'ava';
import {
  Framer,
  FrontendReq,
  ProtoF,
  ProtocolError,
  ScriptedFrontend,
  VirtioF,
  bit,
  decode,
  encodeRaw,
  encodeReply,
  type Encoded,
  type VhostMessage,
} from '../../protocol/index.ts';

type Handler = (msg: VhostMessage) => Encoded | null;

/** A fake back-end: decodes what the frontend sends, answers with `handler`, delivers in `split` pieces. */
function harness(handler: Handler, split = 1) {
  const framer = new Framer();
  const received: VhostMessage[] = [];
  let deliver: ((chunk: Uint8Array, fds: number[]) => void) | null = null;
  const fe = new ScriptedFrontend(
    {
      send(bytes, fds) {
        framer.push(bytes, fds);
        for (const f of framer.drain()) {
          const msg = decode('frontend', f);
          received.push(msg);
          const rep = handler(msg);
          if (!rep) continue;
          // Deliver asynchronously, in `split` chunks, fds with the first chunk.
          const step = Math.ceil(rep.bytes.length / split);
          setImmediate(() => {
            for (let o = 0; o < rep.bytes.length; o += step) deliver!(rep.bytes.subarray(o, o + step), o === 0 ? rep.fds : []);
          });
        }
      },
      onData(cb) {
        deliver = cb;
      },
    },
    { timeoutMs: 2000 },
  );
  return { fe, received };
}

const FEATURES = bit(VirtioF.VERSION_1) | bit(VirtioF.PROTOCOL_FEATURES);

const backendLike: Handler = (msg) => {
  switch (msg.id) {
    case FrontendReq.GET_FEATURES:
      return encodeReply(msg, FEATURES);
    case FrontendReq.GET_PROTOCOL_FEATURES:
      return encodeReply(msg, bit(ProtoF.REPLY_ACK) | bit(ProtoF.MQ));
    case FrontendReq.GET_VRING_BASE:
      return encodeReply(msg, { index: (msg.payload as { index: number }).index, num: 42 });
    case FrontendReq.GET_INFLIGHT_FD:
      return encodeReply(msg, { mmapSize: 0x1000n, mmapOffset: 0n, numQueues: 2, queueSize: 256 }, [123]);
    default:
      return msg.needReply ? encodeReply(msg, 0n) : null;
  }
};

for (const split of [1, 3]) {
  test(`replies are matched in order (reply delivered in ${split} chunk(s))`, async (t) => {
    const { fe, received } = harness(backendLike, split);
    const [features, none, proto] = await Promise.all([
      fe.request(FrontendReq.GET_FEATURES),
      fe.request(FrontendReq.SET_OWNER),
      fe.request(FrontendReq.GET_PROTOCOL_FEATURES),
    ]);
    t.deepEqual(features?.payload, { value: FEATURES });
    t.true(features!.isReply);
    t.is(none, null);
    t.deepEqual(proto?.payload, { value: bit(ProtoF.REPLY_ACK) | bit(ProtoF.MQ) });
    t.deepEqual(received.map((m) => m.name), ['GET_FEATURES', 'SET_OWNER', 'GET_PROTOCOL_FEATURES']);
    t.is(fe.outstanding, 0);
  });
}

test('NEED_REPLY waits for the ack; body replies and reply fds come through', async (t) => {
  const { fe, received } = harness(backendLike);
  const ack = await fe.request(FrontendReq.SET_FEATURES, FEATURES, { needReply: true });
  t.deepEqual(ack?.payload, { value: 0n });
  t.true(received[0]!.needReply);
  t.deepEqual(received[0]!.payload, { value: FEATURES });
  const base = await fe.request(FrontendReq.GET_VRING_BASE, { index: 1, num: 0 });
  t.deepEqual(base?.payload, { index: 1, num: 42 });
  const infl = await fe.request(FrontendReq.GET_INFLIGHT_FD, { mmapSize: 0n, mmapOffset: 0n, numQueues: 2, queueSize: 256 });
  t.deepEqual(infl?.fds, [123]);
  const kick = await fe.request(FrontendReq.SET_VRING_KICK, { index: 0, noFd: false }, { fds: [55] });
  t.is(kick, null);
  t.deepEqual(received.at(-1)!.fds, [55]);
});

test('conditional replies: expectReply forces the wait (postcopy SET_MEM_TABLE)', async (t) => {
  const table = { nregions: 1, padding: 0, regions: [{ guestPhysAddr: 0n, memorySize: 0x1000n, userspaceAddr: 0x7000n, mmapOffset: 0n }] };
  const { fe } = harness((msg) =>
    msg.id === FrontendReq.SET_MEM_TABLE ? encodeReply(msg, { ...table, regions: [{ ...table.regions[0]!, userspaceAddr: 0x7fff_0000_0000n }] }) : null,
  );
  t.is(await fe.request(FrontendReq.SET_MEM_TABLE, table, { fds: [9], expectReply: false }), null);
  const rep = await fe.request(FrontendReq.SET_MEM_TABLE, table, { fds: [9], expectReply: true });
  t.is(rep?.layout, 'memory_table');
  t.is((rep?.payload as typeof table).regions[0]!.userspaceAddr, 0x7fff_0000_0000n);
});

test('a reply to the wrong request fails every outstanding request', async (t) => {
  const { fe } = harness((msg) => (msg.id === FrontendReq.GET_FEATURES ? { bytes: encodeRaw(FrontendReq.GET_STATUS, 0x5, new Uint8Array(8)), fds: [] } : null));
  const e = await t.throwsAsync(fe.request(FrontendReq.GET_FEATURES), { instanceOf: ProtocolError });
  t.is(e!.code, 'PROTO_UNEXPECTED_REPLY');
  t.is(fe.unexpected.length, 1);
  await t.throwsAsync(fe.request(FrontendReq.GET_FEATURES), { instanceOf: ProtocolError });
});

test('a malformed reply rejects that request with the codec error', async (t) => {
  const { fe } = harness((msg) => ({ bytes: encodeRaw(msg.id, 0x5, new Uint8Array(4)), fds: [] }));
  const e = await t.throwsAsync(fe.request(FrontendReq.GET_FEATURES), { instanceOf: ProtocolError });
  t.is(e!.code, 'PROTO_BAD_SIZE');
});

test('no reply: PROTO_TIMEOUT; close(): PROTO_CLOSED', async (t) => {
  const fe = new ScriptedFrontend({ send() {}, onData() {} }, { timeoutMs: 30 });
  t.is((await t.throwsAsync(fe.request(FrontendReq.GET_FEATURES), { instanceOf: ProtocolError }))!.code, 'PROTO_TIMEOUT');
  const fe2 = new ScriptedFrontend({ send() {}, onData() {} }, { timeoutMs: 0 });
  const p = fe2.request(FrontendReq.GET_STATUS);
  fe2.close();
  t.is((await t.throwsAsync(p, { instanceOf: ProtocolError }))!.code, 'PROTO_CLOSED');
});

test('unchecked requests and raw bytes reach the back-end as given', async (t) => {
  const sent: Uint8Array[] = [];
  const fe = new ScriptedFrontend({ send: (b) => void sent.push(b), onData() {} });
  await fe.request(FrontendReq.SET_VRING_ADDR, { index: 0, flags: 6, descUserAddr: 0n, usedUserAddr: 0n, availUserAddr: 0n, logGuestAddr: 0n }, { unchecked: true });
  fe.sendRaw(encodeRaw(99, 1));
  t.is(sent.length, 2);
  t.is(sent[0]![16], 6);
  t.is(sent[1]![0], 99);
  t.throws(() => decode('frontend', { request: 9, flags: 1, payload: sent[0]!.subarray(12), fds: [] }), { instanceOf: ProtocolError });
});
