/**
 * `trace replay`: act as the frontend toward a backend and re-send what the recorded frontend sent
 * ('rx' records of the front-end channel), in order, to reproduce a recorded session against a fresh
 * backend. Fds are fresh ones of the right kind: memfds sized like the recorded regions for memory
 * tables (and the log / inflight areas), eventfds for kick/call/err, a socketpair for the back-end
 * channel (whose requests we answer as the recording did). Where the recording had a reply, we wait
 * for it and compare; divergences are reported: a reply whose payload differs, a refused request (an
 * error reply or a non-zero ack where the recording had success), a reply that never came (timeout),
 * the connection closing early.
 *
 * Guest memory is zero-filled, so rings start empty: replay reproduces the control plane (the
 * message sequence, the state machine's answers), not the traffic.
 */
import createDebug from 'debug';
import type { Fd, NativeBinding, Poller } from '../../../native/types.ts';
import { POLL_DISCONNECT, POLL_READABLE } from '../../../native/types.ts';
import {
  Framer,
  decode,
  encode,
  encodeRaw,
  formatPayload,
  type RawFrame,
  type TraceMessageRecord,
  type TraceRecord,
} from '../../../protocol/index.ts';

const log = createDebug('vhost:replay');
/** How long replay waits for each reply unless told (`--timeout-ms`). */
export const DEFAULT_REPLY_TIMEOUT_MS = 2000;
const REPLY = 0x4;
const NEED_REPLY = 0x8;

export type ReplayNative = Pick<
  NativeBinding,
  'unixConnect' | 'recvmsg' | 'sendmsg' | 'close' | 'Poller' | 'memfdCreate' | 'ftruncate' | 'eventfd' | 'socketpair'
>;

export interface ReplayOptions {
  native: ReplayNative;
  socket: string;
  /** Only the records of this endpoint (default: the endpoint of the first message). */
  endpoint?: string;
  /** How long to wait for each reply (default DEFAULT_REPLY_TIMEOUT_MS). */
  timeoutMs?: number;
  /**
   * Requests whose reply payload is not compared (still awaited). Typically GET_VRING_BASE: replay does
   * not reproduce guest traffic, so ring positions after traffic differ.
   */
  ignore?: string[];
}

export interface Divergence {
  /** Position of the request among the replayed requests (0-based). */
  index: number;
  name: string;
  kind: 'payload' | 'refused' | 'timeout' | 'closed' | 'unexpected' | 'send';
  expected?: string;
  got?: string;
}

export interface ReplayResult {
  endpoint: string | undefined;
  sent: number;
  /** Replies received and compared with the recording. */
  compared: number;
  /** Back-end channel requests the backend sent us (and the recording's count). */
  backendRequests: number;
  recordedBackendRequests: number;
  divergences: Divergence[];
}

