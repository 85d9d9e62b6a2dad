/** Process introspection for resource-ownership tests. */
import { readdirSync, readlinkSync } from 'node:fs';

/** Open fds of this process whose target matches (e.g. 'eventfd', 'memfd:guest'). */
export function countFds(match: string): number {
  return readdirSync('/proc/self/fd').filter((f) => {
    try {
      return readlinkSync(`/proc/self/fd/${f}`).includes(match);
    } catch {
      return false; // the fd readdir itself used, already closed
    }
  }).length;
}
