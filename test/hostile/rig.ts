/**
 * The backend under attack, as users run it: `vhost-user-ts net --socket A --port vhost:B` in its own
 * process (test/helpers/backend.ts startBackend). The hostile frontend plays on A; a second, well
 * behaved frontend (the sentinel) is connected to B from the start and must keep getting GET_FEATURES
 * answered within a second whatever happens on A. The process's fds (/proc/PID/fd), RSS
 * (/proc/PID/status VmRSS) and mappings of our memfds (/proc/PID/maps) are the leak probes.
 */
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startBackend, type Backend } from '../helpers/backend.ts';
import { GuestMemory, RawFrontend, SplitRing, makeKind, sleep, sys, until, type FdKind, type GuestMemoryOptions, type KindFd } from './raw-frontend.ts';
import {
  F_NEED_REPLY,
  F_REPLY,
  F_VERSION,
  PF,
  Req,
  VF,
  bits,
  hex,
  memTable,
  u64,
  vringAddr,
  vringFd,
  vringState,
} from './wire.ts';

export interface Probe {
  fds: number;
  rssKiB: number;
  /** Mappings of our memfds (named hostile-*) in the backend. */
  maps: number;
}

export interface Health {
  ok: boolean;
  alive: boolean;
  sentinel: string;
  sentinelMs: number;
  fdsOk: boolean;
  rssOk: boolean;
  mapsOk: boolean;
  before: Probe;
  after: Probe | null;
  detail: string;
}

export interface RigOptions {
  /** DEBUG namespaces for the backend (its log is in `rig.log`). */
  debug?: string;
  /** Fds the backend may hold above the baseline once a session is gone (default 0). */
  fdTolerance?: number;
  /** RSS growth allowed over the baseline, KiB (default 24 MiB). */
  rssToleranceKiB?: number;
  /** How long a finished session may take to release its resources (default 2000 ms). */
  settleMs?: number;
}

export class BackendRig {
  readonly a: string;
  readonly b: string;
  sentinel!: RawFrontend;
  offeredFeatures = 0n;
  offeredProto = 0n;
  private constructor(
    readonly dir: string,
    readonly backend: Backend,
    readonly opts: RigOptions,
  ) {
    this.a = join(dir, 'a.sock');
    this.b = join(dir, 'b.sock');
  }

  static async start(opts: RigOptions = {}): Promise<BackendRig> {
    const dir = mkdtempSync(join(tmpdir(), 'vut-hostile-'));
    const a = join(dir, 'a.sock');
    const b = join(dir, 'b.sock');
    const backend = await startBackend(['net', '--socket', a, '--port', `vhost:${b}`], {
      waitSockets: [a, b],
      ...(opts.debug ? { debug: opts.debug } : {}),
    });
    const rig = new BackendRig(dir, backend, opts);
    rig.sentinel = await rig.connectTo(rig.b, 5000);
    const f = await rig.sentinel.getU64(Req.GET_FEATURES);
    if (typeof f !== 'bigint') throw new Error(`sentinel: GET_FEATURES ${f}`);
    rig.offeredFeatures = f;
    const p = await rig.sentinel.getU64(Req.GET_PROTOCOL_FEATURES);
    if (typeof p !== 'bigint') throw new Error(`sentinel: GET_PROTOCOL_FEATURES ${p}`);
    rig.offeredProto = p;
    return rig;
  }

  get pid(): number {
    return this.backend.proc.pid!;
  }
  get log(): string {
    return this.backend.log;
  }

  alive(): boolean {
    const p = this.backend.proc;
    return p.exitCode === null && p.signalCode === null && existsSync(`/proc/${p.pid}/status`);
  }

  /** How the process ended, if it did. */
  exitInfo(): string {
    const p = this.backend.proc;
    return p.signalCode !== null ? `killed by ${p.signalCode}` : p.exitCode !== null ? `exited with ${p.exitCode}` : 'running';
  }

