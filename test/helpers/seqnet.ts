/**
 * Sequence-numbered UDP traffic, host side (node:dgram). Same datagram format, same results and same output
 * lines as the guest tool qemu-scripts/guest-tools/seqnet.c (/bin/seqnet in the test guest), so a test can
 * send from either end and count on the other:
 *
 * ```ts
 * const r = recvSeq({ port: 5000, count: 3000, idleMs: 3000 });   // starts listening at once
 * await r.listening;
 * // ... guest runs vut.run=/bin/seqnet,send,10.0.3.1,5000,3000,300,256
 * const res = await r.result;   // { rx, dup, bad, ooo, missing, gaps, ... }
 * ```
 *
 * Datagram: "VUTS", seq u32 BE, total u32 BE (planned count), size u32 BE (datagram length, >= 16), then
 * payload byte i (16 <= i < size) = (seq*31 + i*7) & 0xff.
 * Receiver counters: bad = wrong magic / size field / length < 16 / seq >= count / payload byte; dup = a
 * seq already seen; ooo = a new seq below the highest seen so far; missing = seqs in 0..count-1 never seen.
 *
 * In a network namespace: `ip netns exec NS node --import tsx test/helpers/seqnet-cli.ts recv ...`
 * (see seqnet-cli.ts; `seqnetCliArgs` builds that command line).
 */
import dgram from 'node:dgram';
import { fileURLToPath } from 'node:url';

export const SEQ_MAGIC = 'VUTS';
export const SEQ_HDR_BYTES = 16;
export const SEQ_MAX_SIZE = 65507;
/** Gap ranges printed at most (then ",..."). */
export const SEQ_MAX_GAPS = 8;
/** After the last distinct seq, the receiver listens this long (at most idleMs) for late duplicates. */
export const SEQ_LINGER_MS = 200;
const MAX_BATCH = 64;
const MAX_LAG = 256;

export const SEQNET_CLI = fileURLToPath(new URL('./seqnet-cli.ts', import.meta.url));
/** tsx's loader by absolute URL, so the CLI runs from any working directory. */
const TSX = import.meta.resolve('tsx');

/** Builds one datagram. */
export function encodeSeq(seq: number, total: number, size: number): Buffer {
  if (size < SEQ_HDR_BYTES || size > SEQ_MAX_SIZE) throw new RangeError(`seqnet size ${size} not in 16..65507`);
  const b = Buffer.allocUnsafe(size);
  fillSeq(b, seq, total);
  return b;
}

function fillSeq(b: Buffer, seq: number, total: number): void {
  b.write(SEQ_MAGIC, 0, 'latin1');
  b.writeUInt32BE(seq >>> 0, 4);
  b.writeUInt32BE(total >>> 0, 8);
  b.writeUInt32BE(b.length, 12);
  const base = Math.imul(seq, 31);
  for (let i = SEQ_HDR_BYTES; i < b.length; i++) b[i] = (base + i * 7) & 0xff;
}

/** The seq of an intact datagram whose seq < count, or -1 (what the receiver counts as bad). */
export function checkSeq(b: Uint8Array, count: number): number {
  if (b.length < SEQ_HDR_BYTES || b[0] !== 0x56 || b[1] !== 0x55 || b[2] !== 0x54 || b[3] !== 0x53) return -1;
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const seq = v.getUint32(4);
  if (v.getUint32(12) !== b.length || seq >= count) return -1;
  const base = Math.imul(seq, 31);
  for (let i = SEQ_HDR_BYTES; i < b.length; i++) if (b[i] !== ((base + i * 7) & 0xff)) return -1;
  return seq;
}

export interface SendSeqOptions {
  host: string;
  port: number;
  count: number;
  /** Datagrams per second; 0 = unpaced. */
  pps: number;
  /** Datagram length in bytes, 16..65507. */
  size: number;
  signal?: AbortSignal;
}

export interface SeqSent {
  kind: 'sent';
  /** Datagrams the kernel accepted. */
  sent: number;
  /** send errors other than ENOBUFS/EAGAIN (those seqs were skipped). */
  err: number;
  /** ENOBUFS/EAGAIN retries of the same seq. */
  retry: number;
  ms: number;
}

export interface SeqProgress {
  kind: 'progress';
  rx: number;
}

export interface SeqListening {
  kind: 'listening';
  port: number;
}

