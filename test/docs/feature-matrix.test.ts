/**
 * Keeps spec-notes/feature-matrix.md true:
 * - every request id and feature bit appears exactly once;
 * - every status column is compared with the code: front-end requests with the session's handler
 *   table, back-end requests with what backend code sends (BackendReq.X in backend/core and
 *   backend/net), protocol and virtio feature bits with what a LIVE session (the real NetDevice and
 *   handlers on the fake binding) answers to GET_PROTOCOL_FEATURES / GET_FEATURES, and the ring rows
 *   that name a feature with those same answers;
 * - every citation `file.test.ts › words` (several joined by `; `) resolves to exactly ONE test title
 *   of that file (ava titles as written, loop-generated titles expanded where the loop's array is a
 *   literal, otherwise the static parts of a template title), and that test is not skipped or failing;
 * - the cited test exercises the row: for requests, its title or body names the request (or, for
 *   the ring plumbing every loopback test sends through its helper, what the request sets up: see
 *   REQUEST_WORDS); for feature bits, the test or its file (where the negotiated masks are built)
 *   names the feature.
 */
import test from 'ava';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { BACKEND_MESSAGES, FRONTEND_MESSAGES, FrontendReq as R, ProtoF, VirtioF, has } from '../../protocol/index.ts';
import { supportedRequests } from '../../backend/core/handlers/index.ts';
import { FAKE_UFFD_MEMBERS, type FakeNative } from '../../native/fake.ts';
import type { SessionNative } from '../../backend/core/session.ts';
import { liveSession } from '../helpers/live-session.ts';
import { parseTestTitles, resolveCitation, type TestTitle } from '../helpers/test-titles.ts';

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

const TEST_DIRS = ['test/unit', 'test/integration', 'test/rig', 'test/docs'];
const titleCache = new Map<string, TestTitle[]>();
function titlesOf(name: string): TestTitle[] | null {
  for (const d of TEST_DIRS) {
    const p = join(ROOT, d, name);
    if (!existsSync(p)) continue;
    if (!titleCache.has(p)) titleCache.set(p, parseTestTitles(readFileSync(p, 'utf8')));
    return titleCache.get(p)!;
  }
  return null;
}

/**
 * Resolves every citation of a cell; returns the cited tests, or fails with why. `mustName`: words of
 * which at least one must appear in the body of some cited test (the test exercises the row).
 */
function checkEvidence(t: Problems, what: string, cell: string, mustName: string[] = [], fileWide = false): TestTitle[] {
  const cites = cell.split(/\s*;\s*(?=\S+\.test\.ts › )/);
  const found: TestTitle[] = [];
  for (const cite of cites) {
    const m = /^(\S+\.test\.ts) › (.+)$/.exec(cite);
    if (!m) {
      t.fail(`${what}: evidence '${cite}' is not 'file.test.ts › title words'`);
      continue;
    }
    const titles = titlesOf(m[1]!);
    if (!titles) {
      t.fail(`${what}: no test file ${m[1]}`);
      continue;
    }
    const r = resolveCitation(titles, m[2]!);
    if (typeof r === 'string') t.fail(`${what}: ${m[1]} › '${m[2]}': ${r}`);
    else found.push(r);
  }
  if (mustName.length && found.length === cites.length) {
    const named = found.some((f) => mustName.some((w) => f.body.includes(w) || f.source.includes(w) || (fileWide && f.file.includes(w))));
    t.true(named, `${what}: no cited test names ${mustName.join(' or ')} in its title or body${fileWide ? ' or its file' : ''} (${cell})`);
  }
  return found;
}

/** Collects every problem of a test (ava reports only the first failed assertion). */
class Problems {
  readonly list: string[] = [];
  fail(m: string): void {
    this.list.push(m);
  }
  true(c: boolean, m: string): void {
    if (!c) this.list.push(m);
  }
}

