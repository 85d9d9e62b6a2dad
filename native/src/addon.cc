// Module entry: the thin syscall layer of vhost-user-ts. No protocol logic lives in C++; see native/types.ts
// for the contract and native/index.ts for the loader.

#include <napi.h>

#include "addon.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  vhost::InitUnixSocket(env, exports);
  vhost::InitFdio(env, exports);
  vhost::InitMmap(env, exports);
  vhost::InitEventfd(env, exports);
  vhost::InitTap(env, exports);
  vhost::InitPoller(env, exports);
  vhost::InitUffd(env, exports);
  vhost::InitVfio(env, exports);
  vhost::InitGuard(env, exports);
  vhost::InitPrefault(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(vhost_native, Init)
