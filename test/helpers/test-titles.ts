/**
 * The ava test titles of a test file, read from its source (no execution): for documents that cite
 * tests (spec-notes/feature-matrix.md) and must resolve each citation to exactly one real test.
 *
 * A test is a call `callee('title' | "title" | `title`, ...)` whose callee is `test` or `test.<mods>`,
 * an inline `(cond ? test... : test...)`, or a name the file binds to such an expression
 * (`const qemuTest = canRun ? test.serial : test.serial.skip`). A callee that is unconditionally
 * `.skip`, `.todo` or `.failing` marks the test skipped (a gate `cond ? x : x.skip` is not: it runs
 * where its peer exists). Template titles inside `for (const v of [ ... ])` are expanded when the
 * holes are `${v.prop}` / `${v}` and the array holds literal strings for them; otherwise their static
 * parts stand for them.
 */

export interface TestTitle {
  /** The concrete titles (one, or one per loop element); empty when the template cannot be expanded. */
  titles: string[];
  /** Static parts of a template title that could not be expanded (else empty). */
  statics: string[];
  /** As written (template source for templates). */
  source: string;
  skipped: boolean;
  /** The source from this title to the next test title (the test's body, roughly). */
  body: string;
  /** The whole file's source. */
  file: string;
}

const MODS = /\.(skip|todo|failing)\b/;

/** Reads a JS string/template literal starting at s[i] (the quote); returns [raw content, end index]. */
function readLiteral(s: string, i: number): [string, number] {
  const q = s[i]!;
  let j = i + 1;
  let depth = 0;
  while (j < s.length) {
    const c = s[j]!;
    if (c === '\\') {
      j += 2;
      continue;
    }
    if (q === '`') {
      if (depth === 0 && c === '$' && s[j + 1] === '{') {
        depth = 1;
        j += 2;
        continue;
      }
      if (depth > 0) {
        if (c === '{') depth++;
        else if (c === '}') depth--;
        j++;
        continue;
      }
    }
    if (c === q && depth === 0) return [s.slice(i + 1, j), j + 1];
    j++;
  }
  return [s.slice(i + 1), s.length];
}

const unescape = (raw: string): string => raw.replace(/\\(.)/g, '$1');

/** Splits a template's raw content into static parts and hole expressions. */
function templateParts(raw: string): { statics: string[]; holes: string[] } {
  const statics: string[] = [];
  const holes: string[] = [];
  let cur = '';
  let i = 0;
  while (i < raw.length) {
    if (raw[i] === '\\') {
      cur += raw.slice(i, i + 2);
      i += 2;
      continue;
    }
    if (raw[i] === '$' && raw[i + 1] === '{') {
      let depth = 1;
      let j = i + 2;
      while (j < raw.length && depth > 0) {
        if (raw[j] === '{') depth++;
        else if (raw[j] === '}') depth--;
        j++;
      }
      statics.push(unescape(cur));
      holes.push(raw.slice(i + 2, j - 1).trim());
      cur = '';
      i = j;
      continue;
    }
    cur += raw[i];
    i++;
  }
  statics.push(unescape(cur));
  return { statics, holes };
}

