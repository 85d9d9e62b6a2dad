// userfaultfd(2) for postcopy live migration (vhost-user.rst "Migration" / POSTCOPY_ADVISE: the back-end opens
// a userfaultfd, registers its guest-memory mappings and hands the fd to the front-end, which resolves the
// faults). Syscalls and ioctls only (Documentation/admin-guide/mm/userfaultfd.rst); no protocol logic.
//
// Ranges are named in one of two ways:
//   - an ArrayBuffer from mmap() plus offset/byteLen: checked here against the mapping's bounds, so a bad range
//     throws ERR_OUT_OF_RANGE and JS never needs a raw pointer (the back-end's own memory);
//   - an absolute address (bigint) plus offset/byteLen: an address in the address space of the process that
//     created the userfaultfd, which may be another process (the front-end role: QEMU reads the back-end's uffd
//     and wakes / fills at the back-end's addresses, learnt from mmapAddress() via the SET_MEM_TABLE reply).
//     Only the kernel can validate those; it refuses ranges that are not registered on this uffd.
// The kernel needs page-aligned, non-empty ranges for every UFFDIO_* ioctl; a misaligned one is refused here
// with EINVAL before any syscall, so the error does not depend on which check the kernel runs first.

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <string>

#include "addon.h"
#include "sys_error.h"

namespace vhost {
namespace {

constexpr int64_t kMaxLen = INT64_C(1) << 53;

uint64_t PageSize() { return static_cast<uint64_t>(sysconf(_SC_PAGESIZE)); }

uint64_t ArgU64(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (i >= info.Length() || !info[i].IsBigInt()) ThrowArgType(info.Env(), name);
  bool lossless = false;
  uint64_t v = info[i].As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) ThrowRange(info.Env(), name);
  return v;
}

// Optional boolean field of an optional options object.
bool OptBool(const Napi::CallbackInfo& info, size_t i, const char* key) {
  if (i >= info.Length() || info[i].IsUndefined()) return false;
  if (!info[i].IsObject()) ThrowArgType(info.Env(), "options");
  Napi::Value v = info[i].As<Napi::Object>().Get(key);
  if (v.IsUndefined()) return false;
  if (!v.IsBoolean()) ThrowArgType(info.Env(), std::string("options.") + key);
  return v.As<Napi::Boolean>().Value();
}

// Resolves [offset, offset+byteLen) of info[targetIdx] (a mapping's ArrayBuffer, or a bigint base address when
// allowAddress) to an absolute page-aligned range. `what` names the ioctl in errors.
uffdio_range ResolveRange(const Napi::CallbackInfo& info, size_t targetIdx, int64_t offset, int64_t byteLen,
                          bool allowAddress, const char* what) {
  Napi::Env env = info.Env();
  if (targetIdx >= info.Length()) ThrowArgType(env, "target");
  Napi::Value target = info[targetIdx];
  uint64_t start;
  if (allowAddress && target.IsBigInt()) {
    uint64_t base = ArgU64(info, targetIdx, "address");
    if (base + static_cast<uint64_t>(offset) < base) ThrowRange(env, "address + offset");
    start = base + static_cast<uint64_t>(offset);
    if (start + static_cast<uint64_t>(byteLen) < start) ThrowRange(env, "address + offset + byteLen");
  } else {
    MappingRef m = LookupMapping(env, target, allowAddress ? "target" : "ab", "ioctl");
    if (static_cast<uint64_t>(offset) + static_cast<uint64_t>(byteLen) > m.byteLen) ThrowRange(env, "offset + byteLen");
    start = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(m.user)) + static_cast<uint64_t>(offset);
  }
  const uint64_t page = PageSize();
  if (byteLen == 0 || (start & (page - 1)) != 0 || (static_cast<uint64_t>(byteLen) & (page - 1)) != 0) {
    ThrowSysError(env, EINVAL, "ioctl", nullptr, std::string(what) + ": range must be non-empty and page aligned");
  }
  return uffdio_range{start, static_cast<uint64_t>(byteLen)};
}

int Ioctl(int fd, unsigned long req, void* arg) {
  int r;
  do r = ioctl(fd, req, arg);
  while (r < 0 && errno == EINTR);
  return r;
}

