/**
 * QEMU 7.2 test guest for ava tests: spawns qemu-scripts/run-guest.sh (which execs QEMU, so the child's
 * PID is QEMU's), collects the serial console, and guarantees the VM dies with the test.
 *
 * ```ts
 * const g = startGuest({ sock, cpus: '0', vut: { ip: '10.0.2.15/24', ping: '10.0.2.2,5' }, teardown: t.teardown });
 * await g.waitFor(/VUT-READY/, 30_000);
 * const m = await g.waitFor(/VUT-PING-(OK|FAIL) (\S+)/, 30_000);
 * ```
 *
 * Guest side: qemu-scripts/guest-init.sh (the `vut.*` keys and the console markers are documented there).
 *
 * Facts this is built on (test-rig-facts §4): TCG only (no usable KVM on this host); boot to VUT-READY
 * ≈5.5-6 s idle, 8-12 s while a busy-polling backend owns the other core; vhost-user NICs need `vectors=0`
 * under TCG (run-guest.sh adds it). The guest powers off by itself after its actions, and -no-reboot +
 * panic=-1 make QEMU exit then. Pin QEMU (`cpus`) away from the backend's polling core.
 *
 * Lifetime guarantees: `teardown` (pass ava's `t.teardown`) kills the VM when the test ends; every VM is
 * also SIGKILLed after `maxLifetimeMs` and on process exit.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import createDebug from 'debug';

const log = createDebug('vhost:test:qemu');
const logConsole = createDebug('vhost:test:qemu:console');

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const QEMU_SCRIPTS = path.join(REPO, 'qemu-scripts');
export const RUN_GUEST = path.join(QEMU_SCRIPTS, 'run-guest.sh');

/** Where build-guest.sh puts vmlinuz + initramfs.gz (RIG_DIR overrides, as in the scripts). */
export function rigDir(): string {
  return process.env['RIG_DIR'] ?? path.join(REPO, '.rig', 'guest');
}

/** True if the guest images are built (qemu-scripts/setup.sh or build-guest.sh). */
export function guestAvailable(dir = rigDir()): boolean {
  return existsSync(path.join(dir, 'vmlinuz')) && existsSync(path.join(dir, 'initramfs.gz'));
}

export interface GuestOptions {
  /** vhost-user socket; omit for a guest without NIC. */
  sock?: string;
  /** client (default: the backend listens), server (QEMU listens and waits for the backend before booting),
   *  reconnect (client retrying every `reconnect` s). */
  sockMode?: 'client' | 'server' | 'reconnect';
  reconnect?: number;
  /** Queue pairs (adds mq=on when > 1; the guest only uses min(queues, smp)). */
  queues?: number;
  packed?: boolean;
  /** mrg_rxbuf (default true, QEMU's default). */
  mrg?: boolean;
  mac?: string;
  /** Extra `key=val,…` for -device virtio-net-pci. */
  devOpts?: string;
  /** Kernel command-line keys for guest-init.sh, without the `vut.` prefix: { ip: '10.0.2.15/24', hold: 'inf' }.
   *  `true` becomes 1, `false` 0. Values must not contain spaces. */
  vut?: Readonly<Record<string, string | number | boolean>>;
  /** Extra kernel command line. */
  append?: string;
  /** taskset CPU list for QEMU, e.g. '0'. */
  cpus?: string;
  /** Guest RAM = shared memfd size (default '512M'). */
  mem?: string;
  smp?: number;
  /** Share the host / read-only over 9p, mounted at /host in the guest. */
  hostRoot?: boolean;
  /** Intel vIOMMU in front of the NIC (run-guest.sh --iommu: iommu_platform=on,ats=on, intel_iommu=on). */
  iommu?: boolean;
  /** QMP unix socket path. */
  qmp?: string;
  /**
   * Migration destination: `-incoming <uri>` ('defer' = wait for QMP migrate-incoming, see
   * test/helpers/migration.ts). Every other option must equal the source's (own sock/qmp aside).
   */
  incoming?: string;
  /** Appended to the QEMU command line (after `--`). */
  extraQemuArgs?: readonly string[];
  rigDir?: string;
  /** Hard limit: SIGKILL after this long. Default 120 s. */
  maxLifetimeMs?: number;
  /** ava's `t.teardown` (or anything with that shape): the VM is killed when the test ends. */
  teardown?: (fn: () => Promise<void>) => void;
  /** Environment additions for run-guest.sh (e.g. { QEMU: '/path/to/qemu' }). */
  env?: Readonly<Record<string, string>>;
}

