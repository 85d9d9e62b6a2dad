// AF_UNIX stream sockets: the vhost-user control channel ("Communication" in vhost-user.rst: a Unix domain
// socket carrying messages with ancillary SCM_RIGHTS file descriptors). All sockets are SOCK_NONBLOCK and
// SOCK_CLOEXEC; "would block" is returned as null so the TS runtime waits on a Poller instead.

#include <fcntl.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "addon.h"
#include "sys_error.h"

namespace vhost {
namespace {

// Linux caps SCM_RIGHTS at 253 descriptors per message (SCM_MAX_FD, include/net/scm.h).
constexpr int64_t kMaxFds = 253;

// A leading NUL selects the Linux abstract namespace; the address length then counts the name exactly.
socklen_t FillAddr(Napi::Env env, const std::string& path, sockaddr_un* addr, const char* syscall) {
  std::memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr->sun_path) ThrowSysError(env, path.empty() ? EINVAL : ENAMETOOLONG, syscall, &path);
  std::memcpy(addr->sun_path, path.data(), path.size());
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + (path[0] == '\0' ? 0 : 1));
}

int NewSocket(Napi::Env env) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowSysError(env, errno, "socket");
  return fd;
}

Napi::Value UnixListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ArgString(info, 0, "path");
  int backlog = static_cast<int>(ArgInt(info, 1, "backlog", 0, INT32_MAX));
  sockaddr_un addr;
  socklen_t alen = FillAddr(env, path, &addr, "bind");
  int fd = NewSocket(env);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), alen) < 0) {
    int e = errno;
    close(fd);
    ThrowSysError(env, e, "bind", &path);
  }
  if (listen(fd, backlog) < 0) {
    int e = errno;
    close(fd);
    ThrowSysError(env, e, "listen", &path);
  }
  return Napi::Number::New(env, fd);
}

Napi::Value UnixAccept(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int lfd = ArgFd(info, 0, "listenFd");
  for (;;) {
    int fd = accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) return Napi::Number::New(env, fd);
    // ECONNABORTED: the peer went away while queued; try the next pending connection.
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return env.Null();
    ThrowSysError(env, errno, "accept");
  }
}

Napi::Value UnixConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ArgString(info, 0, "path");
  sockaddr_un addr;
  socklen_t alen = FillAddr(env, path, &addr, "connect");
  int fd = NewSocket(env);
  // A non-blocking AF_UNIX connect completes or fails at once (EAGAIN when the listener's backlog is full,
  // never EINPROGRESS), so this never blocks and needs no writable-wait.
  int r;
  do {
    r = connect(fd, reinterpret_cast<sockaddr*>(&addr), alen);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    int e = errno;
    close(fd);
    ThrowSysError(env, e, "connect", &path);
  }
  return Napi::Number::New(env, fd);
}

Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) ThrowSysError(env, errno, "socketpair");
  Napi::Array a = Napi::Array::New(env, 2);
  a.Set(uint32_t{0}, Napi::Number::New(env, sv[0]));
  a.Set(uint32_t{1}, Napi::Number::New(env, sv[1]));
  return a;
}

