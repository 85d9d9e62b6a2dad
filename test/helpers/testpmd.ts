/**
 * DPDK 22.11 `dpdk-testpmd` as a test / benchmark peer, driven interactively (`-i`) over pipes.
 *
 * Two roles:
 * - `virtio-user`: testpmd is the *frontend* (`net_virtio_user` vdev), i.e. the "guest" our backend serves.
 * - `vhost`: testpmd is a vhost-user *backend* (`net_vhost` vdev): DPDK's own device, used to validate this
 *   harness and as the A/B reference in benchmarks.
 *
 * ## Facts this module is built on (measured on the 2-core rig, see test-rig-facts.md §3)
 * - Memory: `--no-huge -m 512 --total-num-mbufs=32768` on both sides. `--no-huge` memory is memfd-backed
 *   (legacy mem), so a net_vhost backend *can* map a no-huge virtio-user's memory: verified by
 *   test/rig/dpdk-harness.test.ts (frames pass both ways). `--in-memory` is incompatible with `--no-huge`.
 * - stdout is a pipe, so glibc would fully buffer testpmd's printf output while the `testpmd> ` prompt
 *   (written with write(2) by librte_cmdline) arrives at once: a command's output would show up *after* the
 *   next prompt. We therefore run testpmd under `stdbuf -o0 -e0` (LD_PRELOAD; testpmd is dynamically linked),
 *   with stderr merged into the same pipe (`2>&1`) so that error lines keep their place before the prompt.
 * - cmdline echoes what it reads (followed by "\r\n"); `cmd()` strips that echo.
 * - EOF on stdin makes testpmd quit, so a dead test process (pipe closed) also stops its testpmds;
 *   an `exit` hook SIGKILLs the rest (e.g. a virtio-user server still blocked in startup).
 * - virtio-user `server=1` (vdev arg of net_virtio_user, DPDK ≥ 18.05): virtio-user creates and listens on the
 *   socket and the backend connects as a client. In 22.11 the vdev probe **blocks until a backend connects**, so
 *   `startTestpmd()` does not resolve (no prompt yet) before the backend has connected: start the backend
 *   concurrently, and give `startupTimeoutMs` room for it. net_vhost's counterpart is `client=1`.
 * - Startup to the first prompt: ≈1.3-3.5 s (mbuf pool creation in no-huge memory dominates).
 *
 * ## Cores (2 vCPUs): never let two busy pollers share a core
 * Each testpmd gets two lcores via `--lcores 0@<mainCore>,1@<fwdCore> --main-lcore 0`: lcore 1 is the busy
 * forwarding lcore, lcore 0 (main, asleep in read() on stdin) only wakes for commands. Both may sit on the same
 * cpu (`--lcores` syntax). Testpmd only spins between `start` and `stop`; stopped, its lcore sleeps.
 * - Pair (backend ⇄ one frontend): backend fwdCore=1, frontend fwdCore=0. Everything works; DPDK ⇄ DPDK txonly
 *   measured 7-17 Mpps here (bimodal, see the facts file), so never gate on absolute rates.
 * - Two-socket topology (backend with ports on s0 and s1 ⇄ frontend A on s0 (sender) + frontend B on s1
 *   (receiver)): three processes, so A's and B's forwarding lcores both go on cpu 0 (main lcores on cpu 1), the
 *   backend's poller owns cpu 1. Measured on this machine (test/rig/dpdk-harness.test.ts):
 *   1. store-and-drain (fully deterministic, never two spinning pollers on a core): B stopped, started with
 *      `noFlushRx` (`--no-flush-rx`: testpmd's `start` otherwise frees what is already queued, uncounted);
 *      A `sendBursts(n)`; the backend forwards into B's RX ring; then B `start`, wait for its count, `stop`.
 *      Capacity = B's ring: with queueSize 256, 4 bursts (128) all arrive; 16 bursts (512) → B gets exactly 256,
 *      the backend counts exactly 256 TX-dropped on port 1.
 *   2. live: B rxonly running on cpu 0, A `sendBursts(64)` from cpu 0: 2048/2048 arrive in ≈35-50 ms, no drops.
 *      It works because `start tx_first n` launches the n bursts one at a time and the lcore *sleeps* in the
 *      EAL launch pipe between them, so B gets the cpu; A is stopped right after, before its io loop spins long.
 *      Not exact under competing load: with two busy shell loops running, B got 320/2048 and the backend
 *      counted 1728 TX-dropped (identities below still held). Assert exact counts only in mode 1.
 *   3. continuous txonly in A + rxonly in B on the same cpu: useless. 3 s → A put 11.1 M frames on s0, the
 *      backend forwarded them all, but B received 99 k (≈33 kpps) and the backend dropped 11.0 M: frames flow
 *      only while A runs, and while A runs B does not, so B gets at most one RX ring (256) per context switch.
 *   Accounting identities that always hold once everything is stopped: backend.port0.rx == A.tx,
 *   backend.port1.tx + backend.port1.txDropped == backend.port0.rx, B.rx == backend.port1.tx.
 * - Throughput through a two-socket backend on 2 cores: use ONE frontend testpmd with two virtio-user ports
 *   (`socket: [s0, s1]`, io fwd, `start tx_first`): frames loop A.port0 → s0 → backend → s1 → A.port1 → A.port0
 *   with one poller per side. DPDK backend: ≈3.8-4.1 Mpps per port (idle machine), ≈0.1-1 Mpps while another
 *   session's QEMU/testpmd was running.
 * - Bounded sending, summary: `sendBursts(n)` (= `start tx_first n` + `stop`) puts exactly n×burst frames on the
 *   ring (txPackets + txDropped = n×burst); fwd mode io or rxonly. The alternative, txonly for a fixed time then
 *   `stop`, is fine in a pair (compare the sender's TX-packets with the receiver's RX once it drained: stop the
 *   sender first, the receiver last) but its count is not predetermined.
 *
 * ## Other gotchas
 * - Start the listening side first: a virtio-user client exits at once (code 1) if nothing listens; a
 *   virtio-user `server=1` blocks before its prompt until a backend connects.
 * - virtio-user sends without MSG_NOSIGNAL: when the backend closes first, SIGPIPE would kill it (seen when both
 *   quit at once). We start testpmd with SIGPIPE ignored; its link then goes down and it accepts a reconnect
 *   (server mode). `quitAll()` quits frontends before backends anyway.
 * - virtio-user `server=1` leaves its socket file behind; a stale socket makes the next bind fail, so it is
 *   unlinked before spawning (only if it is a socket).
 * - What virtio-user (22.11, no-huge) sends a backend: SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES
 *   (0x10009 = MQ|REPLY_ACK|STATUS with net_vhost), SET_VRING_CALL ×2 *before* SET_FEATURES (0x950008000 with
 *   mrg/in_order), SET_STATUS(FEATURES_OK), GET_STATUS, SET_MEM_TABLE with ONE region (memfd, 512 MiB, offset 0),
 *   per ring NUM/BASE/ADDR/KICK, SET_VRING_ENABLE ×2, SET_STATUS(DRIVER_OK); on quit GET_VRING_BASE ×2.
 *   (`logLevel: 'lib.vhost.config:debug'` on a vhost-role testpmd shows this.)
 * - `show port stats` counters are cumulative since the port started ("Rx-pps" is since the previous `show` of
 *   that port); `stop` prints deltas since `start`.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { lstatSync, rmSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import createDebug from 'debug';

const log = createDebug('vhost:testpmd');

export type FwdMode = 'io' | 'txonly' | 'rxonly' | 'macswap' | '5tswap' | 'flowgen' | 'mac';

export interface TestpmdOptions {
  role: 'virtio-user' | 'vhost';
  /** Socket path; several paths give several vdevs (ports 0, 1, … in this order). */
  socket: string | readonly string[];
  /**
   * This testpmd listens on the socket. Defaults: vhost → true (net_vhost server), virtio-user → false.
   * virtio-user `server: true` adds `server=1`; vhost `server: false` adds `client=1`.
   */
  server?: boolean;
  /** Queue pairs (vdev `queues=`, testpmd `--rxq/--txq`). Default 1. */
  queues?: number;
  /** virtio-user only: `queue_size=` (ring size). Default 256. */
  queueSize?: number;
  /** virtio-user only: `packed_vq=`. Default false. */
  packed?: boolean;
  /** virtio-user only: `mrg_rxbuf=`. Default true (DPDK's default). */
  mrg?: boolean;
  /** virtio-user only: `in_order=`. Default true (DPDK's default). */
  inOrder?: boolean;
  /** virtio-user only: `mac=` of the port(s); with several sockets, give one per socket. */
  mac?: string | readonly string[];
  /** Extra `key=value,…` appended to every vdev. */
  vdevArgs?: string;
  fwdMode?: FwdMode;
  /** Frame size(s) for txonly / tx_first (`--txpkts`), bytes without the virtio-net header. Default 64. */
  txPkts?: number | readonly number[];
  /** `--burst` (packets per rx/tx burst). Default 32. */
  burst?: number;
  /** If set, `start()` runs `start tx_first <txFirst>` (true = 1 burst). */
  txFirst?: number | boolean;
  /** Destination MAC of generated frames per port (`--eth-peer`), index = port. */
  ethPeer?: readonly string[];
  /** cpu of the forwarding lcore. Default 1. */
  fwdCore?: number;
  /** cpu of the main lcore. Default: the other of the two cpus (1 - fwdCore). */
  mainCore?: number;
  /** Raw `--lcores` value; overrides fwdCore/mainCore (lcore 0 is always the main lcore). */
  lcores?: string;
  /** `--nb-cores`. Default 1. */
  nbCores?: number;
  /** EAL `--file-prefix`; must be unique per live process. Default: derived from pid + counter + time. */
  filePrefix?: string;
  /** EAL `-m` (MB of no-huge memory). Default 512. */
  memMb?: number;
  /** `--total-num-mbufs`. Default 32768. */
  totalNumMbufs?: number;
  /** Extra EAL args (before `--`). */
  extraEal?: readonly string[];
  /**
   * `--no-flush-rx`. testpmd's `start` otherwise drains and frees everything already waiting in the RX queues,
   * so frames queued while forwarding was stopped are silently lost (and not counted). Default false.
   */
  noFlushRx?: boolean;
  /** Extra testpmd app args (after `--`). */
  extraArgs?: readonly string[];
  /** EAL `--log-level` value(s), e.g. 'lib.vhost.config:debug' or '7'. */
  logLevel?: string | readonly string[];
  /** Time to the first prompt. Default 30 s (virtio-user server mode blocks until the backend connects). */
  startupTimeoutMs?: number;
  /** Default timeout of cmd(). Default 10 s. */
  cmdTimeoutMs?: number;
  /**
   * When this testpmd is the listening side, unlink a stale *socket* file at the path first. Default true:
   * virtio-user `server=1` does not unlink its socket on exit, and bind() then fails with EADDRINUSE
   * ("failed to bind … Address already in use") on the next run.
   */
  unlinkStaleSocket?: boolean;
  /**
   * Start testpmd with SIGPIPE ignored. Default true: virtio-user writes to the vhost-user socket without
   * MSG_NOSIGNAL, so when the backend has closed the connection first (backend quit/crash/restart, or both sides
   * quitting at once) the default action kills testpmd with SIGPIPE. Ignored, the write fails with EPIPE and
   * virtio-user just logs "Failed to stop device".
   */
  ignoreSigpipe?: boolean;
  /** Binary. Default /usr/bin/dpdk-testpmd. */
  binary?: string;
}

