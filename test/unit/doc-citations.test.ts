/**
 * Keeps the citations between code and documentation true:
 * - every decision the code cites (`D33`, `(D43)`, `decisions.md D41`) is a row of
 *   spec-notes/decisions.md, and so is every decision spec-notes/ and README.md cite;
 * - every `spec-notes/<file>` the code or README.md cites exists, and so does every `name.md`
 *   one spec note cites of another; a section cited as decisions.md "Error handling" is a heading;
 * - every repository path in backticks in spec-notes/*.md and README.md (`backend/...`,
 *   `virtqueue/...`, `test/...`, braces and globs expanded) exists;
 * - every `NOTE:` of the codec (protocol/messages.ts, protocol/payloads.ts) is listed in
 *   spec-notes/vhost-user.md under the row or layout it annotates, and every "codec NOTE n" the code
 *   cites is an entry there.
 */
import test from 'ava';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const read = (rel: string): string => readFileSync(join(ROOT, rel), 'utf8');

/** Where code lives, and what counts as code there (recorded reports and build output do not). */
const CODE_DIRS = ['backend', 'protocol', 'virtqueue', 'native', 'test', 'qemu-scripts', 'bin'];
const CODE_FILE = /\.(ts|mts|js|mjs|cc|h|c|sh|gyp)$/;
const SKIP_DIRS = new Set(['node_modules', 'build', 'expected']);

function walk(rel: string, out: string[]): string[] {
  for (const name of readdirSync(join(ROOT, rel))) {
    const p = `${rel}/${name}`;
    if (statSync(join(ROOT, p)).isDirectory()) {
      if (!SKIP_DIRS.has(name)) walk(p, out);
    } else if (CODE_FILE.test(name)) {
      out.push(p);
    }
  }
  return out;
}

const codeFiles = CODE_DIRS.filter((d) => existsSync(join(ROOT, d))).flatMap((d) => walk(d, []));
const notes = readdirSync(join(ROOT, 'spec-notes'))
  .filter((f) => f.endsWith('.md'))
  .map((f) => `spec-notes/${f}`);
const docFiles = [...notes, 'README.md'];

/** Every match of `re` (global; group 1 = the cited thing) in the files, with file:line. */
function citations(files: string[], re: RegExp): { what: string; m: RegExpMatchArray; where: string }[] {
  const out: { what: string; m: RegExpMatchArray; where: string }[] = [];
  for (const f of files) {
    read(f)
      .split('\n')
      .forEach((line, i) => {
        for (const m of line.matchAll(re)) out.push({ what: m[1]!, m, where: `${f}:${i + 1}` });
      });
  }
  return out;
}

// ---- (a) decisions ----

/**
 * A decision as cited: `D` and a number, as a token of its own: "D33", "(D43)", "D2,", "decisions.md
 * D41", "D33.". Not part of a word or a hex number (0xD1, AD12), not a MAC byte (52:54:00:D1), not a
 * PCI power state (D3hot), not "D0" (decisions start at D1).
 */
