/**
 * The native calls that keep postcopy off the event loop (native/src/prefault.cc, mmap.cc mmapAlias): mincore
 * (is a page of our mapping resident?), prefault (touch pages on a helper thread, call back on the loop),
 * mmapAlias (the same pages at a second address, which alone is registered with the userfaultfd).
 *
 * The main thread plays the frontend (QEMU's part): it reads the faults the helper threads raise and places the
 * pages with UFFDIO_COPY. It never touches a registered page that may be missing itself: it would block forever.
 * Every test closes its uffd in its cleanup, which wakes any still-blocked helper. Requires `npm run
 * build:native`, root (or vm.unprivileged_userfaultfd=1).
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { DEFAULT_NATIVE_PATH, native, UFFD_PAGEFAULT_FLAG_WRITE } from '../../native/index.ts';
import type { SysError } from '../../native/index.ts';
import { BPAGE, PAGE, cleanup, mapped, memfd, openUffd, pattern, stillPending } from '../helpers/uffd.ts';

const code = (e: unknown) => (e as SysError).code;

/** A prefault as a promise of the time its callback ran. */
function prefault(ab: ArrayBuffer, offset: number, byteLen: number): Promise<number> {
  return new Promise((resolve) => native.prefault(ab, offset, byteLen, () => resolve(performance.now())));
}


/** Counts event-loop turns (a 2 ms interval) until stopped: proof the loop was never blocked meanwhile. */
function ticker(later: (s: () => unknown) => void) {
  let ticks = 0;
  let longest = 0;
  let last = performance.now();
  const iv = setInterval(() => {
    const now = performance.now();
    longest = Math.max(longest, now - last);
    last = now;
    ticks++;
  }, 2);
  later(() => clearInterval(iv));
  return {
    get ticks() {
      return ticks;
    },
    /** The longest gap between two ticks so far (ms). */
    get longest() {
      return longest;
    },
  };
}

/** Runs `body` in a child node with `n` (the addon) and --expose-gc; resolves with its stdout and exit. */
function child(body: string): Promise<{ code: number | null; signal: NodeJS.Signals | null; out: string; err: string }> {
  const script = `const n = require(${JSON.stringify(DEFAULT_NATIVE_PATH)});\n${body}`;
  return new Promise((resolve, reject) => {
    const c = spawn('sh', ['-c', 'ulimit -c 0; exec "$0" --expose-gc -e "$1"', process.execPath, script], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    c.stdout.on('data', (d: Buffer) => (out += d.toString()));
    c.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => c.kill('SIGKILL'), 15000);
    c.on('error', reject);
    c.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, out, err });
    });
  });
}

// ---------------------------------------------------------------- mincore

test('mincore: page-cache residency of a shared memfd mapping, seen from every mapping of it; clamped offsets; argument checks', (t) => {
  const later = cleanup(t);
  const fd = memfd(later, 'mincore', 8 * PAGE);
  const ab = mapped(later, fd, 0, 8 * PAGE);
  const other = mapped(later, fd, 0, 8 * PAGE);
  const shifted = mapped(later, fd, PAGE + 100, 4 * PAGE); // byte 0 = file offset PAGE + 100
  t.is(native.mincore(ab, 0, 8 * PAGE), 0, 'a fresh memfd has no page');
  t.is(native.mincore(ab, 0, 0), -1, 'an empty range is resident');

  new Uint8Array(ab)[2 * PAGE + 7] = 1; // page 2 now in the page cache
  t.is(native.mincore(ab, 2 * PAGE, PAGE), -1);
  t.is(native.mincore(ab, 2 * PAGE + 10, 100), -1);
  t.is(native.mincore(ab, 2 * PAGE + 10, PAGE), 3 * PAGE, 'the first byte of the first missing page');
  t.is(native.mincore(ab, 3 * PAGE + 5, 10), 3 * PAGE + 5, 'clamped to the start of the range');
  t.is(native.mincore(ab, PAGE, 3 * PAGE), PAGE);
  t.is(native.mincore(other, 2 * PAGE, PAGE), -1, 'resident for a mapping that never touched it');
  t.is(native.mincore(shifted, PAGE - 100, 10), -1, 'file page 2 through an unaligned mapping');
  t.is(native.mincore(shifted, 0, 10), 0, 'file page 1 is not there');
  t.is(native.mincore(shifted, PAGE - 101, 2), PAGE - 101);

  t.is(native.madvise(ab, 2 * PAGE, PAGE, 'remove'), PAGE);
  t.is(native.mincore(other, 2 * PAGE, PAGE), 2 * PAGE, 'a punched page is missing again');
  t.is(native.mincore(ab, 0, 8 * PAGE), 0);

  t.is(code(t.throws(() => native.mincore(ab, 8 * PAGE, 1))), 'ERR_OUT_OF_RANGE');
  t.is(code(t.throws(() => native.mincore(ab, -1, 1))), 'ERR_OUT_OF_RANGE');
  const foreign = t.throws(() => native.mincore(new ArrayBuffer(PAGE), 0, 1)) as SysError;
  t.is(foreign.code, 'EINVAL');
  t.is(foreign.syscall, 'mincore');
  const gone = native.mmap(fd, 0, PAGE, true);
  native.munmap(gone);
  t.is(code(t.throws(() => native.mincore(gone, 0, 1))), 'EINVAL');
});

