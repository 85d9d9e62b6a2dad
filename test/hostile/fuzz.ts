/**
 * The seeded, replayable hostile-frontend fuzzer (issue 15 item 5).
 *
 *   npm run fuzz -- --seconds N [--seed S]          run for N seconds (seed random unless given)
 *   npm run fuzz -- --seed S --replay K             run sequence K of seed S alone, printing it
 *   options: --count N (stop after N sequences), --out DIR (findings; default $TMPDIR/vut-fuzz-findings),
 *            --keep-going (after a finding: restart the backend, go on, exit 1 at the end),
 *            --minimize (shrink each finding's sequence to the ops it needs, written next to it),
 *            --rss-mib M (RSS growth allowed over the baseline, default 64), --verbose,
 *            --debug NS (the backend's DEBUG namespaces; with --replay its log is printed),
 *            --peer-tx (also a finding: frames of the session on B still held once A's session is gone)
 *
 * One backend process (`vhost-user-ts net --socket A --port vhost:B`) serves every sequence on A; a
 * sentinel frontend on B is connected from the start. Each sequence (fuzz-gen.ts: a pure function of
 * seed and index) is played on a fresh connection to A with pooled fds and one guest memfd, then the
 * connection is closed and the checks run: the process is alive, the sentinel's GET_FEATURES is
 * answered within 1 s, and fds, RSS and mappings of our memfds are back to the baseline. A failed
 * check is a finding: the seed and the sequence index to replay it are printed, the sequence is written
 * to a file, and the fuzzer exits 1. Executions per second are printed at the end.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FdKit, GuestMemory, makeKind, sys, type KindFd } from './raw-frontend.ts';
import { BackendRig, openSession, serveBackendChannel, waitUsed, type Health, type HostileSession, type Probe } from './rig.ts';
import { bytesOf, describeOp, generate, type FdSpec, type Op, type Sequence } from './fuzz-gen.ts';
import { Req } from './wire.ts';
import type { RawFrontend } from './raw-frontend.ts';

interface Options {
  seconds: number;
  seed: number;
  replay: number | null;
  count: number;
  out: string;
  keepGoing: boolean;
  minimize: boolean;
  rssMiB: number;
  verbose: boolean;
  debug: string | null;
  peerTx: boolean;
}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    seconds: 10,
    seed: (Date.now() ^ (process.pid << 16)) >>> 0,
    replay: null,
    count: Infinity,
    out: join(tmpdir(), 'vut-fuzz-findings'),
    keepGoing: false,
    minimize: false,
    rssMiB: 64,
    verbose: false,
    debug: null,
    peerTx: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const val = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    const num = () => {
      const v = Number(val());
      if (!Number.isFinite(v) || v < 0) throw new Error(`${a}: not a number`);
      return v;
    };
    if (a === '--seconds') o.seconds = num();
    else if (a === '--seed') o.seed = num() >>> 0;
    else if (a === '--replay') o.replay = num();
    else if (a === '--count') o.count = num();
    else if (a === '--out') o.out = val();
    else if (a === '--keep-going') o.keepGoing = true;
    else if (a === '--minimize') o.minimize = true;
    else if (a === '--rss-mib') o.rssMiB = num();
    else if (a === '--verbose') o.verbose = true;
    else if (a === '--debug') o.debug = val();
    else if (a === '--peer-tx') o.peerTx = true;
    else if (a === '--help' || a === '-h') {
      console.log('usage: npm run fuzz -- --seconds N [--seed S] [--replay K] [--count N] [--out DIR] [--keep-going] [--minimize] [--rss-mib M] [--verbose] [--debug NS] [--peer-tx]');
      process.exit(0);
    } else throw new Error(`unknown option ${a}`);
  }
  return o;
}

const MEM_BYTES = 1 << 20;

interface Stats {
  sequences: number;
  messages: number;
  synced: number;
  closedByBackend: number;
  syncTimeouts: number;
}

interface Finding {
  kind: string;
  seed: number;
  index: number;
  detail: string;
  log: string;
}

/** Plays sequences against one backend; restartable after a finding. */
class Fuzzer {
  rig!: BackendRig;
  baseline!: Probe;
  readonly mem = new GuestMemory({ bytes: MEM_BYTES });
  readonly kit = new FdKit();
  readonly stats: Stats = { sequences: 0, messages: 0, synced: 0, closedByBackend: 0, syncTimeouts: 0 };

  constructor(readonly o: Options) {}

  /** The well-behaved session on B (the sentinel): its TX frames reach A's RX ring. */
  feeder: HostileSession | null = null;

