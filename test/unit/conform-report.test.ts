/**
 * The conformance rule table, its documentation and the report format, without sockets: every rule
 * has an id, a severity, at least one cited sentence, DIVERGENCE rules list their readings; the
 * engine's outcome logic; normalization drops what varies between runs; spec-notes/conformance.md
 * lists every rule.
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { RULES } from '../../backend/tools/conform/rules.ts';
import { ConformEngine } from '../../backend/tools/conform/engine.ts';
import { buildReport, normalizeReport, renderHtml } from '../../backend/tools/conform/report.ts';

test('rule table: unique ids, severities, citations, readings for divergences', (t) => {
  const ids = RULES.map((r) => r.id);
  t.is(new Set(ids).size, ids.length, 'ids are unique');
  for (const r of RULES) {
    t.regex(r.id, /^VU-(MSG|NEG|MEM|RING|VQ|BCH|PRB|RCN|DIV)-\d{3}$/);
    t.true(['MUST', 'SHOULD', 'DIVERGENCE'].includes(r.severity), r.id);
    t.true(r.spec.length > 0 && r.spec.every((s) => s.quote.length > 10 && s.section.length > 0), `${r.id} cites its source`);
    if (r.severity === 'DIVERGENCE') t.true((r.readings?.length ?? 0) >= 2, `${r.id} lists both readings`);
    t.true(Boolean(r.onRequest || r.onReply || r.onRing || r.onBackendRx || r.onClose || r.probe || r.id === 'VU-BCH-002'), `${r.id} has a check`);
  }
});

test('engine outcomes: fail beats divergence beats pass; nothing observed is not-applicable', (t) => {
  const e = new ConformEngine({ deviceRings: 2, sampleMs: 0 });
  e.record('VU-MSG-003', 'pass');
  e.record('VU-MSG-003', 'fail', 'bad size');
  e.record('VU-MSG-003', 'pass');
  e.record('VU-DIV-001', 'divergence', 'ring 0: 0x8000', 'avail-half');
  e.record('VU-NEG-001', 'pass');
  t.is(e.result('VU-MSG-003')!.outcome, 'fail');
  t.is(e.result('VU-DIV-001')!.outcome, 'divergence');
  t.is(e.result('VU-NEG-001')!.outcome, 'pass');
  t.is(e.result('VU-MEM-002')!.outcome, 'not-applicable');
  const rep = buildReport(e, { frontend: 'unit', socket: '/tmp/x.sock', startedAt: new Date(0) });
  t.is(rep.summary.fail, 1);
  t.is(rep.summary.mustFailures, 1);
  const n = normalizeReport(rep);
  t.deepEqual(Object.keys(n), ['frontend', 'connections', 'rules'], 'no times or paths');
  t.is(n.rules['VU-DIV-001'], 'divergence:avail-half');
  t.is(n.rules['VU-MSG-003'], 'fail');
  const html = renderHtml(rep);
  t.regex(html, /<tr class="fail"><td><code>VU-MSG-003<\/code>/);
  t.regex(html, /bad size/);
  t.notRegex(html, /<script/);
  e.stop();
});

test('spec-notes/conformance.md lists every rule with its severity', (t) => {
  const doc = readFileSync(fileURLToPath(new URL('../../spec-notes/conformance.md', import.meta.url)), 'utf8');
  for (const r of RULES) t.regex(doc, new RegExp(`^\\| ${r.id} \\| ${r.severity} \\|`, 'm'), r.id);
});