test('mincore: UFFDIO_COPY / UFFDIO_ZEROPAGE into the registered mapping make the page resident for every mapping of the memfd; an unplaced page stays missing and asking raises no fault', (t) => {
  const later = cleanup(t);
  const uffd = openUffd(later);
  const fd = memfd(later, 'mincore-uffd', 4 * PAGE);
  const reg = mapped(later, fd, 0, 4 * PAGE);
  const plain = mapped(later, fd, 0, 4 * PAGE);
  native.uffdRegister(uffd.fd, reg, 0, 4 * PAGE, 'missing');
  t.is(native.mincore(reg, 0, 4 * PAGE), 0);
  t.is(native.mincore(plain, 0, 4 * PAGE), 0);

  const src = pattern(PAGE, 5);
  t.is(native.uffdCopy(uffd.fd, reg, PAGE, src), PAGE);
  t.is(native.mincore(reg, PAGE, PAGE), -1, 'placed: resident in the registered mapping');
  t.is(native.mincore(plain, PAGE, PAGE), -1, 'and in the page cache, for any other mapping');
  t.deepEqual(new Uint8Array(plain, PAGE, PAGE), src);
  t.is(native.uffdZeropage(uffd.fd, reg, 2 * PAGE, PAGE), PAGE);
  t.is(native.mincore(plain, 2 * PAGE, PAGE), -1, 'a zero page placed on shmem is a page-cache page too');
  t.is(native.mincore(reg, 0, 4 * PAGE), 0, 'page 0 never placed');
  t.is(native.mincore(reg, PAGE, 3 * PAGE), 3 * PAGE, 'page 3 never placed');
  t.is(native.uffdRead(uffd.fd), null, 'mincore never faults');
  t.is(uffd.pending(), 0);
});

// ---------------------------------------------------------------- mmapAlias