export interface SeqReceived {
  kind: 'recv';
  /** Distinct intact seqs received. */
  rx: number;
  dup: number;
  bad: number;
  ooo: number;
  missing: number;
  /** The first SEQ_MAX_GAPS ranges of missing seqs, inclusive [first, last]. */
  gaps: Array<[number, number]>;
  /** More ranges were missing than `gaps` lists. */
  gapsTruncated: boolean;
}

export type SeqLine = SeqSent | SeqProgress | SeqListening | SeqReceived;

const RETRY_CODES = new Set(['ENOBUFS', 'EAGAIN', 'EWOULDBLOCK', 'EINTR']);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Paced sender: seqs 0..count-1; ENOBUFS/EAGAIN retry the same seq after 1 ms, other errors skip it. */
export async function sendSeq(o: SendSeqOptions): Promise<SeqSent> {
  const sock = dgram.createSocket('udp4');
  const buf = encodeSeq(0, o.count, o.size);
  const period = o.pps > 0 ? 1000 / o.pps : 0;
  const res: SeqSent = { kind: 'sent', sent: 0, err: 0, retry: 0, ms: 0 };
  const start = performance.now();
  let t0 = start;
  const sendOne = () =>
    new Promise<NodeJS.ErrnoException | null>((resolve) => sock.send(buf, o.port, o.host, (e) => resolve(e ?? null)));
  try {
    let seq = 0;
    while (seq < o.count) {
      if (o.signal?.aborted) throw o.signal.reason ?? new Error('aborted');
      const now = performance.now();
      let due = o.count;
      if (period) {
        due = Math.floor((now - t0) / period) + 1;
        if (due > seq + MAX_LAG) {
          t0 = now - seq * period; // stalled: keep the rate from here, no burst
          due = seq + 1;
        }
        due = Math.min(due, o.count);
      }
      for (let b = 0; b < MAX_BATCH && seq < due; b++) {
        fillSeq(buf, seq, o.count);
        const e = await sendOne();
        if (e) {
          if (RETRY_CODES.has(e.code ?? '')) {
            res.retry++;
            await sleep(1);
            continue;
          }
          res.err++;
        } else res.sent++;
        seq++;
      }
      if (seq < o.count && period) await sleep(Math.max(1, t0 + seq * period - performance.now()));
    }
  } finally {
    sock.close();
  }
  res.ms = Math.round(performance.now() - start);
  return res;
}

export interface RecvSeqOptions {
  /** UDP port; 0 picks a free one (see `listening`). */
  port: number;
  /** Bind address (default 0.0.0.0). */
  address?: string;
  count: number;
  /** Stop after this long without a datagram, once the first one arrived. */
  idleMs: number;
  /** Stop after this long if no datagram arrives at all (default: wait for ever). */
  firstMs?: number;
  /** Called at most once per second while the distinct count grows. */
  onProgress?: (rx: number) => void;
}

export interface SeqReceiver {
  /** Resolves with the bound port. */
  listening: Promise<number>;
  result: Promise<SeqReceived>;
  /** Distinct seqs so far. */
  readonly rx: number;
  /** Ends now and resolves `result` with what arrived. */
  stop(): void;
}

/** Receiver; starts listening at once. */
export function recvSeq(o: RecvSeqOptions): SeqReceiver {
  const sock = dgram.createSocket({ type: 'udp4', recvBufferSize: 4 << 20 });
  const seen = new Uint8Array(o.count);
  let rx = 0;
  let dup = 0;
  let bad = 0;
  let ooo = 0;
  let high = -1;
  let printed = 0;
  let timer: NodeJS.Timeout | undefined;
  let finished = false;
  let finish!: () => void;
  const result = new Promise<SeqReceived>((resolve) => {
    finish = () => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      clearInterval(progress);
      sock.close();
      resolve({ kind: 'recv', rx, dup, bad, ooo, ...missingOf(seen) });
    };
  });
  const arm = (ms: number) => {
    clearTimeout(timer);
    timer = setTimeout(finish, ms);
  };
  const progress = setInterval(() => {
    if (rx !== printed) {
      printed = rx;
      o.onProgress?.(rx);
    }
  }, 1000);
  sock.on('message', (msg) => {
    if (finished) return;
    const seq = checkSeq(msg, o.count);
    if (seq < 0) bad++;
    else if (seen[seq]) dup++;
    else {
      seen[seq] = 1;
      rx++;
      if (seq < high) ooo++;
      else high = seq;
    }
    // Complete: linger briefly for late duplicates; else idle timeout from this datagram.
    if (rx === o.count) arm(Math.min(o.idleMs, SEQ_LINGER_MS));
    else arm(o.idleMs);
  });
  const listening = new Promise<number>((resolve, reject) => {
    sock.once('error', reject);
    sock.bind(o.port, o.address ?? '0.0.0.0', () => {
      sock.off('error', reject);
      sock.on('error', () => finish());
      if (o.firstMs) arm(o.firstMs);
      resolve(sock.address().port);
    });
  });
  listening.catch(() => finish());
  return {
    listening,
    result,
    get rx() {
      return rx;
    },
    stop: () => finish(),
  };
}

