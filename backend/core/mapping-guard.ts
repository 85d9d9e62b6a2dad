/**
 * Mapping a frontend's fd safely: a file that shrinks after we mapped it (ftruncate) would SIGBUS the
 * whole process on the next access. Every mapping of a frontend's fd (memory regions, memory-table.ts;
 * the dirty log, migration.ts; the inflight buffer, inflight-buffer.ts) is
 *   - checked against what the fd can back (`fdBackedBytes`);
 *   - sealed against shrinking first where the file allows it (`sealAgainstShrink`: F_SEAL_SHRINK; QEMU's
 *     memory-backend-memfd and its dirty log come sealed already), before its size is checked;
 *   - and guarded (`MappingGuards`, the native SIGBUS guard) for what cannot be sealed: a fault in it
 *     maps zero pages instead of killing us, and the owner's `onFault` hears of it once, with a reason:
 *     the session then ends as broken (session.ts `fatal`); other sessions go on.
 * libwayland-server's wl_shm SIGBUS guard is the known pattern for the last step.
 */
import createDebug from 'debug';
import { F_SEAL, type NativeBinding, type Fd, type SysError } from '../../native/types.ts';

const log = createDebug('vhost:mem');
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;

/**
 * How many bytes `fd` can back, or null when fstat cannot tell (not a regular file: the kernel
 * checks such mappings itself). Mapping past this would SIGBUS us on the first access, so every
 * mapping of a frontend's fd (memory regions, the dirty log) is checked against it first.
 */
export function fdBackedBytes(sys: Pick<NativeBinding, 'fstat'>, fd: Fd): number | null {
  const st = sys.fstat(fd);
  return (st.mode & S_IFMT) === S_IFREG ? st.size : null;
}
/** The native calls that seal and guard mappings; optional: a binding may lack them (fakes, older builds). */
export type GuardNative = Partial<
  Pick<NativeBinding, 'addSeals' | 'getSeals' | 'guardMapping' | 'unguardMapping' | 'onGuestMemoryFault'>
>;

/** What sealing a frontend's fd against shrinking came to. */
export type SealOutcome =
  /** We added F_SEAL_SHRINK. */
  | 'sealed'
  /** It was sealed so already (QEMU's memory-backend-memfd with seal=on, the default; QEMU's dirty log). */
  | 'already'
  /** EPERM: born without MFD_ALLOW_SEALING, or sealed with F_SEAL_SEAL: only the SIGBUS guard covers it. */
  | 'refused'
  /** EINVAL: a file that cannot be sealed (not a memfd or shmem file): only the SIGBUS guard covers it. */
  | 'unsealable'
  /** The binding has no seals (or a call failed otherwise, logged). */
  | 'unsupported';

/**
 * F_SEAL_SHRINK on a frontend's fd, so that it can no longer shrink the file under our mapping. Only SHRINK:
 * never GROW (DPDK grows its memfd segments as it allocates), never WRITE (the frontend writes its own
 * memory), never SEAL (the frontend may still add seals of its own). Seals cannot be removed and belong
 * to the file: the frontend can no longer shrink it either, which QEMU never does to guest RAM (memory
 * is given back by punching holes, which F_SEAL_SHRINK allows).
 */
export function sealAgainstShrink(sys: GuardNative, fd: Fd): SealOutcome {
  if (!sys.addSeals || !sys.getSeals) return 'unsupported';
  try {
    if ((sys.getSeals(fd) & F_SEAL.shrink) !== 0) return 'already';
    sys.addSeals(fd, F_SEAL.shrink);
    return 'sealed';
  } catch (e) {
    const code = (e as SysError).code;
    if (code === 'EPERM') return 'refused';
    if (code === 'EINVAL') return 'unsealable';
    log('fd %d: sealing failed: %s', fd, (e as Error).message);
    return 'unsupported';
  }
}
const isSealed = (o: SealOutcome): boolean => o === 'sealed' || o === 'already';