  async start(): Promise<void> {
    this.rig = await BackendRig.start({ rssToleranceKiB: this.o.rssMiB * 1024, settleMs: 250, ...(this.o.debug ? { debug: this.o.debug } : {}) });
    this.feeder = await this.rig.feeder();
    // Warm-up: a well-behaved session with traffic, so lazily made resources are in the baseline.
    for (let i = 0; i < 3; i++) {
      const s = await openSession(this.rig);
      s.ring(1).txOne(0, 0x100000);
      s.kick(1);
      await waitUsed(s.ring(1), 1, 1000);
      s.close();
    }
    const h = await this.rig.health(this.rig.probe()!);
    this.baseline = h.after ?? this.rig.probe()!;
  }

  /**
   * B transmits up to n frames (as many as its TX ring has room for) once A's messages so far are
   * processed (a GET_FEATURES round trip on A), and waits a little for them to be taken: they land on
   * A's RX ring now, not after whatever A sends next.
   */
  async feed(fe: RawFrontend, n: number, len: number): Promise<void> {
    const f = this.feeder;
    if (f === null) return;
    if (!fe.closed) await fe.request(Req.GET_FEATURES, undefined, { timeoutMs: 200 });
    const r = f.ring(1);
    for (let i = 0; i < n && ((r.idx - r.usedIdx) & 0xffff) < r.size - 1; i++) {
      const head = r.idx % r.size;
      r.txOne(head, 0x100000 + head * 0x10000, len);
    }
    f.kick(1);
    const end = performance.now() + 3;
    while (r.usedIdx !== r.idx && performance.now() < end) await new Promise((res) => setImmediate(res));
  }

  async restart(): Promise<void> {
    this.feeder = null;
    await this.rig.stop();
    await this.start();
  }

  /** Plays one sequence on a fresh connection; returns how the final GET_FEATURES went. */
  async play(seq: Sequence, fe: RawFrontend): Promise<string> {
    this.mem.u8.fill(0);
    this.kit.drainAll();
    const fresh = new Map<string, KindFd>();
    const chans: RawFrontend[] = [];
    const sentTheirs: number[] = [];
    const resolve = (spec: FdSpec): number => {
      switch (spec) {
        case 'mem':
          return this.mem.fd;
        case 'chan': {
          const [ours, theirs] = sys.socketpair();
          chans.push(serveBackendChannel(ours));
          sentTheirs.push(theirs);
          return theirs;
        }
        case 'pipe!':
        case 'socket!': {
          let k = fresh.get(spec);
          if (!k) {
            k = makeKind(spec === 'pipe!' ? 'pipe' : 'socket');
            fresh.set(spec, k);
          }
          return k.fd;
        }
        default:
          return this.kit.get(spec).fd;
      }
    };
    const kindFd = (spec: FdSpec): KindFd | null => {
      if (spec === 'mem' || spec === 'chan') return null;
      if (spec === 'pipe!' || spec === 'socket!') {
        resolve(spec);
        return fresh.get(spec)!;
      }
      return this.kit.get(spec);
    };
    try {
      for (const op of seq.ops) {
        if (fe.closed) break;
        this.exec(op, fe, resolve, kindFd);
        if (op.op === 'yield') await new Promise((r) => setImmediate(r));
        if (op.op === 'feed') await this.feed(fe, op.n, op.len);
        for (const fd of sentTheirs.splice(0)) sys.close(fd);
      }
      if (seq.noSync) return 'nosync';
      const a = await fe.request(Req.GET_FEATURES, undefined, { timeoutMs: 500 });
      return a.kind;
    } finally {
      fe.close();
      for (const c of chans) c.close();
      for (const k of fresh.values()) k.close();
      for (const fd of sentTheirs) sys.close(fd);
    }
  }

  private exec(op: Op, fe: RawFrontend, resolve: (s: FdSpec) => number, kindFd: (s: FdSpec) => KindFd | null): void {
    switch (op.op) {
      case 'msg':
        this.stats.messages++;
        fe.send(op.id, bytesOf(op.payload), { flags: op.flags, fds: op.fds.map(resolve), ...(op.size !== undefined ? { size: op.size } : {}) });
        return;
      case 'raw':
        this.stats.messages++;
        fe.sendRaw(bytesOf(op.bytes), op.fds.map(resolve));
        return;
      case 'mem': {
        const b = bytesOf(op.bytes);
        if (op.at >= 0 && op.at + b.length <= MEM_BYTES) this.mem.u8.set(b, op.at);
        return;
      }
      case 'poke':
        kindFd(op.fd)?.poke();
        return;
      case 'hangup':
        kindFd(op.fd)?.hangUp();
        return;
      case 'yield':
        return;
      case 'feed':
        return; // async: play() runs it
    }
  }

