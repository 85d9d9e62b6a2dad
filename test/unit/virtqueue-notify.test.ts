import test from 'ava';
import { Chain, ChainWriter, VIRTQ_USED_F_NO_NOTIFY, createDrainPlan, needEvent } from '../../virtqueue/index.ts';
import type { Chain as ChainT } from '../../virtqueue/index.ts';
import { rig } from './virtqueue-fixtures.ts';

test('vring_need_event table (virtio v1.2 2.7.7.2): notify iff event in [old, new) mod 2^16', (t) => {
  const cases: [event: number, next: number, old: number, want: boolean][] = [
    [0, 1, 0, true], // used_event 0: first buffer notifies
    [0, 2, 1, false], // already past
    [1, 2, 0, true], // crossing inside a batch
    [5, 5, 0, false], // entry 5 not written yet (idx reaching 6 does it)
    [5, 6, 0, true],
    [5, 6, 5, true],
    [5, 6, 6, false], // no progress
    [4, 6, 5, false], // event behind old: already notified
    [65535, 0, 65534, true], // wrap: entry 65535 written
    [65535, 1, 65535, true],
    [65534, 1, 65535, false],
    [0, 3, 65533, true], // event 0 inside a wrapping batch [65533, 3)
    [65533, 3, 65533, true],
    [3, 3, 65533, false],
    [100, 200, 300, true], // old ahead of new by > 2^15 means a huge batch: [300, 200) wraps and contains 100
  ];
  for (const [ev, next, old, want] of cases) t.is(needEvent(ev, next, old), want, `needEvent(${ev}, ${next}, ${old})`);
});

function complete(q: ReturnType<typeof rig>['q'], c: ChainT, n: number): number {
  let done = 0;
  while (done < n && q.pop(c)) {
    q.pushUsed(c.head, 0);
    done++;
  }
  return done;
}

test('EVENT_IDX: flushUsed notifies only when used_event is crossed', (t) => {
  const { drv, q, chain } = rig(16, { eventIdx: true });
  for (let i = 0; i < 10; i++) drv.addChain([{ byteLen: 4, write: true }]);
  drv.setUsedEvent(2); // "interrupt me when entry 2 is used"
  complete(q, chain, 2);
  t.false(q.flushUsed()); // idx 0 -> 2: entry 2 not yet written
  complete(q, chain, 1);
  t.true(q.flushUsed()); // 2 -> 3
  complete(q, chain, 2);
  t.false(q.flushUsed()); // 3 -> 5, event 2 behind
  drv.setUsedEvent(9);
  complete(q, chain, 5);
  t.true(q.flushUsed()); // 5 -> 10 contains 9
  t.is(q.stats.notifies, 2);
  t.is(q.stats.suppressed, 2);
});

test('EVENT_IDX: avail.flags NO_INTERRUPT is ignored (2.7.7.2: "MUST ignore the lower bit")', (t) => {
  const { drv, q, chain } = rig(8, { eventIdx: true });
  drv.setNoInterrupt(true);
  drv.setUsedEvent(0);
  drv.addChain([{ byteLen: 4, write: true }]);
  complete(q, chain, 1);
  t.true(q.flushUsed());
});

test('without EVENT_IDX: NO_INTERRUPT suppresses notifications; used_event is ignored', (t) => {
  const { drv, q, chain } = rig(8);
  drv.setUsedEvent(100);
  for (let i = 0; i < 4; i++) drv.addChain([{ byteLen: 4, write: true }]);
  complete(q, chain, 1);
  t.true(q.flushUsed());
  drv.setNoInterrupt(true);
  complete(q, chain, 2);
  t.false(q.flushUsed());
  drv.setNoInterrupt(false);
  complete(q, chain, 1);
  t.true(q.flushUsed());
});

test('without EVENT_IDX: disable/enable toggle used.flags NO_NOTIFY; the driver honours it', (t) => {
  const { drv, q } = rig(8);
  drv.addChain([{ byteLen: 4, write: true }]);
  t.true(drv.kick());
  q.disableNotification();
  t.is(drv.usedFlags, VIRTQ_USED_F_NO_NOTIFY);
  drv.addChain([{ byteLen: 4, write: true }]);
  t.false(drv.kick());
  t.true(q.enableNotification()); // two entries we have not seen
  t.is(drv.usedFlags, 0);
  drv.addChain([{ byteLen: 4, write: true }]);
  t.true(drv.kick());
});

test('EVENT_IDX: enableNotification writes avail_event = the avail idx seen; used.flags stays 0', (t) => {
  const { drv, q, chain } = rig(8, { eventIdx: true });
  for (let i = 0; i < 3; i++) drv.addChain([{ byteLen: 4, write: true }]);
  t.true(drv.kick()); // avail_event is 0: entry 0 was written
  q.disableNotification();
  t.is(drv.usedFlags, 0);
  complete(q, chain, 3);
  t.false(q.pop(chain));
  t.false(q.enableNotification());
  t.is(drv.availEvent, 3);
  t.is(q.lastAvailIdx, 3);
  drv.addChain([{ byteLen: 4, write: true }]);
  t.true(drv.kick()); // entry 3 written: kick
  drv.addChain([{ byteLen: 4, write: true }]);
  t.false(drv.kick()); // avail_event not moved by the device: no further kicks
});

