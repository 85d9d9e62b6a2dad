// TAP devices (/dev/net/tun, Documentation/networking/tuntap.rst) as the host-side port of the net device.
// IFF_VNET_HDR makes each frame carry a struct virtio_net_hdr (virtio v1.2 §5.1.6) of the size set with
// TUNSETVNETHDRSZ (10, or 12 with VIRTIO_NET_F_MRG_RXBUF / VERSION_1), so offload metadata passes through.

#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "addon.h"
#include "sys_error.h"

namespace vhost {
namespace {

void FillName(Napi::Env env, ifreq* ifr, const std::string& name, const char* syscall) {
  std::memset(ifr, 0, sizeof *ifr);
  if (name.size() >= IFNAMSIZ || name.find('\0') != std::string::npos) ThrowSysError(env, EINVAL, syscall, nullptr, "bad interface name '" + name + "'");
  std::memcpy(ifr->ifr_name, name.data(), name.size());
}

Napi::Value TapOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = ArgString(info, 0, "name");
  int hdrLen = static_cast<int>(ArgInt(info, 1, "vnetHdrLen", 0, 64));
  ifreq ifr;
  FillName(env, &ifr, name, "ioctl");  // empty name lets the kernel pick tapN
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (hdrLen > 0 ? IFF_VNET_HDR : 0);

  static const std::string kTun = "/dev/net/tun";
  int fd = open(kTun.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) ThrowSysError(env, errno, "open", &kTun);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    int e = errno;
    close(fd);
    ThrowSysError(env, e, "ioctl", nullptr, "TUNSETIFF '" + name + "'");
  }
  if (hdrLen > 0 && ioctl(fd, TUNSETVNETHDRSZ, &hdrLen) < 0) {
    int e = errno;
    close(fd);
    ThrowSysError(env, e, "ioctl", nullptr, "TUNSETVNETHDRSZ");
  }
  Napi::Object r = Napi::Object::New(env);
  r.Set("fd", Napi::Number::New(env, fd));
  r.Set("name", Napi::String::New(env, ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ)));
  return r;
}

Napi::Value TapSetOffload(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  unsigned long flags = static_cast<unsigned long>(ArgInt(info, 1, "tunFlags", 0, UINT32_MAX));
  if (ioctl(fd, TUNSETOFFLOAD, flags) < 0) ThrowSysError(env, errno, "ioctl", nullptr, "TUNSETOFFLOAD");
  return env.Undefined();
}

Napi::Value LinkSetUp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = ArgString(info, 0, "name");
  ifreq ifr;
  FillName(env, &ifr, name, "ioctl");
  // Interface flags are set through any socket; an AF_INET datagram socket is the conventional handle.
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) ThrowSysError(env, errno, "socket");
  if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) {
    int e = errno;
    close(s);
    ThrowSysError(env, e, "ioctl", nullptr, "SIOCGIFFLAGS '" + name + "'");
  }
  ifr.ifr_flags |= IFF_UP;
  if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) {
    int e = errno;
    close(s);
    ThrowSysError(env, e, "ioctl", nullptr, "SIOCSIFFLAGS '" + name + "'");
  }
  close(s);
  return env.Undefined();
}

}  // namespace

void InitTap(Napi::Env env, Napi::Object exports) {
  exports.Set("tapOpen", Napi::Function::New(env, TapOpen, "tapOpen"));
  exports.Set("tapSetOffload", Napi::Function::New(env, TapSetOffload, "tapSetOffload"));
  exports.Set("linkSetUp", Napi::Function::New(env, LinkSetUp, "linkSetUp"));
}

}  // namespace vhost
