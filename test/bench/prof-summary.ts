/**
 * Summarise a V8 `.cpuprofile` (node --cpu-prof): top functions by self time, their inclusive time, and self
 * time per file.
 *
 *   node --import tsx test/bench/prof-summary.ts FILE.cpuprofile [--top N]
 *
 * Format (Chrome DevTools protocol Profiler.Profile): `nodes` is the call tree (each node one call frame,
 * `children` ids), `samples[i]` the leaf node id of sample i and `timeDeltas[i]` the microseconds between
 * sample i-1 and sample i. Sample i is charged the time until the next sample (the last one the mean
 * interval). Inclusive time counts each function once per sample even when it recurses.
 * Pseudo frames: (idle) = the event loop waiting in epoll, (program) = native code outside any JS frame
 * (libuv, the addon's C++ around callbacks, V8 internals), (garbage collector) = GC pauses on this thread.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
export interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface FnStat {
  key: string;
  name: string;
  file: string;
  line: number;
  selfUs: number;
  totalUs: number;
}

export interface ProfileSummary {
  durationUs: number;
  samples: number;
  functions: FnStat[];
  files: { file: string; selfUs: number }[];
}

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

function shortFile(url: string): string {
  if (!url) return '';
  let f = url.startsWith('file://') ? fileURLToPath(url) : url;
  if (f.startsWith(ROOT)) f = f.slice(ROOT.length);
  return f.replace(/^.*\/node_modules\//, 'node_modules/');
}

export function summarizeProfile(p: CpuProfile): ProfileSummary {
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const n of p.nodes) {
    byId.set(n.id, n);
    for (const c of n.children ?? []) parent.set(c, n.id);
  }
  const keyOf = (n: ProfileNode) => {
    const cf = n.callFrame;
    return `${cf.functionName || '(anonymous)'}@${cf.url}:${cf.lineNumber}`;
  };
  const stats = new Map<string, FnStat>();
  const stat = (n: ProfileNode): FnStat => {
    const k = keyOf(n);
    let s = stats.get(k);
    if (!s) {
      s = {
        key: k,
        name: n.callFrame.functionName || '(anonymous)',
        file: shortFile(n.callFrame.url),
        line: n.callFrame.lineNumber + 1,
        selfUs: 0,
        totalUs: 0,
      };
      stats.set(k, s);
    }
    return s;
  };
  const n = p.samples.length;
  const mean = n > 0 ? (p.endTime - p.startTime) / n : 0;
  let duration = 0;
  for (let i = 0; i < n; i++) {
    const dt = i + 1 < n ? (p.timeDeltas[i + 1] ?? mean) : mean;
    duration += dt;
    const leaf = byId.get(p.samples[i]!);
    if (!leaf) continue;
    stat(leaf).selfUs += dt;
    const seen = new Set<string>();
    for (let id: number | undefined = leaf.id; id !== undefined; id = parent.get(id)) {
      const node = byId.get(id)!;
      if (node.callFrame.functionName === '(root)') break;
      const k = keyOf(node);
      if (seen.has(k)) continue;
      seen.add(k);
      stat(node).totalUs += dt;
    }
  }
  const files = new Map<string, number>();
  for (const s of stats.values()) {
    const f = s.file || (s.name.startsWith('(') ? s.name : '(native/builtin)');
    files.set(f, (files.get(f) ?? 0) + s.selfUs);
  }
  return {
    durationUs: duration,
    samples: n,
    functions: [...stats.values()].sort((a, b) => b.selfUs - a.selfUs),
    files: [...files].map(([file, selfUs]) => ({ file, selfUs })).sort((a, b) => b.selfUs - a.selfUs),
  };
}

/** Text table; percentages are of all sampled time and of the non-idle ("busy") time. */
export function formatSummary(s: ProfileSummary, top = 25): string {
  const idle = s.functions.find((f) => f.name === '(idle)')?.selfUs ?? 0;
  const busy = s.durationUs - idle;
  const pct = (us: number, of: number) => (of > 0 ? ((us / of) * 100).toFixed(1).padStart(5) : '    -');
  const out: string[] = [];
  out.push(
    `${s.samples} samples over ${(s.durationUs / 1e6).toFixed(2)} s; idle ${pct(idle, s.durationUs).trim()}%, ` +
      `busy ${(busy / 1e6).toFixed(2)} s (percentages below: of busy time)`,
  );
  out.push(' self ms  self%  total%  function (file:line)');
  for (const f of s.functions.filter((x) => x.name !== '(idle)').slice(0, top)) {
    out.push(
      `${(f.selfUs / 1000).toFixed(0).padStart(8)}  ${pct(f.selfUs, busy)}  ${pct(f.totalUs, busy).padStart(6)}  ` +
        // tsx runs esbuild output: TypeScript files report generated positions (line 1), so no line for them.
        `${f.name}${f.file ? ` (${f.file}${f.file.endsWith('.ts') ? '' : `:${f.line}`})` : ''}`,
    );
  }
  out.push('');
  out.push('self time by file (of busy time):');
  for (const f of s.files.filter((x) => x.file !== '(idle)').slice(0, 15)) {
    out.push(`  ${pct(f.selfUs, busy)}%  ${f.file}`);
  }
  return out.join('\n');
}

// CLI
if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const args = process.argv.slice(2);
  const file = args.find((a) => !a.startsWith('--'));
  const ti = args.indexOf('--top');
  const top = ti >= 0 ? Number(args[ti + 1]) : 30;
  if (!file) {
    process.stderr.write('usage: node --import tsx test/bench/prof-summary.ts FILE.cpuprofile [--top N]\n');
    process.exit(2);
  }
  const prof = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  process.stdout.write(formatSummary(summarizeProfile(prof), top) + '\n');
}