/** What a live session answers: the offers a frontend sees. */
function liveOffers(native?: (fake: FakeNative) => SessionNative): { virtio: bigint; proto: bigint } {
  const s = liveSession({ queuePairs: 2, ...(native ? { native } : {}) });
  try {
    const v = s.request(R.GET_FEATURES)[0]!.payload as { value: bigint };
    const p = s.request(R.GET_PROTOCOL_FEATURES)[0]!.payload as { value: bigint };
    return { virtio: v.value, proto: p.value };
  } finally {
    s.close();
  }
}
const live = liveOffers();

/**
 * Words that show a test exercises a ring-plumbing request its helper sends (the request itself is
 * named in test/helpers/loopback.ts, not in the test).
 */
const REQUEST_WORDS: Record<string, string[]> = {
  SET_VRING_ERR: ['err eventfd'],
};

test('front-end requests: every id once, status = the session handler table, each cited test names the request', (t) => {
  const p = new Problems();
  const rows = section('Front-end requests');
  const defs = Object.values(FRONTEND_MESSAGES);
  t.deepEqual(rows.map((r) => Number(r[0])), defs.map((d) => d.id));
  const supported = new Set(supportedRequests());
  for (const [id, name, status, evidence] of rows as [string, string, string, string][]) {
    t.is(name, defs.find((d) => d.id === Number(id))!.name);
    t.is(status, supported.has(Number(id)) ? 'supported' : 'refused', `${name}`);
    // A refused row is proven by the test that sends every unimplemented request (from the table).
    checkEvidence(p, name, evidence, status === 'refused' ? ['supportedRequests', 'refused'] : [name, ...(REQUEST_WORDS[name] ?? [])]);
  }
  t.deepEqual(p.list, []);
});

/** BackendReq names sent by the backend's code (the conformance tool's probes are not the backend). */
function backendSends(): Set<string> {
  const out = new Set<string>();
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir)) {
      const p = join(dir, e);
      if (statSync(p).isDirectory()) walk(p);
      else if (p.endsWith('.ts')) for (const m of readFileSync(p, 'utf8').matchAll(/BackendReq\.(\w+)/g)) out.add(m[1]!);
    }
  };
  walk(join(ROOT, 'backend/core'));
  walk(join(ROOT, 'backend/net'));
  return out;
}

test('back-end requests: every id once, "sent" exactly for what backend code sends, each cited test names it', (t) => {
  const p = new Problems();
  const rows = section('Back-end requests');
  t.deepEqual(rows.map((r) => `${r[0]} ${r[1]}`), Object.values(BACKEND_MESSAGES).map((d) => `${d.id} ${d.name}`));
  const sent = backendSends();
  t.true(sent.size > 0);
  for (const [, name, status, evidence] of rows as [string, string, string, string][]) {
    t.is(status.startsWith('sent'), sent.has(name), `${name}: status '${status}' but the backend ${sent.has(name) ? 'sends' : 'never sends'} it`);
    t.true(status.startsWith('sent (') || status === 'not sent', `${name}: status '${status}'`);
    // A request not sent is proven by the code (above), not by a test.
    if (status === 'not sent') t.is(evidence, '', `${name}: not sent cites no test`);
    else checkEvidence(p, name, evidence, [name]);
  }
  // The prose above the table must not contradict it.
  t.notRegex(md, /no back-end request is sent/);
  t.deepEqual(p.list, []);
});

test('protocol features: every bit once, "offered" = what a live session offers, each cited test names the feature', (t) => {
  const p = new Problems();
  const rows = section('Protocol features');
  t.deepEqual(rows.map((r) => `${r[0]} ${r[1]}`), Object.entries(ProtoF).map(([n, b]) => `${b} ${n}`));
  for (const [bitNo, name, status, evidence] of rows as [string, string, string, string][]) {
    const word = status.replace(/ \(.*\)$/, '');
    t.is(word, has(live.proto, Number(bitNo)) ? 'offered' : 'not offered', `${name}: live session offers 0x${live.proto.toString(16)}`);
    if (word === 'offered') checkEvidence(p, name, evidence, [name], true);
    else t.is(evidence, '', `${name}: a bit not offered cites no test`);
  }
  t.deepEqual(p.list, []);
});

