/**
 * Loader of the native syscall addon (native/src/*.cc, built by `npm run build:native`).
 *
 * This is the one place where the untyped `.node` exports are cast to the `NativeBinding` contract
 * (native/types.ts). `loadNative(path)` exists for injection: tests and tools can load a different build,
 * and code that takes a `NativeBinding` parameter can be given a fake instead (better-sqlite3's
 * `nativeBinding` option is the model).
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { NativeBinding } from './types.ts';

export * from './types.ts';

/** Where `npm run build:native` puts the addon. */
export const DEFAULT_NATIVE_PATH = fileURLToPath(new URL('./build/Release/vhost_native.node', import.meta.url));

/** Every member of the contract, checked at load time so a stale build fails here, not at first use. */
const MEMBERS = [
  'unixListen', 'unixAccept', 'unixConnect', 'socketpair', 'recvmsg', 'sendmsg', 'close', 'dup',
  'read', 'write', 'readv', 'writev',
  'fstat', 'fdKind', 'mmap', 'munmap', 'memfdCreate', 'ftruncate', 'mmapAddress', 'madvise', 'mmapAlias',
  'mincore', 'prefault',
  'addSeals', 'getSeals', 'guardMapping', 'unguardMapping', 'onGuestMemoryFault', 'takeGuestMemoryFaults',
  'eventfd', 'eventfdRead', 'eventfdWrite',
  'tapOpen', 'tapSetOffload', 'linkSetUp',
  'Poller',
  'userfaultfd', 'uffdApi', 'uffdRegister', 'uffdUnregister', 'uffdCopy', 'uffdZeropage', 'uffdContinue',
  'uffdWriteProtect', 'uffdWake', 'uffdRead',
  'vfioOpenContainer', 'vfioOpenGroup', 'vfioGetApiVersion', 'vfioCheckExtension', 'vfioGroupGetStatus',
  'vfioGroupSetContainer', 'vfioGroupUnsetContainer', 'vfioSetIommu', 'vfioGroupGetDeviceFd', 'vfioDeviceGetInfo',
  'vfioDeviceGetRegionInfo', 'vfioDeviceGetIrqInfo', 'vfioDeviceSetIrqs', 'vfioDeviceReset', 'vfioMapDma',
  'vfioUnmapDma', 'pread', 'pwrite',
] as const satisfies readonly (keyof NativeBinding)[];

export class NativeLoadError extends Error {
  readonly code: 'NATIVE_NOT_BUILT' | 'NATIVE_LOAD_FAILED' | 'NATIVE_MISMATCH';
  readonly path: string;
  constructor(code: NativeLoadError['code'], path: string, message: string, options?: { cause: unknown }) {
    super(message, options);
    this.name = 'NativeLoadError';
    this.code = code;
    this.path = path;
  }
}

const require = createRequire(import.meta.url);

/** Load (and sanity-check) the addon at `path`; throws a `NativeLoadError` with a stable `code`. */
export function loadNative(path: string = DEFAULT_NATIVE_PATH): NativeBinding {
  if (!existsSync(path)) {
    throw new NativeLoadError('NATIVE_NOT_BUILT', path, `native addon not found at ${path}: run \`npm run build:native\``);
  }
  let mod: Record<string, unknown>;
  try {
    mod = require(path) as Record<string, unknown>;
  } catch (cause) {
    throw new NativeLoadError('NATIVE_LOAD_FAILED', path,
      `cannot load native addon ${path} (rebuild with \`npm run build:native\`): ${String(cause)}`, { cause });
  }
  const missing = MEMBERS.filter((m) => typeof mod[m] !== 'function');
  if (missing.length > 0) {
    throw new NativeLoadError('NATIVE_MISMATCH', path,
      `native addon ${path} lacks ${missing.join(', ')}: rebuild with \`npm run build:native\``);
  }
  return mod as unknown as NativeBinding;
}

/** The addon, loaded when this module is first imported. */
export const native: NativeBinding = loadNative();
