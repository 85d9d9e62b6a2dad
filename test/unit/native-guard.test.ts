/**
 * Memory that shrinks after it was mapped (issue 15): file seals (addSeals / getSeals) and the SIGBUS guard
 * (guardMapping, native/src/guard.cc) on real memfds, and their use by the owners of frontend mappings:
 * the memory table, the dirty log and the inflight buffer (backend/core/memory-table.ts MappingGuards).
 *
 * The guarded faults happen in THIS process on purpose: if the guard did not work, the test run would die
 * of SIGBUS. Faults that must still kill run in a child process, which must die of SIGBUS.
 */
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { DEFAULT_NATIVE_PATH, F_SEAL, native } from '../../native/index.ts';
import type { Fd, SysError } from '../../native/index.ts';
import { MemoryTable } from '../../backend/core/memory-table.ts';
import { Migration } from '../../backend/core/migration.ts';
import { InflightBuffer } from '../../backend/core/inflight-buffer.ts';
import { readU32, type SplitInflight } from '../../virtqueue/index.ts';
import { quiet } from '../helpers/quiet.ts';

const PAGE = 4096;

function fdTracker(t: ExecutionContext) {
  const open = new Set<Fd>();
  t.teardown(() => {
    for (const fd of open) native.close(fd);
  });
  return <T extends Fd>(fd: T): T => {
    open.add(fd);
    return fd;
  };
}

/** A memfd of `bytes` whose every 32-bit word at a page start holds its page number + 1. */
function memfd(own: (fd: Fd) => Fd, name: string, bytes: number, allowSealing: boolean): Fd {
  const fd = own(native.memfdCreate(name, allowSealing));
  native.ftruncate(fd, bytes);
  const page = new Uint8Array(4);
  for (let p = 0; p < bytes / PAGE; p++) {
    new DataView(page.buffer).setUint32(0, p + 1, true);
    if (native.pwrite(fd, page, 0, 4, p * PAGE) !== 4) throw new Error('short pwrite');
  }
  return fd;
}

/** Resolves with the next report of onGuestMemoryFault (the one callback of this process). */
function nextFault(ms = 2000): Promise<number[]> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      native.onGuestMemoryFault(null);
      reject(new Error('no guest memory fault reported'));
    }, ms);
    native.onGuestMemoryFault((ids) => {
      clearTimeout(timer);
      native.onGuestMemoryFault(null);
      resolve(ids);
    });
  });
}

/** Runs `body` in a child node (with `n`, the addon); resolves with how it ended and what it printed. */
function child(body: string): Promise<{ code: number | null; signal: NodeJS.Signals | null; out: string; err: string }> {
  const script = `const n = require(${JSON.stringify(DEFAULT_NATIVE_PATH)});\n${body}`;
  return new Promise((resolve, reject) => {
    // No core file for the deaths we expect.
    const c = spawn('sh', ['-c', 'ulimit -c 0; exec "$0" -e "$1"', process.execPath, script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout.on('data', (d: Buffer) => (out += d.toString()));
    c.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => c.kill('SIGKILL'), 10000);
    c.on('error', reject);
    c.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, out, err });
    });
  });
}

// ---------------------------------------------------------------- seals

test('addSeals / getSeals: F_SEAL_SHRINK on a sealable memfd makes ftruncate to a smaller size EPERM, growing still works', (t) => {
  const own = fdTracker(t);
  const fd = memfd(own, 'sealable', 2 * PAGE, true);
  t.is(native.getSeals(fd), 0, 'born with no seals when sealing is allowed');
  native.addSeals(fd, F_SEAL.shrink);
  native.addSeals(fd, F_SEAL.shrink); // a seal already present: no error
  t.is(native.getSeals(fd), F_SEAL.shrink);
  const e = t.throws(() => native.ftruncate(fd, PAGE)) as SysError;
  t.is(e.code, 'EPERM');
  t.notThrows(() => native.ftruncate(fd, 3 * PAGE), 'F_SEAL_SHRINK leaves growing alone');
  t.is(native.fstat(fd).size, 3 * PAGE);
});