test('protocol features: PAGEFAULT depends on the native layer (withdrawn without userfaultfd)', (t) => {
  t.true(has(live.proto, ProtoF.PAGEFAULT));
  const noUffd = liveOffers((fake) => fake.without(...FAKE_UFFD_MEMBERS) as never);
  t.false(has(noUffd.proto, ProtoF.PAGEFAULT));
  t.is(noUffd.proto | (1n << BigInt(ProtoF.PAGEFAULT)), live.proto);
  t.regex(md, /\| PAGEFAULT \| offered \(needs userfaultfd[^|]*\) \|/, 'the matrix says PAGEFAULT needs userfaultfd');
});

test('virtio features: the offered rows are exactly what a live session offers in GET_FEATURES, each cited test names the feature', (t) => {
  const p = new Problems();
  const rows = section('Virtio features offered by the net device');
  const expected = Object.entries(VirtioF)
    .filter(([, b]) => has(live.virtio, b))
    .sort((a, b) => a[1] - b[1])
    .map(([n, b]) => `${b} ${n}`);
  t.deepEqual(rows.map((r) => `${r[0]} ${r[1]}`), expected);
  for (const r of rows) {
    t.is(r[2], 'offered');
    checkEvidence(p, r[1]!, r[3]!, [r[1]!, r[1]!.replace(/^NET_F_|^RING_/, '')], true);
  }
  t.deepEqual(p.list, []);
});

/** Ring rows that depend on a feature bit: the status must agree with the live offers. */
const RING_ROW_BITS: Array<[RegExp, { virtio?: number[]; proto?: number[] }]> = [
  [/^packed ring/, { virtio: [VirtioF.RING_PACKED] }],
  [/^packed base/, { virtio: [VirtioF.RING_PACKED] }],
  [/^indirect descriptors/, { virtio: [VirtioF.RING_INDIRECT_DESC] }],
  [/^EVENT_IDX/, { virtio: [VirtioF.RING_EVENT_IDX] }],
  [/^mergeable RX buffers/, { virtio: [VirtioF.NET_F_MRG_RXBUF] }],
  [/^IN_ORDER/, { virtio: [VirtioF.IN_ORDER] }],
  [/^legacy big-endian split rings/, { proto: [ProtoF.CROSS_ENDIAN] }],
  [/^dirty log: /, { virtio: [VirtioF.LOG_ALL], proto: [ProtoF.LOG_SHMFD] }],
  [/^postcopy/, { proto: [ProtoF.PAGEFAULT] }],
  [/^inflight tracking/, { proto: [ProtoF.INFLIGHT_SHMFD] }],
  [/^IOTLB miss/, { virtio: [VirtioF.ACCESS_PLATFORM] }],
  [/^UFO/, { virtio: [VirtioF.NET_F_HOST_UFO, VirtioF.NET_F_GUEST_UFO] }],
  [/^NET_F_STATUS/, { virtio: [VirtioF.NET_F_STATUS] }],
  [/^kick with NOFD/, {}],
];

test('ring features: status words are known, feature-bound rows agree with the live offers, every supported row has evidence', (t) => {
  const p = new Problems();
  const rows = section('Ring features and guarantees') as [string, string, string][];
  for (const [feature, status, evidence] of rows) {
    t.true(status === 'supported' || status.startsWith('not offered'), `${feature}: status '${status}'`);
    const bound = RING_ROW_BITS.find(([re]) => re.test(feature))?.[1];
    if (bound) {
      const bits = [...(bound.virtio ?? []).map((b) => has(live.virtio, b)), ...(bound.proto ?? []).map((b) => has(live.proto, b))];
      const want = status === 'supported';
      for (const b of bits) t.is(b, want, `${feature}: '${status}' but the live session ${b ? 'offers' : 'does not offer'} its feature`);
    }
    if (status === 'supported') checkEvidence(p, feature, evidence);
    else t.is(evidence, '', `${feature}: not offered cites no test`);
  }
  t.is(rows.filter(([f]) => /^UFO|^NET_F_STATUS/.test(f)).length, 2);
  t.deepEqual(p.list, []);
});