test('mmapAlias: the same pages at another address (aligned and unaligned sources); released on its own; refuses what is not a live mapping', (t) => {
  const later = cleanup(t);
  const fd = memfd(later, 'alias', 4 * PAGE);
  const src = mapped(later, fd, 0, 4 * PAGE);
  const alias = native.mmapAlias(src);
  later(() => native.munmap(alias));
  t.is(alias.byteLength, src.byteLength);
  t.not(native.mmapAddress(alias), native.mmapAddress(src));
  t.is(native.mmapAddress(alias) % BPAGE, 0n);
  new Uint8Array(src)[PAGE + 3] = 0x5a;
  t.is(new Uint8Array(alias)[PAGE + 3], 0x5a);
  new Uint8Array(alias)[3 * PAGE] = 0xa5;
  t.is(new Uint8Array(src)[3 * PAGE], 0xa5);

  const shifted = mapped(later, fd, PAGE + 100, 2 * PAGE);
  const shiftedAlias = native.mmapAlias(shifted);
  later(() => native.munmap(shiftedAlias));
  t.is(shiftedAlias.byteLength, 2 * PAGE);
  t.is(native.mmapAddress(shiftedAlias) % BPAGE, 100n, 'same sub-page offset');
  t.is(new Uint8Array(shiftedAlias)[2 * PAGE - 100], 0xa5, 'byte 0 is file offset PAGE + 100');

  native.munmap(alias);
  t.is(code(t.throws(() => native.mmapAddress(alias))), 'EINVAL');
  t.is(new Uint8Array(src)[PAGE + 3], 0x5a, 'the source is untouched');
  t.is(native.mincore(src, PAGE, PAGE), -1);
  const foreign = t.throws(() => native.mmapAlias(new ArrayBuffer(PAGE))) as SysError;
  t.is(foreign.code, 'EINVAL');
  t.is(foreign.syscall, 'mmapAlias');
  const gone = native.mmap(fd, 0, PAGE, true);
  native.munmap(gone);
  t.is(code(t.throws(() => native.mmapAlias(gone))), 'EINVAL');
  t.is(code(t.throws(() => native.mmapAlias(new Uint8Array(4) as unknown as ArrayBuffer))), 'ERR_INVALID_ARG_TYPE');
});

test('mmapAlias: with only the alias registered, the source never faults to the uffd (a missing page read through it is allocated, the loop never waits)', (t) => {
  const later = cleanup(t);
  const uffd = openUffd(later);
  const fd = memfd(later, 'alias-uffd', 2 * PAGE);
  const src = mapped(later, fd, 0, 2 * PAGE);
  const alias = native.mmapAlias(src);
  later(() => native.munmap(alias));
  native.uffdRegister(uffd.fd, alias, 0, 2 * PAGE, 'missing');
  t.is(native.mincore(alias, 0, 2 * PAGE), 0);
  // Were the source registered too, this read would block this thread forever.
  t.is(new Uint8Array(src)[PAGE + 1], 0);
  t.is(native.uffdRead(uffd.fd), null, 'no fault');
  t.is(native.mincore(alias, PAGE, PAGE), -1, 'the page exists now, for the alias too');
  t.is(code(t.throws(() => native.uffdCopy(uffd.fd, alias, PAGE, pattern(PAGE, 1)))), 'EEXIST');
});

test('mmapAlias: the alias of a guarded mapping is guarded too (a shrunk file reads zeros through it instead of killing)', async (t) => {
  const r = await child(`
const P = ${PAGE};
const fd = n.memfdCreate('alias-guard', false); n.ftruncate(fd, 2 * P);
const src = n.mmap(fd, 0, 2 * P, true);
n.guardMapping(src);
const alias = n.mmapAlias(src);
new Uint8Array(alias)[P] = 7;
n.ftruncate(fd, P);
console.log('read', new Uint8Array(alias)[P + 1]);`);
  t.is(r.signal, null, r.err);
  t.is(r.out.trim(), 'read 0');
  const unguarded = await child(`
const P = ${PAGE};
const fd = n.memfdCreate('alias-noguard', false); n.ftruncate(fd, 2 * P);
const alias = n.mmapAlias(n.mmap(fd, 0, 2 * P, true));
n.ftruncate(fd, P);
console.log('read', new Uint8Array(alias)[P + 1]);`);
  t.is(unguarded.signal, 'SIGBUS', 'the alias of an unguarded mapping is not guarded (the control)');
});

// ---------------------------------------------------------------- prefault