test('addSeals: EPERM on a memfd born without MFD_ALLOW_SEALING (it carries F_SEAL_SEAL); EINVAL on an fd that is no memfd', (t) => {
  const own = fdTracker(t);
  const fd = memfd(own, 'unsealable', PAGE, false);
  t.is(native.getSeals(fd), F_SEAL.seal);
  const e = t.throws(() => native.addSeals(fd, F_SEAL.shrink)) as SysError;
  t.is(e.code, 'EPERM');
  t.is(e.errno, -1);
  t.is(e.syscall, 'fcntl');
  const ev = own(native.eventfd(0));
  const inv = t.throws(() => native.addSeals(ev, F_SEAL.shrink)) as SysError;
  t.is(inv.code, 'EINVAL');
  t.is((t.throws(() => native.getSeals(ev)) as SysError).code, 'EINVAL');
  t.is((t.throws(() => native.getSeals(1 << 30)) as SysError).code, 'EBADF');
});

// ---------------------------------------------------------------- the SIGBUS guard

test.serial('guard: a guarded mapping whose memfd is truncated to 0 reads zeros instead of killing us; the fault is reported once with its id', async (t) => {
  const own = fdTracker(t);
  const fd = memfd(own, 'shrunk', 4 * PAGE, false);
  const other = memfd(own, 'intact', 2 * PAGE, false);
  const ab = native.mmap(fd, 0, 4 * PAGE, true);
  const ok = native.mmap(other, 0, 2 * PAGE, true);
  t.teardown(() => {
    native.munmap(ab);
    native.munmap(ok);
  });
  const id = native.guardMapping(ab);
  const okId = native.guardMapping(ok);
  t.true(id > 0);
  t.not(id, okId);
  t.is(native.guardMapping(ab), id, 'guarding again returns the same id');
  const dv = new DataView(ab);
  t.is(dv.getUint32(2 * PAGE, true), 3, 'file-backed before the shrink');

  const reported = nextFault();
  native.ftruncate(fd, 0); // what a hostile frontend does after SET_MEM_TABLE
  t.is(dv.getUint32(2 * PAGE, true), 0, 'the access past the new end read a zero page');
  t.is(dv.getUint32(3 * PAGE + 100, true), 0);
  dv.setUint32(3 * PAGE, 0xdeadbeef, true);
  t.is(dv.getUint32(3 * PAGE, true), 0xdeadbeef, 'writes land in private memory');
  t.is(dv.getUint32(0, true), 0, 'a page before the first fault faults too and is repaired');
  t.deepEqual(await reported, [id], 'reported on the event loop, once');
  t.deepEqual(native.takeGuestMemoryFaults(), [], 'nothing left to take');
  t.is(new DataView(ok).getUint32(PAGE, true), 2, 'another guarded mapping is untouched');
});

test.serial('guard: without a callback the poisoned ids wait for takeGuestMemoryFaults; a later callback gets them', async (t) => {
  const own = fdTracker(t);
  const a = memfd(own, 'take-a', 2 * PAGE, false);
  const b = memfd(own, 'take-b', 2 * PAGE, false);
  const abA = native.mmap(a, 0, 2 * PAGE, false); // read-only: the zero pages are read-only too
  const abB = native.mmap(b, 0, 2 * PAGE, true);
  t.teardown(() => {
    native.munmap(abA);
    native.munmap(abB);
  });
  const idA = native.guardMapping(abA);
  const idB = native.guardMapping(abB);
  native.onGuestMemoryFault(null);
  native.ftruncate(a, 0);
  native.ftruncate(b, PAGE);
  t.is(new Uint8Array(abA)[PAGE + 7], 0);
  t.is(new Uint32Array(abB)[0], 1, 'page 0 of b is still in the file');
  t.is(new Uint32Array(abB)[PAGE / 4], 0, 'page 1 of b is not');
  await new Promise((r) => setTimeout(r, 20));
  t.deepEqual(native.takeGuestMemoryFaults().sort(), [idA, idB].sort());
  t.deepEqual(native.takeGuestMemoryFaults(), []);

  const c = memfd(own, 'take-c', PAGE, false);
  const abC = native.mmap(c, 0, PAGE, true);
  t.teardown(() => native.munmap(abC));
  const idC = native.guardMapping(abC);
  native.ftruncate(c, 0);
  t.is(new Uint8Array(abC)[1], 0);
  t.deepEqual(await nextFault(), [idC], 'a callback set after the fault is told');
});

