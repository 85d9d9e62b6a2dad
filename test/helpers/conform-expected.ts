/**
 * Expected conformance results (test/expected/conform/*.json): the normalized report (rule id ->
 * outcome, divergences with the readings observed). A test compares a run's normalized report with
 * its file; `UPDATE_EXPECTED=1` rewrites the file instead (review the diff: it is a change in what the
 * frontend does, or in the rules).
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ExecutionContext } from 'ava';
import { normalizeReport, type ConformReport, type NormalizedReport } from '../../backend/tools/conform/report.ts';

export const EXPECTED_DIR = join(dirname(fileURLToPath(import.meta.url)), '../expected/conform');

export function readReport(path: string): ConformReport {
  return JSON.parse(readFileSync(path, 'utf8')) as ConformReport;
}

/** Compares the normalized report with test/expected/conform/<name>.json (or writes it with UPDATE_EXPECTED=1). */
export function compareExpected(t: ExecutionContext, name: string, report: ConformReport): NormalizedReport {
  const got = normalizeReport(report);
  const file = join(EXPECTED_DIR, `${name}.json`);
  if (process.env['UPDATE_EXPECTED'] === '1' || !existsSync(file)) {
    mkdirSync(EXPECTED_DIR, { recursive: true });
    writeFileSync(file, JSON.stringify(got, null, 2) + '\n');
    if (process.env['UPDATE_EXPECTED'] !== '1') t.fail(`${file} did not exist: written, review it and run again`);
    return got;
  }
  const want = JSON.parse(readFileSync(file, 'utf8')) as NormalizedReport;
  const diff = Object.keys({ ...want.rules, ...got.rules })
    .sort()
    .filter((id) => want.rules[id] !== got.rules[id])
    .map((id) => {
      const v = report.rules.find((r) => r.id === id);
      return `${id}: expected ${want.rules[id]}, got ${got.rules[id]}${v?.violations.length ? ` (${v.violations.slice(0, 3).join('; ')})` : ''}`;
    });
  t.deepEqual(diff, [], `rule outcomes differ from ${file}`);
  return got;
}
