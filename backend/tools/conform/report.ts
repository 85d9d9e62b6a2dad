/**
 * Conformance reports: JSON (everything, for tools), a normalized JSON (rule id -> outcome, with the
 * divergent readings observed: no times, paths or fd numbers, so that it can be kept as an expected
 * result and a frontend change shows up as a diff) and a self-contained HTML page.
 */
import { writeFileSync } from 'node:fs';
import type { ConformEngine, Outcome, RuleResult } from './engine.ts';
import type { Severity, SpecRef, Reading } from './rules.ts';

export interface ReportRule {
  id: string;
  title: string;
  severity: Severity;
  outcome: Outcome;
  spec: SpecRef[];
  readings?: Reading[];
  probe?: string;
  passes: number;
  violationCount: number;
  violations: string[];
  /** DIVERGENCE: reading id -> times observed. */
  observed: Record<string, number>;
  details: string[];
}

export interface ConformReport {
  tool: 'vhost-user-ts conform';
  version: 1;
  /** What was tested (free text given on the command line) and the socket. */
  frontend: string;
  socket: string;
  startedAt: string;
  endedAt: string;
  connections: number;
  summary: Record<Outcome, number> & { mustFailures: number; shouldFailures: number };
  rules: ReportRule[];
}

export interface NormalizedReport {
  frontend: string;
  connections: number;
  /** rule id -> outcome; divergences as "divergence:reading[+reading]". */
  rules: Record<string, string>;
}

function toRule(r: RuleResult): ReportRule {
  return {
    id: r.rule.id,
    title: r.rule.title,
    severity: r.rule.severity,
    outcome: r.outcome,
    spec: r.rule.spec,
    ...(r.rule.readings ? { readings: r.rule.readings } : {}),
    ...(r.rule.probe ? { probe: r.rule.probe } : {}),
    passes: r.passes,
    violationCount: r.violationCount,
    violations: r.violations,
    observed: r.readings,
    details: r.details,
  };
}

export function buildReport(engine: ConformEngine, meta: { frontend: string; socket: string; startedAt: Date }): ConformReport {
  const rules = engine.resultList().map(toRule);
  const count = (o: Outcome) => rules.filter((r) => r.outcome === o).length;
  return {
    tool: 'vhost-user-ts conform',
    version: 1,
    frontend: meta.frontend,
    socket: meta.socket,
    startedAt: meta.startedAt.toISOString(),
    endedAt: new Date().toISOString(),
    connections: engine.sessions,
    summary: {
      pass: count('pass'),
      fail: count('fail'),
      divergence: count('divergence'),
      'not-applicable': count('not-applicable'),
      mustFailures: rules.filter((r) => r.outcome === 'fail' && r.severity === 'MUST').length,
      shouldFailures: rules.filter((r) => r.outcome === 'fail' && r.severity === 'SHOULD').length,
    },
    rules,
  };
}

export function normalizeReport(r: ConformReport): NormalizedReport {
  const rules: Record<string, string> = {};
  for (const x of r.rules) {
    rules[x.id] = x.outcome === 'divergence' ? `divergence:${Object.keys(x.observed).sort().join('+')}` : x.outcome;
  }
  return { frontend: r.frontend, connections: r.connections, rules };
}

const esc = (s: string) => s.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]!);

export function renderHtml(r: ConformReport): string {
  const row = (x: ReportRule) => {
    const spec = x.spec.map((s) => `<div class="spec"><b>${esc(s.doc)} — ${esc(s.section)}</b><q>${esc(s.quote)}</q></div>`).join('');
    const readings = x.readings
      ? `<ul class="readings">${x.readings
          .map((d) => `<li${x.observed[d.id] ? ' class="seen"' : ''}><code>${esc(d.id)}</code> (${esc(d.who)}): ${esc(d.text)}${x.observed[d.id] ? ` — <b>observed ×${x.observed[d.id]}</b>` : ''}</li>`)
          .join('')}</ul>`
      : '';
    const notes = [...x.violations, ...x.details].map((v) => `<li>${esc(v)}</li>`).join('');
    return `<tr class="${x.outcome}"><td><code>${esc(x.id)}</code></td><td>${esc(x.severity)}</td><td class="o">${esc(x.outcome)}</td>
<td><div class="title">${esc(x.title)}${x.probe ? ` <span class="probe">probe: ${esc(x.probe)}</span>` : ''}</div>${spec}${readings}${notes ? `<ul class="notes">${notes}</ul>` : ''}<div class="n">${x.passes} passing observations, ${x.violationCount} violations</div></td></tr>`;
  };
  const s = r.summary;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vhost-user conformance: ${esc(r.frontend)}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;width:100%}td,th{border:1px solid #ccc;padding:.4em;vertical-align:top;text-align:left}
tr.pass .o{background:#d8f5d8}tr.fail .o{background:#f8c8c8}tr.divergence .o{background:#fbe7b5}tr.not-applicable .o{color:#888}
q{display:block;font-style:italic;color:#444;margin:.2em 0 .4em 1em}.spec b{font-weight:600;font-size:12px}
.title{font-weight:600}.probe{font-weight:normal;font-size:12px;background:#e6eefc;padding:0 .3em}
.readings li.seen{font-weight:600}.notes{color:#900}.n{color:#777;font-size:12px}
</style></head><body>
<h1>vhost-user conformance report</h1>
<p>Frontend: <b>${esc(r.frontend)}</b> on <code>${esc(r.socket)}</code>, ${r.connections} connection(s), ${esc(r.startedAt)} – ${esc(r.endedAt)}</p>
<p>${s.pass} pass, <b>${s.fail} fail</b> (${s.mustFailures} MUST, ${s.shouldFailures} SHOULD), ${s.divergence} divergence, ${s['not-applicable']} not applicable.</p>
<table><thead><tr><th>rule</th><th>severity</th><th>outcome</th><th>what, from where, what was seen</th></tr></thead><tbody>
${r.rules.map(row).join('\n')}
</tbody></table></body></html>
`;
}

/** Writes `path`: HTML when it ends in .html/.htm, otherwise the full JSON report. */
export function writeReport(path: string, r: ConformReport): void {
  const body = /\.html?$/i.test(path) ? renderHtml(r) : JSON.stringify(r, null, 2) + '\n';
  writeFileSync(path, body);
}
