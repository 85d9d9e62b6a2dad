/**
 * Negative checks ("nothing more happens") wait this long before looking. Long enough to mean it:
 * 500 ms is hundreds of the backend's NOFD poll periods (1 ms), 250 busy-poll windows (2 ms), and many
 * event-loop turns of a loaded 2-core machine (a 30-50 ms wait was shorter than one scheduling
 * hiccup there, so a wrong event arriving late passed unseen).
 */
export const QUIET_MS = 500;

export function quiet(ms = QUIET_MS): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