  /** One sequence, played and checked. A finding, or null. */
  async runOne(seq: Sequence): Promise<Finding | null> {
    let sync: string;
    const t0 = performance.now();
    let t1 = t0;
    try {
      const fe = await this.rig.connect(2000);
      t1 = performance.now();
      sync = await this.play(seq, fe);
    } catch (e) {
      sync = `error: ${(e as Error).message}`;
    }
    const t2 = performance.now();
    this.stats.sequences++;
    if (sync === 'reply') this.stats.synced++;
    else if (sync === 'closed') this.stats.closedByBackend++;
    else if (sync === 'timeout') this.stats.syncTimeouts++;
    // --peer-tx: B's frames must not stay held back by a session that is gone (kicked loose after).
    let peer = '';
    if (this.o.peerTx && this.feeder !== null && this.rig.alive()) {
      const r = this.feeder.ring(1);
      if (!(await waitUsed(r, r.idx, 500))) {
        peer = `B's TX held after A's session ended (used.idx ${r.usedIdx}, avail.idx ${r.idx})`;
        this.feeder.kick(1);
        await waitUsed(r, r.idx, 500);
      }
    }
    const h = await this.rig.health(this.baseline);
    if (this.o.verbose) {
      const ms = (a: number, b: number) => (b - a).toFixed(1);
      console.log(`sequence ${seq.index}: connect ${ms(t0, t1)} ms, play ${ms(t1, t2)} ms, checks ${ms(t2, performance.now())} ms; final GET_FEATURES ${sync}; ${h.detail}`);
    }
    if (h.ok && peer === '') return null;
    const kind = h.ok ? 'peer-tx-held' : classify(h);
    return { kind, seed: seq.seed, index: seq.index, detail: `${peer ? `${peer}; ` : ''}${h.detail}; final GET_FEATURES ${sync}`, log: this.rig.tail(25) };
  }

  /** A healthy backend and a fresh baseline (restarted after a crash or a freeze). */
  async ready(): Promise<void> {
    const h = this.rig.alive() ? await this.rig.health(this.rig.probe() ?? this.baseline) : null;
    if (h === null || !h.alive || h.sentinel !== 'ok') await this.restart();
    else this.baseline = this.rig.probe() ?? this.baseline;
  }

  /**
   * Delta debugging: drops chunks of ops (halves, quarters, ... single ops) while the sequence still
   * produces a finding of the same kind. Each try runs on a healthy backend with a fresh baseline.
   */
  async minimize(seq: Sequence, kind: string): Promise<{ seq: Sequence; tries: number }> {
    let ops = seq.ops;
    let noSync = seq.noSync;
    let tries = 0;
    const reproduces = async (cand: Op[], ns: boolean): Promise<boolean> => {
      tries++;
      await this.ready();
      const f = await this.runOne({ ...seq, ops: cand, noSync: ns });
      return f !== null && f.kind === kind;
    };
    if (noSync && ops.length > 0 && ops[ops.length - 1]!.op === 'raw' && (await reproduces(ops.slice(0, -1), false))) {
      ops = ops.slice(0, -1);
      noSync = false;
    }
    for (let chunk = Math.max(1, Math.ceil(ops.length / 2)); ; chunk = Math.ceil(chunk / 2)) {
      for (let i = 0; i < ops.length; ) {
        const cand = [...ops.slice(0, i), ...ops.slice(i + chunk)];
        if (cand.length > 0 && (await reproduces(cand, noSync))) ops = cand;
        else i += chunk;
      }
      if (chunk === 1) break;
    }
    await this.ready();
    return { seq: { ...seq, ops, noSync }, tries };
  }

  get offer() {
    return { features: this.rig.offeredFeatures, proto: this.rig.offeredProto, memBytes: MEM_BYTES, uva: this.mem.uva };
  }

  close(): void {
    this.mem.close();
    this.kit.closeAll();
  }
}

function classify(h: Health): string {
  if (!h.alive || h.sentinel.startsWith('backend')) return 'crash';
  if (h.sentinel !== 'ok') return 'freeze';
  if (!h.fdsOk) return 'fd-leak';
  if (!h.mapsOk) return 'mapping-leak';
  return 'rss-growth';
}

