import test from 'ava';
import { DirtyLog, LOG_PAGE } from '../../virtqueue/dirty-log.ts';

test('mark: every 4 KiB page a write touches gets its bit (byte p/8, bit p%8), nothing else', (t) => {
  const log = new DirtyLog(new Uint8Array(16)); // 128 pages
  log.mark(0x1fff, 2); // last byte of page 1, first of page 2
  log.mark(10 * LOG_PAGE, 1);
  log.mark(20 * LOG_PAGE + 5, 3 * LOG_PAGE); // pages 20..23
  t.deepEqual(log.dirtyPages(), [1, 2, 10, 20, 21, 22, 23]);
  t.is(log.bits[0], 0b0000_0110);
  t.is(log.bits[1], 0b0000_0100);
  t.true(log.isDirty(0x2000));
  t.false(log.isDirty(0x3000));
  log.mark(0x5000, 0);
  t.false(log.isDirty(0x5000), 'an empty write marks nothing');
});

test('mark ORs into bits the frontend set or cleared meanwhile (shared bitmap, atomic OR)', (t) => {
  const bits = new Uint8Array(new SharedArrayBuffer(4));
  const log = new DirtyLog(bits);
  bits[0] = 0b1000_0000; // set by "the frontend"
  log.mark(0, 1);
  t.is(bits[0], 0b1000_0001);
  bits[0] = 0; // the frontend synced (cleared) the byte
  log.mark(0, 1);
  t.is(bits[0], 1, 'a page written again after a sync is marked again');
});

test('writes beyond the bitmap are counted as overflows and write nothing out of bounds', (t) => {
  const backing = new Uint8Array(8);
  const log = new DirtyLog(backing.subarray(0, 2)); // 16 pages
  t.is(log.coveredBytes, 16 * LOG_PAGE);
  log.mark(15 * LOG_PAGE, 2 * LOG_PAGE); // page 15 in, page 16 out
  t.deepEqual(log.dirtyPages(), [15]);
  t.is(log.overflows, 1);
  t.deepEqual([...backing.subarray(2)], [0, 0, 0, 0, 0, 0], 'bytes after the log untouched');
  t.false(log.isDirty(100 * LOG_PAGE));
});