export interface GuestExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export class GuestError extends Error {
  constructor(
    message: string,
    readonly code: 'GUEST_TIMEOUT' | 'GUEST_EXITED' | 'GUEST_SPAWN' | 'GUEST_BAD_OPTION',
    readonly consoleTail = '',
  ) {
    super(consoleTail ? `${message}\n--- guest console (tail) ---\n${consoleTail}` : message);
    this.name = 'GuestError';
  }
}

const live = new Set<ChildProcessWithoutNullStreams>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Synchronous last resort: a crashed test worker must not leave a TCG guest spinning on a core.
  process.on('exit', () => {
    for (const c of live) {
      try {
        c.kill('SIGKILL');
      } catch {
        /* already gone */
      }
    }
  });
}

/** CSI / OSC / single-char escapes (SeaBIOS and the kernel clear the screen) and CRs off the console. */
// eslint-disable-next-line no-control-regex
const ANSI = /\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07]*\x07|[@-Z\\-_c])/g;
/** Lines that open a Linux kernel report (the first line says what failed; the trace follows). */
const KERNEL_REPORT = /^.*(?:BUG: |Oops: |general protection fault|kernel BUG at|Kernel panic - not syncing|WARNING: CPU: ).*$/m;

/**
 * The first kernel report in a guest console: its offset and up to `maxChars` from the start of its line,
 * or null. Exported for the helper's own test.
 */
export function firstOops(console: string, maxChars = 2500): { at: number; text: string } | null {
  const m = KERNEL_REPORT.exec(console);
  if (!m) return null;
  return { at: m.index, text: console.slice(m.index, m.index + maxChars) };
}

export function cleanConsole(raw: string): string {
  return raw.replace(ANSI, '').replace(/\r/g, '');
}

function runGuestArgs(o: GuestOptions): string[] {
  const a: string[] = [];
  if (o.sock !== undefined) a.push('--sock', o.sock);
  if (o.sockMode) a.push('--sock-mode', o.sockMode);
  if (o.reconnect !== undefined) a.push('--reconnect', String(o.reconnect));
  if (o.queues !== undefined) a.push('--queues', String(o.queues));
  if (o.packed) a.push('--packed');
  if (o.mrg === false) a.push('--no-mrg');
  if (o.mac) a.push('--mac', o.mac);
  if (o.devOpts) a.push('--dev-opts', o.devOpts);
  for (const [k, v] of Object.entries(o.vut ?? {})) {
    const s = v === true ? '1' : v === false ? '0' : String(v);
    if (!/^[a-z0-9_]+$/.test(k) || /\s/.test(s) || s === '') {
      throw new GuestError(`bad vut option ${k}=${JSON.stringify(s)}`, 'GUEST_BAD_OPTION');
    }
    a.push('--vut', `${k}=${s}`);
  }
  if (o.append) a.push('--append', o.append);
  if (o.cpus) a.push('--cpus', o.cpus);
  if (o.mem) a.push('--mem', o.mem);
  if (o.smp !== undefined) a.push('--smp', String(o.smp));
  if (o.hostRoot) a.push('--hostroot');
  if (o.iommu) a.push('--iommu');
  if (o.qmp) a.push('--qmp', o.qmp);
  if (o.incoming) a.push('--incoming', o.incoming);
  if (o.extraQemuArgs?.length) a.push('--', ...o.extraQemuArgs);
  return a;
}

export class Guest {
  readonly pid: number;
  /** Resolves (never rejects) when QEMU has exited. */
  readonly exited: Promise<GuestExit>;
  exitInfo: GuestExit | undefined;
  /** QEMU's own stderr (e.g. "Failed to connect to …", assertion messages). */
  stderr = '';
  readonly args: readonly string[];

  private raw = '';
  private cleanCache = '';
  private cleanLen = -1;
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly waiters = new Set<() => void>();
  private readonly lifetime: NodeJS.Timeout;

