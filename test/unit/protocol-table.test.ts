/**
 * The table as a whole: coverage of every spec id on both channels, and an automated round-trip
 * property over EVERY row (request, and reply: body or REPLY_ACK) through encode -> Framer ->
 * decode, with the fds its policy asks for.
 */
import test from 'ava';
import {
  BACKEND_MESSAGES,
  BackendReq,
  FRONTEND_MESSAGES,
  Framer,
  FrontendReq,
  MESSAGES,
  ProtoF,
  VirtioF,
  decode,
  describe,
  encode,
  encodeReply,
  messageDef,
  messageDefByName,
  replyBodyLayout,
  requestLayout,
  type Channel,
  type FdPolicy,
  type Layout,
  type MessageDef,
  type FrontendPayload,
  type FrontendReplyPayload,
  type BackendPayload,
} from '../../protocol/index.ts';
import { sample } from '../helpers/samples.ts';

let nextFd = 1000;
function fdsFor(policy: FdPolicy, payload: unknown): number[] {
  switch (policy) {
    case 'none':
      return [];
    case 'one':
    case 'optional':
    case 'one-unless-nofd': // samples never set the no-fd bit
      return [nextFd++];
    case 'per-region':
      return Array.from({ length: (payload as { nregions: number }).nregions }, () => nextFd++);
  }
}

function roundTrip(channel: Channel, bytes: Uint8Array, fds: number[]) {
  const f = new Framer();
  f.push(bytes, fds);
  const frame = f.next();
  if (!frame) throw new Error('no frame');
  if (f.next() !== null) throw new Error('extra frame');
  return decode(channel, frame);
}

test('the table has every spec id, in both channels, named as the constants', (t) => {
  const front = MESSAGES.filter((d) => d.channel === 'frontend').map((d) => d.id);
  const back = MESSAGES.filter((d) => d.channel === 'backend').map((d) => d.id);
  t.deepEqual(front, Array.from({ length: 44 }, (_, i) => i + 1));
  t.deepEqual(back, Array.from({ length: 10 }, (_, i) => i + 1));
  for (const [name, id] of Object.entries(FrontendReq)) {
    if (name === 'NONE') continue;
    t.is(messageDef('frontend', id)?.name, name);
    t.is(messageDefByName('frontend', `VHOST_USER_${name}`)?.id, id);
  }
  for (const [name, id] of Object.entries(BackendReq)) {
    if (name === 'NONE') continue;
    t.is(messageDef('backend', id)?.name, name);
    t.is(messageDefByName('backend', `VHOST_USER_BACKEND_${name}`)?.id, id);
  }
  t.is(messageDef('frontend', 0), undefined);
  t.is(messageDef('frontend', 45), undefined);
  t.is(messageDef('backend', 11), undefined);
  t.is(FRONTEND_MESSAGES.SET_BACKEND_REQ_FD.id, 21);
  t.is(BACKEND_MESSAGES.SHMEM_MAP.specName, 'VHOST_USER_BACKEND_SHMEM_MAP');
});

test('feature gating rows follow the spec', (t) => {
  t.deepEqual(FRONTEND_MESSAGES.GET_CONFIG.requires, { protocolFeature: ProtoF.CONFIG });
  t.deepEqual(FRONTEND_MESSAGES.SET_VRING_ENABLE.requires, { virtioFeature: VirtioF.PROTOCOL_FEATURES });
  t.deepEqual(FRONTEND_MESSAGES.GET_QUEUE_NUM.requires, { protocolFeature: ProtoF.MQ });
  t.deepEqual(FRONTEND_MESSAGES.NET_SET_MTU.requires, { protocolFeature: ProtoF.NET_MTU, virtioFeature: VirtioF.NET_F_MTU });
  t.true(FRONTEND_MESSAGES.GET_PROTOCOL_FEATURES.requires?.offeredOnly);
  t.is(FRONTEND_MESSAGES.GET_FEATURES.requires, undefined);
  t.is(FRONTEND_MESSAGES.SET_MEM_TABLE.fds, 'per-region');
  t.is(FRONTEND_MESSAGES.SET_VRING_CALL.fds, 'one-unless-nofd');
  t.is(FRONTEND_MESSAGES.GET_INFLIGHT_FD.replyFds, 'one');
  for (const d of MESSAGES) t.true(d.summary.length > 10, `${d.name} has a summary`);
});

for (const def of MESSAGES as readonly MessageDef[]) {
  const reqPayload = sample(requestLayout(def), def);
  test(`round trip: ${def.channel} ${def.id} ${def.name} request`, (t) => {
    const layout = requestLayout(def);
    const fds = fdsFor(def.fds, reqPayload);
    const enc = encode(def.channel, def.id, { payload: reqPayload, fds, needReply: true });
    t.deepEqual(enc.fds, fds);
    const msg = roundTrip(def.channel, enc.bytes, enc.fds);
    t.is(msg.id, def.id);
    t.is(msg.name, def.name);
    t.is(msg.def, def);
    t.false(msg.isReply);
    t.true(msg.needReply);
    t.is(msg.layout, layout.name);
    t.deepEqual(msg.payload, reqPayload);
    t.deepEqual(msg.fds, fds);
    t.true(describe(msg).includes(def.name));
  });

  test(`round trip: ${def.channel} ${def.id} ${def.name} reply`, (t) => {
    const reqFds = fdsFor(def.fds, reqPayload);
    const req = roundTrip(def.channel, encode(def.channel, def.id, { payload: reqPayload, fds: reqFds }).bytes, reqFds);
    if (typeof def.reply === 'string' || def.replyWhen) {
      // Rows without an unconditional body reply are answered with the REPLY_ACK u64.
      const ack = roundTrip(def.channel, encodeReply(req, 1n).bytes, []);
      t.true(ack.isReply);
      t.false(ack.needReply);
      t.is(ack.layout, 'u64');
      t.deepEqual(ack.payload, { value: 1n });
      t.true(describe(ack).includes(def.name));
    }
    if (typeof def.reply === 'string') return;
    const body = replyBodyLayout(def);
    const payload = sample(body, def);
    const fds = fdsFor(def.replyFds, payload);
    const enc = encodeReply(req, payload, fds);
    const rep = roundTrip(def.channel, enc.bytes, enc.fds);
    t.true(rep.isReply);
    t.is(rep.layout, body.name);
    t.deepEqual(rep.payload, payload);
    t.deepEqual(rep.fds, fds);
  });
}

test('typed payload views follow the table', (t) => {
  // Compile-time: these annotations only type-check if the row types resolve to the layouts.
  const addr: FrontendPayload<'SET_VRING_ADDR'> = {
    index: 0,
    flags: 0,
    descUserAddr: 0n,
    usedUserAddr: 0n,
    availUserAddr: 0n,
    logGuestAddr: 0n,
  };
  const feats: FrontendReplyPayload<'GET_FEATURES'> = { value: 1n };
  const ack: FrontendReplyPayload<'SET_OWNER'> = { value: 0n };
  const table: FrontendPayload<'SET_MEM_TABLE'> = { nregions: 0, padding: 0, regions: [] };
  const none: FrontendPayload<'GET_FEATURES'> = null;
  const map: BackendPayload<'SHMEM_MAP'> = { shmid: 0, padding: new Uint8Array(7), fdOffset: 0n, shmOffset: 0n, len: 1n, flags: 0n };
  t.is(requestLayout(FRONTEND_MESSAGES.SET_VRING_ADDR).validate(addr), null);
  t.deepEqual([feats, ack, table, none, map.len], [{ value: 1n }, { value: 0n }, { nregions: 0, padding: 0, regions: [] }, null, 1n]);
});
