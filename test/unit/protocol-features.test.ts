import test from 'ava';
import { ProtoF, VirtioF, bit, bitsOf, featureNames, has, maskOf } from '../../protocol/index.ts';

test('bit numbers match the spec', (t) => {
  t.is(VirtioF.PROTOCOL_FEATURES, 30);
  t.is(VirtioF.LOG_ALL, 26);
  t.is(VirtioF.VERSION_1, 32);
  t.is(VirtioF.RING_PACKED, 34);
  t.is(VirtioF.NET_F_MRG_RXBUF, 15);
  t.is(ProtoF.REPLY_ACK, 3);
  t.is(ProtoF.BACKEND_REQ, 5);
  t.is(ProtoF.CONFIGURE_MEM_SLOTS, 15);
  t.is(ProtoF.DEVICE_STATE, 19);
  t.is(ProtoF.GET_VRING_BASE_INFLIGHT, 20);
  t.is(ProtoF.SHMEM, 21);
});

test('bit numbers are unique within each table', (t) => {
  for (const table of [VirtioF, ProtoF]) {
    const values = Object.values(table);
    t.is(new Set(values).size, values.length);
  }
});

test('bit / has / maskOf / bitsOf over bigint masks, including bits >= 32', (t) => {
  t.is(bit(0), 1n);
  t.is(bit(VirtioF.VERSION_1), 0x1_0000_0000n);
  t.is(bit(63), 0x8000_0000_0000_0000n);
  t.throws(() => bit(64), { instanceOf: RangeError });
  t.throws(() => bit(-1), { instanceOf: RangeError });
  const m = maskOf(VirtioF.VERSION_1, VirtioF.RING_EVENT_IDX, VirtioF.NET_F_MAC);
  t.true(has(m, VirtioF.VERSION_1));
  t.true(has(m, VirtioF.NET_F_MAC));
  t.false(has(m, VirtioF.NET_F_MTU));
  // The classic bug this API exists to prevent: a bit NUMBER used as a mask.
  t.not(m & BigInt(VirtioF.NET_F_MAC), bit(VirtioF.NET_F_MAC));
  t.deepEqual(bitsOf(m), [5, 29, 32]);
});

test('featureNames renders unknown bits as bitN', (t) => {
  t.deepEqual(featureNames(bit(ProtoF.MQ) | bit(ProtoF.REPLY_ACK) | bit(40), ProtoF), ['MQ', 'REPLY_ACK', 'bit40']);
  t.deepEqual(featureNames(0n, VirtioF), []);
});
