#!/usr/bin/env node
// Entry point: the project runs its TypeScript through tsx's loader (no separate build step).
import { register } from 'tsx/esm/api';
register();
await import('../backend/cli.ts');
