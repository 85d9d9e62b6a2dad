// The one place that turns a failed syscall into a JS exception. The error is shaped like Node's own
// system errors (lib/internal/errors.js UVException): `code` is the errno name ('EAGAIN'), `errno` is
// negative (-11), `syscall` names the call ('recvmsg'), `path` is set when a filesystem path was involved.
// Callers branch on `code`, never on the message.
#pragma once

#include <napi.h>
#include <uv.h>

#include <cerrno>
#include <string>

namespace vhost {

// Errno name via libuv (on Unix UV_Exxx == -Exxx), the same table Node uses for util.getSystemErrorName.
// The _r variants write into our buffer, so unknown codes do not leak libuv's malloc'd fallback string.
inline std::string ErrnoName(int uvErr) {
  char buf[64];
  uv_err_name_r(uvErr, buf, sizeof buf);
  std::string name(buf);
  if (name.rfind("Unknown", 0) == 0) return "UNKNOWN";
  return name;
}

// Builds (does not throw) the error object, so the Poller can pass it to a callback.
// `uvErr` is a negative errno / libuv error code.
inline Napi::Error MakeSysError(Napi::Env env, int uvErr, const char* syscall, const std::string* path = nullptr,
                                const std::string& detail = std::string()) {
  char desc[128];
  uv_strerror_r(uvErr, desc, sizeof desc);
  std::string code = ErrnoName(uvErr);
  // Message format follows Node's fs errors: "ENOENT: no such file or directory, connect '/tmp/x'".
  std::string msg = code + ": " + desc + ", " + syscall;
  if (path != nullptr) msg += " '" + *path + "'";
  if (!detail.empty()) msg += " (" + detail + ")";
  Napi::Error err = Napi::Error::New(env, msg);
  Napi::Object o = err.Value();
  o.Set("code", Napi::String::New(env, code));
  o.Set("errno", Napi::Number::New(env, uvErr));
  o.Set("syscall", Napi::String::New(env, syscall));
  if (path != nullptr) o.Set("path", Napi::String::New(env, *path));
  return err;
}

// Throw for the current `errno` (or an explicit positive errno value).
[[noreturn]] inline void ThrowSysError(Napi::Env env, int posErrno, const char* syscall,
                                       const std::string* path = nullptr, const std::string& detail = std::string()) {
  throw MakeSysError(env, -posErrno, syscall, path, detail);
}

}  // namespace vhost
