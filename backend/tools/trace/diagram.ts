/**
 * `trace diagram`: the conversation as a sequence diagram, frontend on the left, backend on the
 * right, one arrow per message ('rx' = frontend → backend, 'tx' = backend → frontend; back-end
 * channel messages are marked), ring events as notes on the backend's lifeline. A text version for
 * terminals and a self-contained HTML version (inline CSS, no script, no external resources).
 */
import { formatPayload, type TraceRecord } from '../../../protocol/index.ts';
import { chainDetail } from '../../../protocol/index.ts';

export interface DiagramRow {
  ms: number;
  /** 'right' = frontend → backend, 'left' = backend → frontend, 'note' = ring event. */
  arrow: 'right' | 'left' | 'note';
  label: string;
  detail: string;
  endpoint?: string;
  error?: string;
  backendChannel: boolean;
}

const REPLY = 0x4;
const NEED_REPLY = 0x8;

export function diagramRows(records: readonly TraceRecord[]): DiagramRow[] {
  const t0 = records[0]?.t0 ?? records[0]?.t ?? 0n;
  return records.map((r) => {
    const ms = Number(r.t - t0) / 1e6;
    if (r.kind === 'ring') {
      const c = chainDetail(r);
      const detail = c ? `${c.dir} head=${c.head} descs=${c.descs} len=${c.len}` : r.detail === undefined ? '' : formatPayload('', r.detail);
      return { ms, arrow: 'note', label: `ring ${r.queue} ${r.event}`, detail, backendChannel: false, ...(r.endpoint ? { endpoint: r.endpoint } : {}) };
    }
    const reply = (r.flags & REPLY) !== 0;
    const label = `${r.channel === 'backend' ? 'BACKEND_' : ''}${r.name}${reply ? ' (reply)' : ''}${r.flags & NEED_REPLY ? ' [need_reply]' : ''}`;
    const payload = formatPayload(r.name, r.payload, reply);
    const fds = r.fdCount ? ` fds=${r.fdCount}${r.fdKinds?.length ? `(${r.fdKinds.join(',')})` : ''}` : '';
    return {
      ms,
      arrow: r.dir === 'rx' ? 'right' : 'left',
      label,
      detail: `${payload}${fds}`.trim(),
      backendChannel: r.channel === 'backend',
      ...(r.endpoint ? { endpoint: r.endpoint } : {}),
      ...(r.error ? { error: r.error } : {}),
    };
  });
}

const WIDTH = 44;

/**
 * Text diagram:
 *        +0.000ms  frontend ─── GET_FEATURES ─────────────────▶ backend
 *        +0.110ms  frontend ◀── GET_FEATURES (reply) ───────── backend  0x1... <...>
 */
export function textDiagram(records: readonly TraceRecord[]): string {
  const lines = [`${' '.repeat(12)}  frontend ${' '.repeat(WIDTH)} backend`];
  for (const row of diagramRows(records)) {
    const time = `+${row.ms.toFixed(3)}ms`.padStart(12);
    let label = row.label.length > WIDTH - 6 ? row.label.slice(0, WIDTH - 7) + '…' : row.label;
    if (row.backendChannel) label = `⇢ ${label}`;
    let mid: string;
    if (row.arrow === 'right') mid = `── ${label} ${'─'.repeat(Math.max(1, WIDTH - label.length - 5))}▶`;
    else if (row.arrow === 'left') mid = `◀── ${label} ${'─'.repeat(Math.max(1, WIDTH - label.length - 5))}`;
    else mid = `${' '.repeat(WIDTH - label.length - 2)}[${label}]`;
    const tail = [row.detail, row.error ? `!! ${row.error}` : ''].filter(Boolean).join('  ');
    lines.push(`${time}  frontend ${mid} backend${tail ? `  ${tail}` : ''}`);
  }
  return lines.join('\n') + '\n';
}

function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

/** Self-contained HTML: a three-column grid (frontend lifeline | arrow with label | backend lifeline). */
export function htmlDiagram(records: readonly TraceRecord[], title = 'vhost-user trace'): string {
  const rows = diagramRows(records)
    .map((r) => {
      const cls = [r.arrow, r.backendChannel ? 'bch' : '', r.error ? 'err' : ''].filter(Boolean).join(' ');
      const arrow = r.arrow === 'right' ? '<span class="line"></span><span class="head">▶</span>' : r.arrow === 'left' ? '<span class="head">◀</span><span class="line"></span>' : '';
      const detail = [r.detail, r.error ? `!! ${r.error}` : ''].filter(Boolean).map(esc).join('<br>');
      return `<tr class="${cls}"><td class="t">+${r.ms.toFixed(3)} ms</td><td class="fe"></td><td class="msg"><div class="label">${esc(r.label)}</div><div class="arrow">${arrow}</div><div class="detail">${detail}</div></td><td class="be"></td><td class="ep">${esc(r.endpoint ?? '')}</td></tr>`;
    })
    .join('\n');
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>${esc(title)}</title>
<style>
body{font:13px/1.3 ui-monospace,Menlo,Consolas,monospace;margin:1em;color:#222}
table{border-collapse:collapse}
th{position:sticky;top:0;background:#fff;padding:.3em}
td{padding:.15em .4em;vertical-align:middle}
td.t{color:#888;text-align:right;white-space:nowrap}
td.fe,td.be{width:6px;background:#9ab;padding:0}
td.msg{width:46em}
td.ep{color:#999}
.label{font-weight:600}
.arrow{display:flex;align-items:center;color:#357}
.arrow .line{flex:1;border-top:2px solid #357}
tr.left .arrow{color:#753}
tr.left .arrow .line{border-top-color:#753}
tr.left .label{text-align:right}
tr.bch .arrow .line{border-top-style:dashed}
tr.note .label{text-align:right;color:#696;font-weight:400}
tr.note .detail{text-align:right}
.detail{color:#555;word-break:break-all}
tr.err .detail{color:#b00}
</style></head><body>
<h1>${esc(title)}</h1>
<p>Left: frontend. Right: backend. Solid arrows: front-end channel; dashed: back-end channel; right-aligned grey notes: ring events.</p>
<table><thead><tr><th>time</th><th>frontend</th><th></th><th>backend</th><th>endpoint</th></tr></thead><tbody>
${rows}
</tbody></table></body></html>
`;
}
