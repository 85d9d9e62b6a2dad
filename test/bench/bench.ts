/**
 * Throughput benchmark: vhost-user-ts against DPDK's own vhost-user backend, same topology, run alternately.
 *
 *   npm run bench -- [--runs N] [--window S] [--warmup S] [--sizes 64,1518] [--packed] [--only dpdk|ours]
 *                    [--quick] [--inflight N] [--queue-sizes 256,1024] [--cpu-prof DIR] [--json FILE]
 *
 * Topology (the only one that measures a two-socket switch on 2 cores, see test/helpers/testpmd.ts):
 *
 *      frontend testpmd (virtio-user x2, io fwd, `start tx_first`), all threads on cpu 0
 *        port0 ──s0──▶ ┌──────────── backend, all threads on cpu 1 ────────────┐ ──s1──▶ port1
 *        port0 ◀──s0── │ DPDK: testpmd net_vhost0/1, io fwd   | ours: vhost-user-ts │ ◀──s1── port1
 *                      └────────────────────────────────────────────────────────┘
 *
 * The frontend's io engine sends what port1 receives out of port0 and vice versa, so after `tx_first` the
 * same frames circulate in both directions; `--inflight N` (tx_first N) bursts of 32 per port are in flight.
 * The figure is the frontend's RX rate per port (both ports carry one direction each; the backend switches the
 * sum). One busy poller per core: never two on one core (test-rig-facts.md 3.2: that collapses 500x).
 *
 * Every run starts fresh processes. Runs alternate DPDK, ours, DPDK, ours ... per configuration, because the
 * machine's speed drifts over minutes (test-rig-facts.md 3.6: bimodal; never compare with numbers from another
 * time). Each run: warm-up, then a fixed window whose RX counters are read before and after
 * (`show port stats all`, cumulative counters). Also recorded per run: core-to-core latency before/after
 * (c2c.c; > 200 ns means the host placed the vCPUs "far"), CPU time used by processes that are not part of the
 * benchmark during the window ("foreign"; above 10% of a core the run is repeated, at most twice, and left out
 * of the medians), steal time, the backend's RSS at the end, and
 * for ours GC count / GC time / event-loop utilisation over the window (gc-count.mjs preload, SIGUSR2 marks).
 *
 * Ring sizes: both 256 (DPDK virtio-user's default) and 1024 by default. vhost-user-ts completes TX chains
 * (publishes used.idx) once per drain pass of up to TX_BUDGET = 256 chains, so with a 256-entry TX ring the
 * frontend gets no TX descriptor back while a pass runs; its io engine drops what it cannot send and the loop
 * empties (0 Mpps). 1024 entries leave room and show the engine's throughput. See spec-notes/performance.md.
 *
 * Packed rings (`--packed` or `--rings packed`): measured for ours only if NetDevice offers VIRTIO_F_RING_PACKED
 * (checked from NET_FEATURES); otherwise virtio-user would silently fall back to a split ring, so ours is listed as
 * "unsupported" and only DPDK is measured.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { quitAll, startTestpmd, killAllTestpmds, type Testpmd } from '../helpers/testpmd.ts';
import { summarizeProfile, formatSummary } from './prof-summary.ts';
import { NET_FEATURES } from '../../backend/net/device/net-device.ts';
import { VirtioF, has } from '../../protocol/index.ts';

/** Whether vhost-user-ts offers packed rings (otherwise virtio-user would silently fall back to split). */
const OURS_PACKED = has(NET_FEATURES, VirtioF.RING_PACKED);

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BIN = join(ROOT, 'bin/vhost-user-ts.js');
const GC_PRELOAD = join(ROOT, 'test/bench/gc-count.mjs');
const C2C_SRC = join(ROOT, 'test/bench/c2c.c');
const TESTPMD = '/usr/bin/dpdk-testpmd';
/** c2c latency above this (ns) = the two vCPUs sit far apart (test-rig-facts.md §3.6: ≈ 55 vs ≈ 320 ns). */
const C2C_FAR_NS = 200;
const BACKEND_CPU = 1;
const FRONTEND_CPU = 0;
const BURST = 32;
/** % of one core used by other processes during a window above which the run is excluded and retried. */
const FOREIGN_LIMIT = 10;
const MAX_RETRIES = 2;

type Impl = 'dpdk' | 'ours';
type Ring = 'split' | 'packed';

interface Opts {
  runs: number;
  window: number;
  warmup: number;
  sizes: number[];
  rings: Ring[];
  only: Impl | null;
  inflight: number;
  queueSizes: number[];
  cpuProf: string | null;
  json: string;
  quick: boolean;
}