  constructor(readonly opts: GuestOptions = {}) {
    const dir = opts.rigDir ?? rigDir();
    if (!guestAvailable(dir)) {
      throw new GuestError(`guest images missing in ${dir}: run qemu-scripts/setup.sh`, 'GUEST_SPAWN');
    }
    this.args = runGuestArgs(opts);
    log('spawn run-guest.sh %s', this.args.join(' '));
    installExitHook();
    const child = spawn(RUN_GUEST, [...this.args], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, RIG_DIR: dir, ...opts.env },
    });
    if (child.pid === undefined) throw new GuestError('spawn of run-guest.sh failed', 'GUEST_SPAWN');
    this.child = child;
    this.pid = child.pid;
    live.add(child);
    child.stdout.setEncoding('latin1');
    child.stderr.setEncoding('latin1');
    child.stdout.on('data', (s: string) => {
      this.raw += s;
      if (logConsole.enabled) logConsole('%s', cleanConsole(s).trimEnd());
      this.wake();
    });
    child.stderr.on('data', (s: string) => {
      this.stderr += s;
      log('qemu stderr: %s', s.trimEnd());
    });
    child.stdin.on('error', () => {
      /* EPIPE after QEMU died: reported through `exited` */
    });
    this.exited = new Promise<GuestExit>((resolve) => {
      child.on('error', (e) => {
        this.stderr += `spawn error: ${e.message}\n`;
      });
      // 'close' (not 'exit'): all console output has been read by then.
      child.on('close', (code, signal) => {
        live.delete(child);
        clearTimeout(this.lifetime);
        this.exitInfo = { code, signal };
        log('qemu %d exited code=%s signal=%s', this.pid, code, signal);
        this.wake();
        resolve(this.exitInfo);
      });
    });
    this.lifetime = setTimeout(() => {
      log('qemu %d: maxLifetimeMs reached, SIGKILL', this.pid);
      child.kill('SIGKILL');
    }, opts.maxLifetimeMs ?? 120_000);
    opts.teardown?.(async () => {
      await this.kill();
    });
  }

  /** Console text so far, escape sequences and CRs removed. */
  get output(): string {
    if (this.cleanLen !== this.raw.length) {
      this.cleanCache = cleanConsole(this.raw);
      this.cleanLen = this.raw.length;
    }
    return this.cleanCache;
  }

  /** Current end of `output`, to wait only for text that appears after this point. */
  mark(): number {
    return this.output.length;
  }

  /**
   * The console's tail (and QEMU's stderr). When the guest kernel reported an oops or a panic whose first
   * lines the tail would cut (a call trace alone does not say what failed), that report comes first.
   */
  tail(chars = 3000): string {
    let t = this.output.slice(-chars);
    const oops = firstOops(this.output);
    if (oops !== null && oops.at < this.output.length - chars) t = `--- first kernel report ---\n${oops.text}\n--- console tail ---\n${t}`;
    return this.stderr ? `${t}\n--- qemu stderr ---\n${this.stderr.slice(-chars)}` : t;
  }

  /**
   * Resolves with the first match of `re` in `output` at or after offset `from` (default 0, i.e. output already
   * seen counts). Rejects with GUEST_TIMEOUT after `timeoutMs`, or GUEST_EXITED if QEMU exits first.
   */
  waitFor(re: RegExp, timeoutMs: number, from = 0): Promise<RegExpExecArray> {
    const plain = new RegExp(re.source, re.flags.replace('g', '').replace('y', ''));
    return new Promise<RegExpExecArray>((resolve, reject) => {
      const check = (): boolean => {
        const m = plain.exec(this.output.slice(from));
        if (m) {
          m.index += from;
          done();
          resolve(m);
          return true;
        }
        if (this.exitInfo) {
          done();
          const e = this.exitInfo;
          reject(
            new GuestError(`guest exited (code ${e.code}, signal ${e.signal}) before ${re}`, 'GUEST_EXITED', this.tail()),
          );
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        done();
        reject(new GuestError(`timeout ${timeoutMs} ms waiting for ${re}`, 'GUEST_TIMEOUT', this.tail()));
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

  /** Type on the serial console (useful with vut.shell=1). */
  send(text: string): void {
    if (!this.exitInfo) this.child.stdin.write(text);
  }

  /** Waits for QEMU to exit by itself (guest powered off), bounded. */
  async waitExit(timeoutMs: number): Promise<GuestExit> {
    let timer: NodeJS.Timeout | undefined;
    const to = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new GuestError(`QEMU did not exit within ${timeoutMs} ms`, 'GUEST_TIMEOUT', this.tail())),
        timeoutMs,
      );
    });
    try {
      return await Promise.race([this.exited, to]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** SIGTERM (QEMU exits at once and closes the vhost-user socket), SIGKILL after `graceMs`. Idempotent. */
  async kill(graceMs = 2000): Promise<GuestExit> {
    if (this.exitInfo) return this.exitInfo;
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(t);
    }
  }

  private wake(): void {
    for (const w of [...this.waiters]) w();
  }
}

/** Boots a guest (see GuestOptions). Pass `teardown: t.teardown` so it never outlives the test. */
export function startGuest(opts: GuestOptions = {}): Guest {
  return new Guest(opts);
}
