/**
 * Requests whose whole effect is session state, checked on a live session (the real NetDevice and
 * handlers on the fake binding; test/helpers/live-session.ts). Cited by spec-notes/feature-matrix.md.
 */
import test from 'ava';
import { FrontendReq as R, ProtoF, bit } from '../../protocol/index.ts';
import { liveSession } from '../helpers/live-session.ts';
import { traceProblems } from '../helpers/trace-check.ts';

test('SET_OWNER is accepted (acked with 0 under REPLY_ACK) and makes the session owned; it is not refused before or after other requests', (t) => {
  const s = liveSession();
  t.teardown(() => s.close());
  s.request(R.GET_FEATURES);
  s.request(R.SET_PROTOCOL_FEATURES, bit(ProtoF.REPLY_ACK));
  t.false(s.session.owner);
  const [ack] = s.request(R.SET_OWNER, undefined, { needReply: true });
  t.is((ack!.payload as { value: bigint }).value, 0n);
  t.true(s.session.owner);
  // A second SET_OWNER (QEMU sends one per connection; DPDK's virtio-user may repeat it) is accepted too.
  const [again] = s.request(R.SET_OWNER, undefined, { needReply: true });
  t.is((again!.payload as { value: bigint }).value, 0n);
  t.deepEqual(traceProblems(s.records), []);
});