interface Config {
  ring: Ring;
  size: number;
  queueSize: number;
}

interface GcMark {
  t: number;
  total: number;
  minor: number;
  major: number;
  incremental: number;
  weakcb: number;
  gcMs: number;
  eluIdleMs: number;
  eluActiveMs: number;
  heapUsed: number;
}

interface RunResult {
  impl: Impl;
  ring: Ring;
  size: number;
  queueSize: number;
  run: number;
  status: 'ok' | 'unsupported' | 'error';
  error?: string;
  /** Frontend RX rate per port over the window, Mpps [port0, port1]. */
  portMpps?: [number, number];
  /** Mean of the two ports. */
  mpps?: number;
  gbpsPerPort?: number;
  windowS?: number;
  c2cBefore?: number | null;
  c2cAfter?: number | null;
  /** % of one core used by processes outside the benchmark during the window, and steal time. */
  foreignPct?: number;
  stealPct?: number;
  backendCpuPct?: number;
  frontendCpuPct?: number;
  backendCtxSwPerS?: { voluntary: number; involuntary: number };
  rss?: { vmRssKiB: number; vmHwmKiB: number; rssAnonKiB: number; rssShmemKiB: number; rssFileKiB: number };
  gc?: { count: number; minor: number; major: number; gcMs: number; elu: number; heapUsedMiB: number };
  gcWholeRun?: number;
  frontendTxDropped?: number;
  flags?: string[];
  /** Left out of the summary: another process used > 10% of a core during the window (the run was retried). */
  excluded?: boolean;
}

// ---- options -----------------------------------------------------------------------------------

