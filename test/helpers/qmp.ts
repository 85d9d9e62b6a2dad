/**
 * A small QMP client (QEMU Machine Protocol, qapi-schema / docs/interop/qmp-spec) over QEMU's unix socket
 * (`-qmp unix:PATH,server=on,wait=off`, run-guest.sh --qmp):
 *
 * ```ts
 * const q = await connectQmp('/tmp/src.qmp', { timeoutMs: 10_000 });
 * await q.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
 * const st = await q.execute<{ status: string }>('query-migrate');
 * await q.waitEvent('MIGRATION', (d) => d['status'] === 'completed', 30_000);
 * q.close();
 * ```
 *
 * Wire format (qmp-spec "Protocol Specification"): one JSON object per line. The server greets with
 * `{"QMP": {"version": …, "capabilities": […]}}` and accepts only `qmp_capabilities` until that is sent
 * (capabilities negotiation mode). Commands are `{"execute": cmd, "arguments": {…}, "id": n}`; the answer
 * carries the same id with either `return` or `error: {class, desc}`. Events `{"event", "data", "timestamp"}`
 * may arrive at any time, also between a command and its answer.
 */
import net from 'node:net';
import createDebug from 'debug';

const log = createDebug('vhost:test:qmp');

export type QmpErrorCode = 'QMP_CONNECT' | 'QMP_TIMEOUT' | 'QMP_CLOSED' | 'QMP_PROTOCOL' | 'QMP_COMMAND';

export class QmpError extends Error {
  constructor(
    message: string,
    readonly code: QmpErrorCode,
    /** For QMP_COMMAND: QEMU's error class (GenericError, CommandNotFound, DeviceNotActive, …). */
    readonly qmpClass?: string,
    readonly command?: string,
  ) {
    super(message);
    this.name = 'QmpError';
  }
}

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  /** Host time of the event (QEMU's clock), seconds + microseconds. */
  timestamp: { seconds: number; microseconds: number };
  /** Our receive time (Date.now()). */
  receivedAt: number;
}

export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  capabilities: string[];
}