test.serial('prefault: a missing page is touched on a helper thread, the fault reaches the uffd, the callback comes once the page is placed; the loop never stops meanwhile', async (t) => {
  const later = cleanup(t);
  const uffd = openUffd(later);
  const fd = memfd(later, 'prefault', 4 * PAGE);
  const reg = mapped(later, fd, 0, 4 * PAGE);
  const plain = new Uint8Array(mapped(later, fd, 0, 4 * PAGE));
  const base = native.mmapAddress(reg);
  native.uffdRegister(uffd.fd, reg, 0, 4 * PAGE, 'missing');
  const loop = ticker(later);

  const done = prefault(reg, PAGE + 10, 20);
  const f = await uffd.next();
  t.is(f.event, 'pagefault');
  t.is(f.address & ~(BPAGE - 1n), base + BPAGE, 'the fault is at the page asked for');
  t.is(f.flags & UFFD_PAGEFAULT_FLAG_WRITE, 0, 'a read touch');
  const before = loop.ticks;
  t.true(await stillPending(done, 300), 'no callback while the page is missing');
  t.true(loop.ticks - before >= 30, `the loop kept turning (${loop.ticks - before} ticks in 300 ms)`);
  t.is(native.mincore(reg, PAGE, PAGE), PAGE);

  const src = pattern(PAGE, 9);
  const placedAt = performance.now();
  t.is(native.uffdCopy(uffd.fd, reg, PAGE, src), PAGE);
  const calledAt = await done;
  t.true(calledAt >= placedAt, 'the callback came after the placement');
  t.is(native.mincore(reg, PAGE, PAGE), -1);
  t.deepEqual(plain.subarray(PAGE, 2 * PAGE), src);
  t.true(loop.longest < 250, `no long stall of the loop (longest gap ${loop.longest.toFixed(1)} ms)`);
  t.is(uffd.pending(), 0);
});

test.serial('prefault: several pages and several prefaults at once: each missing page faults once, callbacks follow the placements; resident pages do not fault', async (t) => {
  const later = cleanup(t);
  const uffd = openUffd(later);
  const fd = memfd(later, 'prefault-many', 8 * PAGE);
  const reg = mapped(later, fd, 0, 8 * PAGE);
  const base = native.mmapAddress(reg);
  native.uffdRegister(uffd.fd, reg, 0, 8 * PAGE, 'missing');
  t.is(native.uffdZeropage(uffd.fd, reg, 0, PAGE), PAGE); // page 0 resident
  const loop = ticker(later);

  // Resident only: completes with no fault.
  await prefault(reg, 0, PAGE);
  t.is(native.uffdRead(uffd.fd), null);

  // Pages 0..2 in one prefault: page 0 is there, 1 and 2 fault one after the other.
  const run = prefault(reg, 0, 3 * PAGE);
  // Two more prefaults, each on a page of its own (5 and 6).
  const p5 = prefault(reg, 5 * PAGE, PAGE);
  const p6 = prefault(reg, 6 * PAGE + 100, 1);
  const seen = new Set<bigint>();
  for (let i = 0; i < 3; i++) seen.add(((await uffd.next()).address - base) / BPAGE);
  t.deepEqual([...seen].sort(), [1n, 5n, 6n], 'three helpers wait, each on its page');
  t.true(await stillPending(Promise.race([run, p5, p6]), 100));

  native.uffdCopy(uffd.fd, reg, 6 * PAGE, pattern(PAGE, 6));
  const t6 = await p6;
  t.true(await stillPending(Promise.race([run, p5]), 100), 'only the prefault of page 6 completed');
  native.uffdCopy(uffd.fd, reg, PAGE, pattern(PAGE, 1));
  t.is(((await uffd.next()).address - base) / BPAGE, 2n, 'the run goes on to page 2');
  t.true(await stillPending(run, 100));
  native.uffdCopy(uffd.fd, reg, 2 * PAGE, pattern(PAGE, 2));
  native.uffdCopy(uffd.fd, reg, 5 * PAGE, pattern(PAGE, 5));
  const [tRun, t5] = await Promise.all([run, p5]);
  t.true(t6 < tRun && t6 < t5);
  t.is(native.mincore(reg, 0, 3 * PAGE), -1);
  t.true(loop.longest < 250, `no long stall of the loop (longest gap ${loop.longest.toFixed(1)} ms)`);
});

