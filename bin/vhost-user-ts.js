#!/usr/bin/env node
// Entry point: the project runs its TypeScript through tsx's loader (no separate build step).
import { setFlagsFromString } from 'node:v8';
import { register } from 'tsx/esm/api';

// Let TurboFan inline the whole per-frame path of the switch (pop, copy, push: a handful of small
// methods over the budget's defaults of 460 / 920 bytecodes). Measured with test/bench/switch-micro.ts:
// ≈ 12-15 % less CPU per frame (spec-notes/performance.md). Set before any of our code is compiled;
// VHOST_USER_TS_V8_DEFAULTS=1 leaves V8's defaults alone.
if (process.env.VHOST_USER_TS_V8_DEFAULTS !== '1') {
  setFlagsFromString('--max-inlined-bytecode-size=800');
  setFlagsFromString('--max-inlined-bytecode-size-cumulative=4000');
}
register();
await import('../backend/tools/cli.ts');