/**
 * Guard id -> what to do when that mapping is poisoned, per binding (keyed by its onGuestMemoryFault
 * function, which copies of a binding share). The native layer has one fault callback per process and
 * this module sets it: nothing else in the backend may call onGuestMemoryFault.
 */
const routes = new WeakMap<object, Map<number, () => void>>();
/** Bindings whose onGuestMemoryFault failed (a fake's ENOSYS): no guard, asked once. */
const noGuard = new WeakSet<object>();

function routeTable(sys: GuardNative): Map<number, () => void> | null {
  const on = sys.onGuestMemoryFault;
  if (!on || noGuard.has(on)) return null;
  const known = routes.get(on);
  if (known) return known;
  const t = new Map<number, () => void>();
  try {
    on.call(sys, (ids) => {
      for (const id of ids) {
        const poisoned = t.get(id);
        if (!poisoned) {
          log('guest memory fault in guarded mapping %d, which has no owner any more', id);
          continue;
        }
        t.delete(id); // reported once
        try {
          poisoned();
        } catch (e) {
          log('guest memory fault in mapping %d: its owner failed: %O', id, e);
        }
      }
    });
  } catch (e) {
    log('no SIGBUS guard: %s', (e as Error).message);
    noGuard.add(on);
    return null;
  }
  routes.set(on, t);
  return t;
}

/**
 * The guarded mappings of one owner (a memory table, a dirty log, an inflight buffer) and the one report
 * their owner gets when any of them is poisoned (a SIGBUS in it: its file was shrunk under us). The
 * report waits for `onFault` when none is set yet (a mapping can fault before its owner is handed to a
 * session).
 */
export class MappingGuards {
  private sink: ((reason: string) => void) | null = null;
  private pending: string | null = null;
  private faulted = false;
  private readonly ids = new Set<number>();

  constructor(private readonly sys: GuardNative) {}

  /** Told once, with a reason, when one of these mappings lost its backing. */
  set onFault(sink: ((reason: string) => void) | null) {
    this.sink = sink;
    const p = this.pending;
    if (sink !== null && p !== null) {
      this.pending = null;
      queueMicrotask(() => sink(p));
    }
  }

  /**
   * Guards `ab` (a mapping of a frontend's fd, named by `what` in the report). Returns the guard id, or null
   * when the binding has no guard. Throws (the native SysError) when the guard cannot take it (ENOSPC);
   * the caller decides whether a sealed mapping may go unguarded.
   */
  add(ab: ArrayBuffer, what: string): number | null {
    const s = this.sys;
    if (!s.guardMapping) return null;
    const table = routeTable(s);
    if (table === null) return null;
    const id = s.guardMapping(ab);
    this.ids.add(id);
    table.set(id, () => this.poisoned(what));
    return id;
  }

  /** Stops guarding (before the mapping is unmapped; munmap would unregister it too). */
  remove(id: number | null): void {
    if (id === null || !this.ids.delete(id)) return;
    const table = routeTable(this.sys);
    table?.delete(id);
    try {
      this.sys.unguardMapping?.(id);
    } catch (e) {
      log('unguard %d: %s', id, (e as Error).message);
    }
  }

  private poisoned(what: string): void {
    if (this.faulted) return;
    this.faulted = true;
    const reason = `${what} lost its memory (a SIGBUS in it: the frontend shrank the file under our mapping); zero pages were mapped over it`;
    log('%s', reason);
    if (this.sink !== null) this.sink(reason);
    else this.pending = reason;
  }
}

/**
 * Guards `ab` for `guards`: the guard id, or null when the binding has no guard or when the guard is full
 * but the fd is sealed against shrinking (it cannot SIGBUS then). A mapping that can neither be sealed nor
 * guarded throws: the caller refuses it.
 */
export function guardOrRefuse(guards: MappingGuards, ab: ArrayBuffer, what: string, seal: SealOutcome): number | null {
  try {
    return guards.add(ab, what);
  } catch (e) {
    if (isSealed(seal)) {
      log('%s: sealed, left unguarded: %s', what, (e as Error).message);
      return null;
    }
    throw e;
  }
}