Napi::Value RecvMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  int64_t offset = ArgInt(info, 2, "offset", 0, INT64_C(1) << 53);
  int64_t byteLen = ArgInt(info, 3, "byteLen", 0, INT64_C(1) << 53);
  uint8_t* p = ArgView(info, 1, "buf", offset, byteLen);
  int64_t maxFds = ArgInt(info, 4, "maxFds", 0, kMaxFds);

  iovec iov{p, static_cast<size_t>(byteLen)};
  // With maxFds == 0 there is no control buffer: any descriptors sent are closed by the kernel and
  // MSG_CTRUNC is set, which we report.
  // The buffer is CMSG_SPACE-sized (aligned), but msg_controllen is CMSG_LEN: the kernel fits as many fds as
  // the length allows, and CMSG_SPACE's padding would otherwise admit an extra one beyond maxFds.
  std::vector<char> control(maxFds > 0 ? CMSG_SPACE(sizeof(int) * static_cast<size_t>(maxFds)) : 0);
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.empty() ? nullptr : control.data();
  msg.msg_controllen = control.empty() ? 0 : CMSG_LEN(sizeof(int) * static_cast<size_t>(maxFds));

  ssize_t n;
  do {
    // MSG_DONTWAIT as well as O_NONBLOCK: the fd might come from elsewhere; we must never block.
    n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return env.Null();
    ThrowSysError(env, errno, "recvmsg");
  }

  Napi::Array fds = Napi::Array::New(env);
  uint32_t k = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const unsigned char* data = CMSG_DATA(c);
    for (size_t j = 0; j < count; j++) {
      int rfd;
      std::memcpy(&rfd, data + j * sizeof(int), sizeof rfd);  // CMSG_DATA may be unaligned for int
      fds.Set(k++, Napi::Number::New(env, rfd));
    }
  }
  Napi::Object r = Napi::Object::New(env);
  r.Set("byteLen", Napi::Number::New(env, static_cast<double>(n)));
  r.Set("fds", fds);
  r.Set("fdsTruncated", Napi::Boolean::New(env, (msg.msg_flags & MSG_CTRUNC) != 0));
  return r;
}

Napi::Value SendMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  int64_t offset = ArgInt(info, 2, "offset", 0, INT64_C(1) << 53);
  int64_t byteLen = ArgInt(info, 3, "byteLen", 0, INT64_C(1) << 53);
  uint8_t* p = ArgView(info, 1, "buf", offset, byteLen);
  if (info.Length() < 5 || !info[4].IsArray()) ThrowArgType(env, "fds");
  Napi::Array arr = info[4].As<Napi::Array>();
  uint32_t nfds = arr.Length();
  if (nfds > kMaxFds) ThrowRange(env, "fds.length");
  std::vector<int> fds(nfds);
  for (uint32_t j = 0; j < nfds; j++) {
    Napi::Value v = arr.Get(j);
    if (!v.IsNumber()) ThrowArgType(env, "fds[]");
    double d = v.As<Napi::Number>().DoubleValue();
    if (std::trunc(d) != d || d < 0 || d > INT32_MAX) ThrowRange(env, "fds[]");
    fds[j] = static_cast<int>(d);
  }

  iovec iov{p, static_cast<size_t>(byteLen)};
  std::vector<char> control(nfds > 0 ? CMSG_SPACE(sizeof(int) * nfds) : 0);
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (nfds > 0) {
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * nfds);
  }
  ssize_t n;
  do {
    // MSG_NOSIGNAL: a vanished peer is an EPIPE error, not a process-wide SIGPIPE.
    n = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return env.Null();
    ThrowSysError(env, errno, "sendmsg");
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  // Linux releases the descriptor even when close() reports EINTR; retrying could close a reused fd.
  if (close(fd) < 0 && errno != EINTR) ThrowSysError(env, errno, "close");
  return env.Undefined();
}

Napi::Value Dup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  int r = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (r < 0) ThrowSysError(env, errno, "dup");
  return Napi::Number::New(env, r);
}

}  // namespace

void InitUnixSocket(Napi::Env env, Napi::Object exports) {
  exports.Set("unixListen", Napi::Function::New(env, UnixListen, "unixListen"));
  exports.Set("unixAccept", Napi::Function::New(env, UnixAccept, "unixAccept"));
  exports.Set("unixConnect", Napi::Function::New(env, UnixConnect, "unixConnect"));
  exports.Set("socketpair", Napi::Function::New(env, SocketPair, "socketpair"));
  exports.Set("recvmsg", Napi::Function::New(env, RecvMsg, "recvmsg"));
  exports.Set("sendmsg", Napi::Function::New(env, SendMsg, "sendmsg"));
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("dup", Napi::Function::New(env, Dup, "dup"));
}

}  // namespace vhost