// UFFDIO_COPY / ZEROPAGE / CONTINUE report progress in a signed field: bytes done, or -errno. A short result
// fails with EAGAIN (the mm was changing, or a later page failed): the bytes done are returned so the caller
// retries the rest. Any other failure placed nothing and throws.
Napi::Value Progress(Napi::Env env, int r, int64_t done, const char* what) {
  if (r < 0) {
    int e = errno;
    if (e != EAGAIN) ThrowSysError(env, e, "ioctl", nullptr, what);
    return Napi::Number::New(env, static_cast<double>(done > 0 ? done : 0));
  }
  return Napi::Number::New(env, static_cast<double>(done));
}

// userfaultfd(nonBlocking): O_CLOEXEC always. No UFFD_USER_MODE_ONLY: the back-end's own syscalls (readv from
// the tap into guest buffers) fault in kernel mode and must reach the handler too. If the syscall is refused
// (EPERM: vm.unprivileged_userfaultfd=0 without CAP_SYS_PTRACE, or a seccomp filter; ENOSYS), /dev/userfaultfd
// (Linux 6.1+, access governed by its file mode) is tried with USERFAULTFD_IOC_NEW before giving up.
Napi::Value Userfaultfd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bool nonBlocking = ArgBool(info, 0, "nonBlocking");
  int flags = O_CLOEXEC | (nonBlocking ? O_NONBLOCK : 0);
  int fd = static_cast<int>(syscall(SYS_userfaultfd, flags));
  if (fd >= 0) return Napi::Number::New(env, fd);
  int e = errno;
  if (e != EPERM && e != ENOSYS) ThrowSysError(env, e, "userfaultfd");
  int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev < 0) ThrowSysError(env, e, "userfaultfd", nullptr, "/dev/userfaultfd: " + ErrnoName(-errno));
  fd = Ioctl(dev, USERFAULTFD_IOC_NEW, reinterpret_cast<void*>(static_cast<uintptr_t>(flags)));
  int e2 = errno;
  close(dev);
  if (fd < 0) ThrowSysError(env, e2, "ioctl", nullptr, "USERFAULTFD_IOC_NEW");
  return Napi::Number::New(env, fd);
}

// UFFDIO_API handshake: must be the first ioctl on a new uffd and can be done once. `features` are the
// optional features to enable (UFFD_FEATURE_*; unsupported bits fail with EINVAL); the kernel answers with
// every feature it supports and the ioctls available on the fd itself.
Napi::Value UffdApi(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = ArgU64(info, 1, "features");
  if (Ioctl(fd, UFFDIO_API, &api) < 0) ThrowSysError(env, errno, "ioctl", nullptr, "UFFDIO_API");
  Napi::Object r = Napi::Object::New(env);
  r.Set("features", Napi::BigInt::New(env, static_cast<uint64_t>(api.features)));
  r.Set("ioctls", Napi::BigInt::New(env, static_cast<uint64_t>(api.ioctls)));
  return r;
}

Napi::Value UffdRegister(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  int64_t offset = ArgInt(info, 2, "offset", 0, kMaxLen);
  int64_t byteLen = ArgInt(info, 3, "byteLen", 0, kMaxLen);
  std::string modeName = ArgString(info, 4, "mode");
  uint64_t mode;
  if (modeName == "missing") {
    mode = UFFDIO_REGISTER_MODE_MISSING;
  } else if (modeName == "wp") {
    mode = UFFDIO_REGISTER_MODE_WP;
  } else if (modeName == "minor") {
    mode = UFFDIO_REGISTER_MODE_MINOR;
  } else {
    Napi::TypeError e = Napi::TypeError::New(env, "The argument 'mode' must be 'missing', 'wp' or 'minor'");
    e.Set("code", Napi::String::New(env, "ERR_INVALID_ARG_VALUE"));
    throw e;
  }
  uffdio_register reg{};
  reg.range = ResolveRange(info, 1, offset, byteLen, false, "UFFDIO_REGISTER");
  reg.mode = mode;
  if (Ioctl(fd, UFFDIO_REGISTER, &reg) < 0) ThrowSysError(env, errno, "ioctl", nullptr, "UFFDIO_REGISTER");
  return Napi::BigInt::New(env, static_cast<uint64_t>(reg.ioctls));
}

