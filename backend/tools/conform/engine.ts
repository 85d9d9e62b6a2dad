/**
 * The conformance engine: observes a session through the session's `trace` option (every decoded
 * request and reply, both channels, as TraceMessageRecords) plus read-only ring samples taken on a
 * timer between event-loop turns, keeps its own model of each connection (model.ts), runs the rule
 * table (rules.ts) and aggregates one outcome per rule over the whole run (all connections).
 *
 * It never changes what the backend does: the trace callback only reads, the sampler only reads
 * guest memory through the session's memory table (ring-sample.ts). Probes (probes.ts) are the only
 * active part, and only use the back-end channel the frontend itself negotiated.
 */
import createDebug from 'debug';
import { messageDef, type TraceMessageRecord } from '../../../protocol/index.ts';
import type { Session } from '../../core/session.ts';
import type { VhostUserEndpoint } from '../../core/server.ts';
import { SessionModel } from './model.ts';
import { RULES, type Check, type MsgEvent, type Rule } from './rules.ts';
import { sampleRing, type RingSample } from './ring-sample.ts';

const log = createDebug('vhost:conform');

export type Outcome = 'pass' | 'fail' | 'divergence' | 'not-applicable';

export interface RuleResult {
  rule: Rule;
  outcome: Outcome;
  /** Observations where the rule applied and held. */
  passes: number;
  /** Violations (first MAX_DETAILS kept). */
  violations: string[];
  violationCount: number;
  /** DIVERGENCE rules: how often each reading was observed, and examples. */
  readings: Record<string, number>;
  details: string[];
}

export interface EngineOptions {
  /** Rings the device exposes (2 x queue pairs for net): ring indexes at or above are out of range. */
  deviceRings: number;
  rules?: readonly Rule[];
  /** Ring sampling period (default 20 ms; 0 = only on demand via sampleNow()). */
  sampleMs?: number;
  /** A back-end request with need_reply unanswered for this long is a VU-BCH-002 violation. Default 5000. */
  backendReplyTimeoutMs?: number;
}

const MAX_DETAILS = 20;
const POSTCOPY_ACK = /^(postcopy memory ack|frontend reported postcopy failure|userfaultfd registration failed)/;

/** RING_REQUESTS of rules.ts, for the model's highest ring index. */
function ringIndexOf(ev: MsgEvent): number | null {
  const p = ev.payload as { index?: unknown } | null;
  return ev.def && p && typeof p === 'object' && !(p instanceof Uint8Array) && typeof p.index === 'number' ? p.index : null;
}

export function toEvent(rec: TraceMessageRecord): MsgEvent {
  const error = rec.error ?? null;
  return {
    rec,
    def: messageDef(rec.channel, rec.id),
    payload: rec.payload,
    needReply: (rec.flags & 0x8) !== 0,
    replyFlag: (rec.flags & 0x4) !== 0,
    error,
    errorCode: error ? (/^([A-Z][A-Z0-9_]+):/.exec(error)?.[1] ?? null) : null,
    payloadCode: error ? (/\[([A-Z][A-Z0-9_]+)\]/.exec(error)?.[1] ?? null) : null,
  };
}

interface Outstanding {
  id: number;
  name: string;
  at: number;
}

export class ConformEngine {
  readonly rules: readonly Rule[];
  private readonly results = new Map<string, RuleResult>();
  private session: Session | null = null;
  model: SessionModel | null = null;
  /** Connections seen so far. */
  sessions = 0;
  /** Every model, in connection order (the reconnect probe and the report read them). */
  readonly models: SessionModel[] = [];
  private lastRequest: MsgEvent | null = null;
  private readonly prevSamples = new Map<number, RingSample>();
  private readonly outstanding: Outstanding[] = [];
  private timer: NodeJS.Timeout | null = null;
  /** Front-end IOTLB_MSG UPDATEs seen (for the IOTLB probe): iova, size, time. */
  readonly iotlbUpdates: { iova: bigint; size: bigint; at: number }[] = [];
  private readonly listeners = new Set<(ev: MsgEvent) => void>();

  constructor(private readonly opts: EngineOptions) {
    this.rules = opts.rules ?? RULES;
    for (const rule of this.rules) {
      this.results.set(rule.id, { rule, outcome: 'not-applicable', passes: 0, violations: [], violationCount: 0, readings: {}, details: [] });
    }
    const ms = opts.sampleMs ?? 20;
    if (ms > 0) {
      this.timer = setInterval(() => this.tick(), ms);
      this.timer.unref();
    }
  }

  /** The `trace` callback to give the session (EndpointOptions.trace / SessionOptions.trace). */
  readonly trace = (rec: TraceMessageRecord): void => {
    try {
      this.onRecord(rec);
    } catch (e) {
      // A bug in a rule must never disturb the session that called us.
      log('rule evaluation failed: %O', e);
    }
  };

  /** Follows an endpoint's sessions (call before ep.start()). */
  attach(ep: VhostUserEndpoint): void {
    ep.on('session', (s) => this.bind(s));
    ep.on('disconnect', (reason) => this.unbind(reason));
  }

  /** A new connection: a fresh model. */
  bind(session: Session): void {
    this.session = session;
    this.sessions++;
    this.model = new SessionModel(this.sessions, this.opts.deviceRings);
    this.models.push(this.model);
    this.prevSamples.clear();
    this.outstanding.length = 0;
    this.lastRequest = null;
  }