/** The literal strings of `prop` (or bare strings when prop is null) in an array literal's source. */
function arrayValues(arr: string, prop: string | null): string[] | null {
  const out: string[] = [];
  if (prop === null) {
    for (const m of arr.matchAll(/(?:^|[[,]\s*)(['"])((?:\\.|(?!\1).)*)\1\s*(?=,|\]|$)/g)) out.push(unescape(m[2]!));
  } else {
    for (const m of arr.matchAll(new RegExp(`\\b${prop}\\s*:\\s*(['"])((?:\\\\.|(?!\\1).)*)\\1`, 'g'))) out.push(unescape(m[2]!));
  }
  return out.length ? out : null;
}

/** Source of the array literal starting at s[i] === '['. */
function arrayAt(s: string, i: number): string {
  let depth = 0;
  for (let j = i; j < s.length; j++) {
    const c = s[j]!;
    if (c === "'" || c === '"' || c === '`') {
      j = readLiteral(s, j)[1] - 1;
      continue;
    }
    if (c === '[') depth++;
    else if (c === ']' && --depth === 0) return s.slice(i, j + 1);
  }
  return s.slice(i);
}

function expand(src: string, at: number, raw: string): { titles: string[]; statics: string[] } {
  const { statics, holes } = templateParts(raw);
  if (holes.length === 0) return { titles: [statics[0]!], statics: [] };
  // The innermost enclosing `for (const X of [` before the title.
  const loops = [...src.slice(0, at).matchAll(/for \(const (\w+) of \[/g)];
  const loop = loops[loops.length - 1];
  if (loop) {
    const v = loop[1]!;
    const arr = arrayAt(src, loop.index! + loop[0].length - 1);
    const cols: string[][] = [];
    let ok = true;
    for (const h of holes) {
      const m = new RegExp(`^${v}(?:\\.(\\w+))?$`).exec(h);
      const vals = m ? arrayValues(arr, m[1] ?? null) : null;
      if (!vals) {
        ok = false;
        break;
      }
      cols.push(vals);
    }
    if (ok && cols.every((c) => c.length === cols[0]!.length)) {
      const titles = cols[0]!.map((_, k) => statics.map((s, i) => s + (i < cols.length ? cols[i]![k] : '')).join(''));
      return { titles, statics: [] };
    }
  }
  return { titles: [], statics: statics.filter((s) => s.trim().length > 0) };
}

export function parseTestTitles(src: string): TestTitle[] {
  // Names bound to test expressions: const x = <expr containing test>;
  const bound = new Map<string, string>();
  for (const m of src.matchAll(/(?:const|let)\s+(\w+)\s*=\s*([^;\n]*\btest\b[^;\n]*);/g)) bound.set(m[1]!, m[2]!);
  const callee = /(\((?:[^()]*\btest\b[^()]*)\)|\btest(?:\.\w+)*|\b\w+)\(\s*(['"`])/g;
  const found: Array<Omit<TestTitle, 'body' | 'file'> & { at: number; end: number }> = [];
  for (const m of src.matchAll(callee)) {
    let c = m[1]!;
    const name = c;
    if (!c.startsWith('(') && !/^test\b/.test(c)) {
      const b = bound.get(c);
      if (!b) continue;
      c = b;
    }
    // Preceded by `.` (a method like t.log) or a keyword like `function`: not a test call.
    const before = src.slice(Math.max(0, m.index! - 1), m.index!);
    if (before === '.' || /function\s*$/.test(src.slice(Math.max(0, m.index! - 10), m.index!))) continue;
    const conditional = c.includes('?');
    const skipped = !conditional && MODS.test(c);
    const q = m.index! + m[0].length - 1;
    const [raw, end] = readLiteral(src, q);
    const ex = m[2] === '`' ? expand(src, m.index!, raw) : { titles: [unescape(raw)], statics: [] };
    void name;
    found.push({ ...ex, source: raw, skipped, at: m.index!, end });
  }
  return found.map((f, i) => ({
    titles: f.titles,
    statics: f.statics,
    source: f.source,
    skipped: f.skipped,
    body: src.slice(f.end, found[i + 1]?.at ?? src.length),
    file: src,
  }));
}

/**
 * The one test whose title contains `words` (a concrete title, or a static part of an unexpanded
 * template); a string saying why when none or several do, or the one found is skipped.
 */
export function resolveCitation(tests: readonly TestTitle[], words: string): TestTitle | string {
  const hits: Array<{ test: TestTitle; title: string }> = [];
  for (const t of tests) {
    for (const title of t.titles) if (title.includes(words)) hits.push({ test: t, title });
    for (const s of t.statics) if (s.includes(words)) hits.push({ test: t, title: `\`${t.source}\`` });
  }
  if (hits.length === 0) return 'no test title contains these words';
  if (hits.length > 1) return `${hits.length} test titles contain these words: ${hits.map((h) => `'${h.title}'`).join(', ')}`;
  if (hits[0]!.test.skipped) return `the test '${hits[0]!.title}' is skipped (or todo/failing)`;
  return hits[0]!.test;
}