/** One port's block of the "Forward statistics" that `stop` prints (deltas since `start`). */
export interface PortStats {
  port: number;
  rxPackets: number;
  /** testpmd prints the port's imissed here. */
  rxDropped: number;
  rxTotal: number;
  /** Packets the driver accepted for TX. */
  txPackets: number;
  /** Packets the forwarding engine freed because the TX ring was full. */
  txDropped: number;
  txTotal: number;
  /** Only printed when non-zero. */
  rxErrors: number;
  rxNombufs: number;
}

/** `show port stats <n>` (cumulative since the port started, except the pps/bps "since last show"). */
export interface NicStats {
  port: number;
  rxPackets: number;
  rxMissed: number;
  rxBytes: number;
  rxErrors: number;
  rxNombuf: number;
  txPackets: number;
  txErrors: number;
  txBytes: number;
  rxPps: number;
  rxBps: number;
  txPps: number;
  txBps: number;
}

export class TestpmdError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'TestpmdError';
    this.code = code;
  }
}

const PROMPT = 'testpmd> ';
const TAIL = 2048;
const live = new Set<ChildProcessWithoutNullStreams>();
let counter = 0;
let hooked = false;

function hookExit(): void {
  if (hooked) return;
  hooked = true;
  // 'exit' handlers must be synchronous: SIGKILL whatever is left.
  process.once('exit', killAllTestpmds);
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      killAllTestpmds();
      // Re-raise with the default action if nobody else handles it.
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    });
  }
}