  /** The connection ended. */
  unbind(reason: string): void {
    if (!this.model) return;
    for (const rule of this.rules) if (rule.onClose) rule.onClose(this.check(rule), reason);
    this.session = null;
    this.model = null;
    this.outstanding.length = 0;
  }

  get currentSession(): Session | null {
    return this.session;
  }

  /** Called with every front-end request event (probes wait on these). */
  onMessage(cb: (ev: MsgEvent) => void): () => void {
    this.listeners.add(cb);
    return () => this.listeners.delete(cb);
  }

  private onRecord(rec: TraceMessageRecord): void {
    const model = this.model;
    if (!model) return;
    const ev = toEvent(rec);
    if (rec.channel === 'backend') return this.onBackend(ev);
    if (rec.dir === 'rx') {
      if (ev.error && POSTCOPY_ACK.test(ev.error)) return;
      for (const rule of this.rules) if (rule.onRequest) rule.onRequest(this.check(rule), ev);
      const idx = ringIndexOf(ev);
      if (idx !== null && idx > model.maxRingIndex && !ev.errorCode?.startsWith('PROTO_')) model.maxRingIndex = idx;
      if (!ev.error) model.applyRequest(rec.id, rec.payload);
      model.requests.push(rec.name);
      if (!ev.error && rec.name === 'IOTLB_MSG') {
        const p = rec.payload as { iova: bigint; size: bigint; type: number };
        if (p.type === 2) this.iotlbUpdates.push({ iova: p.iova, size: p.size, at: Date.now() });
      }
      this.lastRequest = ev;
      for (const l of this.listeners) l(ev);
    } else {
      const req = this.lastRequest && this.lastRequest.rec.id === rec.id ? this.lastRequest : null;
      if (!ev.error) model.applyReply(rec.id, rec.payload);
      for (const rule of this.rules) if (rule.onReply) rule.onReply(this.check(rule), ev, req);
    }
  }

  private onBackend(ev: MsgEvent): void {
    if (ev.rec.dir === 'tx') {
      if (ev.needReply) this.outstanding.push({ id: ev.rec.id, name: ev.rec.name, at: Date.now() });
      return;
    }
    for (const rule of this.rules) if (rule.onBackendRx) rule.onBackendRx(this.check(rule), ev);
    if (!ev.replyFlag || ev.error) return;
    const i = this.outstanding.findIndex((o) => o.id === ev.rec.id);
    if (i >= 0) {
      this.outstanding.splice(i, 1);
      this.record('VU-BCH-002', 'pass');
    }
  }

  private tick(): void {
    try {
      this.sampleNow();
    } catch (e) {
      log('ring sampling failed: %O', e);
    }
  }

  /** Samples every started ring now and runs the ring rules; also expires back-end requests. */
  sampleNow(): void {
    const model = this.model;
    const session = this.session;
    if (!model || !session) return;
    const limit = this.opts.backendReplyTimeoutMs ?? 5000;
    const now = Date.now();
    while (this.outstanding.length > 0 && now - this.outstanding[0]!.at > limit) {
      const o = this.outstanding.shift()!;
      this.record('VU-BCH-002', 'fail', `BACKEND_${o.name} with need_reply not answered within ${limit} ms`);
    }
    for (const r of model.rings.values()) {
      const s = sampleRing(session, model, r);
      if (!s) continue;
      const prev = this.prevSamples.get(r.index);
      const p = prev && prev.generation === s.generation ? prev : null;
      for (const rule of this.rules) if (rule.onRing) rule.onRing(this.check(rule), s, p);
      this.prevSamples.set(r.index, s);
    }
  }

  private check(rule: Rule): Check {
    const model = this.model!;
    return {
      model,
      pass: () => this.record(rule.id, 'pass'),
      fail: (detail) => this.record(rule.id, 'fail', detail),
      diverge: (reading, detail) => this.record(rule.id, 'divergence', detail, reading),
    };
  }

  /** Records an observation for a rule (rules through Check; probes directly). */
  record(id: string, kind: 'pass' | 'fail' | 'divergence', detail?: string, reading?: string): void {
    const r = this.results.get(id);
    if (!r) return;
    if (kind === 'pass') r.passes++;
    else if (kind === 'fail') {
      r.violationCount++;
      if (r.violations.length < MAX_DETAILS) r.violations.push(this.sessions > 1 ? `[connection ${this.sessions}] ${detail}` : detail!);
      log('%s violated: %s', id, detail);
    } else {
      r.readings[reading!] = (r.readings[reading!] ?? 0) + 1;
      if (r.details.length < MAX_DETAILS && !r.details.includes(detail!)) r.details.push(detail!);
    }
  }

  /** Per-rule results with outcomes. */
  resultList(): RuleResult[] {
    return [...this.results.values()].map((r) => ({
      ...r,
      outcome:
        r.violationCount > 0 ? 'fail' : Object.keys(r.readings).length > 0 ? 'divergence' : r.passes > 0 ? 'pass' : 'not-applicable',
    }));
  }

  result(id: string): RuleResult | undefined {
    return this.resultList().find((r) => r.rule.id === id);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}