  probe(): Probe | null {
    try {
      const fds = readdirSync(`/proc/${this.pid}/fd`).length;
      const status = readFileSync(`/proc/${this.pid}/status`, 'utf8');
      const m = /VmRSS:\s+(\d+)/.exec(status);
      const maps = readFileSync(`/proc/${this.pid}/maps`, 'utf8')
        .split('\n')
        .filter((l) => l.includes('memfd:hostile-')).length;
      return { fds, rssKiB: m ? Number(m[1]) : 0, maps };
    } catch {
      return null;
    }
  }

  /** GET_FEATURES on the sentinel (the other socket): 'ok' with the round trip, or what went wrong. */
  async sentinelCheck(timeoutMs = 1000): Promise<{ result: string; ms: number }> {
    const t0 = Date.now();
    const v = await this.sentinel.getU64(Req.GET_FEATURES, undefined, timeoutMs);
    const ms = Date.now() - t0;
    if (typeof v !== 'bigint') return { result: `GET_FEATURES ${v}`, ms };
    if (v !== this.offeredFeatures) return { result: `GET_FEATURES answered ${hex(v)}, expected ${hex(this.offeredFeatures)}`, ms };
    return { result: 'ok', ms };
  }

  /**
   * A frontend on `path` whose GET_FEATURES was answered: the backend serves one frontend per socket
   * and closes a second one while the first is still open, so a connection made before the backend
   * saw the previous one go is retried.
   */
  async connectTo(path: string, timeoutMs = 3000): Promise<RawFrontend> {
    const end = Date.now() + timeoutMs;
    let last = '';
    for (;;) {
      let fe: RawFrontend | null = null;
      try {
        fe = RawFrontend.connect(path);
        const v = await fe.getU64(Req.GET_FEATURES, undefined, 500);
        if (typeof v === 'bigint') return fe;
        last = `GET_FEATURES ${v}`;
      } catch (e) {
        last = (e as Error).message;
      }
      fe?.close();
      if (Date.now() > end || !this.alive()) throw new Error(`cannot open a session on ${path}: ${last} (backend ${this.exitInfo()})`);
      await sleep(2);
    }
  }

  private feederSession: HostileSession | null = null;

  /**
   * A well-behaved session on B with a running TX ring (256 entries, 24 MiB of memory): its frames go
   * to A's RX ring. It replaces the bare sentinel connection (B serves one frontend at a time) and is
   * the sentinel from then on; made on first use, kept until stop().
   */
  async feeder(): Promise<HostileSession> {
    if (this.feederSession !== null) return this.feederSession;
    this.sentinel.close();
    const f = await openSession(this, { path: this.b, qsize: 256, memory: { bytes: 24 << 20 } });
    if (f.failures().length) throw new Error(`feeder session on B: ${JSON.stringify(f.failures())}`);
    this.sentinel = f.fe;
    this.feederSession = f;
    return f;
  }

  /** A frontend on the hostile socket A. */
  connect(timeoutMs = 3000): Promise<RawFrontend> {
    return this.connectTo(this.a, timeoutMs);
  }

  /**
   * After a case: the process is alive, the sentinel answers within 1 s, and within `settleMs` the fds,
   * RSS and memfd mappings are back to the baseline (within the tolerances).
   */
  async health(before: Probe): Promise<Health> {
    const fdTol = this.opts.fdTolerance ?? 0;
    const rssTol = this.opts.rssToleranceKiB ?? 24 * 1024;
    let alive = this.alive();
    const s = alive ? await this.sentinelCheck(1000) : { result: `backend ${this.exitInfo()}`, ms: 0 };
    // A sentinel that lost its connection: the process may be dying right now; say so if it is.
    if (alive && s.result !== 'ok') {
      await until(() => !this.alive(), 300);
      alive = this.alive();
      if (!alive) s.result = `backend ${this.exitInfo()} (${s.result})`;
    }
    let after: Probe | null = null;
    const flat = (p: Probe | null) => p !== null && p.fds <= before.fds + fdTol && p.rssKiB <= before.rssKiB + rssTol && p.maps <= before.maps;
    const end = Date.now() + (this.opts.settleMs ?? 2000);
    for (;;) {
      after = this.probe();
      if (after === null || flat(after) || Date.now() > end) break;
      await sleep(1);
    }
    const fdsOk = after !== null && after.fds <= before.fds + fdTol;
    const rssOk = after !== null && after.rssKiB <= before.rssKiB + rssTol;
    const mapsOk = after !== null && after.maps <= before.maps;
    const ok = alive && this.alive() && s.result === 'ok' && fdsOk && rssOk && mapsOk;
    const detail =
      `alive ${alive && this.alive()} (${this.exitInfo()}), sentinel ${s.result} in ${s.ms} ms, ` +
      (after
        ? `fds ${before.fds} -> ${after.fds}, RSS ${before.rssKiB} -> ${after.rssKiB} KiB, memfd mappings ${before.maps} -> ${after.maps}`
        : 'no /proc entry');
    return { ok, alive: alive && this.alive(), sentinel: s.result, sentinelMs: s.ms, fdsOk, rssOk, mapsOk, before, after, detail };
  }