const DECISION = /(?<![\w.:#])D([1-9]\d{0,2})(?![\w:])/g;

function decisionRows(): Set<string> {
  const md = read('spec-notes/decisions.md');
  const rows = [...md.matchAll(/^\| (D\d+) \|/gm), ...md.matchAll(/^#+ .*?\b(D\d+)\b/gm)].map((m) => m[1]!);
  return new Set(rows);
}

test('every decision cited in code, spec-notes/ and README.md is a row of decisions.md', (t) => {
  const rows = decisionRows();
  t.true(rows.size >= 40, `decisions.md rows found: ${rows.size}`);
  const inCode = citations(codeFiles, DECISION);
  // The code cites decisions all over: finding (almost) none means the scan is broken.
  t.true(inCode.length >= 20, `decision citations found in code: ${inCode.length}`);
  const inDocs = citations(
    docFiles.filter((f) => f !== 'spec-notes/decisions.md'),
    DECISION,
  );
  const missing = [...inCode, ...inDocs].filter((c) => !rows.has(`D${c.what}`)).map((c) => `${c.where}: D${c.what}`);
  t.deepEqual(missing, [], 'cited decisions without a row in spec-notes/decisions.md');
});

test('decisions.md lists its decisions once each, in order within each section', (t) => {
  const md = read('spec-notes/decisions.md');
  const nums = [...md.matchAll(/^\| D(\d+) \|/gm)].map((m) => Number(m[1]));
  t.is(new Set(nums).size, nums.length, 'a decision number used twice');
  for (const section of md.split(/^## /m).slice(1)) {
    const rows = [...section.matchAll(/^\| D(\d+) \|/gm)].map((m) => Number(m[1]));
    t.deepEqual(rows, [...rows].sort((a, b) => a - b), `rows out of order in "${section.slice(0, section.indexOf('\n'))}"`);
  }
});

// ---- (b) spec-notes files ----

test('every spec-notes/<file> cited in code, README.md or spec-notes/ exists', (t) => {
  const cited = citations([...codeFiles, ...docFiles], /spec-notes\/([A-Za-z0-9_.-]*[A-Za-z0-9_])/g);
  t.true(cited.length >= 10, `spec-notes citations found: ${cited.length}`);
  const missing = cited.filter((c) => !existsSync(join(ROOT, 'spec-notes', c.what))).map((c) => `${c.where}: spec-notes/${c.what}`);
  t.deepEqual(missing, [], 'cited spec-notes files that do not exist');
});

test('every other note a spec note cites by name (`decisions.md`, vhost-user.md) exists', (t) => {
  const cited = citations(notes, /(?<![\w/.-])([a-z][\w-]*\.md)\b/g);
  const missing = cited.filter((c) => !existsSync(join(ROOT, 'spec-notes', c.what))).map((c) => `${c.where}: ${c.what}`);
  t.deepEqual(missing, [], 'spec notes citing notes that do not exist');
});

test('a section cited as decisions.md "Error handling" (file and quoted words) is a heading of that note', (t) => {
  const cited = citations([...codeFiles, ...docFiles], /(?<![\w-])(?:spec-notes\/)?([a-z][\w-]*\.md) "([^"]+)"/g);
  t.true(cited.length >= 3, `section citations found: ${cited.length}`);
  const missing = cited
    .filter((c) => existsSync(join(ROOT, 'spec-notes', c.what))) // a missing file is reported above
    .filter((c) => !read(`spec-notes/${c.what}`).split('\n').some((l) => l.startsWith('#') && l.includes(c.m[2]!)))
    .map((c) => `${c.where}: ${c.what} "${c.m[2]}"`);
  t.deepEqual(missing, [], 'cited sections that are not headings of the note');
});

// ---- (c) repository paths in the notes ----

/** A repository path inside a code span: up to a space, quote, bracket, `|`, `,` or `;` (commas inside `{a,b}` belong to it). */
const PATH_IN_CODE_SPAN = /(?:^|[\s(=])((?:backend|virtqueue|protocol|native|test|qemu-scripts|bin)\/(?:[^\s`'"()|,;{]|\{[^}\s]*\})*)/g;

/** `a/{b,c}.ts` -> a/b.ts, a/c.ts. */
function expandBraces(p: string): string[] {
  const m = /\{([^{}]*)\}/.exec(p);
  if (!m) return [p];
  return m[1]!.split(',').flatMap((alt) => expandBraces(p.slice(0, m.index) + alt + p.slice(m.index + m[0].length)));
}

/** Does the path exist? `*` matches within one path segment. */
function exists(p: string): boolean {
  const parts = p.replace(/\/$/, '').split('/');
  let dirs = [''];
  for (const part of parts) {
    const next: string[] = [];
    for (const d of dirs) {
      if (!part.includes('*')) {
        if (existsSync(join(ROOT, d, part))) next.push(join(d, part));
        continue;
      }
      const dir = join(ROOT, d);
      if (!existsSync(dir) || !statSync(dir).isDirectory()) continue;
      const re = new RegExp(`^${part.replace(/[.+?^$()[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*')}$`);
      for (const name of readdirSync(dir)) if (re.test(name)) next.push(join(d, name));
    }
    dirs = next;
  }
  return dirs.length > 0;
}

test('every repository path in backticks in spec-notes/*.md and README.md exists', (t) => {
  const cited: { what: string; where: string }[] = [];
  for (const f of docFiles) {
    read(f)
      .split('\n')
      .forEach((line, i) => {
        for (const span of line.matchAll(/`([^`]+)`/g)) {
          for (const m of span[1]!.matchAll(PATH_IN_CODE_SPAN)) {
            cited.push({ what: m[1]!.replace(/[.:]+$/, ''), where: `${f}:${i + 1}` });
          }
        }
      });
  }
  t.true(cited.length >= 30, `paths in backticks found: ${cited.length}`);
  const missing = cited.filter((c) => !expandBraces(c.what).every(exists)).map((c) => `${c.where}: ${c.what}`);
  t.deepEqual(missing, [], 'paths cited in the notes that do not exist');
});

// ---- (d) the codec's NOTE: markers and spec-notes/vhost-user.md ----

/**
 * What a `NOTE:` comment annotates: inside a row of the message table (`NAME: frontend('NAME', {`
 * ... `}),`), the row's name; otherwise the declaration that follows the comment (`const name`,
 * `interface Name`, a field `name?:`).
 */
function noteAnchor(lines: string[], i: number): string | null {
  for (let j = i - 1; j >= 0; j--) {
    const row = /^\s+([A-Z][A-Z0-9_]*): (?:frontend|backend)\(/.exec(lines[j]!);
    if (row) return row[1]!;
    if (/^\s*\}\),?\s*$/.test(lines[j]!) || /^\S/.test(lines[j]!)) break;
  }
  for (let j = i + 1; j < lines.length; j++) {
    const l = lines[j]!.trim();
    if (l === '' || l.startsWith('*') || l.startsWith('//') || l.startsWith('/*')) continue;
    const decl = /^(?:export\s+)?(?:declare\s+)?(?:(?:const|let|function|interface|type|class)\s+)?(?:readonly\s+)?([A-Za-z_$][\w$]*)/.exec(l);
    return decl ? decl[1]! : null;
  }
  return null;
}

test('every NOTE: of the codec has its entry in spec-notes/vhost-user.md', (t) => {
  const doc = read('spec-notes/vhost-user.md');
  const named = new Set([...doc.matchAll(/`([^`]+)`/g)].map((m) => m[1]!.toLowerCase()));
  let count = 0;
  const missing: string[] = [];
  for (const f of ['protocol/messages.ts', 'protocol/payloads.ts']) {
    const lines = read(f).split('\n');
    lines.forEach((line, i) => {
      // A marker, not a mention of the convention (`"NOTE:"` in quotes).
      if (!/\bNOTE:(?!")/.test(line)) return;
      count++;
      const anchor = noteAnchor(lines, i);
      if (anchor === null || !named.has(anchor.toLowerCase())) missing.push(`${f}:${i + 1}: NOTE: at ${anchor ?? '?'}`);
    });
  }
  t.true(count >= 15, `NOTE: markers found: ${count}`);
  t.deepEqual(missing, [], 'NOTE: markers whose row or layout vhost-user.md does not name in backticks');
});

test('every "codec NOTE n" cited in code is an entry of spec-notes/vhost-user.md', (t) => {
  const entries = new Set([...read('spec-notes/vhost-user.md').matchAll(/^\| N(\d+) \|/gm)].map((m) => m[1]!));
  t.true(entries.size >= 13, `vhost-user.md entries: ${entries.size}`);
  const missing = citations(codeFiles, /codec NOTE (\d+)/g)
    .filter((c) => !entries.has(c.what))
    .map((c) => `${c.where}: codec NOTE ${c.what}`);
  t.deepEqual(missing, [], 'cited codec notes without an entry N<n> in vhost-user.md');
});
