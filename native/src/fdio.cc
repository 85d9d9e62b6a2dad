// Plain fd I/O for tap devices, pipes and the like. Non-blocking: EAGAIN is returned as null so the TS
// layer can wait for readiness on a Poller. EINTR is retried here (it is never interesting to callers).

#include <limits.h>
#include <sys/uio.h>
#include <unistd.h>

#include <vector>

#include "addon.h"
#include "sys_error.h"

namespace vhost {
namespace {

constexpr int64_t kMaxLen = INT64_C(1) << 53;

Napi::Value Result(Napi::Env env, ssize_t n, const char* syscall) {
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return env.Null();
    ThrowSysError(env, errno, syscall);
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

Napi::Value Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  int64_t offset = ArgInt(info, 2, "offset", 0, kMaxLen);
  int64_t byteLen = ArgInt(info, 3, "byteLen", 0, kMaxLen);
  uint8_t* p = ArgView(info, 1, "buf", offset, byteLen);
  ssize_t n;
  do n = read(fd, p, static_cast<size_t>(byteLen));
  while (n < 0 && errno == EINTR);
  return Result(env, n, "read");
}

Napi::Value Write(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  int64_t offset = ArgInt(info, 2, "offset", 0, kMaxLen);
  int64_t byteLen = ArgInt(info, 3, "byteLen", 0, kMaxLen);
  uint8_t* p = ArgView(info, 1, "buf", offset, byteLen);
  ssize_t n;
  do n = write(fd, p, static_cast<size_t>(byteLen));
  while (n < 0 && errno == EINTR);
  return Result(env, n, "write");
}

// Parallel arrays (views, offsets, lens) -> iovec[]. Limited to IOV_MAX entries (the kernel's UIO_MAXIOV).
std::vector<iovec> Iovecs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[1].IsArray()) ThrowArgType(env, "bufs");
  if (!info[2].IsArray()) ThrowArgType(env, "offsets");
  if (!info[3].IsArray()) ThrowArgType(env, "lens");
  Napi::Array bufs = info[1].As<Napi::Array>();
  Napi::Array offs = info[2].As<Napi::Array>();
  Napi::Array lens = info[3].As<Napi::Array>();
  uint32_t n = bufs.Length();
  if (offs.Length() != n || lens.Length() != n) ThrowRange(env, "offsets/lens length");
  if (n > IOV_MAX) ThrowRange(env, "bufs.length");
  std::vector<iovec> iov(n);
  for (uint32_t j = 0; j < n; j++) {
    Napi::Value o = offs.Get(j), l = lens.Get(j);
    if (!o.IsNumber()) ThrowArgType(env, "offsets[]");
    if (!l.IsNumber()) ThrowArgType(env, "lens[]");
    double od = o.As<Napi::Number>().DoubleValue(), ld = l.As<Napi::Number>().DoubleValue();
    if (std::trunc(od) != od || std::trunc(ld) != ld || od < 0 || ld < 0 || od > kMaxLen || ld > kMaxLen) {
      ThrowRange(env, "offsets[]/lens[]");
    }
    int64_t off = static_cast<int64_t>(od), len = static_cast<int64_t>(ld);
    iov[j].iov_base = ViewWindow(env, bufs.Get(j), "bufs[]", off, len);
    iov[j].iov_len = static_cast<size_t>(len);
  }
  return iov;
}

Napi::Value Readv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  std::vector<iovec> iov = Iovecs(info);
  ssize_t n;
  do n = readv(fd, iov.data(), static_cast<int>(iov.size()));
  while (n < 0 && errno == EINTR);
  return Result(env, n, "readv");
}

Napi::Value Writev(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  std::vector<iovec> iov = Iovecs(info);
  ssize_t n;
  do n = writev(fd, iov.data(), static_cast<int>(iov.size()));
  while (n < 0 && errno == EINTR);
  return Result(env, n, "writev");
}

}  // namespace

void InitFdio(Napi::Env env, Napi::Object exports) {
  exports.Set("read", Napi::Function::New(env, Read, "read"));
  exports.Set("write", Napi::Function::New(env, Write, "write"));
  exports.Set("readv", Napi::Function::New(env, Readv, "readv"));
  exports.Set("writev", Napi::Function::New(env, Writev, "writev"));
}

}  // namespace vhost