test('enableNotification reports entries that raced with it (2.7.10)', (t) => {
  for (const eventIdx of [false, true]) {
    const { drv, q, chain } = rig(8, { eventIdx });
    q.disableNotification();
    t.false(q.pop(chain));
    drv.addChain([{ byteLen: 4, write: true }]); // lands while notifications are off
    t.true(q.enableNotification(), `eventIdx=${eventIdx}`);
    t.true(q.pop(chain));
    t.false(q.pop(chain));
    t.false(q.enableNotification());
  }
});

test('after unpop, enableNotification does not report the given-back entries as new', (t) => {
  const { drv, q } = rig(8, { eventIdx: true });
  const cs = [new Chain(), new Chain()];
  drv.addChain([{ byteLen: 4, write: true }]);
  drv.addChain([{ byteLen: 4, write: true }]);
  t.true(q.pop(cs[0]!));
  t.true(q.pop(cs[1]!));
  t.false(q.pop(new Chain()));
  q.unpop(2); // e.g. mergeable RX could not fit a packet
  t.false(q.enableNotification());
  t.is(drv.availEvent, 2); // kick me for the next new buffer
  drv.addChain([{ byteLen: 4, write: true }]);
  t.true(drv.kick());
  t.true(q.enableNotification());
  t.is(q.availableCount(), 3);
});

test('drain: budget, notifications left off while more work remains, re-enabled at the end', (t) => {
  const { drv, q } = rig(16);
  for (let i = 0; i < 10; i++) drv.addChain([{ byteLen: 4, write: true }]);
  const w = new ChainWriter();
  const fn = (c: ChainT) => {
    w.reset(c);
    return w.write(new Uint8Array([c.head]));
  };
  const plan = createDrainPlan(fn, 4);
  let r = q.drain(plan);
  t.deepEqual(r, { processed: 4, notify: true, more: true, stopped: false });
  t.is(drv.usedFlags, VIRTQ_USED_F_NO_NOTIFY);
  t.is(drv.usedIdx, 4);
  r = q.drain(plan);
  t.is(r.processed, 4);
  t.true(r.more);
  r = q.drain(plan);
  t.deepEqual(r, { processed: 2, notify: true, more: false, stopped: false });
  t.is(drv.usedFlags, 0);
  const used = drv.readUsed();
  t.is(used.length, 10);
  for (const u of used) t.deepEqual([...u.data!], [u.id]);
  t.is(q.stats.flushes, 3);
});

test('drain: exactly budget chains and nothing left ends with notifications enabled', (t) => {
  const { drv, q } = rig(8, { eventIdx: true });
  for (let i = 0; i < 4; i++) drv.addChain([{ byteLen: 4, write: true }]);
  const r = q.drain(createDrainPlan(() => 0, 4));
  t.deepEqual(r, { processed: 4, notify: true, more: false, stopped: false });
  t.is(drv.availEvent, 4);
});

test('drain re-checks after enabling: a chain that raced with enableNotification is processed', (t) => {
  for (const eventIdx of [false, true]) {
    const { drv, q } = rig(8, { eventIdx });
    drv.addChain([{ byteLen: 4, write: true }]);
    const orig = q.enableNotification.bind(q);
    let raced = false;
    q.enableNotification = () => {
      if (!raced) {
        raced = true;
        drv.addChain([{ byteLen: 4, write: true }]); // the driver adds it just before we re-enable
        drv.kick(); // whatever it decides, drain must not depend on that kick
      }
      return orig();
    };
    const heads: number[] = [];
    const r = q.drain(
      createDrainPlan((c) => {
        heads.push(c.head);
        return 1;
      }, 64),
    );
    t.is(r.processed, 2, `eventIdx=${eventIdx}`);
    t.false(r.more);
    t.is(heads.length, 2);
    t.is(q.availableCount(), 0);
    t.true(q.notificationsEnabled);
  }
});

test('drain: fn returning false gives the chain back, re-enables notifications, reports stopped', (t) => {
  const { drv, q } = rig(8);
  const heads = [0, 1, 2].map(() => drv.addChain([{ byteLen: 4, write: true }]));
  let calls = 0;
  const r = q.drain(createDrainPlan((c) => (++calls === 2 ? false : c.head), 64));
  t.deepEqual(r, { processed: 1, notify: true, more: false, stopped: true });
  t.is(q.lastAvailIdx, 1);
  t.is(q.availableCount(), 2);
  t.is(drv.usedFlags, 0);
  const c = new Chain();
  t.true(q.pop(c));
  t.is(c.head, heads[1]!);
});

test('drain on a queue that breaks mid-way stops, keeps what was completed, and does not throw', (t) => {
  const { drv, q } = rig(8);
  drv.addChain([{ byteLen: 4, write: true }]);
  drv.pushHead(99);
  drv.addChain([{ byteLen: 4, write: true }]);
  const r = q.drain(createDrainPlan(() => 0, 64));
  t.is(r.processed, 1);
  t.is(q.broken?.code, 'VQ_BAD_HEAD');
  t.is(drv.usedIdx, 1);
  t.deepEqual(q.drain(createDrainPlan(() => 0, 64)), { processed: 0, notify: false, more: false, stopped: false });
});