/** SIGKILL every testpmd this process started and that is still running. */
export function killAllTestpmds(): void {
  for (const p of live) {
    try {
      p.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
  live.clear();
}

/** Build the argv (after the binary) for the options. Exported for logging / docs. */
export function testpmdArgs(o: TestpmdOptions, filePrefix: string): string[] {
  const sockets = typeof o.socket === 'string' ? [o.socket] : [...o.socket];
  if (sockets.length === 0) throw new TestpmdError('TESTPMD_USAGE', 'socket: at least one path');
  const queues = o.queues ?? 1;
  const fwdCore = o.fwdCore ?? 1;
  const mainCore = o.mainCore ?? (fwdCore === 0 ? 1 : 0);
  const nbCores = o.nbCores ?? 1;
  const lcores = o.lcores ?? `0@${mainCore},1@${fwdCore}`;
  const macs = o.mac === undefined ? [] : typeof o.mac === 'string' ? [o.mac] : [...o.mac];
  const vdevs = sockets.map((path, i) => {
    if (/[,\s]/.test(path)) throw new TestpmdError('TESTPMD_USAGE', `socket path must not contain ',' or spaces: ${path}`);
    const kv: string[] = [];
    if (o.role === 'vhost') {
      kv.push(`net_vhost${i}`, `iface=${path}`, `queues=${queues}`);
      if (o.server === false) kv.push('client=1');
    } else {
      kv.push(
        `net_virtio_user${i}`,
        `path=${path}`,
        `queues=${queues}`,
        `queue_size=${o.queueSize ?? 256}`,
        `packed_vq=${o.packed ? 1 : 0}`,
        `mrg_rxbuf=${o.mrg === false ? 0 : 1}`,
        `in_order=${o.inOrder === false ? 0 : 1}`,
      );
      if (o.server === true) kv.push('server=1');
      const mac = macs[i];
      if (mac !== undefined) kv.push(`mac=${mac}`);
    }
    if (o.vdevArgs) kv.push(o.vdevArgs);
    return kv.join(',');
  });
  const eal = [
    '--lcores', lcores, '--main-lcore', '0',
    '--no-pci', '--no-huge', '-m', String(o.memMb ?? 512),
    `--file-prefix=${filePrefix}`,
  ];
  for (const v of vdevs) eal.push('--vdev', v);
  const levels = o.logLevel === undefined ? [] : typeof o.logLevel === 'string' ? [o.logLevel] : [...o.logLevel];
  for (const l of levels) eal.push(`--log-level=${l}`);
  if (o.extraEal) eal.push(...o.extraEal);
  const txPkts = o.txPkts === undefined ? [64] : typeof o.txPkts === 'number' ? [o.txPkts] : [...o.txPkts];
  const app = [
    '-i',
    `--total-num-mbufs=${o.totalNumMbufs ?? 32768}`,
    `--nb-cores=${nbCores}`,
    `--rxq=${queues}`,
    `--txq=${queues}`,
    `--forward-mode=${o.fwdMode ?? 'io'}`,
    `--txpkts=${txPkts.join(',')}`,
    `--burst=${o.burst ?? 32}`,
  ];
  if (o.noFlushRx) app.push('--no-flush-rx');
  (o.ethPeer ?? []).forEach((mac, port) => app.push(`--eth-peer=${port},${mac}`));
  if (o.extraArgs) app.push(...o.extraArgs);
  return [...eal, '--', ...app];
}

function num(section: string, label: string): number {
  // Labels are followed by ':' and optional spaces; values are decimal.
  const m = new RegExp(`${label}:\\s*(\\d+)`).exec(section);
  return m?.[1] === undefined ? 0 : Number(m[1]);
}

/** Parse the per-port "Forward statistics for port N" blocks printed by `stop`. */
export function parseFwdStats(out: string): PortStats[] {
  const res: PortStats[] = [];
  const re = /-+ Forward statistics for port (\d+)\s+-+\n([\s\S]*?)\n\s*-{20,}/g;
  for (let m = re.exec(out); m !== null; m = re.exec(out)) {
    const body = m[2] ?? '';
    res.push({
      port: Number(m[1]),
      rxPackets: num(body, 'RX-packets'),
      rxDropped: num(body, 'RX-dropped'),
      rxTotal: num(body, 'RX-total'),
      txPackets: num(body, 'TX-packets'),
      txDropped: num(body, 'TX-dropped'),
      txTotal: num(body, 'TX-total'),
      rxErrors: num(body, 'RX-error'),
      rxNombufs: num(body, 'RX-nombufs'),
    });
  }
  return res;
}

/** Parse `show port stats <n>` output. */
export function parseNicStats(out: string): NicStats {
  const m = /NIC statistics for port (\d+)/.exec(out);
  if (m?.[1] === undefined) throw new TestpmdError('TESTPMD_PARSE', `no NIC statistics in: ${out.slice(-TAIL)}`);
  return {
    port: Number(m[1]),
    rxPackets: num(out, 'RX-packets'),
    rxMissed: num(out, 'RX-missed'),
    rxBytes: num(out, 'RX-bytes'),
    rxErrors: num(out, 'RX-errors'),
    rxNombuf: num(out, 'RX-nombuf'),
    txPackets: num(out, 'TX-packets'),
    txErrors: num(out, 'TX-errors'),
    txBytes: num(out, 'TX-bytes'),
    rxPps: num(out, 'Rx-pps'),
    rxBps: num(out, 'Rx-bps'),
    txPps: num(out, 'Tx-pps'),
    txBps: num(out, 'Tx-bps'),
  };
}

function unlinkStaleSocket(path: string): void {
  try {
    if (lstatSync(path).isSocket()) unlinkSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

/**
 * EAL leaves its runtime dir (mp_socket, config, fbarray files) behind on exit; remove ours so repeated runs
 * do not pile up directories. Root: /var/run/dpdk/<prefix>; others: $XDG_RUNTIME_DIR (or /tmp)/dpdk/<prefix>.
 */
function removeRuntimeDir(prefix: string): void {
  const base = process.getuid?.() === 0 ? '/var/run/dpdk' : join(process.env['XDG_RUNTIME_DIR'] ?? '/tmp', 'dpdk');
  try {
    rmSync(join(base, prefix), { recursive: true, force: true });
  } catch {
    /* best effort */
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export class Testpmd {
  readonly opts: TestpmdOptions;
  readonly args: readonly string[];
  readonly filePrefix: string;
  /** Resolves with the exit code (or null + signal) once the process has exited; never rejects. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly proc: ChildProcessWithoutNullStreams;
  private out = ''; // testpmd's stdout+stderr (merged by `2>&1`), plus anything `sh`/`stdbuf` print on stderr
  private waiters = new Set<() => void>();
  private queue: Promise<unknown> = Promise.resolve();
  private exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  private quitting = false;

  /** Use startTestpmd(). */
  constructor(opts: TestpmdOptions) {
    this.opts = opts;
    this.filePrefix = opts.filePrefix ?? `tp${process.pid}_${++counter}_${Date.now().toString(36)}`;
    this.args = testpmdArgs(opts, this.filePrefix);
    hookExit();
    const listens = opts.server ?? opts.role === 'vhost';
    if (listens && opts.unlinkStaleSocket !== false) {
      for (const path of typeof opts.socket === 'string' ? [opts.socket] : opts.socket) unlinkStaleSocket(path);
    }
    const bin = opts.binary ?? '/usr/bin/dpdk-testpmd';
    log('spawn %s %s', bin, this.args.join(' '));
    // stderr is merged into stdout at the fd level (`2>&1`): one pipe keeps error lines ("Packet forwarding
    // already started", "Invalid port") in order before the prompt, so cmd() returns them too. An ignored
    // SIGPIPE survives exec (a handled one would not); `sh` sets it, then execs stdbuf → testpmd (same pid).
    const script = `${opts.ignoreSigpipe === false ? '' : 'trap "" PIPE; '}exec "$@" 2>&1`;
    this.proc = spawn('/bin/sh', ['-c', script, 'sh', 'stdbuf', '-o0', '-e0', bin, ...this.args], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    live.add(this.proc);
    this.proc.stdout.setEncoding('utf8');
    this.proc.stderr.setEncoding('utf8');
    this.proc.stdout.on('data', (d: string) => {
      this.out += d;
      this.wake();
    });
    this.proc.stderr.on('data', (d: string) => {
      this.out += d; // only sh/stdbuf errors (exec failures) arrive here
      this.wake();
    });
    this.proc.stdin.on('error', () => {
      /* EPIPE after exit: reported through exited */
    });
    this.exited = new Promise((resolve) => {
      this.proc.once('error', (err) => {
        this.out += `\n[spawn error: ${err.message}]\n`;
        this.exitInfo ??= { code: null, signal: null };
        live.delete(this.proc);
        this.wake();
        resolve(this.exitInfo);
      });
      this.proc.once('exit', (code, signal) => {
        this.exitInfo = { code, signal };
        live.delete(this.proc);
        removeRuntimeDir(this.filePrefix);
        log('%s exited code=%s signal=%s', this.filePrefix, code, signal);
        this.wake();
        resolve(this.exitInfo);
      });
    });
  }

  get pid(): number | undefined {
    return this.proc.pid;
  }

  /** Everything testpmd printed so far (stdout and stderr, in order), including the echoed commands. */
  get log(): string {
    return this.out;
  }

  get hasExited(): boolean {
    return this.exitInfo !== undefined;
  }

  tail(n = TAIL): string {
    return this.out.slice(-n);
  }

  private wake(): void {
    for (const w of [...this.waiters]) w();
  }

  /**
   * Wait until `check()` returns a value other than undefined, re-evaluated on every output chunk and on exit.
   * Rejects after timeoutMs, or when the process exits first (unless check handles that), with the output tail.
   */
  waitFor<T>(check: () => T | undefined, timeoutMs: number, what: string): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const done = () => {
        this.waiters.delete(poll);
        if (timer) clearTimeout(timer);
      };
      const poll = () => {
        let v: T | undefined;
        try {
          v = check();
        } catch (err) {
          done();
          reject(err);
          return;
        }
        if (v !== undefined) {
          done();
          resolve(v);
        } else if (this.exitInfo) {
          done();
          reject(this.error('TESTPMD_EXITED', `testpmd exited (${JSON.stringify(this.exitInfo)}) while waiting for ${what}`));
        }
      };
      timer = setTimeout(() => {
        done();
        reject(this.error('TESTPMD_TIMEOUT', `timeout after ${timeoutMs} ms waiting for ${what}`));
      }, timeoutMs);
      this.waiters.add(poll);
      poll();
    });
  }

  private error(code: string, msg: string): TestpmdError {
    return new TestpmdError(code, `[testpmd ${this.filePrefix}] ${msg}\n--- last output ---\n${this.tail()}`);
  }

  /** Resolves at the first prompt. */
  async ready(timeoutMs = this.opts.startupTimeoutMs ?? 30_000): Promise<void> {
    await this.waitFor(() => (this.out.includes(PROMPT) ? true : undefined), timeoutMs, 'the first prompt');
  }

  /**
   * Send one command line and resolve with its output (echo and prompt stripped).
   * Commands are serialised; asynchronous event lines (link state changes) printed meanwhile are included.
   */
  cmd(line: string, timeoutMs = this.opts.cmdTimeoutMs ?? 10_000): Promise<string> {
    const run = async (): Promise<string> => {
      if (this.exitInfo) throw this.error('TESTPMD_EXITED', `cannot send '${line}': testpmd has exited`);
      const from = this.out.length;
      log('%s> %s', this.filePrefix, line);
      this.proc.stdin.write(`${line}\n`);
      const end = await this.waitFor(
        () => {
          const i = this.out.indexOf(PROMPT, from);
          return i < 0 ? undefined : i;
        },
        timeoutMs,
        `the prompt after '${line}'`,
      );
      let text = this.out.slice(from, end);
      const echo = text.indexOf('\r\n');
      if (echo >= 0) text = text.slice(echo + 2);
      return text;
    };
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => undefined);
    return p;
  }

  /** `start`, or `start tx_first <n>` when the txFirst option is set. */
  async start(): Promise<string> {
    const n = this.opts.txFirst;
    if (n !== undefined && n !== false) return this.startTxFirst(n === true ? 1 : n);
    return this.checked(await this.cmd('start'), 'start');
  }

  /**
   * `start tx_first [n]`: n bursts of `burst` txonly frames (`txPkts` bytes) on every forwarding port, then the
   * configured engine. In io mode with a non-echoing peer that is exactly n×burst frames (minus TX-dropped).
   */
  async startTxFirst(n?: number): Promise<string> {
    const line = n === undefined ? 'start tx_first' : `start tx_first ${n}`;
    return this.checked(await this.cmd(line), line);
  }

  private checked(out: string, what: string): string {
    // Only testpmd's own refusals: async driver/vhost log lines may also be in `out`.
    if (/already started|Bad arguments|Invalid port|^Fail: |stop forwarding first/m.test(out)) {
      throw this.error('TESTPMD_CMD', `'${what}' failed: ${out}`);
    }
    return out;
  }

  /**
   * Put exactly n×burst frames on the wire: `start tx_first n`, then `stop` at once. testpmd launches the n
   * txonly bursts one by one on the forwarding lcore and waits for each before the prompt returns, so they are
   * all in the TX ring (or counted as TX-dropped when the ring was full) by then; the peer drains the ring on
   * its own. Between bursts the lcore blocks in the EAL launch pipe instead of spinning, so this sender yields
   * its core (a receiver on the same core keeps up). Use fwd mode io or rxonly, never txonly (that would go
   * on sending). Returns the stop statistics (txPackets + txDropped = n×burst per port).
   */
  async sendBursts(n: number): Promise<PortStats[]> {
    if (this.opts.fwdMode === 'txonly') throw new TestpmdError('TESTPMD_USAGE', 'sendBursts needs fwd mode io/rxonly');
    await this.startTxFirst(n);
    return this.stop();
  }

  /**
   * Poll `show port stats` until the port's cumulative counter `stat` (default RX-packets) reaches `target`.
   * With `quietMs`, also resolve once the counter has not moved for that long (when drops can make the target
   * unreachable). Rejects after timeoutMs. Counters are cumulative since the port started: add a baseline.
   */
  async waitForStat(
    target: number,
    {
      stat = 'rxPackets',
      port = 0,
      timeoutMs = 10_000,
      quietMs,
      intervalMs = 20,
    }: { stat?: keyof NicStats; port?: number; timeoutMs?: number; quietMs?: number; intervalMs?: number } = {},
  ): Promise<NicStats> {
    const t0 = Date.now();
    let last = -1;
    let lastChange = t0;
    for (;;) {
      const s = await this.portStats(port);
      const v = s[stat];
      const now = Date.now();
      if (v >= target) return s;
      if (v !== last) {
        last = v;
        lastChange = now;
      } else if (quietMs !== undefined && now - lastChange >= quietMs) {
        return s;
      }
      if (now - t0 >= timeoutMs) {
        throw this.error('TESTPMD_TIMEOUT', `port ${port} ${stat} ${v} < ${target} after ${timeoutMs} ms`);
      }
      await sleep(intervalMs);
    }
  }

  /** waitForStat on RX-packets. */
  waitForRxPackets(
    target: number,
    opts: { port?: number; timeoutMs?: number; quietMs?: number; intervalMs?: number } = {},
  ): Promise<NicStats> {
    return this.waitForStat(target, { ...opts, stat: 'rxPackets' });
  }

  /** `stop` and parse the per-port forward statistics (deltas since the last start). */
  async stop(): Promise<PortStats[]> {
    const out = await this.cmd('stop');
    // Not started: testpmd only prints "Packet forwarding not started".
    if (!/Telling cores to stop/.test(out)) return [];
    const stats = parseFwdStats(out);
    if (stats.length === 0) throw this.error('TESTPMD_PARSE', `no forward statistics in 'stop' output: ${out}`);
    return stats;
  }

  async portStats(port = 0): Promise<NicStats> {
    return parseNicStats(await this.cmd(`show port stats ${port}`));
  }

  /** Link status of a port from `show port info` ('up' | 'down'). */
  async linkStatus(port = 0): Promise<'up' | 'down'> {
    const out = await this.cmd(`show port info ${port}`);
    const m = /Link status:\s*(up|down)/.exec(out);
    if (m?.[1] === undefined) throw this.error('TESTPMD_PARSE', `no link status for port ${port}: ${out}`);
    return m[1] as 'up' | 'down';
  }

  /**
   * Poll `show port info` until the port's link is up (net_vhost: the frontend finished setup, DRIVER_OK /
   * rings ready; virtio-user: the vhost-user handshake completed and the device started).
   */
  waitForLinkUp(timeoutMs = 10_000, port = 0): Promise<void> {
    return this.waitForLink('up', timeoutMs, port);
  }

  /** Poll `show port info` until the port's link is `state` (e.g. 'down' after the peer went away). */
  async waitForLink(state: 'up' | 'down', timeoutMs = 10_000, port = 0): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if ((await this.linkStatus(port)) === state) return;
      if (Date.now() >= deadline) {
        throw this.error('TESTPMD_TIMEOUT', `port ${port} link not ${state} after ${timeoutMs} ms`);
      }
      await sleep(50);
    }
  }

  /** Send `quit`, wait for exit; SIGKILL after timeoutMs. Idempotent. */
  async quit(timeoutMs = 5000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (!this.exitInfo && !this.quitting) {
      this.quitting = true;
      log('%s> quit', this.filePrefix);
      this.proc.stdin.write('quit\n');
      this.proc.stdin.end(); // EOF also makes testpmd leave its prompt loop
    }
    if (!this.exitInfo) {
      const t = setTimeout(() => {
        log('%s: quit timed out, SIGKILL', this.filePrefix);
        this.proc.kill('SIGKILL');
      }, timeoutMs);
      await this.exited;
      clearTimeout(t);
    }
    return this.exited;
  }

  /** SIGKILL now. */
  async kill(): Promise<void> {
    if (!this.exitInfo) this.proc.kill('SIGKILL');
    await this.exited;
  }
}

/** Spawn testpmd and resolve once its first `testpmd> ` prompt appears (killed on failure). */
export async function startTestpmd(opts: TestpmdOptions): Promise<Testpmd> {
  const t = new Testpmd(opts);
  try {
    await t.ready();
  } catch (err) {
    await t.kill();
    throw err;
  }
  return t;
}

/**
 * Quit the given testpmds (undefined entries are skipped): virtio-user ones first (in parallel), then the vhost
 * ones, so that the frontends' GET_VRING_BASE on shutdown still gets an answer.
 */
export async function quitAll(...tps: (Testpmd | undefined)[]): Promise<void> {
  const list = tps.filter((t): t is Testpmd => t !== undefined);
  await Promise.all(list.filter((t) => t.opts.role === 'virtio-user').map((t) => t.quit()));
  await Promise.all(list.filter((t) => t.opts.role !== 'virtio-user').map((t) => t.quit()));
}
