/**
 * test/helpers/test-titles.ts: how feature-matrix.md citations resolve (exactly one title, not
 * skipped, loop titles expanded).
 */
import test from 'ava';
import { parseTestTitles, resolveCitation } from '../helpers/test-titles.ts';

const SRC = `
import test from 'ava';
const gated = canRun ? test.serial : test.serial.skip;
const off = test.skip;
test('alpha one', (t) => { t.pass(); /* SET_OWNER */ });
test.serial("alpha two", (t) => {});
gated('gated beta', async (t) => {});
off('skipped gamma', (t) => {});
test.failing('failing delta', (t) => {});
(cond ? test : test.skip)('inline epsilon', (t) => {});
for (const v of [
  { name: 'split, mergeable', mrg: true },
  { name: 'packed, mergeable', mrg: true },
]) {
  gated(\`ring (\${v.name})\`, async (t) => {});
}
for (const { kind, mode } of cases) {
  test(\`live \${mode} migration on \${kind}\`, (t) => {});
}
t.log('alpha three');
`;

test('titles, gates and skips', (t) => {
  const ts = parseTestTitles(SRC);
  t.deepEqual(
    ts.map((x) => [x.titles.join('|') || x.statics.join('…'), x.skipped]),
    [
      ['alpha one', false],
      ['alpha two', false],
      ['gated beta', false],
      ['skipped gamma', true],
      ['failing delta', true],
      ['inline epsilon', false],
      ['ring (split, mergeable)|ring (packed, mergeable)', false],
      ['live … migration on ', false],
    ],
  );
  t.true(ts[0]!.body.includes('SET_OWNER'));
});

test('a citation resolves to exactly one test that runs', (t) => {
  const ts = parseTestTitles(SRC);
  t.is(typeof resolveCitation(ts, 'alpha one'), 'object');
  t.regex(resolveCitation(ts, 'alpha') as string, /2 test titles/);
  t.regex(resolveCitation(ts, 'nothing like it') as string, /no test title/);
  t.regex(resolveCitation(ts, 'skipped gamma') as string, /skipped/);
  t.regex(resolveCitation(ts, 'failing delta') as string, /skipped/);
  t.regex(resolveCitation(ts, 'ring (') as string, /2 test titles/);
  t.is(typeof resolveCitation(ts, '(packed, mergeable)'), 'object');
  t.is(typeof resolveCitation(ts, 'live '), 'object');
  t.is(typeof resolveCitation(ts, 'gated beta'), 'object');
});
