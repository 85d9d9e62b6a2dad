/**
 * Runs vhost-user-ts as users run it (the CLI in a child process), for tests against real peers.
 * The backend is pinned to one core (taskset) so it never shares a core with a busy-polling peer
 * (test-rig-facts: two pollers on one core collapse throughput 500x).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const BIN = fileURLToPath(new URL('../../bin/vhost-user-ts.js', import.meta.url));

export interface Backend {
  proc: ChildProcess;
  /** Everything the backend wrote to stderr (its status lines and DEBUG output). */
  readonly log: string;
  waitForLog(re: RegExp, timeoutMs: number): Promise<void>;
  /** SIGTERM, wait for exit; returns the exit code. */
  stop(timeoutMs?: number): Promise<number | null>;
  /**
   * SIGKILL, wait for exit: a crash, no cleanup (the socket file stays, the tap fd is closed by the kernel).
   * Resolves with the signal that ended the process (null if it had already exited by itself).
   */
  kill(timeoutMs?: number): Promise<NodeJS.Signals | null>;
}

export interface BackendOptions {
  core?: number;
  debug?: string;
  waitSockets?: string[];
  /** Run inside this network namespace (`ip netns exec`), so a tap port is created there. */
  netns?: string;
}

export async function startBackend(args: string[], opts: BackendOptions = {}): Promise<Backend> {
  let argv = [process.execPath, BIN, ...args];
  if (opts.core !== undefined) argv = ['taskset', '-c', String(opts.core), ...argv];
  if (opts.netns) argv = ['ip', 'netns', 'exec', opts.netns, ...argv];
  const [cmd, ...rest] = argv as [string, ...string[]];
  const proc = spawn(cmd, rest, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...(opts.debug ? { DEBUG: opts.debug } : {}) },
  });
  let log = '';
  proc.stdout!.on('data', (d: Buffer) => (log += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (log += d.toString()));
  let exitSignal: NodeJS.Signals | null = null;
  // 'close', not 'exit': 'exit' can come before the last output is read from the pipes, and the lines
  // a backend writes as it stops (its port statistics) would be missing from `log`.
  const exited = new Promise<number | null>((r) =>
    proc.on('close', (code, signal) => {
      exitSignal = signal;
      r(code);
    }),
  );
  const kill = () => proc.kill('SIGKILL');
  process.once('exit', kill);
  const b: Backend = {
    proc,
    get log() {
      return log;
    },
    async waitForLog(re, timeoutMs) {
      const end = Date.now() + timeoutMs;
      while (!re.test(log)) {
        if (proc.exitCode !== null) throw new Error(`backend exited (${proc.exitCode}) before ${re}:\n${log.slice(-2000)}`);
        if (Date.now() > end) throw new Error(`backend: timeout waiting for ${re}:\n${log.slice(-2000)}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    async stop(timeoutMs = 5000) {
      if (proc.exitCode === null) proc.kill('SIGTERM');
      const t = setTimeout(kill, timeoutMs);
      const code = await exited;
      clearTimeout(t);
      process.removeListener('exit', kill);
      return code;
    },
    async kill(timeoutMs = 5000) {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      let t: NodeJS.Timeout | undefined;
      await Promise.race([
        exited,
        new Promise((_, reject) => {
          t = setTimeout(() => reject(new Error(`backend ${proc.pid} still alive ${timeoutMs} ms after SIGKILL`)), timeoutMs);
        }),
      ]).finally(() => clearTimeout(t));
      process.removeListener('exit', kill);
      return exitSignal;
    },
  };
  const end = Date.now() + 15000;
  for (const s of opts.waitSockets ?? []) {
    while (!existsSync(s)) {
      if (proc.exitCode !== null) throw new Error(`backend exited (${proc.exitCode}):\n${log}`);
      if (Date.now() > end) throw new Error(`backend did not create ${s}:\n${log}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  return b;
}