Napi::Value UffdUnregister(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  int64_t offset = ArgInt(info, 2, "offset", 0, kMaxLen);
  int64_t byteLen = ArgInt(info, 3, "byteLen", 0, kMaxLen);
  uffdio_range range = ResolveRange(info, 1, offset, byteLen, false, "UFFDIO_UNREGISTER");
  if (Ioctl(fd, UFFDIO_UNREGISTER, &range) < 0) ThrowSysError(env, errno, "ioctl", nullptr, "UFFDIO_UNREGISTER");
  return env.Undefined();
}

// uffdCopy(fd, target, offset, src, options?): places src (whole pages) at the range and wakes its waiters.
Napi::Value UffdCopy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  int64_t offset = ArgInt(info, 2, "offset", 0, kMaxLen);
  if (info.Length() < 4 || !info[3].IsTypedArray() || info[3].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    ThrowArgType(env, "src");
  }
  int64_t len = static_cast<int64_t>(info[3].As<Napi::Uint8Array>().ByteLength());
  uint8_t* src = ArgView(info, 3, "src", 0, len);
  uffdio_copy c{};
  uffdio_range range = ResolveRange(info, 1, offset, len, true, "UFFDIO_COPY");
  c.dst = range.start;
  c.len = range.len;
  c.src = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(src));
  c.mode = (OptBool(info, 4, "dontWake") ? UFFDIO_COPY_MODE_DONTWAKE : 0) |
           (OptBool(info, 4, "writeProtect") ? UFFDIO_COPY_MODE_WP : 0);
  int r = Ioctl(fd, UFFDIO_COPY, &c);
  return Progress(env, r, c.copy, "UFFDIO_COPY");
}

Napi::Value UffdZeropage(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  int64_t offset = ArgInt(info, 2, "offset", 0, kMaxLen);
  int64_t byteLen = ArgInt(info, 3, "byteLen", 0, kMaxLen);
  uffdio_zeropage z{};
  z.range = ResolveRange(info, 1, offset, byteLen, true, "UFFDIO_ZEROPAGE");
  z.mode = OptBool(info, 4, "dontWake") ? UFFDIO_ZEROPAGE_MODE_DONTWAKE : 0;
  int r = Ioctl(fd, UFFDIO_ZEROPAGE, &z);
  return Progress(env, r, z.zeropage, "UFFDIO_ZEROPAGE");
}

// Minor faults (register mode 'minor'): the page is already in the page cache; map it into the range.
Napi::Value UffdContinue(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  int64_t offset = ArgInt(info, 2, "offset", 0, kMaxLen);
  int64_t byteLen = ArgInt(info, 3, "byteLen", 0, kMaxLen);
  uffdio_continue c{};
  c.range = ResolveRange(info, 1, offset, byteLen, true, "UFFDIO_CONTINUE");
  c.mode = OptBool(info, 4, "dontWake") ? UFFDIO_CONTINUE_MODE_DONTWAKE : 0;
  int r = Ioctl(fd, UFFDIO_CONTINUE, &c);
  return Progress(env, r, c.mapped, "UFFDIO_CONTINUE");
}

// Register mode 'wp': protect (writes then fault) or unprotect (and wake the blocked writers) a range.
Napi::Value UffdWriteProtect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  int64_t offset = ArgInt(info, 2, "offset", 0, kMaxLen);
  int64_t byteLen = ArgInt(info, 3, "byteLen", 0, kMaxLen);
  bool protect = ArgBool(info, 4, "protect");
  uffdio_writeprotect w{};
  w.range = ResolveRange(info, 1, offset, byteLen, true, "UFFDIO_WRITEPROTECT");
  w.mode = (protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0) | (OptBool(info, 5, "dontWake") ? UFFDIO_WRITEPROTECT_MODE_DONTWAKE : 0);
  if (Ioctl(fd, UFFDIO_WRITEPROTECT, &w) < 0) ThrowSysError(env, errno, "ioctl", nullptr, "UFFDIO_WRITEPROTECT");
  return env.Undefined();
}