  /** The last lines the backend wrote (its crash, if any). */
  tail(lines = 15): string {
    return this.backend.log.trimEnd().split('\n').slice(-lines).join('\n');
  }

  /** Stops the backend (SIGTERM: it prints its port statistics into the log; SIGKILL after 2 s). */
  async stop(): Promise<void> {
    this.sentinel?.close();
    this.feederSession?.close();
    if (this.alive()) await this.backend.stop(2000).catch(() => undefined);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

// ---- a session as a (possibly hostile) VMM opens it ---------------------------------------------

/** What to put in a ring's kick / call / err slot: a kind of fd, NOFD, or nothing (message not sent). */
export type FdSlot = FdKind | 'nofd' | 'skip';

export interface SessionPlan {
  /** The socket to open the session on (default the hostile socket A). */
  path?: string;
  /** Protocol features to ack (default REPLY_ACK | MQ). */
  proto?: bigint;
  /** Virtio features to ack (default VERSION_1 | PROTOCOL_FEATURES). */
  features?: bigint;
  memory?: GuestMemoryOptions;
  /** Rings to set up (default [1]: the TX ring of pair 0). */
  rings?: number[];
  qsize?: number;
  kick?: (ring: number) => FdSlot;
  call?: (ring: number) => FdSlot;
  err?: (ring: number) => FdSlot;
  /** Send SET_BACKEND_REQ_FD with a socketpair whose end we serve (needs BACKEND_REQ in proto). */
  backendChannel?: boolean;
  /** Skip the ring set-up (handshake and memory only). */
  noRings?: boolean;
}

export interface Step {
  what: string;
  ack: bigint | string;
}

/**
 * One hostile session: our socket, guest memory, rings and the fds we handed over (ours kept to poke
 * or hang up). `steps` holds every NEED_REPLY answer of the set-up.
 */
export class HostileSession {
  readonly steps: Step[] = [];
  readonly rings = new Map<number, SplitRing>();
  readonly kicks = new Map<number, KindFd>();
  readonly calls = new Map<number, KindFd>();
  readonly errs = new Map<number, KindFd>();
  channel: RawFrontend | null = null;
  private readonly extra: { close(): void }[] = [];
  constructor(
    readonly fe: RawFrontend,
    readonly mem: GuestMemory,
  ) {}

  ack(what: string): bigint | string | undefined {
    return this.steps.find((s) => s.what === what)?.ack;
  }
  /** Steps that were not acked with 0. */
  failures(): Step[] {
    return this.steps.filter((s) => s.ack !== 0n);
  }

  async step(what: string, id: number, payload: Uint8Array, fds: number[] = []): Promise<bigint | string> {
    const a = await this.fe.ack(id, payload, { fds });
    this.steps.push({ what, ack: a });
    return a;
  }

  ring(i: number): SplitRing {
    const r = this.rings.get(i);
    if (!r) throw new Error(`ring ${i} not set up`);
    return r;
  }

  /** Keeps an fd or object of ours alive until close(). */
  own(x: { close(): void }): void {
    this.extra.push(x);
  }

  kick(i: number): void {
    this.kicks.get(i)?.poke();
  }

  close(): void {
    this.fe.close();
    this.channel?.close();
    for (const m of [this.kicks, this.calls, this.errs]) for (const k of m.values()) k.close();
    for (const x of this.extra) x.close();
    this.mem.close();
  }
}

/** One ring slot's fd: made, sent (sendmsg copies it), ours kept. */
function slotFd(slot: FdSlot): KindFd | null {
  return slot === 'nofd' || slot === 'skip' ? null : makeKind(slot);
}

/**
 * Opens a session the way QEMU does (GET_FEATURES, protocol features, owner, features, memory table,
 * then per ring: num, addr, base, call, err, kick, enable), recording each ack. Nothing is asserted:
 * a case looks at `steps`.
 */
export async function openSession(rig: BackendRig, plan: SessionPlan = {}): Promise<HostileSession> {
  const fe = await rig.connectTo(plan.path ?? rig.a);
  const mem = new GuestMemory(plan.memory);
  const s = new HostileSession(fe, mem);
  try {
    const proto = plan.proto ?? bits(PF.REPLY_ACK, PF.MQ);
    fe.send(Req.GET_PROTOCOL_FEATURES);
    fe.send(Req.SET_PROTOCOL_FEATURES, u64(proto));
    fe.send(Req.SET_OWNER);
    await s.step('SET_FEATURES', Req.SET_FEATURES, u64(plan.features ?? bits(VF.VERSION_1, VF.PROTOCOL_FEATURES)));
    if (plan.backendChannel) {
      const [ours, theirs] = sys.socketpair();
      s.channel = serveBackendChannel(ours);
      await s.step('SET_BACKEND_REQ_FD', Req.SET_BACKEND_REQ_FD, new Uint8Array(0), [theirs]);
      sys.close(theirs);
    }
    await s.step('SET_MEM_TABLE', Req.SET_MEM_TABLE, memTable([mem.region()]), [mem.fd]);
    if (plan.noRings) return s;
    const qsize = plan.qsize ?? 64;
    for (const i of plan.rings ?? [1]) {
      const r = new SplitRing(mem, i, qsize);
      s.rings.set(i, r);
      await s.step(`SET_VRING_NUM ${i}`, Req.SET_VRING_NUM, vringState(i, qsize));
      const a = r.addrs;
      await s.step(`SET_VRING_ADDR ${i}`, Req.SET_VRING_ADDR, vringAddr(i, a.desc, a.used, a.avail));
      await s.step(`SET_VRING_BASE ${i}`, Req.SET_VRING_BASE, vringState(i, 0));
      for (const [name, id, pick, map] of [
        ['SET_VRING_CALL', Req.SET_VRING_CALL, plan.call, s.calls],
        ['SET_VRING_ERR', Req.SET_VRING_ERR, plan.err, s.errs],
        ['SET_VRING_KICK', Req.SET_VRING_KICK, plan.kick, s.kicks],
      ] as const) {
        const slot: FdSlot = pick?.(i) ?? 'eventfd';
        if (slot === 'skip') continue;
        const k = slotFd(slot);
        if (k) map.set(i, k);
        await s.step(`${name} ${i}`, id, vringFd(i, k === null), k ? [k.fd] : []);
      }
      await s.step(`SET_VRING_ENABLE ${i}`, Req.SET_VRING_ENABLE, vringState(i, 1));
    }
    return s;
  } catch (e) {
    s.close();
    throw e;
  }
}

/** Our end of the back-end channel: every NEED_REPLY request is acked with 0. */
export function serveBackendChannel(fd: number): RawFrontend {
  const ch = RawFrontend.adopt(fd);
  ch.onStray = (f) => {
    if ((f.flags & F_NEED_REPLY) === 0 || (f.flags & F_REPLY) !== 0) return;
    ch.send(f.request, u64(0), { flags: F_VERSION | F_REPLY });
  };
  return ch;
}

/** Waits until the ring's used.idx reaches `idx` (mod 2^16); false after `ms`. */
export async function waitUsed(r: SplitRing, idx: number, ms = 1000): Promise<boolean> {
  const end = Date.now() + ms;
  while (((r.usedIdx - idx) & 0xffff) >= 0x8000) {
    if (Date.now() > end) return false;
    await sleep(2);
  }
  return true;
}

