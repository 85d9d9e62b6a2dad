/**
 * Keeps spec-notes/feature-matrix.md true: every request id and feature bit appears exactly once,
 * the status of each row matches the code (handler table, offered masks), and every cited test file
 * exists and contains the cited words of a test title.
 */
import test from 'ava';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { BACKEND_MESSAGES, FRONTEND_MESSAGES, ProtoF, has } from '../../protocol/index.ts';
import { SESSION_PROTOCOL_FEATURES } from '../../backend/core/session.ts';
import { supportedRequests } from '../../backend/core/handlers/index.ts';
import { NET_FEATURES } from '../../backend/net/device/net-device.ts';
import { VirtioF } from '../../protocol/index.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const md = readFileSync(join(ROOT, 'spec-notes/feature-matrix.md'), 'utf8');

/** Rows of the table under the heading `title`: arrays of trimmed cells. */
function section(title: string): string[][] {
  const start = md.indexOf(`## ${title}`);
  if (start < 0) throw new Error(`no section ${title}`);
  const end = md.indexOf('\n## ', start + 3);
  return md
    .slice(start, end < 0 ? undefined : end)
    .split('\n')
    .filter((l) => l.startsWith('|') && !l.startsWith('|---'))
    .slice(1) // header
    .map((l) => l.split('|').slice(1, -1).map((c) => c.trim()));
}

function findTestFile(name: string): string | null {
  for (const d of ['test/unit', 'test/integration']) {
    const p = join(ROOT, d, name);
    if (existsSync(p)) return p;
  }
  return null;
}

/** "file.test.ts › words of the title": the file exists and has a test title with those words. */
function checkEvidence(t: import('ava').ExecutionContext, what: string, cell: string): void {
  const m = /^(\S+\.test\.ts) › (.+)$/.exec(cell);
  if (!m) return t.fail(`${what}: evidence '${cell}' is not 'file.test.ts › title words'`);
  const file = findTestFile(m[1]!);
  if (!file) return t.fail(`${what}: no test file ${m[1]}`);
  t.true(readFileSync(file, 'utf8').includes(m[2]!), `${what}: ${m[1]} has no test titled '${m[2]}'`);
}

test('front-end requests: every id once, supported rows = the session handler table, evidence exists', (t) => {
  const rows = section('Front-end requests');
  const defs = Object.values(FRONTEND_MESSAGES);
  t.deepEqual(rows.map((r) => Number(r[0])), defs.map((d) => d.id));
  const supported = new Set(supportedRequests());
  for (const [id, name, status, evidence] of rows as [string, string, string, string][]) {
    t.is(name, defs.find((d) => d.id === Number(id))!.name);
    t.is(status, supported.has(Number(id)) ? 'supported' : 'refused', `${name}`);
    checkEvidence(t, name, evidence);
  }
});

test('back-end requests: every id once', (t) => {
  const rows = section('Back-end requests');
  t.deepEqual(rows.map((r) => `${r[0]} ${r[1]}`), Object.values(BACKEND_MESSAGES).map((d) => `${d.id} ${d.name}`));
  for (const r of rows) checkEvidence(t, r[1]!, r[3]!);
});

test('protocol features: every bit once, offered rows = what the session offers, offered rows have evidence', (t) => {
  const rows = section('Protocol features');
  t.deepEqual(rows.map((r) => `${r[0]} ${r[1]}`), Object.entries(ProtoF).map(([n, b]) => `${b} ${n}`));
  for (const [bitNo, name, status, evidence] of rows as [string, string, string, string][]) {
    t.is(status, has(SESSION_PROTOCOL_FEATURES, Number(bitNo)) ? 'offered' : 'not offered', name);
    if (status === 'offered') checkEvidence(t, name, evidence);
  }
});

test('virtio features: the offered rows are exactly what the net device (plus PROTOCOL_FEATURES, LOG_ALL, ACCESS_PLATFORM) offers', (t) => {
  const rows = section('Virtio features offered by the net device');
  const offered =
    NET_FEATURES |
    (1n << BigInt(VirtioF.PROTOCOL_FEATURES)) |
    (1n << BigInt(VirtioF.LOG_ALL)) |
    (1n << BigInt(VirtioF.ACCESS_PLATFORM));
  const expected = Object.entries(VirtioF)
    .filter(([, b]) => has(offered, b))
    .sort((a, b) => a[1] - b[1])
    .map(([n, b]) => `${b} ${n}`);
  t.deepEqual(rows.map((r) => `${r[0]} ${r[1]}`), expected);
  for (const r of rows) checkEvidence(t, r[1]!, r[3]!);
});

test('ring features: every supported row has evidence', (t) => {
  for (const [feature, status, evidence] of section('Ring features and guarantees') as [string, string, string][]) {
    if (status === 'supported') checkEvidence(t, feature, evidence);
  }
});