// Wakes threads blocked on faults in the range (after a dontWake fill, or after the page was placed some other
// way: QEMU fills its own mapping of shared guest RAM and then wakes the back-end's range).
Napi::Value UffdWake(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  int64_t offset = ArgInt(info, 2, "offset", 0, kMaxLen);
  int64_t byteLen = ArgInt(info, 3, "byteLen", 0, kMaxLen);
  uffdio_range range = ResolveRange(info, 1, offset, byteLen, true, "UFFDIO_WAKE");
  if (Ioctl(fd, UFFDIO_WAKE, &range) < 0) ThrowSysError(env, errno, "ioctl", nullptr, "UFFDIO_WAKE");
  return env.Undefined();
}

const char* EventName(uint8_t ev) {
  switch (ev) {
    case UFFD_EVENT_PAGEFAULT: return "pagefault";
    case UFFD_EVENT_FORK: return "fork";
    case UFFD_EVENT_REMAP: return "remap";
    case UFFD_EVENT_REMOVE: return "remove";
    case UFFD_EVENT_UNMAP: return "unmap";
    default: return nullptr;
  }
}

// One struct uffd_msg; null when none is queued (EAGAIN on a non-blocking uffd).
Napi::Value UffdRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  uffd_msg msg;
  ssize_t n;
  do n = read(fd, &msg, sizeof msg);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return env.Null();
    ThrowSysError(env, errno, "read");
  }
  if (n != sizeof msg) ThrowSysError(env, EIO, "read", nullptr, "short uffd_msg read");
  Napi::Object r = Napi::Object::New(env);
  const char* name = EventName(msg.event);
  r.Set("event", Napi::String::New(env, name != nullptr ? name : "unknown:" + std::to_string(msg.event)));
  uint64_t address = 0;
  uint64_t flags = 0;
  switch (msg.event) {
    case UFFD_EVENT_PAGEFAULT:
      address = msg.arg.pagefault.address;
      flags = msg.arg.pagefault.flags;
      r.Set("ptid", Napi::Number::New(env, msg.arg.pagefault.feat.ptid));
      break;
    case UFFD_EVENT_FORK:
      r.Set("ufd", Napi::Number::New(env, msg.arg.fork.ufd));
      break;
    case UFFD_EVENT_REMAP:
      address = msg.arg.remap.from;
      r.Set("to", Napi::BigInt::New(env, static_cast<uint64_t>(msg.arg.remap.to)));
      r.Set("len", Napi::BigInt::New(env, static_cast<uint64_t>(msg.arg.remap.len)));
      break;
    case UFFD_EVENT_REMOVE:
    case UFFD_EVENT_UNMAP:
      address = msg.arg.remove.start;
      r.Set("end", Napi::BigInt::New(env, static_cast<uint64_t>(msg.arg.remove.end)));
      break;
    default:
      break;
  }
  r.Set("address", Napi::BigInt::New(env, address));
  r.Set("flags", Napi::Number::New(env, static_cast<double>(flags)));
  return r;
}

}  // namespace

void InitUffd(Napi::Env env, Napi::Object exports) {
  exports.Set("userfaultfd", Napi::Function::New(env, Userfaultfd, "userfaultfd"));
  exports.Set("uffdApi", Napi::Function::New(env, UffdApi, "uffdApi"));
  exports.Set("uffdRegister", Napi::Function::New(env, UffdRegister, "uffdRegister"));
  exports.Set("uffdUnregister", Napi::Function::New(env, UffdUnregister, "uffdUnregister"));
  exports.Set("uffdCopy", Napi::Function::New(env, UffdCopy, "uffdCopy"));
  exports.Set("uffdZeropage", Napi::Function::New(env, UffdZeropage, "uffdZeropage"));
  exports.Set("uffdContinue", Napi::Function::New(env, UffdContinue, "uffdContinue"));
  exports.Set("uffdWriteProtect", Napi::Function::New(env, UffdWriteProtect, "uffdWriteProtect"));
  exports.Set("uffdWake", Napi::Function::New(env, UffdWake, "uffdWake"));
  exports.Set("uffdRead", Napi::Function::New(env, UffdRead, "uffdRead"));
}

}  // namespace vhost