function parseOpts(argv: string[]): Opts {
  const { values } = parseArgs({
    args: argv,
    options: {
      runs: { type: 'string' },
      window: { type: 'string' },
      warmup: { type: 'string' },
      sizes: { type: 'string', default: '64,1518' },
      packed: { type: 'boolean', default: false },
      rings: { type: 'string' },
      only: { type: 'string' },
      quick: { type: 'boolean', default: false },
      inflight: { type: 'string', default: '1' },
      'queue-sizes': { type: 'string', default: '256,1024' },
      'cpu-prof': { type: 'string' },
      json: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(
      'npm run bench -- [--runs N=5] [--window S=5] [--warmup S=1] [--sizes 64,1518] [--packed | --rings split,packed] [--only dpdk|ours]\n' +
        '                 [--quick (1 run, 2 s)] [--inflight BURSTS=1] [--queue-sizes 256,1024] [--cpu-prof DIR] [--json FILE]\n',
    );
    process.exit(0);
  }
  const num = (v: string | undefined, def: number, what: string, min: number): number => {
    const n = v === undefined ? def : Number(v);
    if (!Number.isFinite(n) || n < min) throw new Error(`--${what}: bad value '${v}'`);
    return n;
  };
  const quick = values.quick ?? false;
  const rings = (values.rings ?? (values.packed ? 'split,packed' : 'split')).split(',').map((r) => r.trim()) as Ring[];
  for (const r of rings) if (r !== 'split' && r !== 'packed') throw new Error(`--rings split,packed: bad ring '${r}'`);
  const only = values.only ?? null;
  if (only !== null && only !== 'dpdk' && only !== 'ours') throw new Error(`--only dpdk|ours, got '${only}'`);
  const sizes = (values.sizes ?? '64,1518').split(',').map((s) => Number(s.trim()));
  const queueSizes = (values['queue-sizes'] ?? '256,1024').split(',').map((s) => Number(s.trim()));
  for (const q of queueSizes) if (!Number.isInteger(q) || q < 64 || q > 32768 || (q & (q - 1)) !== 0) throw new Error(`--queue-sizes: bad ring size ${q}`);
  for (const s of sizes) if (!Number.isInteger(s) || s < 60 || s > 2000) throw new Error(`--sizes: bad size ${s} (60..2000)`);
  return {
    runs: Math.floor(num(values.runs, quick ? 1 : 5, 'runs', 1)),
    window: num(values.window, quick ? 2 : 5, 'window', 0.5),
    warmup: num(values.warmup, quick ? 0.5 : 1, 'warmup', 0),
    sizes,
    rings,
    only,
    inflight: Math.floor(num(values.inflight, 1, 'inflight', 1)),
    queueSizes,
    cpuProf: values['cpu-prof'] ? resolve(values['cpu-prof']) : null,
    json: values.json ?? join(tmpdir(), `vhost-user-ts-bench-${new Date().toISOString().replace(/[:.]/g, '-')}.json`),
    quick,
  };
}

// ---- small system probes -----------------------------------------------------------------------

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

let c2cBin: string | null | undefined;
/** Median cache-line round trip cpu0 <-> cpu1 in ns, or null when no C compiler is available. */
function c2c(): number | null {
  if (c2cBin === undefined) {
    const out = join(tmpdir(), `vut-bench-c2c-${process.pid}`);
    try {
      execFileSync('cc', ['-O2', '-pthread', '-o', out, C2C_SRC], { stdio: 'ignore' });
      c2cBin = out;
      process.once('exit', () => rmSync(out, { force: true }));
    } catch {
      c2cBin = null;
    }
  }
  if (c2cBin === null) return null;
  try {
    return Number(execFileSync(c2cBin, ['0', '1', '400000'], { encoding: 'utf8', timeout: 5000 }).trim());
  } catch {
    return null;
  }
}

/** /proc/stat aggregate cpu line, in clock ticks. */
function cpuTicks(): { busy: number; steal: number; total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = f;
  // guest/guest_nice are already included in user/nice.
  const busy = user + nice + system + irq + softirq;
  return { busy, steal, total: busy + idle + iowait + steal };
}

/** utime+stime of a whole process (all threads), clock ticks; 0 if gone. */
function procTicks(pid: number | undefined): number {
  if (pid === undefined) return 0;
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    // fields after the comm: state(3) ... utime(14) stime(15) -> indices 11, 12 here
    return Number(f[11]) + Number(f[12]);
  } catch {
    return 0;
  }
}

function procStatus(pid: number | undefined): Record<string, number> {
  const r: Record<string, number> = {};
  if (pid === undefined) return r;
  try {
    for (const line of readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
      const m = /^(\w+):\s+(\d+)/.exec(line);
      if (m) r[m[1]!] = Number(m[2]);
    }
  } catch {
    /* gone */
  }
  return r;
}

const TICK_MS = 10; // USER_HZ = 100 on Linux

// ---- our backend as a child process ------------------------------------------------------------

const liveBackends = new Set<ChildProcess>();
function killBackends(): void {
  for (const p of liveBackends) {
    try {
      p.kill('SIGKILL');
    } catch {
      /* gone */
    }
  }
  liveBackends.clear();
}

interface OurBackend {
  proc: ChildProcess;
  readonly log: string;
  marks(): GcMark[];
  mark(): Promise<GcMark | null>;
  stop(): Promise<number | null>;
}

async function startOurs(s0: string, s1: string, cpuProfDir: string | null): Promise<OurBackend> {
  const nodeArgs = ['--import', GC_PRELOAD];
  if (cpuProfDir) nodeArgs.unshift('--cpu-prof', `--cpu-prof-dir=${cpuProfDir}`);
  const proc = spawn('taskset', ['-c', String(BACKEND_CPU), process.execPath, ...nodeArgs, BIN, 'net', '--socket', s0, '--port', `vhost:${s1}`], {
    stdio: ['ignore', 'pipe', 'pipe'],
    cwd: ROOT,
    env: { ...process.env, DEBUG: '' },
  });
  liveBackends.add(proc);
  let log = '';
  proc.stdout!.on('data', (d: Buffer) => (log += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (log += d.toString()));
  const exited = new Promise<number | null>((r) =>
    proc.on('exit', (code) => {
      liveBackends.delete(proc);
      r(code);
    }),
  );
  const parseMarks = (): GcMark[] =>
    [...log.matchAll(/^gc-count: (\{.*\})$/gm)].map((m) => JSON.parse(m[1]!) as GcMark);
  const end = Date.now() + 20000;
  while (!(existsSync(s0) && existsSync(s1))) {
    if (proc.exitCode !== null) throw new Error(`vhost-user-ts exited (${proc.exitCode}):\n${log.slice(-2000)}`);
    if (Date.now() > end) throw new Error(`vhost-user-ts did not create its sockets:\n${log.slice(-2000)}`);
    await sleep(20);
  }
  return {
    proc,
    get log() {
      return log;
    },
    marks: parseMarks,
    async mark() {
      const before = parseMarks().length;
      proc.kill('SIGUSR2');
      const until = Date.now() + 2000;
      while (parseMarks().length === before) {
        if (Date.now() > until || proc.exitCode !== null) return null;
        await sleep(5);
      }
      return parseMarks()[before] ?? null;
    },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      // --cpu-prof writes the profile at exit: allow time for it.
      const t = setTimeout(() => proc.kill('SIGKILL'), 15000);
      const code = await exited;
      clearTimeout(t);
      return code;
    },
  };
}

/** A testpmd binary wrapper that pins the whole process (EAL control threads included) to one cpu. */
function pinnedTestpmd(dir: string, cpu: number): string {
  const p = join(dir, `testpmd-cpu${cpu}.sh`);
  writeFileSync(p, `#!/bin/sh\nexec taskset -c ${cpu} ${TESTPMD} "$@"\n`);
  chmodSync(p, 0o755);
  return p;
}

/** `show port stats all` -> cumulative RX packets of ports 0 and 1, with the time of the reading. */
async function readRx(fe: Testpmd): Promise<{ t: number; rx: [number, number] }> {
  const t0 = performance.now();
  const out = await fe.cmd('show port stats all');
  const t1 = performance.now();
  const rx: [number, number] = [NaN, NaN];
  for (const block of out.split(/NIC statistics for port /).slice(1)) {
    const port = Number(/^(\d+)/.exec(block)?.[1]);
    const m = /RX-packets:\s*(\d+)/.exec(block);
    if ((port === 0 || port === 1) && m) rx[port] = Number(m[1]);
  }
  if (rx.some((v) => Number.isNaN(v))) throw new Error(`cannot parse port stats:\n${out}`);
  return { t: (t0 + t1) / 2, rx };
}

// ---- one run -----------------------------------------------------------------------------------

async function runOnce(impl: Impl, cfg: Config, run: number, o: Opts, baseDir: string): Promise<RunResult> {
  const res: RunResult = { impl, ring: cfg.ring, size: cfg.size, queueSize: cfg.queueSize, run, status: 'ok', flags: [] };
  if (impl === 'ours' && cfg.ring === 'packed' && !OURS_PACKED) {
    res.status = 'unsupported';
    return res;
  }
  const dir = mkdtempSync(join(baseDir, `${impl}-`));
  const s0 = join(dir, 's0.sock');
  const s1 = join(dir, 's1.sock');
  let dpdkBe: Testpmd | undefined;
  let ours: OurBackend | undefined;
  let fe: Testpmd | undefined;
  try {
    res.c2cBefore = c2c();
    let bePid: number | undefined;
    if (impl === 'dpdk') {
      dpdkBe = await startTestpmd({
        role: 'vhost',
        socket: [s0, s1],
        fwdMode: 'io',
        lcores: `0@${BACKEND_CPU},1@${BACKEND_CPU}`,
        noFlushRx: true,
        binary: pinnedTestpmd(dir, BACKEND_CPU),
      });
      bePid = dpdkBe.pid;
    } else {
      ours = await startOurs(s0, s1, o.cpuProf);
      bePid = ours.proc.pid;
    }
    fe = await startTestpmd({
      role: 'virtio-user',
      socket: [s0, s1],
      fwdMode: 'io',
      lcores: `0@${FRONTEND_CPU},1@${FRONTEND_CPU}`,
      packed: cfg.ring === 'packed',
      queueSize: cfg.queueSize,
      txPkts: cfg.size,
      noFlushRx: true,
      binary: pinnedTestpmd(dir, FRONTEND_CPU),
    });
    await Promise.all([fe.waitForLinkUp(10000, 0), fe.waitForLinkUp(10000, 1)]);
    if (dpdkBe) {
      await Promise.all([dpdkBe.waitForLinkUp(10000, 0), dpdkBe.waitForLinkUp(10000, 1)]);
      await dpdkBe.start(); // before the frames exist: testpmd's `start` would otherwise flush them
    }
    await fe.startTxFirst(o.inflight);
    await sleep(o.warmup * 1000);

    // ---- window ----
    const g0 = ours ? await ours.mark() : null;
    const st0 = procStatus(bePid);
    const c0 = cpuTicks();
    const be0 = procTicks(bePid);
    const fe0 = procTicks(fe.pid);
    const self0 = process.cpuUsage();
    const r0 = await readRx(fe);
    await sleep(o.window * 1000);
    const r1 = await readRx(fe);
    const self1 = process.cpuUsage(self0);
    const c1 = cpuTicks();
    const be1 = procTicks(bePid);
    const fe1 = procTicks(fe.pid);
    const st1 = procStatus(bePid);
    const g1 = ours ? await ours.mark() : null;

    const dt = (r1.t - r0.t) / 1000;
    res.windowS = Math.round(dt * 1000) / 1000;
    res.portMpps = [(r1.rx[0] - r0.rx[0]) / dt / 1e6, (r1.rx[1] - r0.rx[1]) / dt / 1e6];
    res.mpps = (res.portMpps[0] + res.portMpps[1]) / 2;
    res.gbpsPerPort = (res.mpps * 1e6 * cfg.size * 8) / 1e9;
    const wallTicks = (c1.total - c0.total) / 2; // 2 cpus
    const selfTicks = (self1.user + self1.system) / 1000 / TICK_MS;
    const foreign = c1.busy - c0.busy - (be1 - be0) - (fe1 - fe0) - selfTicks;
    res.foreignPct = (Math.max(0, foreign) / wallTicks) * 100;
    res.stealPct = ((c1.steal - c0.steal) / wallTicks) * 100;
    res.backendCpuPct = ((be1 - be0) / wallTicks) * 100;
    res.frontendCpuPct = ((fe1 - fe0) / wallTicks) * 100;
    res.backendCtxSwPerS = {
      voluntary: ((st1['voluntary_ctxt_switches'] ?? 0) - (st0['voluntary_ctxt_switches'] ?? 0)) / dt,
      involuntary: ((st1['nonvoluntary_ctxt_switches'] ?? 0) - (st0['nonvoluntary_ctxt_switches'] ?? 0)) / dt,
    };
    res.rss = {
      vmRssKiB: st1['VmRSS'] ?? 0,
      vmHwmKiB: st1['VmHWM'] ?? 0,
      rssAnonKiB: st1['RssAnon'] ?? 0,
      rssShmemKiB: st1['RssShmem'] ?? 0,
      rssFileKiB: st1['RssFile'] ?? 0,
    };
    if (g0 && g1) {
      const active = g1.eluActiveMs - g0.eluActiveMs;
      const idle = g1.eluIdleMs - g0.eluIdleMs;
      res.gc = {
        count: g1.total - g0.total,
        minor: g1.minor - g0.minor,
        major: g1.major - g0.major + (g1.incremental - g0.incremental),
        gcMs: Math.round((g1.gcMs - g0.gcMs) * 100) / 100,
        elu: active / (active + idle),
        heapUsedMiB: g1.heapUsed / 2 ** 20,
      };
    }

    const feStats = await fe.stop();
    res.frontendTxDropped = feStats.reduce((a, p) => a + p.txDropped, 0);
    await quitAll(fe);
    fe = undefined;
    if (dpdkBe) {
      await quitAll(dpdkBe);
      dpdkBe = undefined;
    }
    if (ours) {
      const code = await ours.stop();
      const exit = ours.marks().find((m) => (m as unknown as { tag: string }).tag === 'exit');
      res.gcWholeRun = exit?.total;
      if (code !== 0) res.flags!.push(`backend exit code ${code}`);
      ours = undefined;
    }
    res.c2cAfter = c2c();
    if ((res.c2cBefore ?? 0) > C2C_FAR_NS || (res.c2cAfter ?? 0) > C2C_FAR_NS) res.flags!.push(`c2c>${C2C_FAR_NS}ns (far placement)`);
    if (res.foreignPct > FOREIGN_LIMIT) res.flags!.push(`foreign load ${res.foreignPct.toFixed(0)}%`);
    if (res.stealPct > 5) res.flags!.push(`steal ${res.stealPct.toFixed(0)}%`);
  } catch (e) {
    res.status = 'error';
    res.error = (e as Error).message.slice(0, 1500);
    if (ours) res.error += `\n--- vhost-user-ts log ---\n${ours.log.slice(-1500)}`;
  } finally {
    await quitAll(fe, dpdkBe).catch(() => undefined);
    if (ours) await ours.stop().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
  return res;
}

// ---- statistics and printing -------------------------------------------------------------------

function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

const f2 = (x: number | undefined | null) => (x === undefined || x === null || Number.isNaN(x) ? '-' : x.toFixed(2));
const mib = (kib: number) => (kib / 1024).toFixed(0);

function runLine(r: RunResult): string {
  const head = `  ${r.impl.padEnd(4)} run ${r.run}`;
  if (r.status === 'unsupported') return `${head}: unsupported (vhost-user-ts has no packed ring yet)`;
  if (r.status === 'error') return `${head}: ERROR ${r.error?.split('\n')[0]}`;
  const gc = r.gc
    ? ` | gc ${r.gc.count} (${r.gc.minor} minor, ${r.gc.major} major, ${r.gc.gcMs.toFixed(1)} ms)` +
      // A loop blocked in epoll the whole window reports no idle time until it wakes: ELU means nothing then.
      ` elu ${(r.backendCpuPct ?? 0) < 5 ? 'n/a' : `${(r.gc.elu * 100).toFixed(0)}%`}`
    : '';
  return (
    `${head}: ${f2(r.mpps)} Mpps/port [${f2(r.portMpps?.[0])} ${f2(r.portMpps?.[1])}] ${f2(r.gbpsPerPort)} Gbit/s/port` +
    ` | be cpu ${r.backendCpuPct?.toFixed(0)}% fe cpu ${r.frontendCpuPct?.toFixed(0)}% ` +
    `be vcsw/s ${r.backendCtxSwPerS?.voluntary.toFixed(0)}` +
    ` | rss ${mib(r.rss?.vmRssKiB ?? 0)} MiB (hwm ${mib(r.rss?.vmHwmKiB ?? 0)}, anon ${mib(r.rss?.rssAnonKiB ?? 0)}, shmem ${mib(r.rss?.rssShmemKiB ?? 0)})` +
    gc +
    ` | c2c ${r.c2cBefore ?? '-'}/${r.c2cAfter ?? '-'} ns foreign ${r.foreignPct?.toFixed(0)}% steal ${r.stealPct?.toFixed(0)}%` +
    (r.flags?.length ? ` !! ${r.flags.join('; ')}` : '')
  );
}

interface Summary {
  ring: Ring;
  size: number;
  queueSize: number;
  dpdk: number[];
  ours: number[];
  dpdkMedian: number;
  oursMedian: number;
  ratio: number;
  pairedRatioMedian: number;
  /** The same medians over runs of one vCPU placement only (placementOf), for both backends. */
  byPlacement: Record<'near' | 'far', { dpdk: number[]; ours: number[]; ratio: number }>;
}

/**
 * Where the host put the two vCPUs during a run, from the c2c probe before and after it: the rig
 * alternates between ≈ 55 ns (near) and ≈ 320 ns (far), and that moves both backends up to 2x, so a
 * ratio is only meaningful between runs of the same placement. 'mixed': it changed during the run.
 */
function placementOf(r: RunResult): 'near' | 'far' | 'mixed' | 'unknown' {
  if (r.c2cBefore == null || r.c2cAfter == null) return 'unknown';
  const far = (ns: number) => ns > C2C_FAR_NS;
  if (far(r.c2cBefore) !== far(r.c2cAfter)) return 'mixed';
  return far(r.c2cBefore) ? 'far' : 'near';
}

function summarize(results: RunResult[], configs: Config[]): Summary[] {
  return configs.map((c) => {
    const runsOf = (impl: Impl) =>
      results.filter((r) => r.ring === c.ring && r.size === c.size && r.queueSize === c.queueSize && r.impl === impl && r.status === 'ok' && !r.excluded);
    const of = (impl: Impl) => runsOf(impl).map((r) => r.mpps!);
    const placed = (where: 'near' | 'far') => {
      const pick = (impl: Impl) => runsOf(impl).filter((r) => placementOf(r) === where).map((r) => r.mpps!);
      const dp = pick('dpdk');
      const ou = pick('ours');
      return { dpdk: dp, ours: ou, ratio: median(ou) / median(dp) };
    };
    const d = of('dpdk');
    const u = of('ours');
    const dm = median(d);
    const um = median(u);
    // Ratio of the runs that ran next to each other (run k of DPDK and run k of ours).
    const paired: number[] = [];
    for (const r of results.filter((x) => x.ring === c.ring && x.size === c.size && x.queueSize === c.queueSize && x.impl === 'ours' && x.status === 'ok' && !x.excluded)) {
      const p = results.find((x) => x.ring === c.ring && x.size === c.size && x.queueSize === c.queueSize && x.impl === 'dpdk' && x.run === r.run && x.status === 'ok' && !x.excluded);
      if (p?.mpps) paired.push(r.mpps! / p.mpps);
    }
    return {
      ring: c.ring,
      size: c.size,
      queueSize: c.queueSize,
      dpdk: d,
      ours: u,
      dpdkMedian: dm,
      oursMedian: um,
      ratio: um / dm,
      pairedRatioMedian: median(paired),
      byPlacement: { near: placed('near'), far: placed('far') },
    };
  });
}

function printSummary(results: RunResult[], configs: Config[]): Summary[] {
  const sums = summarize(results, configs);
  const out: string[] = [];
  out.push('');
  const nEx = results.filter((r) => r.excluded).length;
  out.push(`Summary: frontend RX Mpps per port (median [min..max] of runs); ratio = vhost-user-ts / DPDK${nEx ? ` (${nEx} disturbed run(s) excluded)` : ''}`);
  out.push('ring   qsize size | DPDK median [min..max]      | vhost-user-ts median [min..max] | ratio of medians | median paired ratio');
  for (const s of sums) {
    const rng = (xs: number[]) => (xs.length ? `[${f2(Math.min(...xs))}..${f2(Math.max(...xs))}]` : '');
    const oursTxt = s.ring === 'packed' && !OURS_PACKED ? 'unsupported' : `${f2(s.oursMedian)} ${rng(s.ours)}`;
    out.push(
      `${s.ring.padEnd(7)}${String(s.queueSize).padStart(5)} ${String(s.size).padStart(4)} | ${`${f2(s.dpdkMedian)} ${rng(s.dpdk)}`.padEnd(27)} | ` +
        `${oursTxt.padEnd(31)} | ${(s.ring === 'packed' && !OURS_PACKED ? '-' : f2(s.ratio)).padEnd(16)} | ${s.ring === 'packed' && !OURS_PACKED ? '-' : f2(s.pairedRatioMedian)}`,
    );
  }
  // The vCPU placement moves single runs up to 2x for both backends: the same comparison per placement.
  out.push('');
  out.push(`By vCPU placement (c2c probe before and after the run: near <= ${C2C_FAR_NS} ns < far; runs that changed placement left out):`);
  out.push('ring   qsize size | near: DPDK (runs) | ours (runs)  | ratio | far: DPDK (runs)  | ours (runs)  | ratio');
  for (const s of sums) {
    if (s.ring === 'packed' && !OURS_PACKED) continue;
    const cell = (xs: number[]) => (xs.length ? `${f2(median(xs))} (${xs.length})` : '-').padEnd(12);
    const r = (x: { dpdk: number[]; ours: number[]; ratio: number }) => (x.dpdk.length && x.ours.length ? f2(x.ratio) : '-').padEnd(5);
    const n = s.byPlacement.near;
    const fa = s.byPlacement.far;
    out.push(
      `${s.ring.padEnd(7)}${String(s.queueSize).padStart(5)} ${String(s.size).padStart(4)} | ${cell(n.dpdk).padEnd(17)} | ${cell(n.ours)} | ${r(n)} | ` +
        `${cell(fa.dpdk).padEnd(17)} | ${cell(fa.ours)} | ${r(fa)}`,
    );
  }
  // Resource use, medians over the ok runs.
  out.push('');
  out.push('Backend resources per configuration (median over runs): RSS at the end of the window; for vhost-user-ts');
  out.push('GC collections / GC pause time / event-loop utilisation during the window (per second of window),');
  out.push('and collections over the whole process life (startup included). RssShmem = pages of the frontends\'');
  out.push('shared guest memory mapped and touched by the backend; RssAnon = its own memory.');
  for (const c of configs) {
    for (const impl of ['dpdk', 'ours'] as const) {
      const rs = results.filter(
        (r) => r.impl === impl && r.status === 'ok' && !r.excluded && r.ring === c.ring && r.size === c.size && r.queueSize === c.queueSize,
      );
      if (!rs.length) continue;
      const m = (f: (r: RunResult) => number) => median(rs.map(f));
      let line =
        `  ${c.ring} ${c.queueSize} ${String(c.size).padStart(4)} B ${impl.padEnd(4)}: VmRSS ${mib(m((r) => r.rss!.vmRssKiB))} MiB ` +
        `(HWM ${mib(m((r) => r.rss!.vmHwmKiB))}, anon ${mib(m((r) => r.rss!.rssAnonKiB))}, shmem ${mib(m((r) => r.rss!.rssShmemKiB))}), ` +
        `cpu ${m((r) => r.backendCpuPct!).toFixed(0)}%, vol. ctx sw ${m((r) => r.backendCtxSwPerS!.voluntary).toFixed(0)}/s`;
      const g = rs.filter((r) => r.gc);
      if (impl === 'ours' && g.length) {
        const per = (f: (r: RunResult) => number) => median(g.map((r) => f(r) / r.windowS!));
        const busy = g.filter((r) => (r.backendCpuPct ?? 0) >= 5);
        line +=
          `; GC ${per((r) => r.gc!.count).toFixed(0)}/s (major ${per((r) => r.gc!.major).toFixed(1)}/s), ` +
          `${per((r) => r.gc!.gcMs).toFixed(1)} ms/s in GC, ELU ${busy.length ? `${(median(busy.map((r) => r.gc!.elu)) * 100).toFixed(0)}%` : 'n/a'}, ` +
          `life ${median(g.map((r) => r.gcWholeRun ?? NaN))} GCs, heapUsed ${median(g.map((r) => r.gc!.heapUsedMiB)).toFixed(1)} MiB`;
      }
      out.push(line);
    }
  }
  process.stdout.write(out.join('\n') + '\n');
  return sums;
}

function dpdkVersion(): string {
  try {
    return execFileSync('dpkg-query', ['-W', '-f', '${Version}', 'dpdk-dev'], { encoding: 'utf8' }).trim();
  } catch {
    return '?';
  }
}

// ---- main --------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const o = parseOpts(process.argv.slice(2));
  if (!existsSync(TESTPMD)) throw new Error(`${TESTPMD} not found (apt-get install dpdk-dev)`);
  const baseDir = mkdtempSync(join(tmpdir(), 'vut-bench-'));
  process.once('exit', () => {
    killBackends();
    killAllTestpmds();
    rmSync(baseDir, { recursive: true, force: true });
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      process.stderr.write(`\nbench: ${sig}, cleaning up\n`);
      process.exit(130);
    });
  }
  if (o.cpuProf) mkdirSync(o.cpuProf, { recursive: true });
  const profBefore = new Set(o.cpuProf ? readdirSync(o.cpuProf) : []);

  const configs: Config[] = [];
  for (const ring of o.rings) for (const queueSize of o.queueSizes) for (const size of o.sizes) configs.push({ ring, size, queueSize });
  const impls: Impl[] = o.only ? [o.only] : ['dpdk', 'ours'];
  process.stdout.write(
    `vhost-user-ts benchmark: ${configs.length} config(s) x ${o.runs} run(s) x [${impls.join(', ')}], ` +
      `window ${o.window} s after ${o.warmup} s warm-up, ${o.inflight} burst(s) of ${BURST} in flight per port, ` +
      `ring sizes ${o.queueSizes.join(',')}; backend on cpu ${BACKEND_CPU}, frontend on cpu ${FRONTEND_CPU}` +
      `${o.cpuProf ? `; ours with --cpu-prof into ${o.cpuProf}` : ''}\n` +
      `node ${process.version}, DPDK ${dpdkVersion()}\n`,
  );
  const loadavg = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  process.stdout.write(`load average before start: ${loadavg}\n`);

  const results: RunResult[] = [];
  const t0 = Date.now();
  for (const cfg of configs) {
    process.stdout.write(`\n== ${cfg.ring} ring of ${cfg.queueSize}, ${cfg.size}-byte frames ==\n`);
    for (let run = 1; run <= o.runs; run++) {
      for (const impl of impls) {
        // A run disturbed by another process (> 10% of a core used outside the benchmark) is repeated, up
        // to twice; disturbed runs stay in the JSON but not in the medians.
        for (let attempt = 0; ; attempt++) {
          const r = await runOnce(impl, cfg, run, o, baseDir);
          results.push(r);
          const disturbed = r.status === 'ok' && (r.foreignPct ?? 0) > FOREIGN_LIMIT;
          if (disturbed) r.excluded = true;
          process.stdout.write(runLine(r) + (disturbed ? ` (excluded${attempt < MAX_RETRIES ? ', retrying' : ''})` : '') + '\n');
          if (!disturbed || attempt >= MAX_RETRIES) break;
        }
      }
    }
  }
  const sums = printSummary(results, configs);
  process.stdout.write(`\ntotal time ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
  writeFileSync(o.json, JSON.stringify({ opts: o, date: new Date().toISOString(), results, summary: sums }, null, 2));
  process.stdout.write(`raw results: ${o.json}\n`);

  if (o.cpuProf) {
    // One file per thread and process: the main thread's (most busy time) first, in full; the others (tsx's
    // module-loader worker) in short.
    const profs = readdirSync(o.cpuProf)
      .filter((f) => f.endsWith('.cpuprofile') && !profBefore.has(f))
      .map((f) => ({ f, s: summarizeProfile(JSON.parse(readFileSync(join(o.cpuProf!, f), 'utf8'))) }))
      .map((x) => ({ ...x, busy: x.s.durationUs - (x.s.functions.find((fn) => fn.name === '(idle)')?.selfUs ?? 0) }))
      .sort((a, b) => b.busy - a.busy);
    profs.forEach((x, i) => {
      process.stdout.write(`\nCPU profile ${join(o.cpuProf!, x.f)}${i === 0 ? ' (busiest thread)' : ''}:\n`);
      process.stdout.write(formatSummary(x.s, i === 0 ? 30 : 5) + '\n');
    });
  }
  const errors = results.filter((r) => r.status === 'error');
  if (errors.length) {
    process.stdout.write(`\n${errors.length} run(s) failed:\n`);
    for (const e of errors) process.stdout.write(`  ${e.impl} ${e.ring} ${e.size} run ${e.run}: ${e.error}\n`);
    process.exitCode = 1;
  }
}

main().catch((e) => {
  process.stderr.write(`bench: ${(e as Error).stack ?? e}\n`);
  process.exit(1);
});