function missingOf(seen: Uint8Array): { missing: number; gaps: Array<[number, number]>; gapsTruncated: boolean } {
  let missing = 0;
  let ranges = 0;
  const gaps: Array<[number, number]> = [];
  for (let s = 0; s < seen.length; ) {
    if (seen[s]) {
      s++;
      continue;
    }
    let e = s;
    while (e + 1 < seen.length && !seen[e + 1]) e++;
    missing += e - s + 1;
    if (ranges < SEQ_MAX_GAPS) gaps.push([s, e]);
    ranges++;
    s = e + 1;
  }
  return { missing, gaps, gapsTruncated: ranges > SEQ_MAX_GAPS };
}

/** The output lines, exactly as seqnet.c prints them. */
export function formatSeqLine(r: SeqLine): string {
  switch (r.kind) {
    case 'sent':
      return `VUT-SEQ-SENT n=${r.sent} err=${r.err} retry=${r.retry} ms=${r.ms}`;
    case 'progress':
      return `VUT-SEQ-PROGRESS rx=${r.rx}`;
    case 'listening':
      return `VUT-SEQ-LISTENING port=${r.port}`;
    case 'recv': {
      const g = r.gaps.map(([a, b]) => `${a}-${b}`).join(',') + (r.gapsTruncated ? ',...' : '');
      return `VUT-SEQ rx=${r.rx} dup=${r.dup} bad=${r.bad} ooo=${r.ooo} missing=${r.missing} gaps=${g || '-'}`;
    }
  }
}

/**
 * Parses one line of either tool (C or node; surrounding console noise allowed) or returns null.
 * `VUT-SEQ-SENT` fields retry= and ms= are optional (0 when absent).
 */
export function parseSeqLine(line: string): SeqLine | null {
  let m = /VUT-SEQ rx=(\d+) dup=(\d+) bad=(\d+) ooo=(\d+) missing=(\d+) gaps=(\S+)/.exec(line);
  if (m) {
    const parts = m[6] === '-' ? [] : m[6]!.split(',');
    const gapsTruncated = parts.at(-1) === '...';
    const gaps = parts
      .filter((p) => p !== '...')
      .map((p) => {
        const g = /^(\d+)-(\d+)$/.exec(p);
        if (!g) throw new Error(`seqnet: bad gap '${p}' in ${JSON.stringify(line)}`);
        return [Number(g[1]), Number(g[2])] as [number, number];
      });
    return { kind: 'recv', rx: +m[1]!, dup: +m[2]!, bad: +m[3]!, ooo: +m[4]!, missing: +m[5]!, gaps, gapsTruncated };
  }
  m = /VUT-SEQ-SENT n=(\d+) err=(\d+)(?: retry=(\d+))?(?: ms=(\d+))?/.exec(line);
  if (m) return { kind: 'sent', sent: +m[1]!, err: +m[2]!, retry: +(m[3] ?? 0), ms: +(m[4] ?? 0) };
  m = /VUT-SEQ-PROGRESS rx=(\d+)/.exec(line);
  if (m) return { kind: 'progress', rx: +m[1]! };
  m = /VUT-SEQ-LISTENING port=(\d+)/.exec(line);
  if (m) return { kind: 'listening', port: +m[1]! };
  return null;
}

/** argv for running the CLI in a namespace: spawn('ip', seqnetCliArgs(ns, ['recv', '5000', '3000', '3000'])). */
export function seqnetCliArgs(netns: string, args: readonly string[]): string[] {
  return ['netns', 'exec', netns, process.execPath, '--import', TSX, SEQNET_CLI, ...args];
}