test('prefault: argument checks (nothing is started or left pinned on a refusal)', (t) => {
  const later = cleanup(t);
  const fd = memfd(later, 'prefault-args', 2 * PAGE);
  const ab = mapped(later, fd, 0, 2 * PAGE);
  const cb = () => t.fail('no callback for a refused prefault');
  t.is(code(t.throws(() => native.prefault(ab, 0, 0, cb))), 'ERR_OUT_OF_RANGE');
  t.is(code(t.throws(() => native.prefault(ab, PAGE, PAGE + 1, cb))), 'ERR_OUT_OF_RANGE');
  t.is(code(t.throws(() => native.prefault(ab, -1, 1, cb))), 'ERR_OUT_OF_RANGE');
  t.is(code(t.throws(() => native.prefault(ab, 0, 1, 'cb' as unknown as () => void))), 'ERR_INVALID_ARG_TYPE');
  const foreign = t.throws(() => native.prefault(new ArrayBuffer(PAGE), 0, 1, cb)) as SysError;
  t.is(foreign.code, 'EINVAL');
  t.is(foreign.syscall, 'prefault');
  const gone = native.mmap(fd, 0, PAGE, true);
  native.munmap(gone);
  t.is(code(t.throws(() => native.prefault(gone, 0, 1, cb))), 'EINVAL');
  // A mapping a refused call had pinned would keep its range after munmap() + GC; munmap() itself still works.
  t.notThrows(() => native.munmap(ab));
});

test.serial('prefault: a mapping retired (munmap) while its helper waits: woken, the helper reads the zero page and calls back; the file gains no page', async (t) => {
  const later = cleanup(t);
  const uffd = openUffd(later);
  const fd = memfd(later, 'prefault-retire', 2 * PAGE);
  const plain = mapped(later, fd, 0, 2 * PAGE);
  const reg = native.mmap(fd, 0, 2 * PAGE, true);
  const base = native.mmapAddress(reg);
  native.uffdRegister(uffd.fd, reg, 0, 2 * PAGE, 'missing');
  const done = prefault(reg, PAGE, 1);
  t.is((await uffd.next()).address & ~(BPAGE - 1n), base + BPAGE);
  native.munmap(reg); // the session closes: zero pages replace the mapping
  t.true(await stillPending(done, 150), 'still blocked until woken');
  native.uffdWake(uffd.fd, base, PAGE, PAGE);
  await done;
  t.is(native.mincore(plain, 0, 2 * PAGE), 0, 'no page was allocated in the memfd');
  t.is(native.uffdRead(uffd.fd), null, 'the retried touch did not fault again');
});

test('prefault: a pinned mapping keeps its address range when its buffer is collected meanwhile, and gives it back after the callback', async (t) => {
  const r = await child(`
const P = ${PAGE};
const { readFileSync } = require('node:fs');
const mapped = (a) => readFileSync('/proc/self/maps', 'utf8').split('\\n').some((l) => l.startsWith(a.toString(16) + '-'));
const fd = n.memfdCreate('prefault-gc', false); n.ftruncate(fd, 2 * P);
const uffd = n.userfaultfd(true); n.uffdApi(uffd, 0n);
let address = 0n;
(() => {
  const reg = n.mmap(fd, 0, 2 * P, true);
  address = n.mmapAddress(reg);
  n.uffdRegister(uffd, reg, 0, 2 * P, 'missing');
  n.prefault(reg, P, 1, () => {
    const during = globalThis.during;
    gc();
    setImmediate(() => { gc(); setTimeout(() => { console.log(JSON.stringify({ during, after: mapped(address) })); process.exit(0); }, 50); });
  });
})();
const waitFault = () => { const m = n.uffdRead(uffd); if (m === null) return setTimeout(waitFault, 5);
  gc(); setImmediate(() => { gc(); setTimeout(() => {
    globalThis.during = mapped(address);
    n.uffdCopy(uffd, address, P, new Uint8Array(P).fill(1));
  }, 50); }); };
waitFault();
setInterval(() => {}, 1000);`);
  t.is(r.signal, null, r.err);
  t.deepEqual(JSON.parse(r.out), { during: true, after: false });
});