interface Pending {
  command: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class Qmp {
  /** Every event received so far, in order. */
  readonly events: QmpEvent[] = [];
  greeting: QmpGreeting | undefined;
  /** Resolves when the socket closed (QEMU exited or `close()`). */
  readonly closed: Promise<void>;

  private buf = '';
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly waiters = new Set<() => void>();
  private isClosed = false;
  private onGreeting: ((g: QmpGreeting) => void) | undefined;

  constructor(
    private readonly sock: net.Socket,
    readonly label: string,
  ) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => this.onData(d));
    sock.on('error', (e) => log('%s: socket error %s', label, e.message));
    this.closed = new Promise((resolve) => {
      sock.on('close', () => {
        this.isClosed = true;
        for (const [, p] of this.pending) {
          clearTimeout(p.timer);
          p.reject(new QmpError(`${label}: QMP closed before the answer to ${p.command}`, 'QMP_CLOSED', undefined, p.command));
        }
        this.pending.clear();
        this.wake();
        resolve();
      });
    });
  }

  /** Waits for the greeting and leaves capabilities negotiation mode (`qmp_capabilities`). */
  async handshake(timeoutMs: number): Promise<QmpGreeting> {
    const g =
      this.greeting ??
      (await new Promise<QmpGreeting>((resolve, reject) => {
        const t = setTimeout(() => reject(new QmpError(`${this.label}: no QMP greeting in ${timeoutMs} ms`, 'QMP_TIMEOUT')), timeoutMs);
        this.onGreeting = (gr) => {
          clearTimeout(t);
          resolve(gr);
        };
        void this.closed.then(() => {
          clearTimeout(t);
          reject(new QmpError(`${this.label}: QMP closed before the greeting`, 'QMP_CLOSED'));
        });
      }));
    await this.execute('qmp_capabilities', undefined, timeoutMs);
    return g;
  }

  /**
   * Runs a command; resolves with its `return` value, rejects with QmpError QMP_COMMAND (QEMU refused it:
   * `qmpClass` + QEMU's description), QMP_TIMEOUT or QMP_CLOSED.
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = 10_000): Promise<T> {
    if (this.isClosed) return Promise.reject(new QmpError(`${this.label}: QMP closed, cannot run ${command}`, 'QMP_CLOSED', undefined, command));
    const id = this.nextId++;
    const msg = JSON.stringify(args === undefined ? { execute: command, id } : { execute: command, arguments: args, id });
    log('%s → %s', this.label, msg);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new QmpError(`${this.label}: no answer to ${command} in ${timeoutMs} ms`, 'QMP_TIMEOUT', undefined, command));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      this.sock.write(msg + '\n');
    });
  }

  /**
   * First event `name` (with `pred(data)` true) at index >= `from` of `events` (default 0: events already
   * received count). Rejects with QMP_TIMEOUT, or QMP_CLOSED if the socket closes first.
   */
  waitEvent(
    name: string,
    pred: (data: Record<string, unknown>) => boolean = () => true,
    timeoutMs = 30_000,
    from = 0,
  ): Promise<QmpEvent> {
    return new Promise<QmpEvent>((resolve, reject) => {
      const check = (): boolean => {
        for (let i = from; i < this.events.length; i++) {
          const e = this.events[i]!;
          if (e.event === name && pred(e.data)) {
            done();
            resolve(e);
            return true;
          }
        }
        if (this.isClosed) {
          done();
          reject(new QmpError(`${this.label}: QMP closed while waiting for event ${name}`, 'QMP_CLOSED'));
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        done();
        reject(new QmpError(`${this.label}: no event ${name} in ${timeoutMs} ms (got: ${this.events.slice(from).map((e) => e.event + (e.data['status'] ? `:${String(e.data['status'])}` : '')).join(', ') || 'none'})`, 'QMP_TIMEOUT'));
      }, timeoutMs);
      const waiter = (): void => {
        check();
      };
      const done = (): void => {
        clearTimeout(timer);
        this.waiters.delete(waiter);
      };
      if (!check()) this.waiters.add(waiter);
    });
  }

  /** Current end of `events`, to wait only for events that arrive after this point. */
  mark(): number {
    return this.events.length;
  }

  close(): void {
    this.sock.destroy();
  }

  private onData(d: string): void {
    this.buf += d;
    for (let nl = this.buf.indexOf('\n'); nl >= 0; nl = this.buf.indexOf('\n')) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (line) this.onLine(line);
    }
  }

  private onLine(line: string): void {
    let m: Record<string, unknown>;
    try {
      m = JSON.parse(line) as Record<string, unknown>;
    } catch {
      log('%s: not JSON: %s', this.label, line);
      return;
    }
    log('%s ← %s', this.label, line.length > 400 ? line.slice(0, 400) + '…' : line);
    if ('QMP' in m) {
      this.greeting = m['QMP'] as QmpGreeting;
      this.onGreeting?.(this.greeting);
      return;
    }
    if (typeof m['event'] === 'string') {
      this.events.push({
        event: m['event'],
        data: (m['data'] as Record<string, unknown> | undefined) ?? {},
        timestamp: m['timestamp'] as QmpEvent['timestamp'],
        receivedAt: Date.now(),
      });
      this.wake();
      return;
    }
    const id = m['id'];
    const p = typeof id === 'number' ? this.pending.get(id) : undefined;
    if (!p) {
      log('%s: answer without a pending command: %s', this.label, line);
      return;
    }
    this.pending.delete(id as number);
    clearTimeout(p.timer);
    if ('error' in m) {
      const e = m['error'] as { class?: string; desc?: string };
      p.reject(new QmpError(`${this.label}: ${p.command} failed: ${e.class ?? '?'}: ${e.desc ?? '?'}`, 'QMP_COMMAND', e.class, p.command));
    } else {
      p.resolve(m['return']);
    }
  }

  private wake(): void {
    for (const w of [...this.waiters]) w();
  }
}

/**
 * Connects to QEMU's QMP socket (retrying while QEMU has not created it yet: ENOENT / ECONNREFUSED) and
 * completes the handshake. `alive()` false (e.g. QEMU exited) stops the retries early.
 */
export async function connectQmp(
  path: string,
  { timeoutMs = 15_000, label = path, alive = () => true }: { timeoutMs?: number; label?: string; alive?: () => boolean } = {},
): Promise<Qmp> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const sock = await new Promise<net.Socket | NodeJS.ErrnoException>((resolve) => {
      const s = net.createConnection({ path });
      s.once('connect', () => resolve(s));
      s.once('error', (e: NodeJS.ErrnoException) => resolve(e));
    });
    if (sock instanceof net.Socket) {
      const q = new Qmp(sock, label);
      try {
        await q.handshake(Math.max(1000, deadline - Date.now()));
      } catch (e) {
        q.close();
        throw e;
      }
      log('%s: QMP ready (QEMU %o)', label, q.greeting?.version.qemu);
      return q;
    }
    const retry = sock.code === 'ENOENT' || sock.code === 'ECONNREFUSED';
    if (!retry || !alive() || Date.now() > deadline) {
      throw new QmpError(`${label}: cannot connect to QMP at ${path}: ${sock.code ?? sock.message}`, 'QMP_CONNECT');
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}
