// eventfd(2): kick and call notifiers (SET_VRING_KICK / SET_VRING_CALL in vhost-user.rst carry eventfds).
// Opened EFD_NONBLOCK so an empty counter reads as null rather than blocking.

#include <sys/eventfd.h>
#include <unistd.h>

#include "addon.h"
#include "sys_error.h"

namespace vhost {
namespace {

Napi::Value Eventfd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  unsigned int init = static_cast<unsigned int>(ArgInt(info, 0, "initval", 0, UINT32_MAX));
  int fd = eventfd(init, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) ThrowSysError(env, errno, "eventfd");
  return Napi::Number::New(env, fd);
}

Napi::Value EventfdRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  uint64_t v;
  ssize_t n;
  do n = read(fd, &v, sizeof v);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return env.Null();
    ThrowSysError(env, errno, "read");
  }
  if (n != sizeof v) ThrowSysError(env, EIO, "read", nullptr, "short eventfd read");
  return Napi::BigInt::New(env, v);
}

Napi::Value EventfdWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  if (info.Length() < 2 || !info[1].IsBigInt()) ThrowArgType(env, "value");
  bool lossless = false;
  uint64_t v = info[1].As<Napi::BigInt>().Uint64Value(&lossless);
  // The kernel refuses 2^64-1 (EINVAL); negative or > 64-bit values are caller bugs.
  if (!lossless) ThrowRange(env, "value");
  ssize_t n;
  do n = write(fd, &v, sizeof v);
  while (n < 0 && errno == EINTR);
  // EAGAIN here means the counter would overflow: report it (the contract has no "try later" for writes).
  if (n < 0) ThrowSysError(env, errno, "write");
  return env.Undefined();
}

}  // namespace

void InitEventfd(Napi::Env env, Napi::Object exports) {
  exports.Set("eventfd", Napi::Function::New(env, Eventfd, "eventfd"));
  exports.Set("eventfdRead", Napi::Function::New(env, EventfdRead, "eventfdRead"));
  exports.Set("eventfdWrite", Napi::Function::New(env, EventfdWrite, "eventfdWrite"));
}

}  // namespace vhost