function writeFinding(o: Options, f: Finding, seq: Sequence, suffix = ''): string {
  mkdirSync(o.out, { recursive: true });
  const base = join(o.out, `finding-seed${f.seed}-seq${f.index}${suffix}`);
  writeFileSync(`${base}.json`, JSON.stringify({ ...f, replay: `npm run fuzz -- --seed ${f.seed} --replay ${f.index}`, sequence: seq }, null, 1));
  const lines = [
    `${f.kind}: ${f.detail}`,
    `replay: npm run fuzz -- --seed ${f.seed} --replay ${f.index}`,
    '',
    'backend log tail:',
    f.log,
    '',
    `sequence ${f.index} of seed ${f.seed}${suffix ? ` minimized (the ops it needs; replay runs the whole sequence)` : ''} (${seq.ops.length} ops${seq.noSync ? ', no final sync' : ''}):`,
    ...seq.ops.map((op, i) => `${String(i).padStart(3)} ${describeOp(op)}`),
  ];
  writeFileSync(`${base}.txt`, lines.join('\n') + '\n');
  return `${base}.txt`;
}

async function main(): Promise<number> {
  const o = parseArgs(process.argv.slice(2));
  const fz = new Fuzzer(o);
  await fz.start();
  const t0 = Date.now();
  const findings: Finding[] = [];
  const signatures = new Set<string>();
  let stop = false;
  process.once('SIGINT', () => (stop = true));
  console.log(`fuzz: seed ${o.seed}, backend pid ${fz.rig.pid}, baseline ${fz.baseline.fds} fds, ${fz.baseline.rssKiB} KiB RSS`);
  const indices: Iterable<number> =
    o.replay !== null
      ? [o.replay]
      : (function* () {
          for (let k = 0; ; k++) yield k;
        })();
  let nextProgress = t0 + 30_000;
  for (const k of indices) {
    if (stop || k >= o.count || (o.replay === null && Date.now() - t0 >= o.seconds * 1000)) break;
    if (Date.now() >= nextProgress) {
      nextProgress += 30_000;
      const secs = (Date.now() - t0) / 1000;
      console.log(`fuzz: progress: ${fz.stats.sequences} sequences in ${secs.toFixed(0)} s (${(fz.stats.sequences / secs).toFixed(0)} exec/s), findings ${findings.length}`);
    }
    const seq = generate(o.seed, k, fz.offer);
    if (o.replay !== null) {
      console.log(`sequence ${k} of seed ${o.seed}:`);
      seq.ops.forEach((op, i) => console.log(`${String(i).padStart(3)} ${describeOp(op)}`));
    }
    const f = await fz.runOne(seq);
    if (o.replay !== null && f === null) console.log('replay: no finding');
    if (o.replay !== null && o.debug) console.log(`backend log:\n${fz.rig.log}`);
    if (f === null) continue;
    const file = writeFinding(o, f, seq);
    const sig = `${f.kind}: ${/^\s*(\w*Error: .*)$/m.exec(f.log)?.[1] ?? ''}`;
    const isNew = !signatures.has(sig);
    signatures.add(sig);
    findings.push(f);
    console.log(`FINDING [${f.kind}] seed ${f.seed} sequence ${f.index}: ${f.detail}`);
    if (isNew) console.log(f.log.split('\n').slice(-12).join('\n'));
    console.log(`  replay: npm run fuzz -- --seed ${f.seed} --replay ${f.index}`);
    console.log(`  sequence written to ${file}`);
    if (o.minimize) {
      const m = await fz.minimize(seq, f.kind);
      const minFile = writeFinding(o, f, m.seq, '-min');
      console.log(`  minimized in ${m.tries} runs to ${m.seq.ops.length} ops (${minFile}):`);
      for (const op of m.seq.ops) console.log(`    ${describeOp(op)}`);
    }
    if (!o.keepGoing) break;
    await fz.ready(); // restarted after a crash or a freeze; after a leak: go on from where it is
  }
  const secs = (Date.now() - t0) / 1000;
  const s = fz.stats;
  console.log(
    `fuzz: seed ${o.seed}: ${s.sequences} sequences, ${s.messages} messages in ${secs.toFixed(1)} s: ` +
      `${(s.sequences / secs).toFixed(0)} exec/s (${(s.messages / secs).toFixed(0)} messages/s); final GET_FEATURES answered ${s.synced}, ` +
      `connection closed by the backend ${s.closedByBackend}, timed out ${s.syncTimeouts}; findings: ${findings.length}` +
      (findings.length ? ` (${[...signatures].join(' | ')})` : ''),
  );
  fz.close();
  await fz.rig.stop();
  for (const line of fz.rig.log.split('\n')) if (/: port .*rxFrames/.test(line)) console.log(`fuzz: ${line.replace(/^vhost-user-ts: /, '')}`);
  return findings.length > 0 ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(e);
    process.exit(2);
  },
);