test('guard: munmap and unguardMapping unregister; guardMapping refuses buffers that are not live mappings', (t) => {
  const own = fdTracker(t);
  const fd = memfd(own, 'unreg', PAGE, false);
  const ab = native.mmap(fd, 0, PAGE, true);
  const id = native.guardMapping(ab);
  t.true(native.unguardMapping(id));
  t.false(native.unguardMapping(id), 'already unregistered');
  const id2 = native.guardMapping(ab);
  t.true(id2 > id, 'ids are never reused');
  native.munmap(ab);
  t.false(native.unguardMapping(id2), 'munmap unregistered it');
  for (const bad of [ab, new ArrayBuffer(16)]) {
    const e = t.throws(() => native.guardMapping(bad)) as SysError;
    t.is(e.code, 'EINVAL');
    t.is(e.syscall, 'guardMapping');
  }
  t.false(native.unguardMapping(987654321));
});

test('guard: a GC-collected mapping is unregistered by its finalizer', async (t) => {
  const r = await new Promise<string>((resolve, reject) => {
    const script = `const n = require(${JSON.stringify(DEFAULT_NATIVE_PATH)});
const fd = n.memfdCreate('gcguard', false); n.ftruncate(fd, 4096);
let id = 0;
(() => { id = n.guardMapping(n.mmap(fd, 0, 4096, true)); })();
gc(); setImmediate(() => { gc(); setTimeout(() => { console.log(String(n.unguardMapping(id))); }, 50); });`;
    const c = spawn(process.execPath, ['--expose-gc', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let s = '';
    c.stdout.on('data', (d: Buffer) => (s += d.toString()));
    c.on('error', reject);
    c.on('close', () => resolve(s.trim()));
  });
  t.is(r, 'false');
});

test('guard: a SIGBUS outside every guarded mapping still kills the process (default action restored)', async (t) => {
  const setup = `const g = n.memfdCreate('g', false); n.ftruncate(g, 4096); const gid = n.guardMapping(n.mmap(g, 0, 4096, true));
const fd = n.memfdCreate('u', false); n.ftruncate(fd, 8192); const ab = n.mmap(fd, 0, 8192, true);`;
  // An unguarded mapping, shrunk.
  const plain = await child(`${setup}
n.ftruncate(fd, 0); console.log('reading'); console.log('read ' + new Uint8Array(ab)[4096]);`);
  t.is(plain.signal, 'SIGBUS', plain.err);
  t.is(plain.out.trim(), 'reading', 'died on the access');
  // A mapping that was guarded, then unregistered.
  const unguarded = await child(`${setup}
const id = n.guardMapping(ab); n.unguardMapping(id); n.ftruncate(fd, 0); console.log('read ' + new Uint8Array(ab)[0]);`);
  t.is(unguarded.signal, 'SIGBUS', unguarded.err);
  t.is(unguarded.out, '');
  // A guarded mapping in the same process works, for contrast.
  const guarded = await child(`${setup}
n.guardMapping(ab); n.ftruncate(fd, 0); console.log('read ' + new Uint8Array(ab)[4096]);`);
  t.is(guarded.signal, null, guarded.err);
  t.is(guarded.code, 0);
  t.is(guarded.out.trim(), 'read 0');
  // A SIGBUS sent with kill() is no fault of ours: it kills as before.
  const sent = await child(`${setup}
process.kill(process.pid, 'SIGBUS'); setTimeout(() => console.log('alive'), 500);`);
  t.is(sent.signal, 'SIGBUS');
  t.is(sent.out, '');
});

test('guard: a SIGBUS that is not ours goes to the handler installed before the guard', async (t) => {
  // Node's own handler (libuv's, installed by process.on) was there first: the guard chains to it.
  const r = await child(`process.on('SIGBUS', () => { console.log('listener'); process.exit(0); });
const g = n.memfdCreate('g', false); n.ftruncate(g, 4096); n.guardMapping(n.mmap(g, 0, 4096, true));
process.kill(process.pid, 'SIGBUS'); setTimeout(() => { console.log('no listener'); process.exit(3); }, 2000);`);
  t.is(r.signal, null, r.err);
  t.is(r.code, 0);
  t.is(r.out.trim(), 'listener');
});

// ---------------------------------------------------------------- the owners of frontend mappings

test.serial('MemoryTable: seals a sealable region against shrinking, leaves a sealed one (QEMU memory-backend-memfd) as it is', (t) => {
  const own = fdTracker(t);
  const table = new MemoryTable(native);
  t.teardown(() => table.close());
  const sealable = memfd(own, 'ram-sealable', 4 * PAGE, true);
  const qemu = memfd(own, 'ram-qemu', 4 * PAGE, true);
  native.addSeals(qemu, F_SEAL.shrink | F_SEAL.grow | F_SEAL.seal);
  const spec = (gpa: number) => ({ gpa: BigInt(gpa), byteLen: BigInt(4 * PAGE), uva: BigInt(0x7f0000000000 + gpa), mmapOffset: 0n });
  table.replace([spec(0), spec(0x100000)], [native.dup(sealable), native.dup(qemu)]);
  t.is(native.getSeals(sealable), F_SEAL.shrink, 'SHRINK only: never GROW, WRITE or SEAL on a frontend file');
  t.is(native.getSeals(qemu), F_SEAL.shrink | F_SEAL.grow | F_SEAL.seal);
  t.is((t.throws(() => native.ftruncate(sealable, 0)) as SysError).code, 'EPERM', 'the frontend can no longer shrink it');
  t.is(readU32(table.memory, 0x100000 + 2 * PAGE), 3);
});

test.serial('MemoryTable: an unsealable region shrunk under us reads zeros and its owner is told once, with the region', async (t) => {
  const own = fdTracker(t);
  const table = new MemoryTable(native);
  t.teardown(() => table.close());
  const reasons: string[] = [];
  table.onFault = (r) => reasons.push(r);
  const fd = memfd(own, 'ram-shrunk', 8 * PAGE, false);
  const keep = memfd(own, 'ram-kept', 2 * PAGE, false);
  table.replace(
    [
      { gpa: 0n, byteLen: BigInt(8 * PAGE), uva: 0x7f0000000000n, mmapOffset: 0n },
      { gpa: 0x40000n, byteLen: BigInt(2 * PAGE), uva: 0x7f0000040000n, mmapOffset: 0n },
    ],
    [native.dup(fd), native.dup(keep)],
  );
  t.is(native.getSeals(fd), F_SEAL.seal, 'could not be sealed');
  native.ftruncate(fd, 2 * PAGE);
  t.is(readU32(table.memory, PAGE), 2, 'below the new end: still the file');
  t.is(readU32(table.memory, 5 * PAGE), 0, 'past it: a zero page, no SIGBUS');
  t.is(readU32(table.memory, 7 * PAGE), 0);
  t.is(readU32(table.memory, 0x40000 + PAGE), 2, 'the other region is intact');
  await new Promise((r) => setTimeout(r, 50));
  t.is(reasons.length, 1);
  t.regex(reasons[0]!, /guest memory region at gpa 0x0 \(\+0x8000\) lost its memory/);
});

test.serial('MemoryTable: a released region is no longer guarded (REM_MEM_REG, replace, close)', async (t) => {
  const own = fdTracker(t);
  const table = new MemoryTable(native);
  const reasons: string[] = [];
  table.onFault = (r) => reasons.push(r);
  const fd = memfd(own, 'ram-released', 2 * PAGE, false);
  table.replace([{ gpa: 0n, byteLen: BigInt(2 * PAGE), uva: 0x7f0000000000n, mmapOffset: 0n }], [native.dup(fd)]);
  const view = new Uint8Array(table.views()[0]!.ab);
  table.close();
  native.ftruncate(fd, 0);
  t.is(view[PAGE], 0, 'a stale view reads the private zero pages munmap left, no fault');
  await quiet();
  t.deepEqual(reasons, []);
  t.deepEqual(native.takeGuestMemoryFaults(), []);
});

test.serial('Migration: a dirty log shrunk under us does not kill; the owner is told', async (t) => {
  const own = fdTracker(t);
  const m = new Migration(native);
  t.teardown(() => m.close());
  const reasons: string[] = [];
  m.onFault = (r) => reasons.push(r);
  const fd = memfd(own, 'log', 4 * PAGE, false);
  m.setLogBase(native.dup(fd), BigInt(4 * PAGE), 0n);
  native.ftruncate(fd, 0);
  // One log bit per 4 KiB page: gpa 256 MiB is bit 65536, in byte 8192, the log's third page.
  m.log!.mark(256 << 20, 4096);
  await new Promise((r) => setTimeout(r, 50));
  t.is(reasons.length, 1);
  t.regex(reasons[0]!, /the dirty log \(\+0x4000\) lost its memory/);
});

test.serial('InflightBuffer: the memfd we create is sealed SHRINK|GROW (and SEAL) once sized: the frontend can neither shrink nor grow it', (t) => {
  const buf = InflightBuffer.create(native, 'split', 2, 256);
  t.teardown(() => buf.close());
  const { fd, shape } = buf.describe();
  const seals = native.getSeals(fd);
  t.is(seals & (F_SEAL.shrink | F_SEAL.grow), F_SEAL.shrink | F_SEAL.grow);
  t.is(seals, F_SEAL.shrink | F_SEAL.grow | F_SEAL.seal);
  t.is(native.fstat(fd).size, Number(shape.mmapSize));
  t.is((t.throws(() => native.ftruncate(fd, 0)) as SysError).code, 'EPERM');
  t.is((t.throws(() => native.ftruncate(fd, Number(shape.mmapSize) * 2)) as SysError).code, 'EPERM');
  t.is((t.throws(() => native.addSeals(fd, F_SEAL.write)) as SysError).code, 'EPERM', 'nobody can add seals any more');
});

test.serial('InflightBuffer: a frontend buffer (SET_INFLIGHT_FD) is sealed against shrinking where it can be, guarded where not', async (t) => {
  const own = fdTracker(t);
  const bytes = 2 * 4160;
  const shape = { mmapSize: BigInt(bytes), mmapOffset: 0n, numQueues: 2, queueSize: 256 };
  const sealable = own(native.memfdCreate('inflight-sealable', true));
  native.ftruncate(sealable, bytes);
  const a = InflightBuffer.adopt(native, native.dup(sealable), 'split', shape);
  t.teardown(() => a.close());
  t.is(native.getSeals(sealable), F_SEAL.shrink);

  const unsealable = own(native.memfdCreate('inflight-unsealable', false));
  native.ftruncate(unsealable, bytes);
  const b = InflightBuffer.adopt(native, native.dup(unsealable), 'split', shape);
  t.teardown(() => b.close());
  const reasons: string[] = [];
  b.onFault = (r) => reasons.push(r);
  native.ftruncate(unsealable, 0);
  (b.regionFor(1, 256) as SplitInflight).init();
  await new Promise((r) => setTimeout(r, 50));
  t.is(reasons.length, 1);
  t.regex(reasons[0]!, /the inflight buffer \(\+8320\) lost its memory/);
});

test.serial('MappingGuards: a fault before the owner has a sink is delivered when the sink is set', async (t) => {
  const own = fdTracker(t);
  const unsealable = own(native.memfdCreate('inflight-early', false));
  native.ftruncate(unsealable, 4160);
  const b = InflightBuffer.adopt(native, native.dup(unsealable), 'split', { mmapSize: 4160n, mmapOffset: 0n, numQueues: 1, queueSize: 256 });
  t.teardown(() => b.close());
  native.ftruncate(unsealable, 0);
  (b.regionFor(0, 256) as SplitInflight).init();
  await new Promise((r) => setTimeout(r, 50));
  const got = await new Promise<string>((resolve) => (b.onFault = resolve));
  t.regex(got, /inflight buffer/);
});