/** Canonical text of a payload for comparison: bigints and bytes spelled out, keys in order. */
export function canonical(v: unknown): string {
  if (v === null || v === undefined) return 'null';
  if (typeof v === 'bigint') return `${v}n`;
  if (v instanceof Uint8Array) return `<${Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('hex')}>`;
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (typeof v === 'object') {
    return `{${Object.keys(v as object)
      .sort()
      .map((k) => `${k}:${canonical((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

function describePayload(name: string, p: unknown): string {
  const s = formatPayload(name, p, true);
  return s === '' ? '(empty)' : s;
}

/** Reads whole frames off one socket; `next()` waits for the next one (or null on close/timeout). */
class FrameReader {
  private readonly framer = new Framer();
  private readonly buf = new Uint8Array(65536);
  private readonly frames: RawFrame[] = [];
  private waiter: ((f: RawFrame | null) => void) | null = null;
  private readonly poller: Poller;
  closed = false;
  onFrame: ((f: RawFrame) => boolean) | null = null;

  constructor(
    readonly fd: Fd,
    private readonly sys: ReplayNative,
  ) {
    this.poller = new sys.Poller(fd, () => this.read());
    this.poller.start(POLL_READABLE | POLL_DISCONNECT);
  }

  private read(): void {
    for (;;) {
      let r;
      try {
        r = this.sys.recvmsg(this.fd, this.buf, 0, this.buf.length, 32);
      } catch {
        return this.end();
      }
      if (r === null) return;
      if (r.byteLen === 0) {
        for (const fd of r.fds) this.sys.close(fd);
        return this.end();
      }
      try {
        this.framer.push(this.buf.subarray(0, r.byteLen), r.fds);
        for (let f = this.framer.next(); f; f = this.framer.next()) {
          // Fds the backend hands us (inflight area, userfaultfd) are not used by the replay.
          for (const fd of f.fds) this.sys.close(fd);
          if (this.onFrame?.(f)) continue;
          if (this.waiter) {
            const w = this.waiter;
            this.waiter = null;
            w(f);
          } else this.frames.push(f);
        }
      } catch {
        return this.end();
      }
    }
  }

  private end(): void {
    if (this.closed) return;
    this.closed = true;
    this.poller.stop();
    const w = this.waiter;
    this.waiter = null;
    w?.(null);
  }

  next(timeoutMs: number): Promise<RawFrame | null | 'timeout'> {
    const f = this.frames.shift();
    if (f) return Promise.resolve(f);
    if (this.closed) return Promise.resolve(null);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        resolve('timeout');
      }, timeoutMs);
      this.waiter = (fr) => {
        clearTimeout(timer);
        resolve(fr);
      };
    });
  }

  close(): void {
    this.poller.close();
    for (const fd of this.framer.pendingFds()) this.sys.close(fd);
    this.sys.close(this.fd);
  }
}

async function sendAll(sys: ReplayNative, fd: Fd, bytes: Uint8Array, fds: Fd[]): Promise<void> {
  let off = 0;
  let first = true;
  for (let tries = 0; off < bytes.length; ) {
    const n = sys.sendmsg(fd, bytes, off, bytes.length - off, first ? fds : []);
    if (n === null) {
      if (++tries > 1000) throw new Error('socket stayed full for 1 s');
      await new Promise((r) => setTimeout(r, 1));
      continue;
    }
    off += n;
    first = false;
  }
}

type Region = { memorySize: bigint; mmapOffset: bigint };

/** Fresh fds standing in for the recorded ones. `keep` receives socketpair ends we must serve. */
function freshFds(rec: TraceMessageRecord, sys: ReplayNative, onChannel: (fd: Fd) => void): Fd[] {
  const p = rec.payload as Record<string, unknown> | null;
  const memfd = (size: bigint, what: string): Fd => {
    const fd = sys.memfdCreate(`vut-replay-${what}`, false);
    // Sparse: only pages the backend touches cost memory.
    sys.ftruncate(fd, Number(size > 0n ? size : 4096n));
    return fd;
  };
  const socket = (): Fd => {
    const [ours, theirs] = sys.socketpair();
    onChannel(ours);
    return theirs;
  };
  const out: Fd[] = [];
  for (let i = 0; i < rec.fdCount; i++) {
    const kind = rec.fdKinds?.[i];
    switch (rec.name) {
      case 'SET_MEM_TABLE': {
        const r = (p?.regions as Region[] | undefined)?.[i];
        out.push(memfd(r ? r.mmapOffset + r.memorySize : 4096n, 'mem'));
        continue;
      }
      case 'ADD_MEM_REG':
      case 'REM_MEM_REG': {
        const r = p?.region as Region | undefined;
        out.push(memfd(r ? r.mmapOffset + r.memorySize : 4096n, 'mem'));
        continue;
      }
      case 'SET_LOG_BASE':
        out.push(memfd(((p?.mmapSize as bigint | undefined) ?? 4096n) + ((p?.mmapOffset as bigint | undefined) ?? 0n), 'log'));
        continue;
      case 'SET_INFLIGHT_FD':
        out.push(memfd(((p?.mmapSize as bigint | undefined) ?? 4096n) + ((p?.mmapOffset as bigint | undefined) ?? 0n), 'inflight'));
        continue;
      case 'SET_BACKEND_REQ_FD':
      case 'SET_DEVICE_STATE_FD':
        out.push(socket());
        continue;
      case 'SET_VRING_KICK':
      case 'SET_VRING_CALL':
      case 'SET_VRING_ERR':
      case 'SET_LOG_FD':
        out.push(sys.eventfd(0));
        continue;
    }
    if (kind === 'memfd' || kind === 'file') out.push(memfd(4096n, 'other'));
    else if (kind === 'socket' || kind === 'pipe') out.push(socket());
    else out.push(sys.eventfd(0));
  }
  return out;
}

/** Replay `records` (a whole trace, as readTraceFile returns it) against the backend at opts.socket. */
export async function replayTrace(records: readonly TraceRecord[], opts: ReplayOptions): Promise<ReplayResult> {
  const sys = opts.native;
  const timeoutMs = opts.timeoutMs ?? DEFAULT_REPLY_TIMEOUT_MS;
  const ignore = new Set((opts.ignore ?? []).map((n) => n.toUpperCase().replace(/^VHOST_USER_/, '')));
  const msgs = records.filter((r): r is TraceMessageRecord => r.kind !== 'ring');
  const endpoint = opts.endpoint ?? msgs[0]?.endpoint;
  const mine = msgs.filter((r) => r.endpoint === endpoint);
  const result: ReplayResult = {
    endpoint,
    sent: 0,
    compared: 0,
    backendRequests: 0,
    recordedBackendRequests: mine.filter((r) => r.channel === 'backend' && r.dir === 'tx' && (r.flags & REPLY) === 0).length,
    divergences: [],
  };
  // Recorded answers of the frontend to back-end requests, by request id, in order.
  const channelAnswers = new Map<number, TraceMessageRecord[]>();
  for (const r of mine) {
    if (r.channel === 'backend' && r.dir === 'rx' && (r.flags & REPLY) !== 0) {
      const l = channelAnswers.get(r.id) ?? [];
      l.push(r);
      channelAnswers.set(r.id, l);
    }
  }
  const channels: FrameReader[] = [];
  const serveChannel = (fd: Fd) => {
    const ch = new FrameReader(fd, sys);
    ch.onFrame = (f) => {
      if (f.flags & REPLY) return true;
      result.backendRequests++;
      if (f.flags & NEED_REPLY) {
        const rec = channelAnswers.get(f.request)?.shift();
        let bytes: Uint8Array;
        try {
          bytes = rec
            ? rec.error
              ? encodeRaw(rec.id, rec.flags, rec.payload as Uint8Array)
              : encode('backend', rec.id, { flags: rec.flags, payload: rec.payload, unchecked: true }).bytes
            : encode('backend', f.request, { reply: true, payload: 0n, unchecked: true }).bytes;
        } catch {
          bytes = encode('backend', f.request, { reply: true, payload: 0n, unchecked: true }).bytes;
        }
        void sendAll(sys, fd, bytes, []).catch((e: Error) => log('back-end channel reply failed: %s', e.message));
      }
      return true;
    };
    channels.push(ch);
  };

  const fd = sys.unixConnect(opts.socket);
  const main = new FrameReader(fd, sys);
  try {
    for (let i = 0; i < mine.length; i++) {
      const rec = mine[i]!;
      if (rec.channel !== 'frontend' || rec.dir !== 'rx') continue;
      const index = result.sent;
      // Does the recording show a reply to this one? The next front-end channel record says.
      const next = mine.slice(i + 1).find((r) => r.channel === 'frontend');
      const expected = next && next.dir === 'tx' && (next.flags & REPLY) !== 0 && next.id === rec.id ? next : null;
      const fds = freshFds(rec, sys, serveChannel);
      let bytes: Uint8Array;
      try {
        bytes =
          rec.payload instanceof Uint8Array && rec.error !== undefined
            ? encodeRaw(rec.id, rec.flags, rec.payload)
            : encode('frontend', rec.id, { flags: rec.flags, payload: rec.payload, fds, unchecked: true }).bytes;
      } catch (e) {
        result.divergences.push({ index, name: rec.name, kind: 'send', got: (e as Error).message });
        for (const f of fds) sys.close(f);
        continue;
      }
      try {
        await sendAll(sys, fd, bytes, fds);
      } catch (e) {
        result.divergences.push({ index, name: rec.name, kind: 'closed', got: (e as Error).message });
        break;
      } finally {
        for (const f of fds) sys.close(f);
      }
      result.sent++;
      if (!expected) continue;
      const got = await main.next(timeoutMs);
      if (got === 'timeout') {
        result.divergences.push({ index, name: rec.name, kind: 'timeout', expected: describePayload(rec.name, expected.payload) });
        continue;
      }
      if (got === null) {
        result.divergences.push({ index, name: rec.name, kind: 'closed', expected: describePayload(rec.name, expected.payload) });
        break;
      }
      if (got.request !== rec.id || (got.flags & REPLY) === 0) {
        result.divergences.push({ index, name: rec.name, kind: 'unexpected', got: `request ${got.request} flags 0x${got.flags.toString(16)}` });
        continue;
      }
      result.compared++;
      let payload: unknown;
      try {
        payload = decode('frontend', got).payload;
      } catch {
        payload = got.payload; // an error reply (empty body) does not decode: compare the raw bytes
      }
      const want = canonical(expected.payload);
      const have = canonical(payload);
      if (want !== have && !ignore.has(rec.name)) {
        const nack = (p: unknown) => (p as { value?: bigint } | null)?.value;
        const refused =
          (got.payload.length === 0 && !(expected.payload instanceof Uint8Array && expected.payload.length === 0)) ||
          (nack(payload) !== undefined && nack(payload) !== 0n && nack(expected.payload) === 0n);
        result.divergences.push({
          index,
          name: rec.name,
          kind: refused ? 'refused' : 'payload',
          expected: describePayload(rec.name, expected.payload),
          got: describePayload(rec.name, payload),
        });
      }
    }
    // Give the backend a moment to send back-end channel requests triggered by the last messages.
    await new Promise((r) => setTimeout(r, 50));
  } finally {
    main.close();
    for (const ch of channels) ch.close();
  }
  return result;
}

/** Human-readable report lines. */
export function formatReplay(r: ReplayResult): string[] {
  const lines = [
    `replayed ${r.sent} request(s) of ${r.endpoint ?? '(no endpoint)'}; ${r.compared} repl${r.compared === 1 ? 'y' : 'ies'} compared; ` +
      `back-end channel requests ${r.backendRequests} (recorded ${r.recordedBackendRequests}); ${r.divergences.length} divergence(s)`,
  ];
  for (const d of r.divergences) {
    lines.push(
      `  #${d.index} ${d.name}: ${d.kind}${d.expected !== undefined ? ` expected ${d.expected}` : ''}${d.got !== undefined ? ` got ${d.got}` : ''}`,
    );
  }
  return lines;
}
