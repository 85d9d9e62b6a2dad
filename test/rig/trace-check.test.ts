/**
 * test/helpers/trace-check.ts judges traces for the QEMU tests ("no request was refused"). Here it
 * is shown to catch what it must: traces recorded by a live session (real NetDevice and handlers on
 * the fake binding) with a refusal, a NACK, a codec rejection, and a clean handshake.
 */
import test from 'ava';
import { FrontendReq as R, BackendReq, ProtoF, bit, messageRecord, ringRecord, type TraceRecord } from '../../protocol/index.ts';
import { liveSession } from '../helpers/live-session.ts';
import { traceProblems } from '../helpers/trace-check.ts';

function handshake(s: ReturnType<typeof liveSession>): void {
  s.request(R.GET_FEATURES);
  s.request(R.GET_PROTOCOL_FEATURES);
  s.request(R.SET_PROTOCOL_FEATURES, bit(ProtoF.REPLY_ACK) | bit(ProtoF.MQ));
  s.request(R.SET_OWNER, undefined, { needReply: true });
  s.request(R.SET_VRING_NUM, { index: 0, num: 256 }, { needReply: true });
}

test('a clean handshake has no problems', (t) => {
  const s = liveSession();
  t.teardown(() => s.close());
  handshake(s);
  t.true(s.records.length >= 7);
  t.deepEqual(traceProblems(s.records), []);
});

test('a refused request (NACKed) is a problem: the refused record and the NACK reply', (t) => {
  const s = liveSession();
  t.teardown(() => s.close());
  handshake(s);
  // A ring size that is not a power of two: refused, NACKed.
  s.request(R.SET_VRING_NUM, { index: 0, num: 1000 }, { needReply: true });
  const p = traceProblems(s.records);
  t.is(p.length, 2, p.join('\n'));
  t.regex(p[0]!, /rx → SET_VRING_NUM .*!! SESSION_/);
  t.regex(p[1]!, /tx ← SET_VRING_NUM reply 0x1/);
});

test('a refusal without NEED_REPLY is still a problem (the request record carries it)', (t) => {
  const s = liveSession();
  t.teardown(() => s.close());
  handshake(s);
  s.raw(R.GPU_SET_SOCKET, 0x1); // not implemented: refused (no fd, no NEED_REPLY)
  t.is(traceProblems(s.records).length, 1);
});

test('a frame the codec rejects is a problem', (t) => {
  const s = liveSession();
  t.teardown(() => s.close());
  handshake(s);
  s.raw(R.SET_VRING_NUM, 0x1, new Uint8Array(3)); // bad size
  const p = traceProblems(s.records);
  t.is(p.length, 1);
  t.regex(p[0]!, /PROTO_BAD_SIZE/);
});

test('the frontend NACKing a back-end request, and a broken ring, are problems; a body reply with a value is not', (t) => {
  const nack: TraceRecord = {
    ...messageRecord('rx', { channel: 'backend', id: BackendReq.IOTLB_MSG, name: 'IOTLB_MSG', flags: 0x5, payload: { value: 1n }, fds: [] } as never),
  };
  const broken = ringRecord(1, 'broken', { error: 'descriptor loop' });
  const features = messageRecord('tx', { channel: 'frontend', id: R.GET_FEATURES, name: 'GET_FEATURES', flags: 0x5, payload: { value: 0x140000000n }, fds: [] } as never);
  t.is(traceProblems([features]).length, 0);
  t.is(traceProblems([features, nack, broken]).length, 2);
});
